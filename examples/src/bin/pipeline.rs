//! The reference talk's pipeline, end to end on one embedded cluster:
//! raw data as Parquet, preprocessed by rayforge-data; an MLP trained by
//! two rayforge-train ranks on their shards; its TorchScript export served
//! by rayforge-serve; and answers fetched over HTTP.
//!
//! Run: `cargo run --release -p rayforge-examples --bin pipeline`

use std::time::{Duration, Instant};

use rayforge_data::arrow::array::AsArray;
use rayforge_data::arrow::datatypes::{Float32Type, Int64Type};
use rayforge_examples::digits::{self, Settings};
use rayforge_serve::torch::TorchScript;
use rayforge_serve::{deployment, Application, HttpOptions};
use rayforge_train::{CheckpointConfig, RunConfig, ScalingConfig, Trainer};

#[rayforge::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    rayforge::init(rayforge::Config::default())?;
    let work = std::env::temp_dir().join(format!("rayforge-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);

    // 1. The raw data, as it would land: Parquet files.
    let raw = work.join("raw");
    let raw_str = raw.display().to_string();
    let written = rayforge_data::read_csv(digits::CSV)?.write_parquet(&raw_str)?;
    println!(
        "[data] {} raw rows written as Parquet to {}",
        written.rows,
        raw.display()
    );

    // 2. Preprocessing with rayforge-data: pixels to features, a split.
    let rows = rayforge_data::read_parquet(raw_str.as_str())?.map_batches(digits::to_features);
    let (train, valid) = rows.train_test_split(0.2, Some(42))?;
    println!(
        "[data] preprocessed: {} training rows, {} validation rows",
        train.count()?,
        valid.count()?
    );

    // 3. Training with rayforge-train: two ranks, each on its shard.
    let settings = Settings {
        epochs: 8,
        batch_size: 32,
        lr: 3e-3,
        hidden: 128,
        kill_at_epoch: None,
        marker: String::new(),
    };
    let result = Trainer::new(digits::train)
        .scaling(ScalingConfig {
            num_workers: 2,
            cpus_per_worker: 0.5,
            ..Default::default()
        })
        .run_config(RunConfig {
            name: "digits".into(),
            storage_path: work.join("runs").into(),
            checkpoint: CheckpointConfig {
                num_to_keep: Some(1),
                score_attribute: Some("val_accuracy".into()),
                higher_is_better: true,
            },
            ..Default::default()
        })
        .config(serde_json::to_value(&settings)?)
        .dataset("train", train)
        .dataset("valid", valid.clone())
        .fit()?
        .into_result()?;
    let best = result.best_checkpoint.ok_or("the run left no checkpoint")?;
    println!(
        "[train] validation accuracy {:.3} after {} epochs; best checkpoint {}",
        result.metrics["val_accuracy"],
        result.metrics["epoch"],
        best.path().display()
    );

    // 4. Serving the checkpoint's TorchScript model with rayforge-serve.
    let model = best.file(digits::TORCHSCRIPT);
    let app =
        Application::new("digits").ingress(deployment::<TorchScript>("Classifier").user_config(serde_json::json!({
            "model_path": model.display().to_string(),
            "device": "cpu",
            "max_batch_size": 16,
            "batch_wait_ms": 5,
        })));
    let server = rayforge_serve::start(
        vec![app],
        HttpOptions {
            port: 0,
            admin_port: 0,
            ..Default::default()
        },
    )?;
    server.wait_healthy(Duration::from_secs(120))?;
    let addr = server.http_addr().to_string();
    println!("[serve] {} serving at http://{addr}/", model.display());

    // 5. Asking it over HTTP about validation images it never trained on.
    let sample = valid.take_batch(20)?;
    let xs = sample.column_by_name("x").ok_or("no column x")?.as_fixed_size_list();
    let ys = sample
        .column_by_name("y")
        .ok_or("no column y")?
        .as_primitive::<Int64Type>();
    let mut right = 0;
    for i in 0..sample.num_rows() {
        let pixels = xs.value(i);
        let pixels: Vec<f32> = pixels.as_primitive::<Float32Type>().values().to_vec();
        let body = serde_json::to_vec(&pixels)?;
        let r = rayforge_serve::client::request(&addr, "POST", "/", &body, Duration::from_secs(30))?;
        if r.status != 200 {
            return Err(format!("the model answered {}: {}", r.status, r.text()).into());
        }
        let logits: Vec<f32> = serde_json::from_slice(&r.body)?;
        let predicted = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(d, _)| d as i64);
        right += (predicted == ys.value(i)) as usize;
        println!(
            "[query] POST / image {i:2}: digit {} -> predicted {predicted}",
            ys.value(i)
        );
    }
    println!(
        "[query] {right} of {} answered right over HTTP; whole pipeline in {:.1} s",
        sample.num_rows(),
        t0.elapsed().as_secs_f64()
    );
    server.shutdown()?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
