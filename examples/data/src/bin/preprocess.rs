//! The preprocessing stage of the reference talk's pipeline: read a Parquet
//! dataset of taxi trips, clean and featurize it with `map_batches` and SQL,
//! print group-by statistics, split into train and test, write Parquet.
//!
//! The input is generated here (200,000 trips in 8 files), so the example
//! needs no download. `cargo run --release -p rayforge-data-examples --bin preprocess`

use std::sync::Arc;

use rayforge_data::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use rayforge_data::expr::col;
use rayforge_data::{Agg, Error, ParquetOptions};

/// A deterministic pseudo-random number in [0, 1) for row `i`, stream `s`.
fn noise(i: i64, s: u64) -> f64 {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ s.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Turns ids into trips: city, distance (km), duration (min), fare; a few
/// trips have a zero distance or no fare (to be cleaned out).
fn make_trips(b: RecordBatch) -> Result<RecordBatch, Error> {
    let ids = rayforge_data::compute::f64_column(&b, "id")?;
    let ids: Vec<i64> = ids.iter().map(|v| *v as i64).collect();
    let city: Vec<i64> = ids.iter().map(|i| (noise(*i, 1) * 5.0) as i64).collect();
    let dist: Vec<f64> = ids
        .iter()
        .map(|i| if i % 97 == 0 { 0.0 } else { 0.5 + noise(*i, 2) * 20.0 })
        .collect();
    let dur: Vec<f64> = ids
        .iter()
        .zip(&dist)
        .map(|(i, d)| 3.0 + d * (1.5 + noise(*i, 3) * 2.0))
        .collect();
    let fare: Vec<Option<f64>> = ids
        .iter()
        .zip(&dist)
        .map(|(i, d)| {
            if i % 89 == 0 {
                None
            } else {
                Some(2.5 + d * 1.8 + noise(*i, 4))
            }
        })
        .collect();
    Ok(RecordBatch::try_from_iter([
        ("trip_id", Arc::new(Int64Array::from(ids)) as ArrayRef),
        ("city", Arc::new(Int64Array::from(city)) as ArrayRef),
        ("distance_km", Arc::new(Float64Array::from(dist)) as ArrayRef),
        ("duration_min", Arc::new(Float64Array::from(dur)) as ArrayRef),
        ("fare", Arc::new(Float64Array::from(fare)) as ArrayRef),
    ])?)
}

/// Adds speed (km/h) and fare per km.
fn featurize(b: RecordBatch) -> Result<RecordBatch, Error> {
    let d = rayforge_data::compute::f64_column(&b, "distance_km")?;
    let t = rayforge_data::compute::f64_column(&b, "duration_min")?;
    let f = rayforge_data::compute::f64_column(&b, "fare")?;
    let speed: ArrayRef = Arc::new(Float64Array::from_iter_values(
        d.iter().zip(&t).map(|(d, t)| d / t * 60.0),
    ));
    let per_km: ArrayRef = Arc::new(Float64Array::from_iter_values(f.iter().zip(&d).map(|(f, d)| f / d)));
    let schema = b.schema();
    let mut cols: Vec<(&str, ArrayRef)> = schema
        .fields()
        .iter()
        .map(|x| x.name().as_str())
        .zip(b.columns().iter().cloned())
        .collect();
    cols.push(("speed_kmh", speed));
    cols.push(("fare_per_km", per_km));
    Ok(RecordBatch::try_from_iter(cols)?)
}

#[rayforge::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    rayforge::init(rayforge::Config::default())?;
    let root = std::env::temp_dir().join(format!("rayforge-preprocess-{}", std::process::id()));
    let input = root.join("trips");
    let made = rayforge_data::range_with_blocks(200_000, 8)
        .map_batches(make_trips)
        .write_parquet(input.to_str().ok_or("path")?)?;
    println!("generated {} trips in {} Parquet files", made.rows, made.files.len());

    // Read only the columns we use; rows with no distance never leave the
    // Parquet reader.
    let trips = rayforge_data::read_parquet_with(
        input.to_str().ok_or("path")?,
        ParquetOptions {
            columns: Some(vec![
                "trip_id".into(),
                "city".into(),
                "distance_km".into(),
                "duration_min".into(),
                "fare".into(),
            ]),
            filter: Some(col("distance_km").gt(0.0)),
        },
    )?;
    let clean = trips.filter_expr(col("fare").is_null().not()).map_batches(featurize);
    let labelled = clean.sql(
        "SELECT trip_id, city, distance_km, speed_kmh, fare_per_km, fare, \
         CASE WHEN speed_kmh > 30 THEN 1 ELSE 0 END AS fast FROM ds",
    )?;
    // The query's output comes back as one block: spread it out again.
    let kept = labelled.repartition(8).materialize()?;
    print!("{}", kept.stats());
    println!("kept {} of {} trips after cleaning", kept.count()?, made.rows);

    println!("per-city statistics:");
    kept.groupby(&["city"])
        .aggregate(&[
            Agg::Count,
            Agg::Mean("fare".into()),
            Agg::Std("speed_kmh".into()),
            Agg::Max("distance_km".into()),
        ])
        .show(10)?;

    let (train, test) = kept.train_test_split(0.2, Some(42))?;
    let tr = train.write_parquet(root.join("train").to_str().ok_or("path")?)?;
    let te = test.write_parquet(root.join("test").to_str().ok_or("path")?)?;
    println!(
        "train: {} rows in {} files; test: {} rows in {} files",
        tr.rows,
        tr.files.len(),
        te.rows,
        te.files.len()
    );
    std::fs::remove_dir_all(&root)?;
    Ok(())
}
