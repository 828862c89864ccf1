//! `tune run search.toml` as a user runs it: the example experiment (an
//! executable trainable printing JSON lines, TPE, ASHA) finishes with its
//! files and the best trial printed; a malformed file is refused with the
//! field and line.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `tune` with `args` from the workspace root, expecting success;
/// returns its stdout.
fn tune_ok(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tune"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_example_experiment_runs_from_its_search_toml() {
    let storage = std::env::temp_dir().join(format!("rayforge-tune-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let example = std::fs::read_to_string(root().join("tune/examples/search.toml")).unwrap();
    let file = storage.join("search.toml");
    std::fs::create_dir_all(&storage).unwrap();
    std::fs::write(
        &file,
        format!("storage_path = {:?}\n{example}", storage.display().to_string()),
    )
    .unwrap();
    let stdout = tune_ok(&["run", file.to_str().unwrap()]);
    let best = stdout
        .lines()
        .find(|l| l.starts_with("best trial "))
        .unwrap_or_else(|| panic!("{stdout}"));
    // 6 samples of 2 grid points; every trial's files, 8 steps at most.
    let dirs: Vec<PathBuf> = std::fs::read_dir(storage.join("quadratic"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 12, "{dirs:?}");
    let mut losses = Vec::new();
    for d in &dirs {
        let params: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("params.json")).unwrap()).unwrap();
        assert!(params["x"].is_f64() && params["y"].is_f64(), "{params}");
        let results = std::fs::read_to_string(d.join("result.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = results.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!((1..=8).contains(&lines.len()), "{}", d.display());
        assert_eq!(lines.last().unwrap()["training_iteration"], lines.len() as f64);
        losses.push(lines.last().unwrap()["loss"].as_f64().unwrap());
        assert!(std::fs::read_to_string(d.join("stdout.log"))
            .unwrap()
            .contains("\"loss\""));
    }
    let min = losses.iter().cloned().fold(f64::MAX, f64::min);
    assert!(best.contains(&format!("loss = {min}")), "{best} vs {losses:?}");
    std::fs::remove_dir_all(&storage).unwrap();
}

#[test]
fn a_malformed_search_toml_is_refused_naming_the_field_and_line() {
    let dir = std::env::temp_dir().join(format!("rayforge-tune-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("search.toml");
    std::fs::write(
        &file,
        "name = \"x\"\nmetric = \"loss\"\nmode = \"min\"\nmax_concurent_trials = 2\n[trainable]\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tune"))
        .args(["run", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 4") && stderr.contains("max_concurent_trials"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tune")).arg("walk").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Asking for help is not a file name.
    let out = Command::new(env!("CARGO_BIN_EXE_tune"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("usage: tune run SEARCH.TOML"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `ended` events of a journal, by trial.
fn ended(journal: &str) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for l in journal.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
            if v["event"] == "ended" {
                *m.entry(v["trial"].as_str().unwrap_or("").to_string()).or_insert(0) += 1;
            }
        }
    }
    m
}

/// The trials not ended whose latest checkpoint is at least `min`, with
/// that checkpoint's iteration.
fn checkpointed(
    journal: &str,
    ended: &std::collections::BTreeMap<String, usize>,
    min: u64,
) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for l in journal.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
            let trial = v["trial"].as_str().unwrap_or("").to_string();
            if v["event"] == "result" && v["checkpoint"].is_string() && !ended.contains_key(&trial) {
                m.insert(trial, v["metrics"]["training_iteration"].as_f64().unwrap_or(0.0) as u64);
            }
        }
    }
    m.retain(|_, at| *at >= min);
    m
}

/// The example experiment in a fresh directory `tag` (its storage), each
/// step taking `delay` seconds, with `extra` appended to its file: the
/// directory, the file and the experiment's journal.
fn slow_example(tag: &str, delay: &str, extra: &str) -> (PathBuf, PathBuf, PathBuf) {
    let storage = std::env::temp_dir().join(format!("rayforge-tune-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage).unwrap();
    let example = std::fs::read_to_string(root().join("tune/examples/search.toml"))
        .unwrap()
        .replace("\"{y}\"]", &format!("\"{{y}}\", \"--delay\", \"{delay}\"]"));
    let file = storage.join("search.toml");
    std::fs::write(
        &file,
        format!("storage_path = {:?}\n{example}{extra}", storage.display().to_string()),
    )
    .unwrap();
    let journal = storage.join("quadratic").join(rayforge_tune::JOURNAL);
    (storage, file, journal)
}

/// A `tune run` of `file` in the background, its output dropped.
fn spawn_run(file: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_tune"))
        .args(["run", file.to_str().unwrap()])
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_driver_killed_mid_experiment_resumes_from_its_journal() {
    // The example, with slower steps so the kill lands mid-experiment.
    let (storage, file, journal) = slow_example("resume", "0.25", "");
    let mut first = spawn_run(&file);
    // Kill it once two trials ended and a running one has checkpointed
    // twice.
    let mid = rayforge_integration_tests::wait_until(std::time::Duration::from_secs(120), || {
        let j = std::fs::read_to_string(&journal).unwrap_or_default();
        let done = ended(&j);
        done.len() >= 2 && !checkpointed(&j, &done, 2).is_empty()
    });
    assert!(mid, "two trials ended and one checkpointed before the kill");
    // While it runs, a second driver is kept off the experiment.
    let second = Command::new(env!("CARGO_BIN_EXE_tune"))
        .args(["run", file.to_str().unwrap(), "--resume"])
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    let why = String::from_utf8_lossy(&second.stderr);
    assert!(
        why.contains("is being run by") && why.contains(&format!("pid {}", first.id())),
        "{why}"
    );
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let before = std::fs::read_to_string(&journal).unwrap();
    let ended_before = ended(&before);
    let running_before = checkpointed(&before, &ended_before, 1);
    assert!(ended_before.len() < 12, "killed mid-experiment: {ended_before:?}");

    // Without --resume, the experiment is not overwritten.
    let refused = Command::new(env!("CARGO_BIN_EXE_tune"))
        .args(["run", file.to_str().unwrap()])
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));

    let stdout = tune_ok(&["run", file.to_str().unwrap(), "--resume"]);
    assert!(
        stdout.contains(&format!("{} trials ended", ended_before.len())),
        "{stdout}"
    );
    let after = std::fs::read_to_string(&journal).unwrap();
    let ended_after = ended(&after);
    // The same twelve trials, each ended exactly once: the finished ones
    // were not run again.
    assert_eq!(ended_after.len(), 12, "{ended_after:?}");
    assert!(ended_after.values().all(|n| *n == 1), "{ended_after:?}");
    let suggested = |j: &str| -> Vec<String> {
        j.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "suggested")
            .map(|v| format!("{} {}", v["trial"], v["config"]))
            .collect()
    };
    let (s0, s1) = (suggested(&before), suggested(&after));
    assert_eq!(s1.len(), 12);
    assert_eq!(
        s0[..],
        s1[..s0.len()],
        "the configs journaled before the kill were kept"
    );
    // The trials running at the kill went on from their latest checkpoints:
    // each step reported once, and the first after the resume says where
    // it went on from.
    let dir = storage.join("quadratic");
    for (trial, at) in &running_before {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join(trial).join("result.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let steps: Vec<f64> = lines
            .iter()
            .map(|l| l["training_iteration"].as_f64().unwrap())
            .collect();
        let want: Vec<f64> = (1..=steps.len()).map(|i| i as f64).collect();
        assert_eq!(steps, want, "{trial}");
        if steps.len() as u64 > *at {
            let resumed = &lines[*at as usize];
            assert_eq!(resumed["resumed_at"].as_f64(), Some(*at as f64), "{trial}: {resumed}");
        }
    }
    // The file changed since: a resume is refused, naming what changed.
    let changed = std::fs::read_to_string(&file).unwrap().replace("seed = 1", "seed = 2");
    std::fs::write(&file, changed).unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_tune"))
        .args(["run", file.to_str().unwrap(), "--resume"])
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("searcher.seed: was 1, now 2"), "{why}");
    assert_eq!(std::fs::read_to_string(&journal).unwrap(), after, "nothing appended");
    std::fs::remove_dir_all(&storage).unwrap();
}

#[test]
fn a_resumed_experiment_goes_on_with_what_is_left_of_its_time_budget() {
    // Slow trials (about 4 minutes in all) under a 5-minute budget.
    let (storage, file, journal) = slow_example("budget", "5", "\n[stop]\ntime_budget_s = 300\n");
    let mut first = spawn_run(&file);
    let running = rayforge_integration_tests::wait_until(std::time::Duration::from_secs(120), || {
        let j = std::fs::read_to_string(&journal).unwrap_or_default();
        j.contains("\"event\":\"clock\"") && j.contains("\"event\":\"result\"")
    });
    assert!(running, "the first driver journaled its run time and a result");
    first.kill().unwrap();
    first.wait().unwrap();
    // As if the first driver had run for 299 of the 300 s before it died.
    let mut j = std::fs::OpenOptions::new().append(true).open(&journal).unwrap();
    std::io::Write::write_all(&mut j, b"{\"event\":\"clock\",\"elapsed_s\":299.0}\n").unwrap();
    drop(j);
    let started = std::time::Instant::now();
    let stdout = tune_ok(&["run", file.to_str().unwrap(), "--resume"]);
    // Without the earlier time counted, the budget started over and every
    // trial ran to its end.
    assert!(stdout.contains("a stopper ended the experiment"), "{stdout}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(90),
        "the resumed run took {:?}",
        started.elapsed()
    );
    let clocks: Vec<f64> = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "clock")
        .filter_map(|v| v["elapsed_s"].as_f64())
        .collect();
    assert!(clocks.last().is_some_and(|t| *t >= 300.0), "{clocks:?}");
    std::fs::remove_dir_all(&storage).unwrap();
}

#[test]
fn the_pbt_example_exploits_and_goes_on_from_the_checkpoints_it_takes() {
    let storage = std::env::temp_dir().join(format!("rayforge-tune-pbt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage).unwrap();
    let example = std::fs::read_to_string(root().join("tune/examples/pbt.toml")).unwrap();
    let file = storage.join("pbt.toml");
    std::fs::write(
        &file,
        format!("storage_path = {:?}\n{example}", storage.display().to_string()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tune-examples"))
        .args(["run", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let best = stdout
        .lines()
        .find_map(|l| l.strip_prefix("best trial "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let score: f64 = best
        .split("score = ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{best}"));
    // The score a run reaches depends on when trials report, so how far
    // PBT gets past the fixed-rate ceiling of 16 is measured, not asserted
    // (the scheduler's unit test checks it on a simulated population);
    // here: that exploits happen and a trial goes on from the checkpoint
    // it took over.
    assert!(score > 0.0, "{best}");
    let journal = std::fs::read_to_string(storage.join("pbt_schedule").join(rayforge_tune::JOURNAL)).unwrap();
    let events: Vec<serde_json::Value> = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    let mut continued = 0;
    for (i, e) in events.iter().enumerate().filter(|(_, e)| e["event"] == "exploited") {
        let (trial, from) = (e["trial"].as_str().unwrap(), e["from"].as_str().unwrap());
        let path = e["checkpoint"].as_str().unwrap();
        let k: f64 = path.rsplit("checkpoint_").next().unwrap().parse().unwrap();
        // The donor's score at the checkpoint's iteration.
        let donor = events[..i]
            .iter()
            .rfind(|r| r["event"] == "result" && r["trial"] == from && r["metrics"]["training_iteration"] == k)
            .map(|r| r["metrics"]["score"].as_f64().unwrap())
            .unwrap_or_else(|| panic!("no result of {from} at {k} before {e}"));
        // The trial's next report, unless it was exploited again first.
        let next = events[i + 1..]
            .iter()
            .find(|r| r["trial"] == trial && (r["event"] == "result" || r["event"] == "exploited"));
        if let Some(r) = next.filter(|r| r["event"] == "result") {
            assert_eq!(r["metrics"]["training_iteration"], k + 1.0, "{r}");
            assert!(r["metrics"]["score"].as_f64().unwrap() >= donor, "{r} after {e}");
            continued += 1;
        }
    }
    assert!(continued > 0, "some exploited trial reported again: {journal}");
    // Each trial's params.json holds the config it ended with: the one it
    // was suggested, or the one of its last exploit.
    for d in 0..8 {
        let trial = format!("trial_{d:05}");
        let dir = storage.join("pbt_schedule").join(&trial);
        let params: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("params.json")).unwrap()).unwrap();
        let last_config = events
            .iter()
            .rfind(|e| e["trial"] == trial.as_str() && (e["event"] == "suggested" || e["event"] == "exploited"))
            .map(|e| e["config"].clone())
            .unwrap();
        assert_eq!(params, last_config, "{trial}");
        assert!(rayforge::checkpoint::list(&dir).len() <= 2, "num_to_keep = 2");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tune-examples"))
        .args(["run", file.to_str().unwrap(), "--resume"])
        .output()
        .unwrap();
    assert!(out.status.success(), "a finished experiment resumes to its end at once");
    std::fs::write(
        &file,
        example.replace("name = \"pbt_schedule\"\n\n", "name = \"nope\"\n\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tune-examples"))
        .args(["run", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("trainable.name") && stderr.contains("`nope`") && stderr.contains("registered: pbt_schedule"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&storage).unwrap();
}

/// A trial's program is a wrapper script that starts a long-lived child
/// (as `sh -c`, `torchrun` or a job launcher do): when the trial stops,
/// its whole process group ends, the wrapper's child included, instead of
/// living on as an orphan; and where cgroup v2 is writable, so does a
/// daemon that left the group with `setsid`.
#[test]
fn a_stopped_trials_grandchildren_end_with_it() {
    let storage = std::env::temp_dir().join(format!("rayforge-tune-group-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage).unwrap();
    let pids = storage.join("grandchildren");
    let daemons = storage.join("daemons");
    // No braces in the command: they would read as parameters.
    let script = format!(
        "sleep 600 & echo $! >> {}; setsid sleep 600 & echo $! >> {}; \
         while :; do printf '\\173\"loss\": 1\\175\\n'; sleep 0.1; done",
        pids.display(),
        daemons.display()
    );
    let toml = format!(
        r#"name = "wrapped"
metric = "loss"
mode = "min"
storage_path = {storage:?}

[trainable]
command = ["sh", "-c", {script:?}]

[resources_per_trial]
cpu = 0.5

[param_space]
x = {{ grid = [1, 2] }}

[stop]
training_iteration = 3
"#,
        storage = storage.display().to_string(),
    );
    let file = storage.join("search.toml");
    std::fs::write(&file, toml).unwrap();
    tune_ok(&["run", file.to_str().unwrap()]);
    let text = std::fs::read_to_string(&pids).unwrap();
    let mut pids: Vec<u32> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{text}");
    let cgroups = rayforge::util::Cgroup::create(&format!("rayforge-probe-{}", std::process::id()))
        .map(|c| c.end(std::time::Duration::from_secs(5)))
        .is_some();
    assert!(
        cgroups || std::env::var("RAYFORGE_REQUIRE_CGROUPS").as_deref() != Ok("1"),
        "cgroup v2 is not writable here"
    );
    let daemons: Vec<u32> = std::fs::read_to_string(&daemons)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(daemons.len(), 2);
    if cgroups {
        pids.extend(&daemons);
    } else {
        eprintln!("cgroup v2 is not writable here: the setsid daemons are not checked");
        for d in daemons {
            // SAFETY: kill(2) on a daemon this test's trials started.
            unsafe { libc::kill(d as i32, libc::SIGKILL) };
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while pids.iter().any(|p| rayforge::util::process_alive(*p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "a stopped trial's grandchild lives on: {pids:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::remove_dir_all(&storage).unwrap();
}
