//! rayforge-xgboost on the embedded cluster, workers as real processes and
//! XGBoost's real library (`RAYFORGE_XGBOOST_LIB`, set up by
//! `scripts/xgboost.sh`; scripts/test.sh sources it): two workers grow the
//! trees one process grows on the same rows, bad parameters and columns are
//! named before a gang starts, a worker killed mid-run restarts the gang
//! from its checkpoint, early stopping and resuming.

use std::sync::Arc;

use rayforge_data::arrow::array::{Array, ArrayRef, Float32Array, Float64Array, Int64Array};
use rayforge_data::arrow::record_batch::RecordBatch;
use rayforge_train::{FailureConfig, RunConfig, ScalingConfig};
use rayforge_xgboost::{params, Booster, DMatrix, DataSpec, Error, Params, XGBoostTrainer};

/// The embedded cluster, once per test process: four logical CPUs, for the
/// gangs of tests running side by side (`cargo test`) and the datasets' own
/// tasks.
fn cluster() {
    rayforge_integration_tests::cluster_with(|c| c.num_cpus(4.0));
}

/// Rows of six features with few distinct values each (so that every
/// worker's quantile sketch holds them all and the histogram bins are the
/// same as in one process) and a label from them, with noise; `binary`
/// makes the label 0/1.
fn rows(n: usize, seed: u64, binary: bool) -> RecordBatch {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as f64) / ((1u64 << 31) as f64)
    };
    let mut cols: Vec<Vec<f64>> = (0..6).map(|_| Vec::with_capacity(n)).collect();
    let mut label = Vec::with_capacity(n);
    for _ in 0..n {
        let x: Vec<f64> = (0..6).map(|_| (next() * 40.0).floor() / 4.0).collect();
        let y = 2.0 * x[0] - x[1] + 0.5 * x[2] * x[3] / 10.0 + if x[4] > 5.0 { 3.0 } else { 0.0 } + next();
        for (c, v) in cols.iter_mut().zip(&x) {
            c.push(*v);
        }
        label.push(if binary { f64::from(y > 14.0) } else { y });
    }
    let mut arrays: Vec<(String, ArrayRef)> = cols
        .into_iter()
        .enumerate()
        .map(|(i, c)| (format!("x{i}"), Arc::new(Float64Array::from(c)) as ArrayRef))
        .collect();
    // An integer column too: read by XGBoost where Arrow keeps it.
    let ids: Vec<i64> = (0..n as i64).map(|i| i % 7).collect();
    arrays.push(("small".into(), Arc::new(Int64Array::from(ids)) as ArrayRef));
    arrays.push(("y".into(), Arc::new(Float64Array::from(label)) as ArrayRef));
    RecordBatch::try_from_iter(arrays).unwrap()
}

fn regression() -> Params {
    params! {"objective": "reg:squarederror", "tree_method": "hist", "eta": 0.3, "max_depth": 4, "seed": 7}
}

fn storage(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rayforge-xgb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn trainer(params: Params, rounds: usize, data: &[RecordBatch], dir: &std::path::Path, name: &str) -> XGBoostTrainer {
    XGBoostTrainer::new(params, "y", rounds)
        .dataset("train", rayforge_data::from_arrow(data.to_vec()).unwrap())
        .scaling(ScalingConfig {
            num_workers: 2,
            // Half a CPU each, so that tests sharing the cluster (`cargo
            // test`) run side by side; XGBoost still gets a thread each.
            cpus_per_worker: 0.5,
            ..Default::default()
        })
        .run_config(RunConfig {
            name: name.into(),
            storage_path: dir.into(),
            ..Default::default()
        })
}

/// The largest difference between two models' predictions on `rows`.
fn max_diff(a: &Booster, b: &Booster, rows: &DMatrix) -> f32 {
    let (pa, pb) = (a.predict(rows).unwrap(), b.predict(rows).unwrap());
    assert_eq!(pa.len(), pb.len());
    pa.iter().zip(&pb).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The split structure of each tree (features, thresholds, children):
/// the dump without gains and covers.
fn structure(b: &Booster) -> Vec<String> {
    b.dump(false).unwrap()
}

#[test]
fn two_workers_grow_the_trees_one_process_grows_on_the_same_rows() {
    cluster();
    let (path, version) = rayforge_xgboost::library().unwrap();
    assert_eq!(version, rayforge_xgboost::XGBOOST_VERSION, "{}", path.display());
    // 4000 rows in 8 blocks: each worker gets 2000.
    let all = rows(4000, 1, false);
    let blocks: Vec<RecordBatch> = (0..8).map(|i| all.slice(i * 500, 500)).collect();
    let spec = DataSpec::label("y");
    let whole = DMatrix::from_batch(&all, &spec, "all").unwrap();
    assert_eq!((whole.num_rows(), whole.num_cols().unwrap()), (4000, 7));
    let mut single_rmse = Vec::new();
    let single = rayforge_xgboost::train(&regression(), &whole, 20, &[("train", &whole)], |_, m| {
        single_rmse.push(m["train-rmse"])
    })
    .unwrap();

    let dir = storage("equal");
    let result = trainer(regression(), 20, &blocks, &dir, "equal").fit().unwrap();
    assert!(result.error().is_none(), "{:?}", result.error());
    let model = result.model().unwrap();
    assert_eq!(model.boosted_rounds().unwrap(), 20);
    assert_eq!(structure(&model), structure(&single), "the trees differ");
    let diff = max_diff(&model, &single, &whole);
    assert!(diff < 1e-4, "predictions differ by {diff}");
    // Each round reported once, with the metric over both workers' rows.
    let rounds: Vec<f64> = result.train.history.iter().map(|r| r.metrics["round"]).collect();
    assert_eq!(rounds, (1..=20).map(f64::from).collect::<Vec<_>>());
    for (r, want) in result.train.history.iter().zip(&single_rmse) {
        let got = r.metrics["train-rmse"];
        assert!(
            (got - want).abs() < 1e-4 * want.max(1.0),
            "round {}: {got} vs {want}",
            r.iteration
        );
    }
    // The checkpoint is XGBoost's UBJSON, loadable as it is.
    let bytes = result.checkpoint().unwrap().read(rayforge_xgboost::MODEL_FILE).unwrap();
    assert_eq!(bytes.first(), Some(&b'{'), "UBJSON opens an object");
    assert_eq!(Booster::load(&bytes).unwrap().boosted_rounds().unwrap(), 20);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_parameters_and_columns_are_named_before_a_gang_starts() {
    cluster();
    let data = [rows(200, 2, false)];
    let dir = storage("bad");
    let err = |p: Params, label: &str| {
        XGBoostTrainer::new(p, label, 5)
            .dataset("train", rayforge_data::from_arrow(data.to_vec()).unwrap())
            .run_config(RunConfig {
                name: "bad".into(),
                storage_path: dir.as_path().into(),
                ..Default::default()
            })
            .fit()
            .unwrap_err()
    };
    match err(params! {"max_depth": -1}, "y") {
        Error::Param { name, message } => assert_eq!(name, "max_depth", "{message}"),
        e => panic!("{e}"),
    }
    match err(params! {"max_dept": 3, "eta": 0.1}, "y") {
        Error::Param { name, .. } => assert_eq!(name, "max_dept"),
        e => panic!("{e}"),
    }
    match err(params! {"objective": "reg:nope"}, "y") {
        Error::Param { name, .. } => assert_eq!(name, "objective"),
        e => panic!("{e}"),
    }
    match err(regression(), "price") {
        Error::MissingColumn { role, column, have, .. } => {
            assert_eq!((role.as_str(), column.as_str()), ("label", "price"));
            assert!(have.contains("x0") && have.contains('y'), "{have}");
        }
        e => panic!("{e}"),
    }
    // In this process too: a string column is refused, named.
    let strings = RecordBatch::try_from_iter([
        (
            "s",
            Arc::new(rayforge_data::arrow::array::StringArray::from(vec!["a", "b"])) as ArrayRef,
        ),
        ("y", Arc::new(Float32Array::from(vec![1.0, 2.0])) as ArrayRef),
    ])
    .unwrap();
    match DMatrix::from_batch(&strings, &DataSpec::label("y"), "strings").unwrap_err() {
        Error::BadColumn { column, message } => assert!(column == "s" && message.contains("Utf8"), "{message}"),
        e => panic!("{e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_worker_killed_mid_run_restarts_the_gang_from_its_checkpoint() {
    // The worker it kills must be this run's: a cluster of its own.
    rayforge_integration_tests::own_process!();
    cluster();
    let all = rows(2000, 3, false);
    let blocks: Vec<RecordBatch> = (0..4).map(|i| all.slice(i * 500, 500)).collect();
    let whole = DMatrix::from_batch(&all, &DataSpec::label("y"), "all").unwrap();
    // Many small rounds, so the gang is still boosting when the driver sees
    // round 6 (reports reach it a little after the ranks made them).
    let p = params! {"objective": "reg:squarederror", "eta": 0.05, "max_depth": 3, "seed": 7};
    const ROUNDS: usize = 600;
    let single = rayforge_xgboost::train(&p, &whole, ROUNDS, &[], |_, _| {}).unwrap();
    let dir = storage("kill");
    let mut killed = None;
    let result = trainer(p, ROUNDS, &blocks, &dir, "kill")
        .checkpoint_frequency(5)
        .run_config(RunConfig {
            name: "kill".into(),
            storage_path: dir.as_path().into(),
            failure: FailureConfig { max_failures: 1 },
            ..Default::default()
        })
        .fit_with(|r| {
            // Once round 6 is reported (a checkpoint at 5 or later): SIGKILL
            // a worker process.
            if r.metrics["round"] >= 6.0 && killed.is_none() {
                let tasks = rayforge::state::list_tasks().unwrap();
                let pid = tasks
                    .items
                    .iter()
                    .filter(|t| t.name.ends_with("TrainWorker.run") && t.state == "RUNNING")
                    .map(|t| t.pid)
                    .max()
                    .expect("the gang was done before the driver saw round 6");
                // SAFETY: a plain syscall on a worker process of this test.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                killed = Some(r.metrics["round"]);
            }
        })
        .unwrap();
    assert!(killed.is_some());
    assert!(result.error().is_none(), "{:?}", result.error());
    assert_eq!(result.train.failures, 1);
    let model = result.model().unwrap();
    assert_eq!(model.boosted_rounds().unwrap(), ROUNDS);
    // Resumed from a checkpoint's model, the trees are still the ones one
    // process grows.
    assert_eq!(structure(&model), structure(&single));
    assert!(max_diff(&model, &single, &whole) < 1e-4);
    // The history goes up to the kill, then on from the round after the
    // latest checkpoint (every 5th) to the end: back to it when rounds after
    // the checkpoint had been reported, straight on when none had.
    let rounds: Vec<usize> = result
        .train
        .history
        .iter()
        .map(|r| r.metrics["round"] as usize)
        .collect();
    let back: Vec<usize> = (1..rounds.len()).filter(|i| rounds[*i] <= rounds[i - 1]).collect();
    assert!(back.len() <= 1, "{rounds:?}");
    let (before, after) = rounds.split_at(back.first().copied().unwrap_or(rounds.len()));
    assert_eq!(before, (1..=before.len()).collect::<Vec<_>>());
    if let Some(first) = after.first() {
        assert_eq!((first - 1) % 5, 0, "resumed after round {}", first - 1);
        assert_eq!(after, (*first..=ROUNDS).collect::<Vec<_>>());
    } else {
        assert_eq!(before.len(), ROUNDS);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn early_stopping_keeps_the_best_round_and_a_run_resumes_boosting_by_name() {
    cluster();
    let train = [rows(1500, 4, true)];
    let valid = rows(600, 5, true);
    let p = params! {"objective": "binary:logistic", "eta": 1.0, "max_depth": 6, "eval_metric": ["logloss"],
    "min_child_weight": 0};
    let dir = storage("early");
    let t = |rounds: usize| {
        trainer(p.clone(), rounds, &train, &dir, "early")
            .dataset("valid", rayforge_data::from_arrow(vec![valid.clone()]).unwrap())
            .early_stopping_rounds(3)
    };
    let result = t(200).fit().unwrap();
    assert!(result.error().is_none(), "{:?}", result.error());
    let model = result.model().unwrap();
    let rounds = model.boosted_rounds().unwrap();
    let best: usize = model.attr("best_iteration").unwrap().unwrap().parse().unwrap();
    // Stopped 3 rounds after the best, well before 200 (eta 1 overfits).
    assert_eq!(rounds, best + 4, "best {best}, rounds {rounds}");
    assert!(rounds < 200);
    let losses: Vec<f64> = result
        .train
        .history
        .iter()
        .map(|r| r.metrics["valid-logloss"])
        .collect();
    let min = losses.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(losses[best], min);
    let score: f64 = model.attr("best_score").unwrap().unwrap().parse().unwrap();
    assert!((score - min).abs() < 1e-9);
    assert!(result.metrics().contains_key("train-logloss"));

    // The same name again with no early stopping and more rounds: boosting
    // goes on from the checkpoint's model.
    let more = trainer(p.clone(), rounds + 3, &train, &dir, "early")
        .dataset("valid", rayforge_data::from_arrow(vec![valid.clone()]).unwrap())
        .fit()
        .unwrap();
    assert!(more.error().is_none(), "{:?}", more.error());
    let m2 = more.model().unwrap();
    assert_eq!(m2.boosted_rounds().unwrap(), rounds + 3);
    assert_eq!(structure(&m2)[..rounds], structure(&model)[..]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn batch_prediction_on_an_actor_pool_matches_the_model_row_for_row() {
    cluster();
    let all = rows(1200, 6, false);
    let dir = storage("predict");
    let result = trainer(regression(), 10, std::slice::from_ref(&all), &dir, "predict")
        .fit()
        .unwrap();
    assert!(result.error().is_none(), "{:?}", result.error());
    let model = result.model().unwrap();
    assert_eq!(
        model.feature_names().unwrap(),
        ["x0", "x1", "x2", "x3", "x4", "x5", "small"]
    );
    // An id the model never saw, and the label, ride along: the model's own
    // feature names pick the columns.
    let mut cols: Vec<(String, ArrayRef)> = vec![(
        "id".into(),
        Arc::new(Int64Array::from((0..1200).collect::<Vec<i64>>())) as ArrayRef,
    )];
    cols.extend(
        all.schema()
            .fields()
            .iter()
            .zip(all.columns())
            .map(|(f, c)| (f.name().clone(), c.clone())),
    );
    let input = RecordBatch::try_from_iter(cols).unwrap();
    let blocks: Vec<RecordBatch> = (0..6).map(|i| input.slice(i * 200, 200)).collect();
    let opts = rayforge_xgboost::PredictOptions {
        pool: rayforge_data::ActorPoolOptions {
            concurrency: (2, 2),
            num_cpus: 0.25,
            ..Default::default()
        },
        ..Default::default()
    };
    let scored = rayforge_xgboost::predict(
        &rayforge_data::from_arrow(blocks).unwrap(),
        result.checkpoint().unwrap(),
        opts,
    );
    let out = scored.take_batch(10_000).unwrap();
    assert_eq!(out.num_rows(), 1200);
    let ids = out
        .column_by_name("id")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let got = out
        .column_by_name("prediction")
        .unwrap()
        .as_any()
        .downcast_ref::<Float32Array>()
        .unwrap();
    let want = model
        .predict(&DMatrix::from_batch(&all, &DataSpec::label("y"), "all").unwrap())
        .unwrap();
    for i in 0..1200 {
        let id = ids.value(i) as usize;
        assert_eq!(got.value(i), want[id], "row {id}");
    }
    // A checkpoint without a model fails the run, saying which.
    let empty = std::env::temp_dir().join(format!("rayforge-xgb-empty-{}", std::process::id()));
    let mut w = rayforge::checkpoint::CheckpointWriter::new().unwrap();
    w.write("other.txt", b"x").unwrap();
    let ckpt = w.commit(&empty, 1, &Default::default(), "a test").unwrap();
    let err = rayforge_xgboost::predict(
        &rayforge_data::from_arrow(vec![all]).unwrap(),
        &ckpt,
        Default::default(),
    )
    .count()
    .unwrap_err();
    assert!(err.to_string().contains("model.ubj"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn a_served_model_answers_json_rows_in_batches_and_names_bad_ones() {
    use rayforge_serve::client::request;
    use rayforge_serve::{deployment, Application, HttpOptions};
    use rayforge_xgboost::serve::XGBoostModel;
    use std::time::Duration;

    rayforge_integration_tests::own_process!();
    cluster();
    let all = rows(800, 7, false);
    let dir = storage("serve");
    let result = trainer(regression(), 10, std::slice::from_ref(&all), &dir, "serve")
        .fit()
        .unwrap();
    assert!(result.error().is_none(), "{:?}", result.error());
    let model = result.model().unwrap();
    let features = model.feature_names().unwrap();
    let app = Application::new("xgb").ingress(deployment::<XGBoostModel>("Model").user_config(serde_json::json!({
        "checkpoint": result.checkpoint().unwrap().location(),
        "max_batch_size": 8,
        "batch_wait_ms": 50,
    })));
    let s = rayforge_serve::start(
        vec![app],
        HttpOptions {
            port: 0,
            admin_port: 0,
            ..Default::default()
        },
    )
    .unwrap();
    s.wait_healthy(Duration::from_secs(120)).unwrap();
    let addr = s.http_addr().to_string();
    // Twelve rows at once, half by name and half as arrays: each answer is
    // the model's prediction for its row.
    let want = model
        .predict(&DMatrix::from_batch(&all, &DataSpec::label("y"), "all").unwrap())
        .unwrap();
    let value = |col: &str, i: usize| -> f64 {
        let c = all.column_by_name(col).unwrap();
        match c.as_any().downcast_ref::<Float64Array>() {
            Some(f) => f.value(i),
            None => c.as_any().downcast_ref::<Int64Array>().unwrap().value(i) as f64,
        }
    };
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let body = if i % 2 == 0 {
                let m: serde_json::Map<String, serde_json::Value> = features
                    .iter()
                    .map(|f| (f.clone(), serde_json::json!(value(f, i))))
                    .collect();
                serde_json::Value::Object(m)
            } else {
                serde_json::json!(features.iter().map(|f| value(f, i)).collect::<Vec<_>>())
            };
            let addr = addr.clone();
            std::thread::spawn(move || {
                let r = request(&addr, "POST", "/", body.to_string().as_bytes(), Duration::from_secs(60)).unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                (i, v["prediction"].as_f64().unwrap() as f32)
            })
        })
        .collect();
    for t in threads {
        let (i, got) = t.join().unwrap();
        assert!((got - want[i]).abs() < 1e-5, "row {i}: {got} vs {}", want[i]);
    }
    // Bad rows are 400s that say what is wrong.
    for (body, says) in [
        (r#"{"x0": 1.0, "nope": 2.0}"#, "no feature `nope`"),
        ("[1.0, 2.0]", "a row of 2 values; the model takes 7"),
        (r#"{"x0": "high"}"#, "`x0` is \"high\", not a number"),
        ("42", "a row is an object"),
    ] {
        let r = request(&addr, "POST", "/", body.as_bytes(), Duration::from_secs(60)).unwrap();
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }
    s.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tune_runs_asha_over_distributed_xgboost_trials_from_a_search_toml() {
    rayforge_integration_tests::own_process!();
    cluster();
    let dir = storage("tune");
    for (name, n, seed) in [("train", 3000, 8), ("valid", 1000, 9)] {
        let blocks: Vec<RecordBatch> = {
            let b = rows(n, seed, true);
            (0..4).map(|i| b.slice(i * n / 4, n / 4)).collect()
        };
        rayforge_data::from_arrow(blocks)
            .unwrap()
            .write_parquet(dir.join(name).to_str().unwrap())
            .unwrap();
    }
    let toml = dir.join("xgb.toml");
    std::fs::write(
        &toml,
        format!(
            r#"
name = "xgb_asha"
storage_path = "{storage}"
metric = "valid-logloss"
mode = "min"
num_samples = 1
max_concurrent_trials = 1

[trainable]
name = "xgboost"

[resources_per_trial]
cpu = 0.25
worker_bundles = [{{ CPU = 0.5 }}, {{ CPU = 0.5 }}]

[searcher]
type = "random"
seed = 3

[scheduler]
type = "asha"
max_t = 16
grace_period = 2
reduction_factor = 2

[param_space]
train = "{train}"
valid = "{valid}"
label = "y"
num_boost_round = 16
cpus_per_worker = 0.5
checkpoint_frequency = 4
objective = "binary:logistic"
eval_metric = "logloss"
eta = {{ grid = [0.5, 0.3, 0.02, 0.01] }}
max_depth = {{ randint = [2, 7] }}
subsample = {{ uniform = [0.5, 1.0] }}
"#,
            storage = dir.display(),
            train = dir.join("train").display(),
            valid = dir.join("valid").display(),
        ),
    )
    .unwrap();
    let code = rayforge_tune::cli::Cli::new("xgb-tune")
        .register("xgboost", rayforge_xgboost::tune::trainable)
        .run(&["run".to_string(), toml.display().to_string()]);
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let csv = std::fs::read_to_string(dir.join("xgb_asha/results.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("{name}: {header:?}"))
    };
    let (status, iters, loss, eta) = (
        col("status"),
        col("training_iteration"),
        col("valid-logloss"),
        col("config/eta"),
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4, "{csv}");
    // The first trial (eta 0.5, nothing to compare with) ran all 16 rounds;
    // ASHA stopped the slowest learner (eta 0.01) after a few, against the
    // earlier trials' results at the same rung (one trial at a time, in the
    // grid's order: the rungs fill in the same order on a loaded machine, so
    // the decisions are the same on every run).
    assert!(rows.iter().all(|r| r[status] == "TERMINATED"), "{csv}");
    let rounds_at = |e: f64| -> f64 {
        let r = rows.iter().find(|r| r[eta].parse::<f64>().unwrap() == e).unwrap();
        r[iters].parse().unwrap()
    };
    assert_eq!(rounds_at(0.5), 16.0, "{csv}");
    assert!(rounds_at(0.01) < 16.0, "{csv}");
    let best = rows
        .iter()
        .min_by(|a, b| a[loss].parse::<f64>().unwrap().total_cmp(&b[loss].parse().unwrap()))
        .unwrap();
    assert!(best[loss].parse::<f64>().unwrap() < 0.5, "{csv}");
    assert!(
        best[eta].parse::<f64>().unwrap() > 0.05,
        "the best trial learned fast: {csv}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_penguins_pipeline_runs_from_parquet_to_a_served_model() {
    // Its own cluster: the example starts one.
    let work = storage("penguins");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xgb-penguins"))
        .args(["--work", work.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["rows"], 344, "{stdout}");
    assert_eq!(summary["tune_trials"], 6);
    assert!(summary["tune_stopped_early"].as_u64().unwrap() >= 1, "{stdout}");
    let n = summary["valid_rows"].as_u64().unwrap();
    assert!((70..=100).contains(&n), "{stdout}");
    // Every answer over HTTP is the best model's own prediction, and the
    // species are told apart (the table is an easy one).
    assert_eq!(summary["served_equal_to_model"].as_u64().unwrap(), n, "{stdout}");
    assert!(summary["served_accuracy"].as_f64().unwrap() >= 0.9, "{stdout}");
    assert!(summary["trainer_valid_merror"].as_f64().unwrap() <= 0.1, "{stdout}");
    let _ = std::fs::remove_dir_all(&work);
}
