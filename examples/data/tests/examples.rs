//! Runs the data examples and checks what they print.

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

fn number_after(out: &str, prefix: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out}"))
}

#[test]
fn preprocess_cleans_featurizes_groups_and_splits() {
    let out = run(env!("CARGO_BIN_EXE_preprocess"));
    assert_eq!(number_after(&out, "generated "), 200_000);
    // Rows with id % 97 == 0 (no distance) or id % 89 == 0 (no fare) go.
    let dropped = (0..200_000u64).filter(|i| i % 97 == 0 || i % 89 == 0).count() as u64;
    assert_eq!(number_after(&out, "kept "), 200_000 - dropped, "{out}");
    assert!(
        out.contains("| city |") && out.contains("mean(fare)") && out.contains("std(speed_kmh)"),
        "{out}"
    );
    let train = number_after(&out, "train: ");
    let test: u64 = out
        .split("test: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("test rows");
    assert_eq!(train + test, 200_000 - dropped);
    assert_eq!(test, ((200_000 - dropped) as f64 * 0.2).round() as u64);
}

#[test]
fn batch_inference_scores_every_row_on_an_actor_pool() {
    let out = run(env!("CARGO_BIN_EXE_batch_inference"));
    assert_eq!(number_after(&out, "scored "), 100_000, "{out}");
    let actors = number_after(&out, "actors used: ");
    assert!((1..=2).contains(&actors), "{out}");
    assert!(out.contains("top scores:"), "{out}");
}
