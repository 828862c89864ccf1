//! The reference talk's pipeline on a real table: a dataframe for
//! preprocessing, distributed XGBoost for training, Tune for the
//! hyperparameters, and the best model served over HTTP.
//!
//! The data is the Palmer penguins table (344 penguins of three species,
//! with their island, sex, bill, flipper and mass, some values missing),
//! shipped inside PyPI's `palmerpenguins` wheel and unpacked by
//! `scripts/xgboost.sh` (`$RAYFORGE_PENGUINS_CSV`). Each step prints what it
//! did; the last line is a JSON summary (what `tests/it/main.rs` checks).
//!
//! 1. The CSV as Parquet, the way tables usually arrive.
//! 2. rayforge-data: SQL turns the species into a label (ordinal), the
//!    island into one-hot columns, `NA` into nulls (XGBoost's missing
//!    values); a seeded train/validation split, written as Parquet.
//! 3. XGBoostTrainer: 2 workers boost `multi:softprob` with early stopping
//!    on the validation set.
//! 4. Tune: ASHA over eta, depth and subsampling, each trial a 2-worker
//!    run (the experiment file it writes, `tune.toml`, is what `tune run`
//!    takes).
//! 5. Serve: the best trial's model as an `XGBoostModel` deployment; the
//!    validation rows are posted to it over HTTP as JSON objects, and its
//!    answers are compared with the model's own predictions.
//!
//! ```sh
//! source scripts/xgboost.sh && cargo run --release -p rayforge-xgboost --bin xgb-penguins -- --work /tmp/penguins
//! ```

use std::time::Duration;

use rayforge_data::arrow::array::{Array, Float64Array};
use rayforge_data::arrow::record_batch::RecordBatch;
use rayforge_serve::{deployment, Application, HttpOptions};
use rayforge_train::{RunConfig, ScalingConfig};
use rayforge_tune::Experiment;
use rayforge_xgboost::serve::XGBoostModel;
use rayforge_xgboost::{params, DMatrix, DataSpec, XGBoostTrainer};

type Error = Box<dyn std::error::Error>;

/// Species as labels, islands one-hot, `NA` as null.
const PREPROCESS: &str = r#"
SELECT
  CASE species WHEN 'Adelie' THEN 0 WHEN 'Chinstrap' THEN 1 WHEN 'Gentoo' THEN 2 END AS label,
  CAST(island = 'Biscoe' AS DOUBLE) AS island_biscoe,
  CAST(island = 'Dream' AS DOUBLE) AS island_dream,
  CAST(island = 'Torgersen' AS DOUBLE) AS island_torgersen,
  CASE sex WHEN 'male' THEN 1.0 WHEN 'female' THEN 0.0 END AS sex_male,
  TRY_CAST(bill_length_mm AS DOUBLE) AS bill_length_mm,
  TRY_CAST(bill_depth_mm AS DOUBLE) AS bill_depth_mm,
  TRY_CAST(flipper_length_mm AS DOUBLE) AS flipper_length_mm,
  TRY_CAST(body_mass_g AS DOUBLE) AS body_mass_g
FROM ds
WHERE species IN ('Adelie', 'Chinstrap', 'Gentoo')
"#;

const SPECIES: [&str; 3] = ["Adelie", "Chinstrap", "Gentoo"];

fn arg(name: &str) -> Option<String> {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1).cloned())
}

/// `--csv`, `$RAYFORGE_PENGUINS_CSV`, or where scripts/xgboost.sh unpacks it.
fn penguins_csv() -> Result<String, Error> {
    if let Some(p) = arg("--csv").or_else(|| std::env::var("RAYFORGE_PENGUINS_CSV").ok()) {
        return Ok(p);
    }
    rayforge_xgboost::cache_dirs()
        .into_iter()
        .map(|d| d.join("palmerpenguins-0.1.6/penguins.csv"))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .ok_or_else(|| "no penguins table: run `source scripts/xgboost.sh` (it unpacks one) or pass --csv FILE".into())
}

/// A column of a batch as f64 (nulls as NaN).
fn column(b: &RecordBatch, name: &str) -> Result<Vec<f64>, Error> {
    let c = b.column_by_name(name).ok_or_else(|| format!("no column {name}"))?;
    let c = rayforge_data::arrow::compute::cast(c, &rayforge_data::arrow::datatypes::DataType::Float64)?;
    let c = c.as_any().downcast_ref::<Float64Array>().ok_or("not f64")?;
    Ok((0..c.len())
        .map(|i| if c.is_null(i) { f64::NAN } else { c.value(i) })
        .collect())
}

#[rayforge::main]
fn main() -> Result<(), Error> {
    let work = std::path::PathBuf::from(arg("--work").unwrap_or_else(|| {
        std::env::temp_dir()
            .join(format!("xgb-penguins-{}", std::process::id()))
            .display()
            .to_string()
    }));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let path = |p: &str| work.join(p).display().to_string();
    rayforge::init(rayforge::Config::default().num_cpus(4.0))?;

    // 1. The raw table, as Parquet.
    let csv = penguins_csv()?;
    let raw = rayforge_data::read_csv(csv.as_str())?;
    raw.write_parquet(&path("raw"))?;
    let raw = rayforge_data::read_parquet(path("raw").as_str())?;
    println!("1. {} penguins from {csv}, as Parquet in {}", raw.count()?, path("raw"));

    // 2. Preprocessing: SQL, then a seeded split.
    let rows = raw.sql(PREPROCESS)?;
    let (train, valid) = rows.train_test_split(0.25, Some(7))?;
    train.write_parquet(&path("train"))?;
    valid.write_parquet(&path("valid"))?;
    let (train, valid) = (
        rayforge_data::read_parquet(path("train").as_str())?,
        rayforge_data::read_parquet(path("valid").as_str())?,
    );
    println!(
        "2. preprocessed with SQL (species -> label, island one-hot, NA -> missing): {} train, {} validation rows",
        train.count()?,
        valid.count()?
    );

    // 3. Distributed XGBoost.
    let scaling = ScalingConfig {
        num_workers: 2,
        cpus_per_worker: 0.5,
        ..Default::default()
    };
    let result = XGBoostTrainer::new(
        params! {"objective": "multi:softprob", "num_class": 3, "eta": 0.3, "max_depth": 4,
        "eval_metric": ["mlogloss", "merror"], "seed": 0},
        "label",
        60,
    )
    .dataset("train", train.clone())
    .dataset("valid", valid.clone())
    .early_stopping_rounds(5)
    .scaling(scaling)
    .run_config(RunConfig {
        name: "penguins".into(),
        storage_path: work.join("results").as_path().into(),
        verbose: false,
        ..Default::default()
    })
    .fit()?;
    if let Some(e) = result.error() {
        return Err(e.to_string().into());
    }
    let m = result.metrics();
    println!(
        "3. XGBoost on 2 workers: {} rounds, valid-merror {:.4}, valid-mlogloss {:.4}",
        m["round"], m["valid-merror"], m["valid-mlogloss"]
    );

    // 4. Tune: the experiment file, then ASHA over it.
    let toml = work.join("tune.toml");
    std::fs::write(
        &toml,
        format!(
            r#"name = "penguins_asha"
storage_path = "{results}"
metric = "valid-mlogloss"
mode = "min"
num_samples = 6
max_concurrent_trials = 1

[trainable]
name = "xgboost"

[resources_per_trial]
cpu = 0.25
worker_bundles = [{{ CPU = 0.5 }}, {{ CPU = 0.5 }}]

[searcher]
type = "random"
seed = 11

[scheduler]
type = "asha"
max_t = 30
grace_period = 3
reduction_factor = 2

[param_space]
train = "{train}"
valid = "{valid}"
label = "label"
num_boost_round = 30
cpus_per_worker = 0.5
checkpoint_frequency = 3
objective = "multi:softprob"
num_class = 3
eval_metric = "mlogloss"
eta = {{ loguniform = [0.02, 0.5] }}
max_depth = {{ randint = [2, 7] }}
subsample = {{ uniform = [0.6, 1.0] }}
"#,
            results = work.join("results").display(),
            train = path("train"),
            valid = path("valid"),
        ),
    )?;
    let (exp, space) = Experiment::load(&toml)?;
    let tuner = rayforge_tune::Tuner::new(
        rayforge_xgboost::tune::trainable,
        exp.searcher(space.clone(), 0)?,
        exp.tune_config(),
    )
    .scheduler(exp.scheduler(&space)?);
    let grid = tuner.fit()?;
    let best = grid.best().ok_or("no trial finished")?;
    let stopped = grid.trials.iter().filter(|t| t.stopped_early).count();
    println!(
        "4. Tune (ASHA, {} trials, {stopped} stopped early): best {} with eta {}, max_depth {}, subsample {}: valid-mlogloss {:.4}",
        grid.trials.len(),
        best.trial,
        best.config["eta"],
        best.config["max_depth"],
        best.config["subsample"],
        best.last["valid-mlogloss"]
    );
    let checkpoint = best.checkpoint.clone().ok_or("the best trial left no checkpoint")?;
    let model = XGBoostTrainer::get_model(&checkpoint)?;

    // 5. Serve the best model and query it over HTTP.
    let app = Application::new("penguins").ingress(deployment::<XGBoostModel>("Species").user_config(
        serde_json::json!({ "checkpoint": checkpoint.location(), "max_batch_size": 16, "batch_wait_ms": 5 }),
    ));
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
    let batch = valid.take_batch(10_000)?;
    let features = model.feature_names()?;
    let cols: Vec<Vec<f64>> = features.iter().map(|f| column(&batch, f)).collect::<Result<_, _>>()?;
    let labels = column(&batch, "label")?;
    let own = model.predict(&DMatrix::from_batch(&batch, &DataSpec::label("label"), "valid")?)?;
    let (mut right, mut same) = (0, 0);
    for i in 0..batch.num_rows() {
        // One penguin as a JSON object; a missing value is left out.
        let row: serde_json::Map<String, serde_json::Value> = features
            .iter()
            .zip(&cols)
            .filter(|(_, c)| !c[i].is_nan())
            .map(|(f, c)| (f.clone(), serde_json::json!(c[i])))
            .collect();
        let body = serde_json::Value::Object(row).to_string();
        let r = rayforge_serve::client::request(&addr, "POST", "/", body.as_bytes(), Duration::from_secs(60))?;
        if r.status != 200 {
            return Err(format!("POST {body}: {} {}", r.status, r.text()).into());
        }
        let answer: serde_json::Value = serde_json::from_slice(&r.body)?;
        let probs: Vec<f32> = serde_json::from_value(answer["prediction"].clone())?;
        let class = (0..3).max_by(|a, b| probs[*a].total_cmp(&probs[*b])).unwrap_or(0);
        right += usize::from(class as f64 == labels[i]);
        same += usize::from(
            probs
                .iter()
                .zip(&own[i * 3..i * 3 + 3])
                .all(|(a, b)| (a - b).abs() < 1e-6),
        );
        if i < 3 {
            println!(
                "   POST {body}\n   -> {answer}: {} (true species: {})",
                SPECIES[class], SPECIES[labels[i] as usize]
            );
        }
    }
    let n = batch.num_rows();
    let accuracy = right as f64 / n as f64;
    println!("5. served the best model at http://{addr}/: {right} of {n} validation penguins right ({accuracy:.3}); {same} answers equal to the model's own predictions");
    server.shutdown()?;
    println!(
        "{}",
        serde_json::json!({
            "rows": raw.count()?,
            "valid_rows": n,
            "trainer_valid_merror": m["valid-merror"],
            "tune_trials": grid.trials.len(),
            "tune_stopped_early": stopped,
            "best_trial": best.trial,
            "served_accuracy": accuracy,
            "served_equal_to_model": same,
        })
    );
    rayforge::shutdown();
    Ok(())
}
