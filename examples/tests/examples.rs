//! Runs every example binary and checks what it prints.

use std::process::Command;

fn run(exe: &str) -> String {
    let out = Command::new(exe).output().expect("start example");
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
