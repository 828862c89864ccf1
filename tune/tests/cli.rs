//! `tune run search.toml` as a user runs it: the example experiment (an
//! executable trainable printing JSON lines, TPE, ASHA) finishes with its
//! files and the best trial printed; a malformed file is refused with the
//! field and line.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
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
    let out = Command::new(env!("CARGO_BIN_EXE_tune"))
        .args(["run", file.to_str().unwrap()])
        .current_dir(root())
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
        .find(|l| l.starts_with("best trial "))
        .unwrap_or_else(|| panic!("{stdout}"));
    // 6 samples of 2 grid points; every trial's files, 8 steps at most.
    let dirs: Vec<PathBuf> = std::fs::read_dir(storage.join("quadratic"))
        .unwrap()
        .map(|e| e.unwrap().path())
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
