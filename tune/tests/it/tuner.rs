//! Experiments on the embedded cluster, trials as real worker processes:
//! ASHA stops the trials of a bad learning rate early, the best trial is
//! the best config, every trial's files are written, and a failing trial
//! is reported with its error while the others finish; a failed trial
//! goes on from its checkpoint; HyperBand pauses and resumes trials from
//! theirs; stoppers end trials and experiments; a trial's custom resources
//! reach the scheduler.

use rayforge::checkpoint::{CheckpointConfig, CheckpointWriter};
use rayforge_integration_tests::cluster;
use rayforge_tune::{
    Asha, BasicVariant, Domain, HyperBand, Mode, Plateau, SearchSpace, TimeBudget, TrialContext, TrialStatus,
    TuneConfig, Tuner,
};

/// A learning curve: accuracy approaches a ceiling set by how close `lr`
/// is to 0.1; `lr = 0.5` diverges.
fn trainable(ctx: &mut TrialContext) -> Result<(), String> {
    let lr: f64 = ctx.get("lr").map_err(|e| e.to_string())?;
    if lr == 0.5 {
        return Err("diverged at lr 0.5".into());
    }
    let ceiling = 1.0 - (lr.log10() + 1.0).abs() / 3.0;
    for i in 1..=9 {
        // Each step takes a little compute time, as training would.
        std::thread::sleep(std::time::Duration::from_millis(40));
        let acc = ceiling * (1.0 - (-(i as f64) / 3.0).exp());
        ctx.report([("acc", acc)]).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn asha_stops_bad_trials_early_and_the_best_config_wins() {
    cluster();
    let storage = std::env::temp_dir().join(format!("rayforge-tune-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    // Good learning rates first, so the later, worse ones meet a full rung.
    let lrs = [0.1, 0.2, 0.05, 0.5, 0.01, 0.003, 0.001, 0.0003, 0.0001];
    let space = SearchSpace::new().domain("lr", Domain::Grid(lrs.iter().map(|l| (*l).into()).collect()));
    let grid = Tuner::new(
        trainable,
        BasicVariant::new(&space, 1, 0).unwrap(),
        TuneConfig {
            name: "asha".into(),
            storage_path: storage.clone().into(),
            metric: "acc".into(),
            mode: Mode::Max,
            max_concurrent_trials: 3,
            cpus_per_trial: 0.5,
            ..Default::default()
        },
    )
    .scheduler(Asha::new("training_iteration", "acc", Mode::Max, 9.0, 1.0, 3.0, 1).unwrap())
    .fit()
    .unwrap();
    assert_eq!(grid.trials.len(), 9);
    let best = grid.best().unwrap();
    assert_eq!(best.config["lr"], 0.1, "{best:?}");
    let errors = grid.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].1.contains("diverged at lr 0.5"), "{errors:?}");
    let stopped: Vec<f64> = grid
        .trials
        .iter()
        .filter(|t| t.stopped_early && t.history.len() < 9)
        .map(|t| t.config["lr"].as_f64().unwrap())
        .collect();
    assert!(
        !stopped.is_empty(),
        "ASHA stopped some trials before the end: {:?}",
        grid.trials
    );
    assert!(
        stopped.iter().all(|lr| *lr != 0.1),
        "the best was never stopped early: {stopped:?}"
    );
    for t in &grid.trials {
        assert!(
            matches!(t.status, TrialStatus::Terminated | TrialStatus::Error(_)),
            "{t:?}"
        );
        let params: serde_json::Value =
            serde_json::from_slice(&std::fs::read(t.path.join("params.json")).unwrap()).unwrap();
        assert_eq!(params["lr"], t.config["lr"]);
        if !t.history.is_empty() {
            let lines = std::fs::read_to_string(t.path.join("result.jsonl")).unwrap();
            assert_eq!(lines.lines().count(), t.history.len(), "{}", t.trial);
            let csv = std::fs::read_to_string(t.path.join("progress.csv")).unwrap();
            assert_eq!(csv.lines().count(), t.history.len() + 1);
        }
    }
    // What the dashboard's Tune page shows.
    let published = rayforge::kv::get(rayforge::state::DASHBOARD_NAMESPACE, "tune/asha")
        .unwrap()
        .expect("the experiment's status for the dashboard");
    let status: serde_json::Value = serde_json::from_slice(&published).unwrap();
    assert_eq!(status["status"], "FINISHED", "{status}");
    assert_eq!(status["trials"].as_array().unwrap().len(), 9, "{status}");
    assert_eq!(status["best"]["config"]["lr"], 0.1, "{status}");
    assert_eq!(status["params"], serde_json::json!(["lr"]), "{status}");
    // Each trial's curve (its metric against its iteration) and a status
    // that tells a stopped trial from a finished one; and TensorBoard reads
    // a run per trial with every result.
    let tb = rayforge_integration_tests::tracking::tensorboard_scalars(&storage.join("asha"));
    for t in &grid.trials {
        let p = status["trials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["trial"] == t.trial.as_str())
            .unwrap();
        let steps: Vec<f64> = (1..=t.history.len()).map(|i| i as f64).collect();
        assert_eq!(p["curve"]["steps"], serde_json::json!(steps), "{p}");
        let accs: Vec<f64> = t.history.iter().map(|m| m["acc"]).collect();
        let published: Vec<f64> = serde_json::from_value(p["curve"]["values"].clone()).unwrap();
        assert_eq!(published.len(), accs.len(), "{p}");
        assert!(
            published
                .iter()
                .zip(&accs)
                .all(|(a, b)| (a - b).abs() <= 1e-12 * b.abs()),
            "{p}"
        );
        let label = match &t.status {
            TrialStatus::Error(_) => "ERROR",
            _ if t.stopped_early => "STOPPED",
            _ => "TERMINATED",
        };
        assert_eq!(p["status"], label, "{p}");
        if let (Some(tb), false) = (&tb, t.history.is_empty()) {
            let run = t.path.file_name().unwrap().to_string_lossy();
            let got = rayforge_integration_tests::tracking::scalar_steps(tb, &run, "acc");
            let want: Vec<(u64, f64)> = accs
                .iter()
                .enumerate()
                .map(|(i, a)| (i as u64 + 1, *a as f32 as f64))
                .collect();
            rayforge_integration_tests::tracking::assert_points(&got, &want, 1e-7, &t.trial);
        }
    }
    std::fs::remove_dir_all(&storage).unwrap();
}

/// Reports under another name than the experiment's metric, or nothing.
fn misnamed(ctx: &mut TrialContext) -> Result<(), String> {
    let silent: bool = ctx.get("silent").map_err(|e| e.to_string())?;
    if !silent {
        ctx.report([("accuracy", 0.9)]).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn a_trial_that_never_reports_the_metric_ends_in_error_saying_so() {
    cluster();
    let storage = std::env::temp_dir().join(format!("rayforge-tune-misnamed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let space = SearchSpace::new().domain("silent", Domain::Grid(vec![false.into(), true.into()]));
    let grid = Tuner::new(
        misnamed,
        BasicVariant::new(&space, 1, 0).unwrap(),
        TuneConfig {
            name: "misnamed".into(),
            storage_path: storage.clone().into(),
            metric: "acc".into(),
            mode: Mode::Max,
            cpus_per_trial: 0.5,
            ..Default::default()
        },
    )
    .fit()
    .unwrap();
    let mut errors = grid.errors();
    errors.sort_by(|a, b| a.1.cmp(b.1));
    assert_eq!(errors.len(), 2, "{:?}", grid.trials);
    assert!(
        errors[0].1.contains("`acc`") && errors[0].1.contains("`accuracy`"),
        "names the metric and what was reported: {errors:?}"
    );
    assert!(errors[1].1.contains("without reporting any result"), "{errors:?}");
    assert!(grid.best().is_none());
    std::fs::remove_dir_all(&storage).unwrap();
}

#[test]
fn a_bad_experiment_config_is_refused_before_anything_runs() {
    cluster();
    let space = SearchSpace::new().constant("lr", 0.1);
    let e = Tuner::new(
        trainable,
        BasicVariant::new(&space, 1, 0).unwrap(),
        TuneConfig {
            max_concurrent_trials: 0,
            ..Default::default()
        },
    )
    .fit()
    .unwrap_err();
    assert!(e.to_string().contains("max_concurrent_trials"), "{e}");
    // A storage that is malformed, unreachable or not writable: named,
    // before a trial runs.
    let ro = std::env::temp_dir().join(format!("rayforge-tune-ro-{}", std::process::id()));
    std::fs::create_dir_all(&ro).unwrap();
    let file = ro.join("a-file");
    std::fs::write(&file, b"").unwrap();
    for (uri, what) in [
        ("ftp://host/results".to_string(), "ftp://host/results"),
        ("s3://bucket/results?x".to_string(), "s3://bucket/results"),
        (file.join("results").display().to_string(), "a-file"),
    ] {
        let e = Tuner::new(
            trainable,
            BasicVariant::new(&space, 1, 0).unwrap(),
            TuneConfig {
                storage_path: uri.as_str().into(),
                ..Default::default()
            },
        )
        .fit()
        .unwrap_err();
        assert!(e.to_string().contains(what), "{uri}: {e}");
    }
    std::fs::remove_dir_all(&ro).unwrap();
}

/// Reports once and fails in its first attempt (a marker file per trial
/// says it did), then reports three times.
fn flaky(ctx: &mut TrialContext) -> Result<(), String> {
    let dir: String = ctx.get("marker_dir").map_err(|e| e.to_string())?;
    let marker = std::path::Path::new(&dir).join(ctx.trial());
    if !marker.exists() {
        std::fs::write(&marker, b"failed once").map_err(|e| e.to_string())?;
        ctx.report([("acc", -1.0)]).map_err(|e| e.to_string())?;
        return Err("a first attempt that fails".into());
    }
    for i in 0..3 {
        ctx.report([("acc", i as f64)]).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn a_failed_trial_starts_over_within_max_failures() {
    cluster();
    let storage = std::env::temp_dir().join(format!("rayforge-tune-retry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let run = |name: &str, max_failures: u32| {
        let markers = storage.join(format!("markers-{name}"));
        std::fs::create_dir_all(&markers).unwrap();
        let space = SearchSpace::new()
            .domain("i", Domain::Grid(vec![0.into(), 1.into()]))
            .constant("marker_dir", markers.display().to_string());
        Tuner::new(
            flaky,
            BasicVariant::new(&space, 1, 0).unwrap(),
            TuneConfig {
                name: name.into(),
                storage_path: storage.clone().into(),
                metric: "acc".into(),
                mode: Mode::Max,
                cpus_per_trial: 0.5,
                max_failures,
                verbose: false,
                ..Default::default()
            },
        )
        .fit()
        .unwrap()
    };
    let grid = run("retried", 1);
    // Started over from scratch: its results, and TensorBoard's, are the
    // second attempt's.
    let tb = rayforge_integration_tests::tracking::tensorboard_scalars(&storage.join("retried"));
    for t in &grid.trials {
        assert_eq!(t.status, TrialStatus::Terminated, "{t:?}");
        assert_eq!((t.failures, t.history.len()), (1, 3), "{t:?}");
        if let Some(tb) = &tb {
            let run = t.path.file_name().unwrap().to_string_lossy();
            let got = rayforge_integration_tests::tracking::scalar_steps(tb, &run, "acc");
            assert_eq!(got, vec![(1, 0.0), (2, 1.0), (3, 2.0)], "{}", t.trial);
        }
    }
    let grid = run("not-retried", 0);
    assert_eq!(grid.errors().len(), 2, "{:?}", grid.trials);
    assert!(grid.errors()[0].1.contains("a first attempt that fails"));
    std::fs::remove_dir_all(&storage).unwrap();
}

/// Counts to 6, checkpointing its count every step; its first attempt
/// fails after the third step. Reports where it went on from.
fn counter(ctx: &mut TrialContext) -> Result<(), String> {
    let dir: String = ctx.get("marker_dir").map_err(|e| e.to_string())?;
    let marker = std::path::Path::new(&dir).join(ctx.trial());
    let mut count = match ctx.checkpoint() {
        Some(c) => {
            let bytes = c.read("count").map_err(|e| e.to_string())?;
            u64::from_le_bytes(bytes.try_into().map_err(|_| "a short checkpoint")?)
        }
        None => 0,
    };
    let resumed_at = count as f64;
    while count < 6 {
        count += 1;
        if count == 4 && !marker.exists() {
            std::fs::write(&marker, b"failed once").map_err(|e| e.to_string())?;
            return Err("a first attempt that fails at 4".into());
        }
        let mut w = CheckpointWriter::new().map_err(|e| e.to_string())?;
        w.write("count", &count.to_le_bytes()).map_err(|e| e.to_string())?;
        ctx.report_checkpoint([("count", count as f64), ("resumed_at", resumed_at)], w)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn a_failed_trial_goes_on_from_its_latest_checkpoint() {
    cluster();
    let storage = std::env::temp_dir().join(format!("rayforge-tune-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let markers = storage.join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let space = SearchSpace::new()
        .domain("i", Domain::Grid(vec![0.into(), 1.into()]))
        .constant("marker_dir", markers.display().to_string());
    let grid = Tuner::new(
        counter,
        BasicVariant::new(&space, 1, 0).unwrap(),
        TuneConfig {
            name: "ckpt".into(),
            storage_path: storage.clone().into(),
            metric: "count".into(),
            mode: Mode::Max,
            cpus_per_trial: 0.5,
            max_failures: 1,
            checkpoint: CheckpointConfig {
                num_to_keep: Some(2),
                ..Default::default()
            },
            verbose: false,
            ..Default::default()
        },
    )
    .fit()
    .unwrap();
    for t in &grid.trials {
        assert_eq!((t.status.clone(), t.failures), (TrialStatus::Terminated, 1), "{t:?}");
        // Steps 1-3, then 4-6 after the restart from checkpoint 3: each once.
        let counts: Vec<f64> = t.history.iter().map(|m| m["count"]).collect();
        assert_eq!(counts, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "{t:?}");
        let iterations: Vec<f64> = t.history.iter().map(|m| m["training_iteration"]).collect();
        assert_eq!(iterations, counts);
        let resumed: Vec<f64> = t.history.iter().map(|m| m["resumed_at"]).collect();
        assert_eq!(resumed, vec![0.0, 0.0, 0.0, 3.0, 3.0, 3.0]);
        // The latest checkpoint is the result's; two are kept.
        let latest = t.checkpoint.as_ref().unwrap();
        assert_eq!(latest.read("count").unwrap(), 6u64.to_le_bytes());
        let kept: Vec<u64> = rayforge::checkpoint::list(&t.path)
            .iter()
            .map(|c| c.manifest().unwrap().iteration)
            .collect();
        assert_eq!(kept, vec![5, 6], "{}", t.trial);
        let lines = std::fs::read_to_string(t.path.join("result.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 6, "{lines}");
    }
    let csv = std::fs::read_to_string(storage.join("ckpt/results.csv")).unwrap();
    assert!(
        csv.starts_with("trial,status,config/i,config/marker_dir,count,"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 3);
    std::fs::remove_dir_all(&storage).unwrap();
}

/// Accuracy grows with steps, faster for `lr` near 0.1; checkpoints every
/// step (a step count), so a paused trial goes on where it was.
fn climb(ctx: &mut TrialContext) -> Result<(), String> {
    let lr: f64 = ctx.get("lr").map_err(|e| e.to_string())?;
    let quality = 1.0 - (lr.log10() + 1.0).abs() / 4.0;
    let start = ctx.iteration();
    for step in start + 1..=9 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut w = CheckpointWriter::new().map_err(|e| e.to_string())?;
        w.write("step", &step.to_le_bytes()).map_err(|e| e.to_string())?;
        ctx.report_checkpoint([("acc", quality * step as f64), ("started_at", start as f64)], w)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn hyperband_pauses_trials_and_resumes_the_best_from_their_checkpoints() {
    cluster();
    let storage = std::env::temp_dir().join(format!("rayforge-tune-hb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let lrs = [0.1, 0.3, 0.03, 1.0, 0.01, 0.003, 0.001, 0.0003, 0.0001];
    let space = SearchSpace::new().domain("lr", Domain::Grid(lrs.iter().map(|l| (*l).into()).collect()));
    let grid = Tuner::new(
        climb,
        BasicVariant::new(&space, 1, 0).unwrap(),
        TuneConfig {
            name: "hb".into(),
            storage_path: storage.clone().into(),
            metric: "acc".into(),
            mode: Mode::Max,
            max_concurrent_trials: 3,
            cpus_per_trial: 0.5,
            verbose: false,
            ..Default::default()
        },
    )
    .scheduler(HyperBand::new("training_iteration", "acc", Mode::Max, 9.0, 3.0).unwrap())
    .fit()
    .unwrap();
    assert_eq!(grid.trials.len(), 9);
    // One bracket of nine: all to 1, the best three to 3, the best to 9.
    let reached = |t: &rayforge_tune::TrialResult| t.last["training_iteration"];
    let mut by_reach: Vec<(f64, f64)> = grid
        .trials
        .iter()
        .map(|t| (t.config["lr"].as_f64().unwrap(), reached(t)))
        .collect();
    by_reach.sort_by(|a, b| b.1.total_cmp(&a.1));
    assert_eq!(by_reach[0], (0.1, 9.0), "{by_reach:?}");
    let mut at3: Vec<f64> = by_reach[1..3].iter().map(|x| x.0).collect();
    at3.sort_by(f64::total_cmp);
    assert_eq!(at3, vec![0.03, 0.3], "{by_reach:?}");
    assert!(by_reach[1..3].iter().all(|x| x.1 == 3.0), "{by_reach:?}");
    assert!(by_reach[3..].iter().all(|x| x.1 == 1.0), "{by_reach:?}");
    for t in &grid.trials {
        assert_eq!(t.status, TrialStatus::Terminated, "{t:?}");
        // Each step reported once: a resumed trial went on from its
        // checkpoint, not from the start.
        let iterations: Vec<f64> = t.history.iter().map(|m| m["training_iteration"]).collect();
        let want: Vec<f64> = (1..=iterations.len()).map(|i| i as f64).collect();
        assert_eq!(iterations, want, "{}", t.trial);
        if iterations.len() > 1 {
            assert_eq!(t.history[1]["started_at"], 1.0, "{t:?}");
        }
        // A trial paused or stopped while it ran on keeps no checkpoint
        // past its last result.
        let latest = rayforge::checkpoint::CheckpointDir::new(t.storage.clone())
            .latest()
            .unwrap()
            .unwrap();
        assert_eq!(
            latest.manifest().unwrap().iteration,
            iterations.len() as u64,
            "{}",
            t.trial
        );
    }
    let best = grid.best().unwrap();
    assert_eq!(best.config["lr"], 0.1);
    assert!(!best.stopped_early);
    std::fs::remove_dir_all(&storage).unwrap();
}

/// Reports forever.
fn endless(ctx: &mut TrialContext) -> Result<(), String> {
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        ctx.report([("loss", 1.0)]).map_err(|e| e.to_string())?;
    }
}

#[test]
fn a_time_budget_ends_the_experiment_and_a_plateau_ends_a_trial() {
    cluster();
    let storage = std::env::temp_dir().join(format!("rayforge-tune-stop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let space = SearchSpace::new().domain("i", Domain::Grid((0..4).map(Into::into).collect()));
    let config = |name: &str| TuneConfig {
        name: name.into(),
        storage_path: storage.clone().into(),
        max_concurrent_trials: 2,
        cpus_per_trial: 0.5,
        verbose: false,
        ..Default::default()
    };
    let grid = Tuner::new(endless, BasicVariant::new(&space, 1, 0).unwrap(), config("budget"))
        .stopper(TimeBudget::new(std::time::Duration::from_secs(3)))
        .fit()
        .unwrap();
    // Two trials ran and were stopped; the others never started.
    let ran: Vec<_> = grid.trials.iter().filter(|t| !t.history.is_empty()).collect();
    assert_eq!(ran.len(), 2, "{:?}", grid.trials);
    assert!(grid
        .trials
        .iter()
        .all(|t| t.status == TrialStatus::Terminated && t.stopped_early));
    // A flat loss: each trial stops after its grace period.
    let grid = Tuner::new(endless, BasicVariant::new(&space, 1, 0).unwrap(), config("plateau"))
        .stopper(Plateau::new("loss").num_results(3).grace_period(5))
        .fit()
        .unwrap();
    assert_eq!(grid.trials.len(), 4);
    for t in &grid.trials {
        assert_eq!((t.history.len(), t.stopped_early), (5, true), "{t:?}");
    }
    std::fs::remove_dir_all(&storage).unwrap();
}

#[test]
fn errored_trials_are_resumed_or_restarted_on_request() {
    cluster();
    let storage = std::env::temp_dir().join(format!("rayforge-tune-errored-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let space_for = |markers: &std::path::Path| {
        SearchSpace::new()
            .domain("i", Domain::Grid(vec![0.into(), 1.into()]))
            .constant("marker_dir", markers.display().to_string())
    };
    let run = |name: &str, resume: bool, resume_errored: bool, restart_errored: bool| {
        let markers = storage.join(format!("markers-{name}"));
        std::fs::create_dir_all(&markers).unwrap();
        Tuner::new(
            counter,
            BasicVariant::new(&space_for(&markers), 1, 0).unwrap(),
            TuneConfig {
                name: name.into(),
                storage_path: storage.clone().into(),
                metric: "count".into(),
                mode: Mode::Max,
                cpus_per_trial: 0.5,
                verbose: false,
                resume,
                resume_errored,
                restart_errored,
                ..Default::default()
            },
        )
        .fit()
        .unwrap()
    };
    for (name, restart) in [("resumed", false), ("restarted", true)] {
        // Without retries both trials fail at count 4, after checkpoint 3.
        let grid = run(name, false, false, false);
        assert_eq!(grid.errors().len(), 2, "{:?}", grid.trials);
        // A plain resume leaves them failed.
        let grid = run(name, true, false, false);
        assert_eq!(grid.errors().len(), 2);
        // On request they run again: from checkpoint 3, or from scratch.
        let grid = run(name, true, !restart, restart);
        for t in &grid.trials {
            assert_eq!(t.status, TrialStatus::Terminated, "{t:?}");
            let counts: Vec<f64> = t.history.iter().map(|m| m["count"]).collect();
            assert_eq!(counts, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "{name}: {t:?}");
            let resumed_at = t.history[3]["resumed_at"];
            assert_eq!(resumed_at, if restart { 0.0 } else { 3.0 }, "{name}: {t:?}");
        }
    }
    std::fs::remove_dir_all(&storage).unwrap();
}

/// Writes the file its config's `marker` names: a trial ran.
fn mark_started(ctx: &mut TrialContext) -> Result<(), String> {
    let marker: String = ctx.get("marker").map_err(|e| e.to_string())?;
    std::fs::write(marker, b"started").map_err(|e| e.to_string())
}

/// The third kind of storage a run cannot use, beside the malformed and
/// unwritable ones of `a_bad_experiment_config_is_refused_before_anything_runs`.
#[test]
fn an_unreachable_storage_endpoint_is_refused_promptly_before_any_trial_runs() {
    cluster();
    let marker = std::env::temp_dir().join(format!("rayforge-tune-unreachable-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    // An S3 endpoint nothing listens on: only the connection can fail.
    rayforge_integration_tests::point_s3_at_a_dead_endpoint();
    let space = SearchSpace::new().constant("marker", marker.display().to_string());
    let started = std::time::Instant::now();
    let e = Tuner::new(
        mark_started,
        BasicVariant::new(&space, 1, 0).unwrap(),
        TuneConfig {
            name: "unreachable".into(),
            storage_path: "s3://bucket/results".into(),
            verbose: false,
            ..Default::default()
        },
    )
    .fit()
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("s3://bucket/results/unreachable") && text.contains("Connection refused"),
        "{text}"
    );
    assert!(!marker.exists(), "a trial ran");
    // Promptly, not after an object store's retries run out.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "refused after {:?}",
        started.elapsed()
    );
}

#[test]
fn a_trial_asking_for_a_resource_no_node_has_is_refused_naming_it() {
    cluster();
    let storage = std::env::temp_dir().join(format!("rayforge-tune-custom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let space = SearchSpace::new().domain("silent", Domain::Grid(vec![false.into()]));
    let err = Tuner::new(
        misnamed,
        BasicVariant::new(&space, 1, 0).unwrap(),
        TuneConfig {
            name: "custom".into(),
            storage_path: storage.clone().into(),
            metric: "accuracy".into(),
            mode: Mode::Max,
            cpus_per_trial: 0.5,
            custom_resources_per_trial: [("TPU".to_string(), 1.0)].into(),
            ..Default::default()
        },
    )
    .fit()
    .unwrap_err()
    .to_string();
    // The demand reached the scheduler: no node could ever hold the
    // trial's process, and the experiment says which resource at once
    // (instead of waiting forever for it).
    assert!(
        err.contains("infeasible") && err.contains("TPU: requested 1, node has 0"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&storage);
}

/// The optimizer a conditional space chooses: each table carries its own
/// parameters (serde picks the variant by `name`).
#[derive(serde::Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
enum Optimizer {
    Sgd { lr: f64, momentum: f64 },
    Adam { lr: f64 },
}

#[derive(serde::Deserialize)]
struct Model {
    layers: i64,
    width: i64,
}

/// A score computed from the nested parameters, so the test can recompute
/// it from each trial's config.
fn conditional_score(model: &Model, opt: &Optimizer) -> f64 {
    let opt = match opt {
        Optimizer::Sgd { lr, momentum } => lr * momentum,
        Optimizer::Adam { lr } => -lr,
    };
    (model.layers * model.width) as f64 + opt
}

fn conditional_trainable(ctx: &mut TrialContext) -> Result<(), String> {
    let model: Model = ctx.get("model").map_err(|e| e.to_string())?;
    let opt: Optimizer = ctx.get("optimizer").map_err(|e| e.to_string())?;
    let score = conditional_score(&model, &opt);
    ctx.report([("score", score)]).map_err(|e| e.to_string())?;
    Ok(())
}

#[test]
fn a_conditional_search_space_reaches_each_trial_as_nested_tables() {
    cluster();
    let storage = std::env::temp_dir().join(format!("rayforge-tune-cond-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let space = SearchSpace::from_toml(
        r#"
[param_space.model]
layers = { randint = [1, 4] }
width = { grid = [8, 16] }

[param_space]
optimizer = { choice = [
    { name = "sgd", lr = { loguniform = [1e-3, 1e-1] }, momentum = { uniform = [0.5, 0.99] } },
    { name = "adam", lr = { loguniform = [1e-4, 1e-2] } },
] }
"#,
    )
    .unwrap();
    let config = |name: &str| TuneConfig {
        name: name.into(),
        storage_path: storage.clone().into(),
        metric: "score".into(),
        mode: Mode::Max,
        max_concurrent_trials: 2,
        cpus_per_trial: 0.5,
        ..Default::default()
    };
    let check = |grid: &rayforge_tune::ResultGrid, n: usize| {
        assert_eq!(grid.trials.len(), n, "{:?}", grid.errors());
        assert!(grid.errors().is_empty(), "{:?}", grid.errors());
        let mut names = std::collections::BTreeSet::new();
        for t in &grid.trials {
            let model: Model = serde_json::from_value(t.config["model"].clone()).unwrap();
            let opt: Optimizer = serde_json::from_value(t.config["optimizer"].clone()).unwrap();
            names.insert(t.config["optimizer"]["name"].as_str().unwrap().to_string());
            if t.config["optimizer"]["name"] == "adam" {
                assert!(t.config["optimizer"].get("momentum").is_none(), "{:?}", t.config);
            }
            let want = conditional_score(&model, &opt);
            assert_eq!(t.last["score"], want, "{:?}", t.config);
        }
        names
    };
    // The default searcher: both grid points of model.width, 6 samples each.
    let grid = Tuner::new(
        conditional_trainable,
        BasicVariant::new(&space, 6, 3).unwrap(),
        config("cond"),
    )
    .fit()
    .unwrap();
    let names = check(&grid, 12);
    assert_eq!(names.len(), 2, "both branches drawn in 12 trials: {names:?}");
    for w in [8, 16] {
        assert_eq!(
            grid.trials.iter().filter(|t| t.config["model"]["width"] == w).count(),
            6
        );
    }
    // TPE over the same space: the tables drawn as the default searcher does.
    let tpe = rayforge_tune::Tpe::new(space, Mode::Max, Some(6), rayforge_tune::TpeOptions::default()).unwrap();
    let grid = Tuner::new(conditional_trainable, tpe, config("cond-tpe"))
        .fit()
        .unwrap();
    check(&grid, 6);
}

#[test]
fn each_trial_is_an_mlflow_run_with_its_params_metrics_and_final_checkpoint() {
    use rayforge_integration_tests::tracking::MlflowServer;
    cluster();
    let Some(server) = MlflowServer::start() else { return };
    let storage = std::env::temp_dir().join(format!("rayforge-tune-mlflow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let lrs = [0.1, 0.01];
    let space = SearchSpace::new().domain("lr", Domain::Grid(lrs.iter().map(|l| (*l).into()).collect()));
    let grid = Tuner::new(
        climb,
        BasicVariant::new(&space, 1, 0).unwrap(),
        TuneConfig {
            name: "mlflow-search".into(),
            storage_path: storage.clone().into(),
            metric: "acc".into(),
            mode: Mode::Max,
            max_concurrent_trials: 2,
            cpus_per_trial: 0.5,
            verbose: false,
            callbacks: rayforge::tracking::Callbacks::new().with(rayforge::tracking::Mlflow::new(&server.uri)),
            ..Default::default()
        },
    )
    .fit()
    .unwrap();
    let runs = server.runs("mlflow-search");
    assert_eq!(runs.len(), 2, "{runs:?}");
    for t in &grid.trials {
        let r = runs
            .iter()
            .find(|r| r["info"]["run_name"] == t.trial.as_str())
            .unwrap_or_else(|| panic!("no MLflow run for {}: {runs:?}", t.trial));
        assert_eq!(r["info"]["status"], "FINISHED", "{r}");
        let lr = MlflowServer::value(r, "params", "lr").unwrap_or_else(|| panic!("no lr: {r}"));
        assert_eq!(lr.parse::<f64>().unwrap(), t.config["lr"].as_f64().unwrap());
        let id = r["info"]["run_id"].as_str().unwrap();
        let want: Vec<(u64, f64)> = t
            .history
            .iter()
            .map(|m| (m["training_iteration"] as u64, m["acc"]))
            .collect();
        rayforge_integration_tests::tracking::assert_points(&server.metric_history(id, "acc"), &want, 1e-12, &t.trial);
        let mut files = server.artifacts(id, "checkpoint");
        files.sort();
        assert_eq!(
            files,
            vec!["checkpoint/manifest.json".to_string(), "checkpoint/step".to_string()]
        );
    }
    std::fs::remove_dir_all(&storage).unwrap();
}
