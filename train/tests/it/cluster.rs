//! A training run on a real multi-node cluster: a head without CPUs and
//! three nodes of one CPU each, so the SPREAD gang has one rank per node and
//! its ring crosses processes of three daemons. A rank SIGKILLs itself once
//! mid-run: the gang is torn down, a new one resumes from the latest
//! checkpoint on the three nodes again, and the run finishes.

use rayforge_integration_tests::{kill_self, LocalCluster};
use rayforge_train::tch::Tensor;
use rayforge_train::{CheckpointWriter, FailureConfig, ReduceOp, RunConfig, ScalingConfig, TrainContext, Trainer};

#[derive(serde::Serialize, serde::Deserialize)]
struct Config {
    iterations: u64,
    kill_at: u64,
    marker: String,
}

/// Averages a tensor of ones times the rank over the ranks each iteration
/// and checks the value; reports the nodes the ranks run on.
fn run(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    let cfg: Config = ctx.config()?;
    let (n, rank) = (ctx.world_size(), ctx.world_rank());
    for it in ctx.iteration()..cfg.iterations {
        if rank == 2 && it == cfg.kill_at && std::fs::metadata(&cfg.marker).is_err() {
            std::fs::write(&cfg.marker, b"1").map_err(|e| rayforge_train::Error::InvalidArgument(e.to_string()))?;
            kill_self();
        }
        let mut t = Tensor::ones([1000], (rayforge_train::tch::Kind::Float, ctx.torch_device())) * rank as f64;
        ctx.group().all_reduce_tensor(&mut t, ReduceOp::Mean)?;
        let want = (0..n).sum::<usize>() as f64 / n as f64;
        let got = t.mean(rayforge_train::tch::Kind::Float).double_value(&[]);
        // Distinct nodes: every rank's node rank, gathered.
        let mine = Tensor::from_slice(&[ctx.node_rank() as f32]);
        let nodes = ctx.group().all_gather_tensor(&mine)?;
        let mut seen: Vec<i64> = nodes.iter().map(|t| t.double_value(&[0]) as i64).collect();
        seen.sort();
        seen.dedup();
        let mut ckpt = CheckpointWriter::new()?;
        ckpt.write("it", &it.to_le_bytes())?;
        ctx.report(
            [
                ("error", (got - want).abs()),
                ("distinct_nodes", seen.len() as f64),
                ("local_world_size", ctx.local_world_size() as f64),
            ],
            Some(ckpt),
        )?;
    }
    Ok(())
}

#[test]
fn a_spread_gang_of_three_nodes_survives_a_killed_rank() {
    rayforge_integration_tests::own_process!();
    let mut cluster = LocalCluster::start(&["--num-cpus", "0"], 10_000);
    for _ in 0..3 {
        cluster.add_node(&["--num-cpus", "1"]);
    }
    rayforge::init(cluster.config()).expect("join the cluster");
    assert!(rayforge_integration_tests::wait_until(
        std::time::Duration::from_secs(60),
        || rayforge::cluster_resources().unwrap().total.get("CPU") == Some(&3.0)
    ));
    let storage = std::env::temp_dir().join(format!("rayforge-train-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage).unwrap();
    let result = Trainer::new(run)
        .scaling(ScalingConfig {
            num_workers: 3,
            placement_strategy: rayforge::PlacementStrategy::Spread,
            ..Default::default()
        })
        .run_config(RunConfig {
            name: "spread".into(),
            storage_path: storage.clone().into(),
            failure: FailureConfig { max_failures: 1 },
            ..Default::default()
        })
        .config(
            serde_json::to_value(Config {
                iterations: 6,
                kill_at: 3,
                marker: storage.join("killed").display().to_string(),
            })
            .unwrap(),
        )
        .fit()
        .unwrap();
    assert!(result.error.is_none(), "{:?}", result.error);
    assert_eq!(result.failures, 1, "one rank was killed");
    let iterations: Vec<u64> = result.history.iter().map(|r| r.iteration).collect();
    assert_eq!(
        iterations,
        vec![1, 2, 3, 4, 5, 6],
        "resumed at the checkpoint of iteration 3"
    );
    for r in &result.history {
        assert!(r.metrics["error"] < 1e-6, "{r:?}");
        assert_eq!(r.metrics["distinct_nodes"], 3.0, "one rank per node: {r:?}");
        assert_eq!(r.metrics["local_world_size"], 1.0, "{r:?}");
    }
    let last = result.latest_checkpoint.unwrap();
    assert_eq!(last.read("it").unwrap(), 5u64.to_le_bytes());
    rayforge::shutdown();
    std::fs::remove_dir_all(&storage).unwrap();
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ElasticConfig {
    /// Rank 0 of the full gang writes it at iteration 3: the test then
    /// kills a node.
    full: String,
    /// Rank 0 of a gang of one writes it: the test then adds a node.
    small: String,
    /// The iteration the gang of two came back at.
    grown: String,
}

/// Each iteration: an all-reduce checked against its world size, a
/// report with a checkpoint; ends three iterations after the gang of two
/// came back (rank 0 decides, and tells the others through the
/// all-reduce).
fn elastic(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    let cfg: ElasticConfig = ctx.config()?;
    let (n, rank) = (ctx.world_size(), ctx.world_rank());
    let io = |e: std::io::Error| rayforge_train::Error::InvalidArgument(e.to_string());
    let exists = |p: &str| std::path::Path::new(p).exists();
    for it in ctx.iteration()..1000 {
        let mut stop = 0.0;
        if rank == 0 {
            if n == 2 && it == 3 && !exists(&cfg.full) {
                std::fs::write(&cfg.full, b"1").map_err(io)?;
            }
            if n == 1 && !exists(&cfg.small) {
                std::fs::write(&cfg.small, b"1").map_err(io)?;
            }
            if n == 2 && exists(&cfg.small) {
                if !exists(&cfg.grown) {
                    std::fs::write(&cfg.grown, it.to_string()).map_err(io)?;
                }
                let back: u64 = std::fs::read_to_string(&cfg.grown).map_err(io)?.parse().unwrap_or(0);
                stop = f64::from(u8::from(it >= back + 3));
            }
        }
        let mut t = Tensor::from_slice(&[rank as f64, stop]);
        ctx.group().all_reduce_tensor(&mut t, ReduceOp::Sum)?;
        let want = (0..n).sum::<usize>() as f64;
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut ckpt = CheckpointWriter::new()?;
        ckpt.write("it", &it.to_le_bytes())?;
        ctx.report(
            [("world_size", n as f64), ("error", (t.double_value(&[0]) - want).abs())],
            Some(ckpt),
        )?;
        if t.double_value(&[1]) > 0.0 {
            break;
        }
    }
    Ok(())
}

#[test]
fn an_elastic_gang_goes_on_smaller_after_losing_a_node_and_grows_back() {
    rayforge_integration_tests::own_process!();
    use rayforge_integration_tests::wait_until;
    use std::time::Duration;
    let mut cluster = LocalCluster::start(&["--num-cpus", "0"], 2_000);
    cluster.add_node(&["--num-cpus", "1"]);
    let doomed = cluster.add_node(&["--num-cpus", "1"]);
    rayforge::init(cluster.config()).expect("join the cluster");
    assert!(wait_until(Duration::from_secs(60), || {
        rayforge::cluster_resources().unwrap().total.get("CPU") == Some(&2.0)
    }));
    let storage = std::env::temp_dir().join(format!("rayforge-train-elastic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage).unwrap();
    let marker = |name: &str| storage.join(name).display().to_string();
    let cfg = ElasticConfig {
        full: marker("full"),
        small: marker("small"),
        grown: marker("grown"),
    };
    let (full, small) = (cfg.full.clone(), cfg.small.clone());
    let trainer = Trainer::new(elastic)
        .scaling(ScalingConfig {
            num_workers: 2,
            min_workers: Some(1),
            placement_strategy: rayforge::PlacementStrategy::Spread,
            ..Default::default()
        })
        .run_config(RunConfig {
            name: "elastic".into(),
            storage_path: storage.clone().into(),
            failure: FailureConfig { max_failures: 3 },
            ..Default::default()
        })
        .config(serde_json::to_value(cfg).unwrap());
    let fit = std::thread::spawn(move || trainer.fit());
    let exists = |p: &str| std::path::Path::new(p).exists();
    assert!(
        wait_until(Duration::from_secs(120), || exists(&full)),
        "the gang of two ran"
    );
    cluster.kill_node(&doomed);
    assert!(
        wait_until(Duration::from_secs(120), || exists(&small)),
        "a gang of one went on without waiting for the lost node"
    );
    // The dashboard's Train page shows the gang as it is now.
    let published = || -> serde_json::Value {
        rayforge::kv::get(rayforge::state::DASHBOARD_NAMESPACE, "train/elastic")
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(60), || {
            let s = published();
            s["workers"] == 1 && s["max_workers"] == 2 && s["min_workers"] == 1 && s["failures"].as_u64() >= Some(1)
        }),
        "{}",
        published()
    );
    cluster.add_node(&["--num-cpus", "1"]);
    let result = fit.join().unwrap().unwrap();
    let status = published();
    assert_eq!(
        (&status["status"], &status["workers"], &status["failures"]),
        (&"FINISHED".into(), &2.into(), &result.failures.into()),
        "{status}"
    );
    assert!(result.error.is_none(), "{:?}", result.error);
    assert!(
        (1..=3).contains(&result.failures),
        "the lost node's rank: {}",
        result.failures
    );
    // Two ranks, then one, then two again, every iteration once in order.
    let sizes: Vec<f64> = result.history.iter().map(|r| r.metrics["world_size"]).collect();
    let mut runs: Vec<f64> = sizes.clone();
    runs.dedup();
    assert_eq!(runs, vec![2.0, 1.0, 2.0], "{sizes:?}");
    let iterations: Vec<u64> = result.history.iter().map(|r| r.iteration).collect();
    assert_eq!(
        iterations,
        (1..=iterations.len() as u64).collect::<Vec<_>>(),
        "{iterations:?}"
    );
    for r in &result.history {
        assert!(r.metrics["error"] < 1e-9, "{r:?}");
    }
    rayforge::shutdown();
    std::fs::remove_dir_all(&storage).unwrap();
}
