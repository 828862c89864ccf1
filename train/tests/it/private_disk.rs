//! Training on nodes that share no disk with the driver or each other: a
//! head without CPUs and two nodes each with a private disk (a tmpfs over
//! the cluster's directory, in a mount namespace of its own), as two
//! machines have. Checkpoints go to the cluster's own store by default; a
//! local path the nodes cannot see is refused, naming the node.
//!
//! (Run with the test script: private-disk nodes need root for
//! `unshare --mount`.)

use rayforge_integration_tests::{kill_self, wait_until, LocalCluster};
use rayforge_train::optim::Adam;
use rayforge_train::{
    CheckpointExt, CheckpointWriter, CheckpointWriterExt, FailureConfig, RunConfig, ScalingConfig, TrainContext,
    Trainer,
};
use std::time::Duration;

#[derive(serde::Serialize, serde::Deserialize)]
struct Config {
    iterations: u64,
    /// The rank that SIGKILLs itself once, before iteration `kill_at + 1`.
    kill_rank: Option<usize>,
    kill_at: u64,
    /// The key-value entry that makes the kill happen once (the ranks'
    /// disks are private, so no marker file would be seen again).
    once_key: String,
}

fn decode(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A linear model trained with Adam on fixed data per rank and iteration,
/// under dropout drawn from each rank's own seed, its gradients averaged
/// across the ranks: the checkpoint holds the weights, Adam's moments and
/// step count, and every rank's random state, so a resumed run must end
/// bit-equal to one that was never stopped.
fn run(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    use rayforge_train::tch::{nn, nn::Module, Device, Kind, Tensor};
    let cfg: Config = ctx.config()?;
    let rank = ctx.world_rank();
    rayforge_train::tch::manual_seed(11 + rank as i64);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = nn::linear(vs.root() / "l", 4, 1, Default::default());
    let mut opt = Adam::new(&vs, 0.05);
    if let Some(c) = ctx.checkpoint() {
        c.load_varstore("model.ot", &mut vs)?;
        opt.load(c, "optimizer.ot")?;
    }
    ctx.restore_rng_state("rng.ot")?;
    let mut ddp = ctx.prepare_model(&vs)?;
    for it in ctx.iteration()..cfg.iterations {
        if cfg.kill_rank == Some(rank)
            && it == cfg.kill_at
            && rayforge::kv::put("train-test", &cfg.once_key, b"1", false)?
        {
            kill_self();
        }
        let x =
            (Tensor::arange(32, (Kind::Float, Device::Cpu)).reshape([8, 4]) / 7.0 + (rank as f64) + it as f64).sin();
        let y = x.sum_dim_intlist([1i64].as_slice(), true, Kind::Float) * 0.5 - 0.25;
        let loss = (model.forward(&x.dropout(0.3, true)) - y).square().mean(Kind::Float);
        ddp.backward_step(&loss, &mut opt)?;
        let mut ckpt = CheckpointWriter::new()?;
        ckpt.save_varstore("model.ot", &vs)?;
        opt.save(&mut ckpt, "optimizer.ot")?;
        ctx.save_rng_state(&mut ckpt, "rng.ot")?;
        let w: Vec<f32> = Vec::<f32>::try_from(model.ws.flatten(0, -1)).map_err(rayforge_train::Error::from)?;
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        ckpt.write("w.bin", &bytes)?;
        ctx.report([("loss", loss.double_value(&[]))], Some(ckpt))?;
    }
    Ok(())
}

/// A head with no CPUs (so every rank runs on a private-disk node) and two
/// private-disk nodes of one CPU each; this process joins as the driver.
fn cluster() -> LocalCluster {
    let mut cluster = LocalCluster::start(&["--num-cpus", "0"], 10_000);
    cluster.add_private_disk_node(&["--num-cpus", "1"]);
    cluster.add_private_disk_node(&["--num-cpus", "1"]);
    rayforge::init(cluster.config()).expect("join the cluster");
    assert!(wait_until(Duration::from_secs(60), || {
        rayforge::cluster_resources().unwrap().total.get("CPU") == Some(&2.0)
    }));
    cluster
}

fn trainer(name: &str, cfg: Config, max_failures: i32) -> Trainer {
    Trainer::new(run)
        .scaling(ScalingConfig {
            num_workers: 2,
            placement_strategy: rayforge::PlacementStrategy::Spread,
            ..Default::default()
        })
        .run_config(RunConfig {
            name: name.into(),
            failure: FailureConfig { max_failures },
            ..Default::default()
        })
        .config(serde_json::to_value(cfg).unwrap())
}

#[test]
fn a_gang_on_private_disks_resumes_from_its_checkpoint_in_the_cluster_store() {
    rayforge_integration_tests::own_process!();
    let cluster = cluster();
    let pid = std::process::id();
    let cfg = |kill_rank| Config {
        iterations: 6,
        kill_rank,
        kill_at: 3,
        once_key: format!("killed-{pid}"),
    };
    let whole = trainer(&format!("whole-{pid}"), cfg(None), 0)
        .fit()
        .unwrap()
        .into_result()
        .unwrap();
    let killed = trainer(&format!("killed-{pid}"), cfg(Some(0)), 1)
        .fit()
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(killed.failures, 1);
    let iterations: Vec<u64> = killed.history.iter().map(|r| r.iteration).collect();
    assert_eq!(
        iterations,
        (1..=6).collect::<Vec<_>>(),
        "the new gang goes on from checkpoint 3, not from scratch"
    );
    // The checkpoints are in the head's store, seen by the driver.
    let latest = killed
        .latest_checkpoint
        .clone()
        .expect("checkpoints visible to the driver");
    assert_eq!(
        latest.uri(),
        Some(format!("cluster://rayforge_results/killed-{pid}/checkpoint_000006").as_str())
    );
    assert!(cluster
        .state_dir
        .join(format!(
            "storage/rayforge_results/killed-{pid}/checkpoint_000006/manifest.json"
        ))
        .exists());
    // Same end state as the run that was never killed, to the bit (the
    // optimizer's moments and each rank's random state came back with the
    // weights).
    let w_whole = decode(&whole.latest_checkpoint.unwrap().read("w.bin").unwrap());
    let w_killed = decode(&latest.read("w.bin").unwrap());
    assert_eq!(w_killed, w_whole);
    assert_eq!(killed.metrics["loss"], whole.metrics["loss"]);
    let csv = killed
        .storage
        .read("progress.csv")
        .unwrap()
        .expect("progress.csv in storage");
    assert_eq!(String::from_utf8(csv).unwrap().lines().count(), 7);
}

#[test]
fn a_local_path_the_nodes_do_not_share_is_refused_naming_the_node() {
    rayforge_integration_tests::own_process!();
    let cluster = cluster();
    let path = cluster.base_dir().join("not-shared");
    let result = trainer("not-shared", cfg_without_kill(), 3)
        .run_config(RunConfig {
            name: "not-shared".into(),
            storage_path: path.clone().into(),
            failure: FailureConfig { max_failures: 3 },
            ..Default::default()
        })
        .fit()
        .unwrap();
    let err = result.error.expect("the run fails");
    let text = err.to_string();
    let nodes: Vec<String> = cluster.daemons[1..].iter().map(|(_, id)| id.clone()).collect();
    assert!(
        matches!(
            &err,
            rayforge_train::Error::Runtime(rayforge::Error::Storage { retriable: false, .. })
        ) && text.contains("not shared by every node")
            && nodes.iter().any(|n| text.contains(n.as_str())),
        "{text}"
    );
    assert_eq!(result.failures, 0, "not retried: no restart can mend it");
    assert!(result.history.is_empty());
}

fn cfg_without_kill() -> Config {
    Config {
        iterations: 2,
        kill_rank: None,
        kill_at: 0,
        once_key: String::new(),
    }
}
