//! The cluster benchmark runs end to end at a small scale (its figures are
//! not checked here, only that every case ran and measured something).

use rayforge_integration_tests::rayforge_bin;

#[test]
fn the_cluster_benchmark_runs_every_case() {
    let json = std::env::temp_dir().join(format!("rayforge-cluster-bench-{}.json", std::process::id()));
    let out = std::process::Command::new(rayforge_bin())
        .args([
            "cluster-benchmark",
            "--tasks",
            "300",
            "--actors",
            "6",
            "--broadcast-mib",
            "8",
        ])
        .args(["--scale-nodes", "3", "--json"])
        .arg(&json)
        .output()
        .expect("run rayforge cluster-benchmark");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for case in [
        "many tasks (3 nodes)",
        "cross-node actor calls sync",
        "object broadcast (3 nodes)",
        "many actors (3 nodes)",
        "control plane: nodes joined",
        "control plane: a task on every node",
    ] {
        assert!(v[case].as_f64().is_some_and(|x| x > 0.0), "{case} missing in {v}");
    }
    assert!(stdout.contains("300 tasks in"), "{stdout}");
    assert!(stdout.contains("3 tasks on 3 nodes"), "{stdout}");
    let _ = std::fs::remove_file(&json);
}
