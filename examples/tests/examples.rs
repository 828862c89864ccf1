//! Runs every example binary and checks what it prints.

use std::process::Command;

fn run(exe: &str) -> String {
    run_with(exe, &[])
}

fn run_with(exe: &str, args: &[&str]) -> String {
    let out = Command::new(exe).args(args).output().expect("start example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{exe} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn quickstart_adds_arrays_and_counts_twice() {
    let out = run(env!("CARGO_BIN_EXE_quickstart"));
    assert!(
        out.contains("add(read_array(), read_array()) = [3.0, 3.0, 3.0, 3.0, 3.0]"),
        "{out}"
    );
    assert!(out.contains("counter after two inc() calls: 1 then 2"), "{out}");
}

#[test]
fn put_once_reports_both_timings_with_equal_results() {
    let out = run(env!("CARGO_BIN_EXE_put_once"));
    assert!(out.contains("passed by value:"), "{out}");
    assert!(out.contains("put once, by reference:"), "{out}");
    assert!(out.contains("read in place:"), "{out}");
    assert!(out.contains("each task summed a column: 5000"), "{out}");
}

#[test]
fn fan_out_spreads_tasks_over_worker_processes() {
    let out = run(env!("CARGO_BIN_EXE_fan_out"));
    let me = std::process::id().to_string();
    for n in [4, 8, 16] {
        assert!(out.contains(&format!("{n} tasks ran in ")), "{out}");
    }
    // Every task is listed once per run, and never in this test's process.
    let listed: usize = out
        .lines()
        .filter_map(|l| l.split("tasks [").nth(1))
        .map(|l| l.trim_end_matches(']').split(',').count())
        .sum();
    assert_eq!(listed, 4 + 8 + 16, "{out}");
    assert!(!out.contains(&format!("pid {me}:")));
    let multi = out
        .lines()
        .filter(|l| l.contains("worker processes:"))
        .any(|l| !l.contains(" in 1 worker"));
    assert!(multi, "tasks should use more than one worker process:\n{out}");
}

#[test]
fn train_linear_fits_the_line_through_a_killed_rank() {
    let out = run(env!("CARGO_BIN_EXE_train_linear"));
    let line = out
        .lines()
        .find(|l| l.starts_with("fitted y = "))
        .unwrap_or_else(|| panic!("{out}"));
    let num = |after: &str| -> f64 {
        line.split(after)
            .nth(1)
            .and_then(|s| s.split(|c: char| c != '.' && !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    assert!((num("y = ") - 3.0).abs() < 0.05, "{line}");
    assert!((num("x + ") - 1.0).abs() < 0.05, "{line}");
    assert!(line.contains("in 100 iterations, 1 restart(s)"), "{line}");
    assert!(out.contains("restarting from the latest checkpoint"), "{out}");
    // A line per report, each iteration once: the restart resumed at the
    // checkpoint of iteration 30.
    let reports = out.lines().filter(|l| l.starts_with("[linear] iteration")).count();
    assert_eq!(reports, 100, "{out}");
}

/// The number after `after` in `line`.
fn number_after(line: &str, after: &str) -> f64 {
    line.split(after)
        .nth(1)
        .and_then(|s| s.split(|c: char| c != '.' && !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{after}` in: {line}"))
}

#[test]
fn train_mlp_learns_the_digits_and_resumes_after_a_killed_rank() {
    let out = run_with(
        env!("CARGO_BIN_EXE_train_mlp"),
        &["--epochs", "6", "--kill-at-epoch", "2"],
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("trained "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("trained 6 epochs on 2 ranks, 1 restart(s)"), "{line}");
    assert!(number_after(line, "validation accuracy ") > 0.9, "{line}");
    assert!(out.contains("restarting from the latest checkpoint"), "{out}");
    // Epochs 1 and 2 were checkpointed before the kill: the new gang
    // resumed at epoch 3, and every epoch was reported once.
    let epochs: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("[digits-mlp] iteration"))
        .map(|l| number_after(l, " epoch="))
        .collect();
    assert_eq!(epochs, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "{out}");
}

#[test]
fn the_pipeline_goes_from_parquet_through_training_to_answers_over_http() {
    let out = run(env!("CARGO_BIN_EXE_pipeline"));
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out}"))
            .to_string()
    };
    assert!(line("[data] ").contains("1797 raw rows written as Parquet"), "{out}");
    let split = line("[data] preprocessed");
    assert_eq!(
        number_after(&split, "preprocessed: ") + number_after(&split, "rows, "),
        1797.0,
        "{split}"
    );
    assert!(number_after(&line("[train] "), "validation accuracy ") > 0.9, "{out}");
    assert!(line("[serve] ").contains("model.pt serving at http://"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("[query] POST / image")).count(),
        20,
        "{out}"
    );
    let summary = out
        .lines()
        .find(|l| l.contains("answered right over HTTP"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(number_after(summary, "[query] ") >= 16.0, "{summary}");
}

#[test]
fn tune_mlp_runs_asha_over_two_rank_training_runs() {
    let storage = std::env::temp_dir().join(format!("rayforge-tune-mlp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage).unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tune/mlp.toml")).unwrap();
    let file = storage.join("mlp.toml");
    std::fs::write(
        &file,
        format!("storage_path = {:?}\n{example}", storage.display().to_string()),
    )
    .unwrap();
    let out = run_with(env!("CARGO_BIN_EXE_tune_mlp"), &["run", file.to_str().unwrap()]);
    let best = out
        .lines()
        .find(|l| l.starts_with("best trial "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(number_after(best, "val_accuracy = ") > 0.9, "{best}");
    let dir = storage.join("mlp_asha");
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "six trials: {csv}");
    // ASHA stopped some trials after fewer epochs than others ran.
    let epochs: Vec<usize> = (0..6)
        .map(|i| {
            std::fs::read_to_string(dir.join(format!("trial_{i:05}/result.jsonl")))
                .unwrap()
                .lines()
                .count()
        })
        .collect();
    assert!(epochs.contains(&4) && epochs.iter().any(|e| *e < 4), "{epochs:?}");
    // Each trial's Train run wrote its own checkpoints; the trial's
    // latest is a copy of the run's, TorchScript model included.
    for (i, n) in epochs.iter().enumerate() {
        let trial = dir.join(format!("trial_{i:05}"));
        let latest = rayforge::checkpoint::latest(&trial).unwrap();
        assert_eq!(latest.manifest().unwrap().iteration, *n as u64);
        assert!(latest.file("model.pt").exists());
        assert!(rayforge::checkpoint::latest(&trial.join("train")).is_some());
    }
    std::fs::remove_dir_all(&storage).unwrap();
}
