//! rayforge-xgboost's side of its benchmark (train/xgboost/bench/compare
//! runs it beside XGBoost in one Python process and Ray's XGBoostTrainer):
//! a Parquet dataset read with rayforge-data, boosted by a gang of
//! `--workers` workers of `--threads` threads each on an embedded cluster of
//! `--cluster-cpus` logical CPUs, the parameters of `xgb_python.py`. Prints
//! one JSON line: the slowest worker's time from its shard to its DMatrix,
//! the median round (boosting and evaluation on rank 0), the whole run from
//! the start of the process, the last training metric. `--objective`,
//! `--num-class`, `--metric` and `--label` change the task (binary:logistic,
//! logloss, `label` by default).
//!
//! ```sh
//! target/release/xgb-bench --data target/xgb-bench/higgs --workers 2 --threads 1 --rounds 50
//! ```

use std::time::Instant;

use rayforge_train::{RunConfig, ScalingConfig};
use rayforge_xgboost::{params, XGBoostTrainer};

fn arg(name: &str, default: &str) -> String {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn number<T: std::str::FromStr>(name: &str, default: &str) -> Result<T, String> {
    let v = arg(name, default);
    v.parse().map_err(|_| format!("{name} {v} is not a number"))
}

#[rayforge::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let data = arg("--data", "");
    if data.is_empty() {
        return Err("usage: xgb-bench --data DIR [--workers 2] [--threads 1] [--rounds 50] [--cluster-cpus 4]".into());
    }
    let workers: usize = number("--workers", "2")?;
    let threads: usize = number("--threads", "1")?;
    let rounds: usize = number("--rounds", "50")?;
    let cpus: f64 = number("--cluster-cpus", "4")?;
    rayforge::init(rayforge::Config::default().num_cpus(cpus))?;
    let storage = std::env::temp_dir().join(format!("xgb-bench-{}", std::process::id()));
    let objective = arg("--objective", "binary:logistic");
    let metric = arg("--metric", "logloss");
    let mut params = params! {"objective": objective, "tree_method": "hist", "max_depth": 6, "eta": 0.1,
    "eval_metric": metric, "seed": 0};
    let classes: usize = number("--num-class", "0")?;
    if classes > 0 {
        params.insert("num_class".into(), classes.into());
    }
    let rows = rayforge_data::read_parquet(data.as_str())?;
    let result = XGBoostTrainer::new(params, &arg("--label", "label"), rounds)
        .dataset("train", rows)
        .checkpoint_frequency(0)
        .scaling(ScalingConfig {
            num_workers: workers,
            cpus_per_worker: threads as f64,
            ..Default::default()
        })
        .run_config(RunConfig {
            name: "xgb-bench".into(),
            storage_path: storage.as_path().into(),
            verbose: false,
            ..Default::default()
        })
        .fit()?;
    if let Some(e) = result.error() {
        return Err(e.to_string().into());
    }
    let mut rounds_s: Vec<f64> = result
        .train
        .history
        .iter()
        .map(|r| r.metrics["time_this_round_s"])
        .collect();
    rounds_s.sort_by(f64::total_cmp);
    let m = result.metrics();
    println!(
        "{}",
        serde_json::json!({
            "bench": "xgboost",
            "impl": format!("rayforge-xgboost (libxgboost {})", rayforge_xgboost::library()?.1),
            "workers": workers,
            "threads": threads,
            "rounds": rounds,
            "load_s": m["data_load_s"],
            "round_s": rounds_s[rounds_s.len() / 2],
            "total_s": start.elapsed().as_secs_f64(),
            "metric": format!("train-{metric}"),
            "train_metric": m[&format!("train-{metric}")],
        })
    );
    let _ = std::fs::remove_dir_all(&storage);
    rayforge::shutdown();
    Ok(())
}
