//! Training runs on the embedded cluster, with real worker processes: a
//! gang fits a line with all-reduced gradients, checkpoints every
//! iteration, resumes by name, survives a killed rank within its failure
//! budget, and fails with the rank's name beyond it or when a checkpoint
//! cannot be written.

use std::path::{Path, PathBuf};

use rayforge_integration_tests::{cluster, kill_self};
use rayforge_train::{
    CheckpointConfig, CheckpointWriter, Error, FailureConfig, ReduceOp, RunConfig, ScalingConfig, TrainContext, Trainer,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    iterations: u64,
    /// Rank 1 kills its process at this iteration, once (the marker file
    /// says it did).
    kill_at: Option<u64>,
    marker: String,
}

/// Fits `y = 3x` by gradient descent: each rank computes the gradient on
/// its share of the points, the ranks average it, every rank takes the
/// same step.
fn fit_line(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    let cfg: Config = ctx.config()?;
    let mut w = match ctx.checkpoint() {
        Some(c) => f32::from_le_bytes(c.read("w")?.try_into().unwrap_or([0; 4])),
        None => 0.0,
    };
    for it in ctx.iteration()..cfg.iterations {
        if ctx.world_rank() == 1 && Some(it) == cfg.kill_at && std::fs::metadata(&cfg.marker).is_err() {
            std::fs::write(&cfg.marker, b"1").unwrap();
            kill_self();
        }
        let (n, r) = (ctx.world_size(), ctx.world_rank());
        let xs: Vec<f32> = (0..64).map(|i| (i * n + r) as f32 / 64.0).collect();
        let mut g = [
            xs.iter().map(|x| 2.0 * (w - 3.0) * x * x).sum::<f32>() / xs.len() as f32,
            xs.iter().map(|x| ((w - 3.0) * x).powi(2)).sum::<f32>() / xs.len() as f32,
        ];
        ctx.all_reduce(&mut g, ReduceOp::Mean)?;
        w -= 0.5 * g[0];
        let mut ckpt = CheckpointWriter::new()?;
        ckpt.write("w", &w.to_le_bytes())?;
        ctx.report([("loss", g[1] as f64), ("w", w as f64)], Some(ckpt))?;
    }
    Ok(())
}

fn storage(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("rayforge-train-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn trainer(storage: &Path, name: &str, iterations: u64, kill_at: Option<u64>, max_failures: i32) -> Trainer {
    Trainer::new(fit_line)
        .scaling(ScalingConfig {
            num_workers: 2,
            cpus_per_worker: 0.5,
            ..Default::default()
        })
        .run_config(RunConfig {
            name: name.into(),
            storage_path: storage.to_path_buf().into(),
            checkpoint: CheckpointConfig {
                num_to_keep: Some(2),
                score_attribute: Some("loss".into()),
                higher_is_better: false,
            },
            failure: FailureConfig { max_failures },
            collective_timeout: std::time::Duration::from_secs(60),
            verbose: true,
            ..Default::default()
        })
        .config(serde_json::json!({
            "iterations": iterations,
            "kill_at": kill_at,
            "marker": storage.join(format!("{name}.killed")).display().to_string(),
        }))
}

#[test]
fn a_gang_fits_a_line_checkpoints_and_resumes_by_name() {
    cluster();
    let dir = storage("fit");
    let result = trainer(&dir, "line", 12, None, 0).fit().unwrap().into_result().unwrap();
    let w = result.metrics["w"];
    assert!((w - 3.0).abs() < 0.05, "w = {w}");
    let iterations: Vec<u64> = result.history.iter().map(|r| r.iteration).collect();
    assert_eq!(iterations, (1..=12).collect::<Vec<_>>());
    assert!(result.history[11].metrics["loss"] < result.history[0].metrics["loss"]);
    // Two best by loss kept, plus the latest (here the best too).
    let latest = result.latest_checkpoint.clone().unwrap();
    assert_eq!(latest.manifest().unwrap().iteration, 12);
    assert_eq!(result.best_checkpoint.as_ref().unwrap(), &latest);
    let run_dir = result.storage.local_path().expect("a local run directory");
    assert_eq!(rayforge_train::checkpoint::list(run_dir).len(), 2);
    let csv = std::fs::read_to_string(run_dir.join("progress.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13, "{csv}");
    assert!(csv.starts_with("iteration,loss,w,checkpoint\n"), "{csv}");
    assert_eq!(csv, result.history_csv());
    // What the dashboard's Train page shows.
    let status = published("line");
    assert_eq!(
        (status["status"].as_str(), status["iteration"].as_u64()),
        (Some("FINISHED"), Some(12)),
        "{status}"
    );
    assert_eq!(status["metrics"]["w"], w, "{status}");
    // Its curves: every report, each checkpoint marked, no restart.
    let h = &status["history"];
    assert_eq!(
        h["steps"],
        serde_json::json!((1..=12).map(|i| i as f64).collect::<Vec<_>>()),
        "{status}"
    );
    let losses: Vec<f64> = result.history.iter().map(|r| r.metrics["loss"]).collect();
    let shown: Vec<f64> = serde_json::from_value(h["series"]["loss"].clone()).unwrap();
    assert_eq!(shown.len(), losses.len(), "{status}");
    // JSON's text keeps each value to its last digit or so.
    assert!(
        shown.iter().zip(&losses).all(|(a, b)| (a - b).abs() <= 1e-12 * b.abs()),
        "{status}"
    );
    assert_eq!(
        status["checkpoints"],
        serde_json::json!((1..=12).collect::<Vec<u64>>()),
        "{status}"
    );
    assert_eq!(status["restarts"], serde_json::json!([]), "{status}");
    // TensorBoard reads every metric of every report at its iteration.
    let tb = rayforge_integration_tests::tracking::tensorboard_scalars(run_dir);
    if let Some(tb) = &tb {
        assert_eq!(tb["__errors__"], serde_json::Value::Null, "{tb}");
        for tag in ["loss", "w"] {
            let got = rayforge_integration_tests::tracking::scalar_steps(tb, ".", tag);
            let want: Vec<(u64, f64)> = result
                .history
                .iter()
                .map(|r| (r.iteration, r.metrics[tag] as f32 as f64))
                .collect();
            rayforge_integration_tests::tracking::assert_points(&got, &want, 1e-7, tag);
        }
    }
    // The same name again resumes at its latest checkpoint: nothing is left
    // to do, and nothing is lost.
    let again = trainer(&dir, "line", 12, None, 0).fit().unwrap().into_result().unwrap();
    assert!(again.history.is_empty());
    assert_eq!(again.latest_checkpoint.unwrap(), latest);
    // More iterations go on from there.
    let more = trainer(&dir, "line", 14, None, 0).fit().unwrap().into_result().unwrap();
    assert_eq!(
        more.history.iter().map(|r| r.iteration).collect::<Vec<_>>(),
        vec![13, 14]
    );
    // progress.csv keeps the earlier runs' rows and adds the new ones.
    let csv = std::fs::read_to_string(run_dir.join("progress.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    let want: Vec<String> = (1..=14).map(|i| i.to_string()).collect();
    assert_eq!(rows, want, "{csv}");
    // The dashboard's curve and TensorBoard go on from the earlier runs.
    let status = published("line");
    assert_eq!(
        status["history"]["steps"],
        serde_json::json!((1..=14).map(|i| i as f64).collect::<Vec<_>>()),
        "{status}"
    );
    if tb.is_some() {
        let tb = rayforge_integration_tests::tracking::tensorboard_scalars(run_dir).unwrap();
        let steps: Vec<u64> = rayforge_integration_tests::tracking::scalar_steps(&tb, ".", "w")
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(steps, (1..=14).collect::<Vec<_>>());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_rank_restarts_the_gang_from_the_latest_checkpoint_within_the_budget() {
    cluster();
    let dir = storage("kill");
    let result = trainer(&dir, "survives", 8, Some(3), 1).fit().unwrap();
    assert!(result.error.is_none(), "{:?}", result.error);
    assert_eq!(result.failures, 1);
    let iterations: Vec<u64> = result.history.iter().map(|r| r.iteration).collect();
    assert_eq!(iterations, (1..=8).collect::<Vec<_>>(), "resumed after iteration 3");
    assert!((result.metrics["w"] - 3.0).abs() < 0.1);
    // The dashboard marks the restart, after the last report before it.
    let status = published("survives");
    let restarts = status["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 1, "{status}");
    assert!(restarts[0]["iteration"].as_u64().unwrap() <= 3, "{status}");
    assert!(restarts[0]["cause"].as_str().unwrap().contains("rank 1"), "{status}");
    assert_eq!(
        status["history"]["series"]["w"].as_array().unwrap().len(),
        8,
        "{status}"
    );

    // Without a budget the run fails, naming the rank and its node.
    let result = trainer(&dir, "fails", 8, Some(3), 0).fit().unwrap();
    match result.error {
        Some(Error::RankFailed {
            rank, node, failures, ..
        }) => {
            assert_eq!((rank, failures), (1, 1));
            assert_eq!(node, rayforge::node_id().unwrap());
        }
        other => panic!("expected RankFailed, got {other:?}"),
    }
    assert_eq!(result.latest_checkpoint.unwrap().manifest().unwrap().iteration, 3);
    let status = published("fails");
    assert_eq!(status["status"], "FAILED", "{status}");
    assert!(status["error"].as_str().unwrap().contains("rank 1"), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the run `name` published for the dashboard.
fn published(name: &str) -> serde_json::Value {
    let bytes = rayforge::kv::get(rayforge::state::DASHBOARD_NAMESPACE, &format!("train/{name}"))
        .unwrap()
        .expect("the run's status for the dashboard");
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn a_checkpoint_that_cannot_be_written_fails_the_run_and_keeps_the_previous_one() {
    cluster();
    let dir = storage("disk");
    // Iteration 3's checkpoint directory cannot be made: a file is there.
    std::fs::create_dir_all(dir.join("blocked")).unwrap();
    std::fs::write(dir.join("blocked/checkpoint_000003"), b"not a directory").unwrap();
    let result = trainer(&dir, "blocked", 6, None, 0).fit().unwrap();
    match &result.error {
        Some(Error::RankFailed { rank, cause, .. }) => {
            assert_eq!(*rank, 0);
            assert!(cause.contains("checkpoint_000003"), "{cause}");
        }
        other => panic!("expected RankFailed, got {other:?}"),
    }
    assert_eq!(result.latest_checkpoint.unwrap().manifest().unwrap().iteration, 2);
    let err = Trainer::new(fit_line)
        .scaling(ScalingConfig {
            num_workers: 0,
            ..Default::default()
        })
        .fit()
        .unwrap_err();
    assert!(err.to_string().contains("num_workers"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes the file its config's `marker` names: a rank ran.
fn mark_started(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    let cfg: Config = ctx.config()?;
    std::fs::write(&cfg.marker, b"started").map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(())
}

#[test]
fn a_storage_path_that_is_malformed_unwritable_or_unreachable_is_refused_before_any_rank_starts() {
    cluster();
    let dir = storage("refused");
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("a-rank-started");
    // A regular file where a directory should be: even root cannot write
    // under it.
    let file = dir.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let unwritable = file.join("runs").display().to_string();
    // An S3 endpoint nothing listens on: only the connection can fail.
    rayforge_integration_tests::point_s3_at_a_dead_endpoint();
    for (uri, named, what) in [
        ("ftp://host/runs", "ftp://host/runs", "unknown scheme `ftp`"),
        ("s3:///runs", "s3:///runs", "no bucket named"),
        (unwritable.as_str(), unwritable.as_str(), "cannot write here"),
        ("s3://bucket/runs", "s3://bucket/runs/refused", "Connection refused"),
    ] {
        let started = std::time::Instant::now();
        let err = Trainer::new(mark_started)
            .scaling(ScalingConfig {
                num_workers: 2,
                cpus_per_worker: 0.5,
                ..Default::default()
            })
            .run_config(RunConfig {
                name: "refused".into(),
                storage_path: uri.into(),
                ..Default::default()
            })
            .config(serde_json::json!({
                "iterations": 1,
                "marker": marker.display().to_string(),
            }))
            .fit()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, Error::Runtime(rayforge::Error::Storage { uri: u, .. }) if u.starts_with(named))
                && text.contains(what),
            "{uri}: {err}"
        );
        assert!(!marker.exists(), "{uri}: a rank started");
        // Promptly, not after an object store's retries run out.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{uri}: refused after {:?}",
            started.elapsed()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_gang_the_cluster_can_never_hold_fails_soon_naming_what_is_missing() {
    cluster();
    let started = std::time::Instant::now();
    // A budget of restarts, which placing does not use: it is no rank's
    // failure, and trying again would not place the gang.
    let mut t = trainer(&storage("infeasible"), "infeasible", 2, None, 1);
    t = t.scaling(ScalingConfig {
        num_workers: 2,
        cpus_per_worker: 0.5,
        resources_per_worker: [("TPU".to_string(), 1.0)].into(),
        ..Default::default()
    });
    let result = t.fit().unwrap();
    let err = result.error.expect("the run failed");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("the ranks need 2 TPU (1 each) and the cluster has 0 in all"),
        "{err}"
    );
    assert!(result.history.is_empty());
    assert_eq!(result.failures, 0);
    // Once, well before the 600 s a placement may otherwise wait.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(90),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_elastic_gang_out_of_range_is_refused_naming_min_workers() {
    cluster();
    for (min, max) in [(0, 2), (3, 2)] {
        let t = trainer(&storage("elastic-bad"), "elastic-bad", 1, None, 0).scaling(ScalingConfig {
            num_workers: max,
            min_workers: Some(min),
            ..Default::default()
        });
        let e = t.fit().unwrap_err().to_string();
        assert!(e.contains("min_workers must be from 1 to num_workers (2)"), "{e}");
    }
    let pg = rayforge::placement_group(
        vec![[("CPU".to_string(), 0.5)].into(); 2],
        rayforge::PlacementStrategy::Pack,
    )
    .create()
    .unwrap();
    let t = trainer(&storage("elastic-pg"), "elastic-pg", 1, None, 0)
        .scaling(ScalingConfig {
            num_workers: 2,
            min_workers: Some(1),
            cpus_per_worker: 0.5,
            ..Default::default()
        })
        .placement_group(&pg, 0);
    let e = t.fit().unwrap_err().to_string();
    assert!(e.contains("elastic") && e.contains("placement_group"), "{e}");
    rayforge::remove_placement_group(&pg).unwrap();
}

#[test]
fn a_run_is_logged_to_mlflow_with_its_params_metrics_and_final_checkpoint_and_a_down_server_fails_nothing() {
    use rayforge_integration_tests::tracking::MlflowServer;
    cluster();
    let Some(server) = MlflowServer::start() else { return };
    let dir = storage("mlflow");
    let mut run = trainer(&dir, "mlflow-line", 6, None, 0);
    let mut rc = RunConfig {
        name: "mlflow-line".into(),
        storage_path: dir.clone().into(),
        ..Default::default()
    };
    rc.callbacks =
        rayforge::tracking::Callbacks::new().with(rayforge::tracking::Mlflow::new(&server.uri).tag("suite", "train"));
    run = run.run_config(rc);
    let result = run.fit().unwrap().into_result().unwrap();
    let runs = server.runs("mlflow-line");
    assert_eq!(runs.len(), 1, "{runs:?}");
    let info = &runs[0]["info"];
    assert_eq!(info["status"], "FINISHED", "{info}");
    assert_eq!(info["run_name"], "mlflow-line", "{info}");
    let value = |field: &str, k: &str| MlflowServer::value(&runs[0], field, k);
    assert_eq!(value("params", "iterations").as_deref(), Some("6"), "{}", runs[0]);
    assert_eq!(value("tags", "suite").as_deref(), Some("train"), "{}", runs[0]);
    assert_eq!(value("tags", "rayforge.kind").as_deref(), Some("train"), "{}", runs[0]);
    let id = info["run_id"].as_str().unwrap();
    let want: Vec<(u64, f64)> = result
        .history
        .iter()
        .map(|r| (r.iteration, r.metrics["loss"]))
        .collect();
    rayforge_integration_tests::tracking::assert_points(&server.metric_history(id, "loss"), &want, 1e-12, "loss");
    // The final checkpoint, its manifest and files, as artifacts.
    let mut files = server.artifacts(id, "checkpoint");
    files.sort();
    assert_eq!(
        files,
        vec!["checkpoint/manifest.json".to_string(), "checkpoint/w".to_string()]
    );

    // A server that is down: the run finishes as it would without it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut rc = RunConfig {
        name: "mlflow-down".into(),
        storage_path: dir.clone().into(),
        ..Default::default()
    };
    rc.callbacks = rayforge::tracking::Callbacks::new()
        .with(rayforge::tracking::Mlflow::new(&format!("http://127.0.0.1:{closed}")));
    let result = trainer(&dir, "mlflow-down", 4, None, 0)
        .run_config(rc)
        .fit()
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(result.history.len(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}
