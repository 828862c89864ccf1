//! Fills a cluster's dashboard with runs of every library, finished and
//! running, so its charts have something to draw: a Train run that a
//! killed rank restarted (checkpoints and the restart marked), a Tune
//! search that ASHA pruned (trials stopped early, optimization history,
//! parameters against the metric), a PPO run on CartPole (returns and
//! losses against env steps), a run of 100,000 reports (downsampled), and
//! a Train run, a Tune search and a PPO run still going.
//!
//! It prints `ready` once all of that is published, then stays until
//! stopped (the running runs run on). Submit it to a cluster:
//!
//! ```text
//! rayforge start --head --num-cpus 8
//! rayforge job submit target/release/dashboard_tour
//! ```
//!
//! and open the dashboard's Train, Tune and RLlib pages. The browser test
//! of the charts (`examples/tests/examples.rs`) runs it this way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rayforge_rllib::{Algo, AlgoConfig, Algorithm};
use rayforge_train::{CheckpointWriter, FailureConfig, ReduceOp, RunConfig, ScalingConfig, TrainContext, Trainer};
use rayforge_tune::{Asha, BasicVariant, Domain, Mode, SearchSpace, TrialContext, TuneConfig, Tuner};

/// Fits a line on two ranks; rank 1 dies once at iteration `crash_at`;
/// with `hold`, the rank waits after `iterations` reports instead of
/// ending (a run still going).
fn fit(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    let c: serde_json::Value = ctx.config()?;
    let iterations = c["iterations"].as_u64().unwrap_or(10);
    let crash_at = c["crash_at"].as_u64();
    let marker = c["marker"].as_str().unwrap_or_default().to_string();
    let mut w = match ctx.checkpoint() {
        Some(c) => f32::from_le_bytes(c.read("w")?.try_into().unwrap_or([0; 4])),
        None => 0.0,
    };
    let (n, rank) = (ctx.world_size(), ctx.world_rank());
    let xs: Vec<f32> = (0..200).map(|i| (i * n + rank) as f32 / (200 * n) as f32).collect();
    for it in ctx.iteration()..iterations {
        if rank == 1 && Some(it) == crash_at && std::fs::metadata(&marker).is_err() {
            let _ = std::fs::write(&marker, b"crashed once");
            std::process::abort();
        }
        let mut g = [0f32; 2];
        for x in &xs {
            let err = w * x - 3.0 * x;
            g[0] += 2.0 * err * x;
            g[1] += err * err;
        }
        g.iter_mut().for_each(|v| *v /= xs.len() as f32);
        ctx.all_reduce(&mut g, ReduceOp::Mean)?;
        w -= 0.9 * g[0];
        let ckpt = if (it + 1) % 3 == 0 {
            let mut c = CheckpointWriter::new()?;
            c.write("w", &w.to_le_bytes())?;
            Some(c)
        } else {
            None
        };
        ctx.report([("loss", g[1] as f64), ("w", w as f64)], ckpt)?;
    }
    if c["hold"].as_bool() == Some(true) {
        std::thread::sleep(Duration::from_secs(3600));
    }
    Ok(())
}

fn train_run(name: &str, storage: &std::path::Path, config: serde_json::Value, workers: usize) -> Trainer {
    Trainer::new(fit)
        .scaling(ScalingConfig {
            num_workers: workers,
            cpus_per_worker: 0.5,
            ..Default::default()
        })
        .run_config(RunConfig {
            name: name.into(),
            storage_path: storage.to_path_buf().into(),
            failure: FailureConfig { max_failures: 1 },
            verbose: false,
            ..Default::default()
        })
        .config(config)
}

/// A learning curve whose ceiling depends on how close `lr` is to 0.1.
fn curve(ctx: &mut TrialContext) -> Result<(), String> {
    learn(ctx, false)
}

/// [`curve`]'s first three reports, then a wait (a trial still going).
fn curve_held(ctx: &mut TrialContext) -> Result<(), String> {
    learn(ctx, true)
}

fn learn(ctx: &mut TrialContext, hold: bool) -> Result<(), String> {
    let lr: f64 = ctx.get("lr").map_err(|e| e.to_string())?;
    let width: i64 = ctx.get("width").map_err(|e| e.to_string())?;
    let ceiling = 1.0 - (lr.log10() + 1.0).abs() / 3.0 - if width < 64 { 0.05 } else { 0.0 };
    for i in 1..=if hold { 3 } else { 9 } {
        let acc = ceiling * (1.0 - (-(i as f64) / 3.0).exp());
        ctx.report([("acc", acc), ("loss", 1.0 - acc)])
            .map_err(|e| e.to_string())?;
    }
    if hold {
        std::thread::sleep(Duration::from_secs(3600));
    }
    Ok(())
}

fn search(name: &str, storage: &std::path::Path, lrs: &[f64], hold: bool) -> Result<(), Box<dyn std::error::Error>> {
    let space = SearchSpace::new()
        .domain("lr", Domain::Grid(lrs.iter().map(|l| (*l).into()).collect()))
        .domain("width", Domain::Grid(vec![32.into(), 128.into()]));
    let tuner = Tuner::new(
        if hold { curve_held } else { curve },
        BasicVariant::new(&space, 1, 0)?,
        TuneConfig {
            name: name.into(),
            storage_path: storage.to_path_buf().into(),
            metric: "acc".into(),
            mode: Mode::Max,
            max_concurrent_trials: 2,
            cpus_per_trial: 0.25,
            verbose: false,
            ..Default::default()
        },
    );
    // The finished search is pruned by ASHA; the running one keeps its two
    // trials going (FIFO), whatever they report.
    let tuner = if hold {
        tuner
    } else {
        tuner.scheduler(Asha::new("training_iteration", "acc", Mode::Max, 9.0, 1.0, 3.0, 1)?)
    };
    tuner.fit()?;
    Ok(())
}

/// The dashboard status published under `kind/name`, once `ready` says so.
fn wait_published(kind: &str, name: &str, ready: impl Fn(&serde_json::Value) -> bool) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let got = rayforge::kv::get(rayforge::state::DASHBOARD_NAMESPACE, &format!("{kind}/{name}"))
            .map_err(|e| e.to_string())?
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if got.as_ref().is_some_and(&ready) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "{kind}/{name} was not published as expected within 120 s: {got:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ppo() -> AlgoConfig {
    let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
    c.num_env_runners = 1;
    c
}

#[rayforge::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    rayforge::init(rayforge::Config::default())?;
    let storage = std::env::temp_dir().join(format!("rayforge-dashboard-tour-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage)?;

    // Finished runs.
    let marker = storage.join("crashed").display().to_string();
    let r = train_run(
        "line-restarted",
        &storage,
        serde_json::json!({"iterations": 30, "crash_at": 14, "marker": marker}),
        2,
    )
    .fit()?;
    println!("train: {} reports, {} restart(s)", r.history.len(), r.failures);
    search("asha-search", &storage, &[0.1, 0.3, 0.03, 1.0, 0.003, 0.0003], false)?;
    println!("tune: asha-search finished");
    let mut a = Algorithm::new(ppo())?;
    a.track(
        "ppo-cartpole",
        Some(rayforge::storage::StorageUri::from(storage.join("ppo")).open()?),
        Default::default(),
    );
    for _ in 0..8 {
        a.train()?;
    }
    a.save(storage.join("ppo"))?;
    a.stop();
    println!("rllib: ppo-cartpole finished");
    // 100,000 reports, as Train publishes them: a bounded curve.
    let mut huge = rayforge::tracking::Curve::default();
    for i in 1..=100_000u64 {
        let x = i as f64;
        let m = BTreeMap::from([
            ("loss".to_string(), 2.0 / (1.0 + x / 5000.0) + 0.05 * (x / 700.0).sin()),
            ("lr".to_string(), 1e-3 * (1.0 - x / 100_000.0)),
        ]);
        huge.push(x, &m);
    }
    rayforge::state::publish(
        "train",
        "hundred-thousand-reports",
        &serde_json::json!({
            "status": "FINISHED", "workers": 1, "iteration": 100_000, "failures": 0, "error": "",
            "history": huge.to_json(), "checkpoints": (1..=100u64).map(|i| i * 1000).collect::<Vec<_>>(),
            "restarts": [],
        }),
    )?;

    // Runs still going.
    let running = storage.clone();
    std::thread::spawn(move || {
        let r = train_run(
            "line-running",
            &running,
            serde_json::json!({"iterations": 5, "hold": true}),
            1,
        )
        .fit();
        eprintln!("line-running ended: {:?}", r.map(|r| r.error));
    });
    let running = storage.clone();
    std::thread::spawn(move || {
        if let Err(e) = search("search-running", &running, &[0.1, 0.01], true) {
            eprintln!("search-running ended: {e}");
        }
    });
    let mut going = Algorithm::new(ppo())?;
    going.track("ppo-running", None, Default::default());
    for _ in 0..3 {
        going.train()?;
        // A second apart: each iteration is published (at most one a second).
        std::thread::sleep(Duration::from_millis(1100));
    }
    wait_published("train", "line-restarted", |s| s["status"] == "FINISHED")?;
    wait_published("train", "line-running", |s| s["history"]["total"] == 5)?;
    wait_published("tune", "asha-search", |s| s["status"] == "FINISHED")?;
    wait_published("tune", "search-running", |s| {
        // Two trials hold the room: the other two wait, PENDING.
        let t = s["trials"].as_array().cloned().unwrap_or_default();
        t.iter()
            .filter(|t| t["status"] == "RUNNING" && t["iterations"] == 3)
            .count()
            == 2
    })?;
    wait_published("rllib", "ppo-running", |s| s["history"]["total"] == 3)?;
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
