//! Tune on nodes whose disk is their own (private-disk nodes: a tmpfs over
//! the cluster's directory in a mount namespace, as separate machines
//! have). With the experiment in the cluster's store (`cluster://`), every
//! trial's results, logs and checkpoints reach it from whichever node ran
//! the trial; a trial whose node dies goes on from its checkpoint on
//! another node; a driver SIGKILLed mid-experiment is resumed by a second
//! driver process that shares nothing with the first but the cluster; PBT
//! hands a checkpoint taken on one such node to a trial that goes on from
//! it. With the experiment on the driver's local path, a trial on such a
//! node fails at once, naming the node.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rayforge::checkpoint::{CheckpointDir, CheckpointWriter};
use rayforge::storage::{Storage, StorageUri};
use rayforge_integration_tests::{wait_until, LocalCluster};
use rayforge_tune::{
    BasicVariant, Domain, Mode, Pbt, SearchSpace, TrialContext, TrialStatus, TuneConfig, Tuner, TRAINING_ITERATION,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn one(ctx: &mut TrialContext) -> Result<(), String> {
    ctx.report([("loss", 1.0)]).map_err(|e| e.to_string())
}

/// Twelve steps of 300 ms, a checkpoint each (holding the step and the
/// node it was taken on); a restart checks the checkpoint it goes on from
/// and says where it went on from.
fn steps(ctx: &mut TrialContext) -> Result<(), String> {
    let node = rayforge::node_id().map_err(|e| e.to_string())?;
    let from = ctx.iteration();
    if let Some(c) = ctx.checkpoint() {
        let step: u64 = String::from_utf8_lossy(&c.read("step").map_err(|e| e.to_string())?)
            .parse()
            .map_err(|e| format!("{e}"))?;
        if step != from {
            return Err(format!("restored step {step}, iteration {from}"));
        }
    }
    std::fs::write(
        ctx.trial_dir().join("notes.txt"),
        format!("started on {node} at {from}\n"),
    )
    .map_err(|e| e.to_string())?;
    for i in from + 1..=12 {
        std::thread::sleep(Duration::from_millis(300));
        let mut w = CheckpointWriter::new().map_err(|e| e.to_string())?;
        w.write("step", i.to_string().as_bytes()).map_err(|e| e.to_string())?;
        w.write("node", node.as_bytes()).map_err(|e| e.to_string())?;
        ctx.report_checkpoint([("loss", 1.0 / i as f64), ("resumed_at", from as f64)], w)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn text(s: &Storage, key: &str) -> String {
    String::from_utf8(s.read(key).unwrap().unwrap_or_else(|| panic!("{key} in {}", s.uri()))).unwrap()
}

/// The `training_iteration`s of a trial's `result.jsonl` in storage, and
/// its lines.
fn results(trial: &Storage) -> (Vec<u64>, Vec<serde_json::Value>) {
    let lines: Vec<serde_json::Value> = text(trial, "result.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps = lines
        .iter()
        .map(|l| l["training_iteration"].as_f64().unwrap() as u64)
        .collect();
    (steps, lines)
}

/// The journal of an experiment in remote storage (its segments, in order).
fn journal(exp: &Storage) -> String {
    let mut keys: Vec<String> = exp
        .list("journal/")
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.key)
        .collect();
    keys.sort();
    keys.iter()
        .map(|k| String::from_utf8(exp.read(k).unwrap().unwrap_or_default()).unwrap())
        .collect()
}

fn events<'a>(journal: &'a str, kind: &'a str) -> impl Iterator<Item = serde_json::Value> + 'a {
    journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(move |v| v["event"] == kind)
}

#[test]
fn trials_on_private_disk_nodes_keep_everything_in_the_clusters_store() {
    rayforge_integration_tests::own_process!();
    let mut cluster = LocalCluster::start(&["--num-cpus", "0"], 5_000);
    let a = cluster.add_private_disk_node(&["--num-cpus", "1"]);
    let b = cluster.add_private_disk_node(&["--num-cpus", "1"]);
    rayforge::init(cluster.config()).expect("join the cluster");
    assert!(wait_until(Duration::from_secs(60), || {
        rayforge::cluster_resources().unwrap().total.get("CPU") == Some(&2.0)
    }));
    let space = SearchSpace::new().domain("x", Domain::Grid(vec![1.into()]));
    let config = |name: &str| TuneConfig {
        name: name.into(),
        storage_path: "cluster://experiments".into(),
        metric: "loss".into(),
        max_concurrent_trials: 1,
        max_failures: 1,
        verbose: false,
        ..Default::default()
    };

    // The experiment on the driver's local path: the trial's node cannot
    // see it, and the trial fails at once naming the node.
    let local = Tuner::new(
        one,
        BasicVariant::new(&space, 1, 0).unwrap(),
        TuneConfig {
            storage_path: cluster.base_dir().join("experiments").into(),
            max_failures: 0,
            ..config("local")
        },
    )
    .fit()
    .unwrap();
    let errors = local.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].1.contains("not shared by every node") && (errors[0].1.contains(&a) || errors[0].1.contains(&b)),
        "{}",
        errors[0].1
    );

    // A Rust trial whose node is killed mid-run goes on from its latest
    // checkpoint on the other node.
    let exp = StorageUri::from("cluster://experiments/retry").open().unwrap();
    let trial = exp.join("trial_00000").unwrap();
    let driver = std::thread::spawn(move || {
        Tuner::new(steps, BasicVariant::new(&space, 1, 0).unwrap(), config("retry"))
            .fit()
            .unwrap()
    });
    let checkpoints = CheckpointDir::new(trial.clone());
    let mut first_node = String::new();
    assert!(
        wait_until(Duration::from_secs(120), || {
            let Ok(Some(c)) = checkpoints.latest() else {
                return false;
            };
            let at = c.manifest().map_or(0, |m| m.iteration);
            first_node = c
                .read("node")
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            at >= 3
        }),
        "the trial checkpointed three steps"
    );
    assert!(first_node == a || first_node == b, "{first_node}");
    cluster.kill_node(&first_node);
    let grid = driver.join().unwrap();
    let t = &grid.trials[0];
    assert_eq!(t.status, TrialStatus::Terminated, "{:?}", t.status);
    assert_eq!(t.failures, 1);
    // Each step once, in storage; the restart went on from a checkpoint of
    // at least step 3.
    let (steps, lines) = results(&trial);
    assert_eq!(steps, (1..=12).collect::<Vec<u64>>());
    let resumed: Vec<f64> = lines.iter().map(|l| l["resumed_at"].as_f64().unwrap()).collect();
    let at = resumed.iter().copied().fold(0.0, f64::max);
    assert!(at >= 3.0, "{resumed:?}");
    let latest = t.checkpoint.as_ref().expect("a checkpoint").to_local().unwrap();
    assert_eq!(latest.manifest().unwrap().iteration, 12);
    let second_node = String::from_utf8(latest.read("node").unwrap()).unwrap();
    assert_ne!(second_node, first_node, "the retry ran on the other node");
    assert!(text(&trial, "notes.txt").contains(&format!("started on {second_node} at {at}")));
    assert!(text(&trial, "params.json").contains("\"x\""));
    assert_eq!(text(&trial, "progress.csv").lines().count(), 13);
    assert!(text(&exp, "results.csv").contains("trial_00000"));
    let j = journal(&exp);
    assert_eq!(events(&j, "retried").count(), 1, "{j}");
    assert_eq!(events(&j, "ended").count(), 1, "{j}");

    // An executable trial on a private-disk node: its logs, results and
    // checkpoints (a directory of its own per report, in the trial's
    // directory) all reach the store. (Braces in octal: the
    // command's `{name}` are its parameters.)
    let script = r#"echo "to stderr" >&2
for i in 1 2 3; do
  d="$RAYFORGE_TUNE_TRIAL_DIR/step_$i"
  mkdir "$d" && echo "step $i" > "$d/state"
  printf '\173"loss": %s, "checkpoint_dir": "step_%s"\175\n' "$i" "$i"
  echo "plain output $i"
done"#;
    let space = SearchSpace::new().domain("x", Domain::Grid(vec![1.into()]));
    let grid = Tuner::command(
        vec!["sh".into(), "-c".into(), script.into()],
        BasicVariant::new(&space, 1, 0).unwrap(),
        config("command"),
    )
    .fit()
    .unwrap();
    assert!(grid.errors().is_empty(), "{:?}", grid.errors());
    let trial = StorageUri::from("cluster://experiments/command/trial_00000")
        .open()
        .unwrap();
    assert_eq!(text(&trial, "stderr.log"), "to stderr\n");
    assert!(text(&trial, "stdout.log").contains("plain output 3"));
    assert_eq!(results(&trial).0, vec![1, 2, 3]);
    let kept = CheckpointDir::new(trial.clone()).list().unwrap();
    assert_eq!(kept.len(), 3);
    assert_eq!(kept[2].read("state").unwrap(), b"step 3\n");
}

#[test]
fn a_second_driver_resumes_an_experiment_in_the_clusters_store_after_the_first_is_killed() {
    rayforge_integration_tests::own_process!();
    let mut cluster = LocalCluster::start(&["--num-cpus", "0"], 10_000);
    cluster.add_private_disk_node(&["--num-cpus", "1"]);
    cluster.add_private_disk_node(&["--num-cpus", "1"]);
    rayforge::init(cluster.config()).expect("join the cluster");
    assert!(wait_until(Duration::from_secs(60), || {
        rayforge::cluster_resources().unwrap().total.get("CPU") == Some(&2.0)
    }));
    // The example experiment, slower, with the cluster's store.
    let work = cluster.base_dir().join("driver");
    std::fs::create_dir_all(&work).unwrap();
    let example = std::fs::read_to_string(root().join("tune/examples/search.toml"))
        .unwrap()
        .replace("\"{y}\"]", "\"{y}\", \"--delay\", \"0.3\"]");
    let file = work.join("search.toml");
    std::fs::write(&file, format!("storage_path = \"cluster://experiments\"\n{example}")).unwrap();
    let exp = StorageUri::from("cluster://experiments/quadratic").open().unwrap();
    // Each driver has a cache of its own, as on another machine.
    let driver = |cache: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tune"));
        c.current_dir(root())
            .env("RAYFORGE_ADDRESS", cluster.config().address.unwrap())
            .env("RAYFORGE_TOKEN", cluster.config().token.unwrap())
            .env("RAYFORGE_STORAGE_CACHE", work.join(cache));
        c
    };
    let mut first = driver("cache-1")
        .args(["run", file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(180), || events(&journal(&exp), "ended").count()
            >= 2),
        "two trials ended before the kill"
    );
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let before = journal(&exp);
    let ended_before = events(&before, "ended").count();
    assert!(ended_before < 12, "killed mid-experiment: {before}");

    let out = driver("cache-2")
        .args(["run", file.to_str().unwrap(), "--resume"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("resuming cluster://experiments/quadratic"), "{stdout}");
    let after = journal(&exp);
    let mut ended: Vec<String> = events(&after, "ended")
        .map(|v| v["trial"].as_str().unwrap().to_string())
        .collect();
    ended.sort();
    let n = ended.len();
    ended.dedup();
    assert_eq!((n, ended.len()), (12, 12), "each trial ended once: {after}");
    // Every trial's results are whole in the store, each step once.
    for t in &ended {
        let (steps, _) = results(&exp.join(t).unwrap());
        assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<u64>>(), "{t}");
        assert!(!steps.is_empty(), "{t}");
    }
}

/// PBT's toy: ten steps of 300 ms, `score` growing by `lr` a step, a
/// checkpoint each step (the score, and the node it was taken on);
/// `restored` reports the score it went on from (-1 without a
/// checkpoint).
fn climb(ctx: &mut TrialContext) -> Result<(), String> {
    let lr: f64 = ctx.get("lr").map_err(|e| e.to_string())?;
    let node = rayforge::node_id().map_err(|e| e.to_string())?;
    let (mut score, restored) = match ctx.checkpoint() {
        Some(c) => {
            let score: f64 = String::from_utf8_lossy(&c.read("score").map_err(|e| e.to_string())?)
                .parse()
                .map_err(|e| format!("{e}"))?;
            (score, score)
        }
        None => (0.0, -1.0),
    };
    for _ in ctx.iteration() + 1..=10 {
        std::thread::sleep(Duration::from_millis(300));
        score += lr;
        let mut w = CheckpointWriter::new().map_err(|e| e.to_string())?;
        w.write("score", score.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        w.write("node", node.as_bytes()).map_err(|e| e.to_string())?;
        ctx.report_checkpoint([("score", score), ("restored", restored)], w)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn pbt_on_private_disk_nodes_exploits_and_goes_on_from_the_donors_checkpoint() {
    rayforge_integration_tests::own_process!();
    let mut cluster = LocalCluster::start(&["--num-cpus", "0"], 5_000);
    cluster.add_private_disk_node(&["--num-cpus", "1"]);
    cluster.add_private_disk_node(&["--num-cpus", "1"]);
    rayforge::init(cluster.config()).expect("join the cluster");
    assert!(wait_until(Duration::from_secs(60), || {
        rayforge::cluster_resources().unwrap().total.get("CPU") == Some(&2.0)
    }));
    // Four trials, one per rate; the head has no CPU, so every trial, and
    // every checkpoint, is on a private-disk node.
    let rates = vec![0.01.into(), 0.1.into(), 0.5.into(), 1.0.into()];
    let space = SearchSpace::new().domain("lr", Domain::Grid(rates.clone()));
    let mutate = SearchSpace::new().domain("lr", Domain::Choice(rates));
    let pbt = Pbt::new(TRAINING_ITERATION, "score", Mode::Max, 2.0, &mutate, 1)
        .unwrap()
        .resample_probability(0.0)
        .unwrap();
    let grid = Tuner::new(
        climb,
        BasicVariant::new(&space, 1, 0).unwrap(),
        TuneConfig {
            name: "pbt".into(),
            storage_path: "cluster://experiments".into(),
            metric: "score".into(),
            mode: Mode::Max,
            max_concurrent_trials: 4,
            cpus_per_trial: 0.5,
            verbose: false,
            ..Default::default()
        },
    )
    .scheduler(pbt)
    .fit()
    .unwrap();
    assert!(grid.errors().is_empty(), "{:?}", grid.errors());

    let exp = StorageUri::from("cluster://experiments/pbt").open().unwrap();
    let j = journal(&exp);
    let all: Vec<serde_json::Value> = j.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let exploits: Vec<usize> = (0..all.len()).filter(|&i| all[i]["event"] == "exploited").collect();
    assert!(!exploits.is_empty(), "no exploit: {j}");
    let mut continued = 0;
    for i in exploits {
        let e = &all[i];
        let (trial, from) = (e["trial"].as_str().unwrap(), e["from"].as_str().unwrap());
        let k = e["iteration"].as_f64().unwrap();
        // The donor's score at the checkpoint it gave.
        let donor = all[..i]
            .iter()
            .rfind(|r| r["event"] == "result" && r["trial"] == from && r["metrics"][TRAINING_ITERATION] == k)
            .map(|r| r["metrics"]["score"].as_f64().unwrap())
            .unwrap_or_else(|| panic!("no result of {from} at {k} before {e}"));
        // The exploiting trial's next report, unless it was exploited
        // again first: it goes on from the donor's iteration and score.
        let next = all[i + 1..]
            .iter()
            .find(|r| r["trial"] == trial && (r["event"] == "result" || r["event"] == "exploited"));
        if let Some(r) = next.filter(|r| r["event"] == "result") {
            assert_eq!(
                r["metrics"][TRAINING_ITERATION].as_f64(),
                Some(k + 1.0),
                "{r} after {e}"
            );
            assert_eq!(r["metrics"]["restored"].as_f64(), Some(donor), "{r} after {e}");
            continued += 1;
        }
    }
    assert!(continued > 0, "some exploited trial reported again: {j}");
}
