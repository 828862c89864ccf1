//! Batch inference on an actor pool: each actor loads a "model" once (here
//! a linear scorer whose weights take a moment to build) and scores many
//! batches; the pool grows from 1 to 2 actors while input waits.
//! `cargo run --release -p rayforge-data-examples --bin batch_inference`

use std::sync::Arc;

use rayforge_data::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use rayforge_data::{ActorPoolOptions, Agg, Error};

/// The model: one weight per feature, plus where it was loaded.
struct Model {
    weights: Vec<f64>,
    pid: i64,
}

/// Loads the model (once per actor).
fn load_model() -> Model {
    let weights = (0..4).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    Model {
        weights,
        pid: std::process::id() as i64,
    }
}

/// Features of row `id`: four numbers derived from it.
fn features(b: RecordBatch) -> Result<RecordBatch, Error> {
    let ids = rayforge_data::compute::f64_column(&b, "id")?;
    let mut cols: Vec<(String, ArrayRef)> = vec![("id".into(), b.column(0).clone())];
    for k in 0..4 {
        let v: ArrayRef = Arc::new(Float64Array::from_iter_values(
            ids.iter().map(|i| ((i * (k as f64 + 1.0)) % 10.0) / 10.0),
        ));
        cols.push((format!("f{k}"), v));
    }
    Ok(RecordBatch::try_from_iter(cols)?)
}

/// Scores a batch with the model.
fn score(m: &mut Model, b: RecordBatch) -> Result<RecordBatch, Error> {
    let mut s = vec![0.0; b.num_rows()];
    for (k, w) in m.weights.iter().enumerate() {
        let f = rayforge_data::compute::f64_column(&b, &format!("f{k}"))?;
        for (acc, x) in s.iter_mut().zip(f) {
            *acc += w * x;
        }
    }
    Ok(RecordBatch::try_from_iter([
        ("id", b.column(0).clone()),
        ("score", Arc::new(Float64Array::from(s)) as ArrayRef),
        (
            "actor_pid",
            Arc::new(Int64Array::from(vec![m.pid; b.num_rows()])) as ArrayRef,
        ),
    ])?)
}

#[rayforge::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    rayforge::init(rayforge::Config::default())?;
    let scored = rayforge_data::range_with_blocks(100_000, 20)
        .map_batches(features)
        .map_batches_actors(
            load_model,
            score,
            ActorPoolOptions {
                concurrency: (1, 2),
                batch_size: Some(1024),
                num_cpus: 0.5,
                num_gpus: 0.0,
            },
        )
        .materialize()?;
    println!("scored {} rows", scored.count()?);
    let per_actor = scored
        .groupby(&["actor_pid"])
        .aggregate(&[Agg::Count, Agg::Mean("score".into())]);
    let rows = per_actor.take_batch(10)?;
    println!("actors used: {}", rows.num_rows());
    per_actor.show(10)?;
    let best = scored.sort("score", true).take_batch(3)?;
    println!("top scores:");
    println!(
        "{}",
        rayforge_data::arrow::util::pretty::pretty_format_batches(&[best])?
    );
    Ok(())
}
