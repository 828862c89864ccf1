//! Tune's bookkeeping benchmark, the rayforge side (`tune/bench/compare`
//! runs it beside Ray Tune 2.60): N trials of `--seconds` each, reporting
//! once a second, on the machine's CPUs one trial per CPU. Prints the wall
//! time against the floor (N x seconds / CPUs) as a JSON line.

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
    rayforge::init(rayforge::Config::default().num_cpus(cpus as f64))?;
    let space = SearchSpace::new()
        .domain("i", Domain::Grid((0..n).map(|i| i.into()).collect()))
        .constant("seconds", seconds);
    let storage = std::env::temp_dir().join(format!("rayforge-tune-bench-{}", std::process::id()));
    let start = Instant::now();
    let grid = Tuner::new(
        trainable,
        BasicVariant::new(&space, 1, 0)?,
        TuneConfig {
            name: "bookkeeping".into(),
            storage_path: storage.clone(),
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
    println!(
        "{}",
        serde_json::json!({"impl": "rayforge-tune", "trials": n, "seconds": seconds, "cpus": cpus,
            "wall_s": wall, "floor_s": floor, "overhead_pct": 100.0 * (wall / floor - 1.0)})
    );
    Ok(())
}
