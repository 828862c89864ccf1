//! Experiments on the embedded cluster, trials as real worker processes:
//! ASHA stops the trials of a bad learning rate early, the best trial is
//! the best config, every trial's files are written, and a failing trial
//! is reported with its error while the others finish.

use rayforge_integration_tests::cluster;
use rayforge_tune::{Asha, BasicVariant, Domain, Mode, SearchSpace, TrialContext, TrialStatus, TuneConfig, Tuner};

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
            storage_path: storage.clone(),
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
}

/// Fails its first attempt (a marker file per trial says it did), then
/// reports three times.
fn flaky(ctx: &mut TrialContext) -> Result<(), String> {
    let dir: String = ctx.get("marker_dir").map_err(|e| e.to_string())?;
    let marker = std::path::Path::new(&dir).join(ctx.trial());
    if !marker.exists() {
        std::fs::write(&marker, b"failed once").map_err(|e| e.to_string())?;
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
                storage_path: storage.clone(),
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
    for t in &grid.trials {
        assert_eq!(t.status, TrialStatus::Terminated, "{t:?}");
        assert_eq!((t.failures, t.history.len()), (1, 3), "{t:?}");
    }
    let grid = run("not-retried", 0);
    assert_eq!(grid.errors().len(), 2, "{:?}", grid.trials);
    assert!(grid.errors()[0].1.contains("a first attempt that fails"));
    std::fs::remove_dir_all(&storage).unwrap();
}
