//! The memory monitor kills the newest retriable task when node memory is
//! above the threshold; with the threshold at 0 every task is "over".

use std::time::Duration;

use rayforge::Error;
use rayforge_integration_tests::cluster_with;

#[rayforge::remote]
fn long_task() -> u32 {
    std::thread::sleep(Duration::from_secs(120));
    1
}

#[test]
fn tasks_over_the_memory_threshold_are_killed_with_a_clear_error() {
    rayforge_integration_tests::own_process!();
    cluster_with(|c| c.memory_usage_threshold(0.0));
    let err = long_task::options()
        .max_retries(1)
        .remote()
        .get_timeout(Duration::from_secs(100))
        .unwrap_err();
    match &err {
        Error::OutOfMemory { cause, .. } => {
            assert!(cause.contains("memory usage"), "{err}");
            assert!(cause.contains("threshold"), "{err}");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
}
