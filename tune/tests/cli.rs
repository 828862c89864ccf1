//! `tune run search.toml` as a user runs it: the example experiment (an
//! executable trainable printing JSON lines, TPE, ASHA) finishes with its
//! files and the best trial printed; a malformed file is refused with the
//! field and line.

use std::path::PathBuf;
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

#[test]
fn a_driver_killed_mid_experiment_resumes_from_its_journal() {
    let storage = std::env::temp_dir().join(format!("rayforge-tune-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage).unwrap();
    // The example, with slower steps so the kill lands mid-experiment.
    let example = std::fs::read_to_string(root().join("tune/examples/search.toml"))
        .unwrap()
        .replace("\"{y}\"]", "\"{y}\", \"--delay\", \"0.25\"]");
    let file = storage.join("search.toml");
    std::fs::write(
        &file,
        format!("storage_path = {:?}\n{example}", storage.display().to_string()),
    )
    .unwrap();
    let journal = storage.join("quadratic").join(rayforge_tune::JOURNAL);
    let mut first = Command::new(env!("CARGO_BIN_EXE_tune"))
        .args(["run", file.to_str().unwrap()])
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let some_ended = rayforge_integration_tests::wait_until(std::time::Duration::from_secs(120), || {
        ended(&std::fs::read_to_string(&journal).unwrap_or_default()).len() >= 2
    });
    assert!(some_ended, "two trials ended before the kill");
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let before = std::fs::read_to_string(&journal).unwrap();
    let ended_before = ended(&before);
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
    std::fs::remove_dir_all(&storage).unwrap();
}
