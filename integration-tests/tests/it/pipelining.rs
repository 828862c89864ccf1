//! Tasks pushed to a leased worker ahead of their replies (pipelining):
//! cancelling one that waits there, taking waiting ones back for an idle
//! worker, and a worker dying with tasks waiting behind its running one.
//! Each test counts every reply as short, so that every task is pushed
//! ahead, whatever the machine's speed.

use std::time::Duration;

use rayforge::Error;
use rayforge_integration_tests::{cluster_with, kill_self, marker, process_running, wait_until};

/// Every reply within ten seconds counts as short: tasks are pushed up to
/// 16 ahead, after the first reply of a lease.
fn pipelined_cluster(cpus: f64) {
    cluster_with(|c| {
        c.num_cpus(cpus)
            .short_task_us(10_000_000)
            .prestart_workers(cpus as usize)
    });
}

#[rayforge::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Marks that it started, then sleeps; returns its process id.
#[rayforge::remote]
fn slow_pid(ms: u64, started: String) -> u32 {
    std::fs::write(&started, b"1").expect("write marker");
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

#[rayforge::remote]
fn die() -> i64 {
    kill_self()
}

#[test]
fn cancelling_a_task_waiting_behind_another_spares_the_running_one() {
    rayforge_integration_tests::own_process!();
    pipelined_cluster(1.0);
    // The first reply opens the pipeline: the long task and the one behind
    // it go to the one worker together.
    let first = add::remote(1i64, 1i64);
    let started = marker("pipelined-long-started");
    let _ = std::fs::remove_file(&started);
    let long = slow_pid::remote(1_500u64, started.clone());
    let behind = add::remote(2i64, 2i64);
    assert_eq!(first.get().unwrap(), 2);
    assert!(
        wait_until(Duration::from_secs(60), || std::fs::metadata(&started).is_ok()),
        "the long task never started"
    );
    rayforge::cancel(&behind).unwrap();
    match behind.get_timeout(Duration::from_secs(60)) {
        Err(Error::Cancelled(f)) => assert!(f.contains("add"), "{f}"),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    // The running task finished on a worker that was not ended.
    let pid = long.get().unwrap();
    assert!(process_running(pid), "the worker {pid} of the running task was ended");
    assert_eq!(add::remote(3i64, 4i64).get().unwrap(), 7);
}

#[test]
fn an_idle_worker_takes_back_tasks_waiting_behind_a_long_one() {
    rayforge_integration_tests::own_process!();
    pipelined_cluster(2.0);
    // After the first short reply, a lease pushes every task it can to its
    // worker; the other lease, with nothing left in the queue, must take
    // the waiting ones back rather than let one worker run them in turn.
    let first = add::remote(1i64, 1i64);
    let dir = marker("pipelined-steal");
    // Long enough that the second worker's lease arrives while the first
    // task still runs, even on a loaded machine (at 600 ms a lease granted
    // late found two tasks already done by the first worker: 3 to 1).
    let longs: Vec<_> = (0..4)
        .map(|i| slow_pid::remote(2_000u64, format!("{dir}-{i}")))
        .collect();
    assert_eq!(first.get().unwrap(), 2);
    let pids = rayforge::get_all(&longs).unwrap();
    let mut per_worker = std::collections::HashMap::new();
    for p in &pids {
        *per_worker.entry(*p).or_insert(0) += 1;
    }
    assert!(
        per_worker.values().all(|&n| n <= 2),
        "4 long tasks on 2 CPUs ran unevenly: {per_worker:?}"
    );
}

#[test]
fn tasks_waiting_behind_one_that_kills_its_worker_run_elsewhere_at_no_retry_cost() {
    rayforge_integration_tests::own_process!();
    pipelined_cluster(1.0);
    let first = add::remote(1i64, 1i64);
    let doomed = die::options().max_retries(0).remote();
    let behind: Vec<_> = (0..3i64)
        .map(|i| add::options().max_retries(0).remote(i, 10i64))
        .collect();
    assert_eq!(first.get().unwrap(), 2);
    match doomed.get_timeout(Duration::from_secs(60)) {
        Err(Error::WorkerDied { function, .. }) => assert!(function.contains("die"), "{function}"),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // They never started on the dead worker: not a failure of theirs.
    let got = rayforge::get_all(&behind).unwrap();
    assert_eq!(got, vec![10, 11, 12]);
}
