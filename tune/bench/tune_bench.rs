//! Tune's bookkeeping benchmarks, the rayforge side (`tune/bench/compare`
//! runs them beside Ray Tune 2.60):
//!
//! - bookkeeping: N trials of `--seconds` each, reporting once a second,
//!   on the machine's CPUs one trial per CPU; the wall time against the
//!   floor (N x seconds / CPUs);
//! - `--reports R`: result throughput, N trials each reporting R results
//!   as fast as it can (results written to disk as usual); results per
//!   second over the experiment's wall time;
//! - `--no-fsync`: the journal is not fsynced after each batch of events
//!   (the cost of that fsync per result is the difference).
//! - `--storage URI`: the experiment's storage (default a temporary
//!   directory).
//!
//! Prints a JSON line.

use std::time::{Duration, Instant};

use rayforge_tune::{BasicVariant, Domain, Mode, SearchSpace, TrialContext, TuneConfig, Tuner};

fn trainable(ctx: &mut TrialContext) -> Result<(), String> {
    let seconds: u64 = ctx.get("seconds").map_err(|e| e.to_string())?;
    for i in 0..seconds {
        std::thread::sleep(Duration::from_secs(1));
        ctx.report([("score", i as f64)]).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Reports `reports` results as fast as it can.
fn burst(ctx: &mut TrialContext) -> Result<(), String> {
    let reports: u64 = ctx.get("reports").map_err(|e| e.to_string())?;
    for i in 0..reports {
        ctx.report([("score", i as f64)]).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[rayforge::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str, default: u64| -> Result<u64, String> {
        match args.iter().position(|a| a == name) {
            None => Ok(default),
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number")),
        }
    };
    let (n, seconds, cpus) = (get("--trials", 40)?, get("--seconds", 1)?, get("--cpus", 2)?);
    let reports = get("--reports", 0)?;
    let fsync = !args.iter().any(|a| a == "--no-fsync");
    let uri = args
        .iter()
        .position(|a| a == "--storage")
        .and_then(|i| args.get(i + 1))
        .cloned();
    rayforge::init(rayforge::Config::default().num_cpus(cpus as f64))?;
    let space = SearchSpace::new()
        .domain("i", Domain::Grid((0..n).map(|i| i.into()).collect()))
        .constant("seconds", seconds)
        .constant("reports", reports);
    let storage = std::env::temp_dir().join(format!("rayforge-tune-bench-{}", std::process::id()));
    let start = Instant::now();
    let grid = Tuner::new(
        if reports > 0 { burst } else { trainable },
        BasicVariant::new(&space, 1, 0)?,
        TuneConfig {
            name: "bookkeeping".into(),
            storage_path: uri.clone().map_or_else(|| storage.clone().into(), Into::into),
            journal_fsync: fsync,
            metric: "score".into(),
            mode: Mode::Max,
            max_concurrent_trials: cpus as usize,
            cpus_per_trial: 1.0,
            verbose: false,
            ..Default::default()
        },
    )
    .fit()?;
    let wall = start.elapsed().as_secs_f64();
    let floor = (n * seconds) as f64 / cpus as f64;
    let _ = std::fs::remove_dir_all(&storage);
    if !grid.errors().is_empty() {
        return Err(format!("{} trials failed: {:?}", grid.errors().len(), grid.errors()).into());
    }
    if reports > 0 {
        let results: usize = grid.trials.iter().map(|t| t.history.len()).sum();
        println!(
            "{}",
            serde_json::json!({"impl": "rayforge-tune", "trials": n, "reports": reports, "cpus": cpus,
                "journal_fsync": fsync, "results": results, "wall_s": wall, "results_per_s": results as f64 / wall})
        );
        return Ok(());
    }
    println!(
        "{}",
        serde_json::json!({"impl": "rayforge-tune", "trials": n, "seconds": seconds, "cpus": cpus,
            "wall_s": wall, "floor_s": floor, "overhead_pct": 100.0 * (wall / floor - 1.0)})
    );
    Ok(())
}
