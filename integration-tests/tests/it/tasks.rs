//! Remote tasks across real worker processes: results, references as
//! arguments, nesting, multiple returns, failures and retries.

use std::time::Duration;

use rayforge::{Error, ObjectRef};
use rayforge_integration_tests::{cluster, kill_self, marker, process_running, wait_until};

#[rayforge::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[rayforge::remote]
pub(crate) fn pid() -> u32 {
    std::process::id()
}

#[rayforge::remote]
fn sum_vec(v: Vec<f64>) -> f64 {
    v.iter().sum()
}

/// Recursion through nested tasks, each holding a CPU while it waits.
#[rayforge::remote]
fn depth(n: u32) -> u32 {
    if n == 0 {
        0
    } else {
        depth::remote(n - 1).get().expect("nested task") + 1
    }
}

#[rayforge::remote(num_returns = 3)]
fn split(x: i64) -> (i64, String, Vec<i64>) {
    (x, format!("n={x}"), vec![x; 3])
}

/// `parts` chunks of `0..n` (fewer when `short`), one return object each.
#[rayforge::remote(split_returns)]
fn chunks(n: i64, parts: usize, short: bool) -> Result<Vec<Vec<i64>>, String> {
    if n < 0 {
        return Err(format!("cannot chunk {n} values"));
    }
    let made = if short { parts - 1 } else { parts };
    Ok((0..made as i64)
        .map(|i| (i * n / parts as i64..(i + 1) * n / parts as i64).collect())
        .collect())
}

#[rayforge::remote]
fn total(part: Vec<i64>) -> i64 {
    part.iter().sum()
}

#[rayforge::remote]
fn explode(msg: String) -> i64 {
    panic!("boom: {msg}")
}

#[rayforge::remote]
fn checked_div(a: i64, b: i64) -> Result<i64, String> {
    if b == 0 {
        Err(format!("cannot divide {a} by zero"))
    } else {
        Ok(a / b)
    }
}

/// A task's own error type, recovered by its caller.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum StepError {
    /// The loss became NaN.
    Diverged {
        /// At this step.
        step: u64,
    },
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Diverged { step } => write!(f, "diverged at step {step}"),
        }
    }
}

#[rayforge::remote]
fn diverge(step: u64) -> Result<f64, StepError> {
    Err(StepError::Diverged { step })
}

#[rayforge::remote(num_returns = 2)]
fn diverge_two(step: u64) -> Result<(f64, f64), StepError> {
    Err(StepError::Diverged { step })
}

/// Passes on whatever a nested `get` of a slow task says.
#[rayforge::remote]
fn wait_briefly_for_a_slow_task() -> rayforge::Result<u64> {
    slow::remote(3000).get_timeout(Duration::from_millis(20))
}

#[rayforge::remote]
fn slow(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Calls a method of an actor that was killed, passing the failure up.
#[rayforge::remote]
fn call_a_killed_actor() -> rayforge::Result<i64> {
    let a = crate::actors::Counter::remote(0)?;
    rayforge::kill(&a)?;
    a.inc().get()
}

/// Fails (returns Err) until the marker file exists, then succeeds.
#[rayforge::remote]
fn flaky(path: String) -> Result<String, String> {
    if std::fs::metadata(&path).is_ok() {
        Ok("recovered".into())
    } else {
        std::fs::write(&path, b"1").map_err(|e| e.to_string())?;
        Err("first attempt fails".into())
    }
}

/// Kills its own worker process on the first attempt.
#[rayforge::remote]
fn die_once(path: String) -> String {
    if std::fs::metadata(&path).is_err() {
        let _ = std::fs::write(&path, b"1");
        kill_self();
    }
    "survived".into()
}

#[rayforge::remote]
fn always_die() -> i64 {
    kill_self()
}

#[rayforge::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn tasks_run_in_worker_processes_and_chain_by_reference() {
    cluster();
    let a = add::remote(1i64, 2i64);
    let b = add::remote(&a, 10i64);
    let c = add::remote(a, b);
    assert_eq!(c.get().unwrap(), 16);
    let p = pid::remote().get().unwrap();
    assert_ne!(p, std::process::id(), "tasks must run in a separate process");
}

#[test]
fn put_once_and_pass_by_reference() {
    cluster();
    let v: Vec<f64> = (0..200_000).map(|i| i as f64).collect();
    let expect: f64 = v.iter().sum();
    let r = rayforge::put(v.clone()).unwrap();
    let outs: Vec<ObjectRef<f64>> = (0..4).map(|_| sum_vec::remote(&r)).collect();
    for o in &outs {
        assert_eq!(o.get().unwrap(), expect);
    }
    // By value too (large values are stored for the task automatically).
    assert_eq!(sum_vec::remote(v).get().unwrap(), expect);
}

/// Submits `n` tiny tasks from inside a task and sums their results.
#[rayforge::remote]
fn sum_of_tiny_tasks(n: i64) -> i64 {
    let refs: Vec<ObjectRef<i64>> = (0..n).map(|i| add::remote(i, 1i64)).collect();
    rayforge::get_all(&refs).expect("tiny tasks").iter().sum()
}

#[test]
fn a_burst_of_tasks_shares_a_few_leases() {
    rayforge_integration_tests::own_process!();
    cluster();
    let leases = || rayforge::node_resources().unwrap().lease_requests;
    // Bursts from the driver and from inside a task (two submitters at once).
    // A submitter asks for at most a handful of leases per resource shape;
    // asking one per task flooded the node with requests (thousands in a
    // burst, which also tripped HTTP/2's flood protection on the node's
    // connection and failed every call on it).
    let n = 4000i64;
    let expect: i64 = (1..=n).sum();
    for _ in 0..3 {
        let before = leases();
        let inner = sum_of_tiny_tasks::options().num_cpus(0.0).remote(n);
        let refs: Vec<ObjectRef<i64>> = (0..n).map(|i| add::remote(i, 1i64)).collect();
        let outer: i64 = rayforge::get_all(&refs).unwrap().iter().sum();
        assert_eq!(outer, expect);
        assert_eq!(inner.get().unwrap(), expect);
        let asked = leases() - before;
        assert!(asked <= 100, "{asked} lease requests for {} tasks", 2 * n + 1);
    }
}

#[test]
fn nested_tasks_deeper_than_cores_do_not_deadlock() {
    cluster();
    // 2 CPUs, 6 levels, each level blocked in get: only works if blocked
    // workers lend their CPU back.
    assert_eq!(depth::remote(6u32).get_timeout(Duration::from_secs(120)).unwrap(), 6);
}

#[test]
fn multiple_returns_are_separate_objects() {
    cluster();
    let (a, b, c) = split::remote(7i64);
    assert_eq!(c.get().unwrap(), vec![7, 7, 7]);
    assert_eq!(b.get().unwrap(), "n=7");
    assert_eq!(a.get().unwrap(), 7);
}

#[test]
fn split_returns_are_one_object_per_element_counted_at_the_call() {
    cluster();
    let parts = chunks::remote(4, 100i64, 4usize, false);
    assert_eq!(parts.len(), 4);
    // Each part is its own object: a task gets one without the others.
    let sums: Vec<i64> = parts.iter().map(|p| total::remote(p).get().unwrap()).collect();
    assert_eq!(sums, vec![300, 925, 1550, 2175]);
    assert_eq!(parts[2].get().unwrap(), (50..75).collect::<Vec<i64>>());
    // Another count at the next call.
    assert_eq!(
        chunks::remote(2, 10i64, 2usize, false)[1].get().unwrap(),
        vec![5, 6, 7, 8, 9]
    );
    // A task returning another count than the call's fails, naming both,
    // on every reference.
    for p in chunks::remote(3, 9i64, 3usize, true) {
        let err = p.get().unwrap_err().to_string();
        assert!(err.contains("returned 2 values, expected 3"), "{err}");
    }
    // The task's own error reaches every reference.
    for p in chunks::remote(2, -1i64, 2usize, false) {
        let err = p.get().unwrap_err();
        assert_eq!(err.user_error::<String>().as_deref(), Some("cannot chunk -1 values"));
    }
}

#[test]
fn a_panicking_task_fails_only_itself_with_message_and_location() {
    cluster();
    let bad = explode::remote("kaput".to_string());
    let good = add::remote(2i64, 2i64);
    let err = bad.get().unwrap_err();
    match &err {
        Error::TaskFailed { function, message, .. } => {
            assert!(function.ends_with("explode"), "{err}");
            assert!(message.contains("boom: kaput"), "{err}");
            assert!(message.contains("tests/it/tasks.rs"), "location missing: {err}");
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    assert_eq!(good.get().unwrap(), 4);
    // A task depending on a failed one fails with the same error, unrun.
    let dep = add::remote(explode::remote("x".to_string()), 1i64);
    assert!(matches!(dep.get(), Err(Error::TaskFailed { .. })));
}

#[test]
fn returned_errors_are_typed_and_retry_exceptions_retries_them() {
    cluster();
    assert_eq!(checked_div::remote(9i64, 3i64).get().unwrap(), 3);
    let err = checked_div::remote(1i64, 0i64).get().unwrap_err();
    assert!(err.to_string().contains("cannot divide 1 by zero"), "{err}");
    let m = marker("flaky");
    let no_retry = flaky::options().max_retries(0).remote(m.clone());
    assert!(no_retry.get().is_err());
    let _ = std::fs::remove_file(&m);
    let retried = flaky::options().max_retries(1).retry_exceptions(true).remote(m.clone());
    assert_eq!(retried.get().unwrap(), "recovered");
}

#[test]
fn a_killed_worker_is_retried_then_reported() {
    cluster();
    let m = marker("die_once");
    assert_eq!(die_once::remote(m).get().unwrap(), "survived");
    let err = always_die::options().max_retries(1).remote().get().unwrap_err();
    match &err {
        Error::WorkerDied { cause, .. } => assert!(cause.contains("signal 9"), "{err}"),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // The node still works.
    assert_eq!(add::remote(1i64, 1i64).get().unwrap(), 2);
}

#[test]
fn infeasible_requests_fail_fast_with_the_reason() {
    cluster();
    let err = add::options()
        .num_cpus(64.0)
        .remote(1i64, 1i64)
        .get_timeout(Duration::from_secs(60))
        .unwrap_err();
    match &err {
        Error::Infeasible { detail, .. } => assert!(detail.contains("CPU: requested 64"), "{err}"),
        other => panic!("expected Infeasible, got {other:?}"),
    }
    let err = add::options()
        .resource("TPU", 1.0)
        .remote(1i64, 1i64)
        .get()
        .unwrap_err();
    assert!(matches!(err, Error::Infeasible { .. }), "{err}");
    let err = add::options().num_cpus(-1.0).remote(1i64, 1i64).get().unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

#[test]
fn wait_and_get_timeout() {
    cluster();
    let fast = sleep_ms::remote(1u64);
    let slow = sleep_ms::remote(60_000u64);
    let (ready, pending) = rayforge::wait(&[slow.clone(), fast.clone()], 1, Some(Duration::from_secs(60))).unwrap();
    assert_eq!(ready, vec![fast.clone()]);
    assert_eq!(pending, vec![slow.clone()]);
    let (ready, _) = rayforge::wait(std::slice::from_ref(&slow), 1, Some(Duration::from_millis(50))).unwrap();
    assert!(ready.is_empty());
    assert!(matches!(
        slow.get_timeout(Duration::from_millis(50)),
        Err(Error::GetTimeout(_))
    ));
    assert!(matches!(
        rayforge::wait(&[fast], 2, None),
        Err(Error::InvalidArgument(_))
    ));
    rayforge::cancel(&slow).unwrap();
}

#[test]
fn cancel_a_queued_task() {
    cluster();
    // Fill both CPUs, then queue one more and cancel it before it runs.
    let blockers: Vec<_> = (0..2).map(|_| sleep_ms::remote(3_000u64)).collect();
    let queued = sleep_ms::remote(1u64);
    rayforge::cancel(&queued).unwrap();
    assert!(matches!(queued.get(), Err(Error::Cancelled(_))));
    for b in blockers {
        assert_eq!(b.get().unwrap(), 3_000);
    }
}

/// Writes its pid to `path`, then spins for `ms` without ever yielding to
/// the runtime (only ending the process stops it).
#[rayforge::remote]
fn busy_with_pid(path: String, ms: u64) -> u64 {
    std::fs::write(&path, std::process::id().to_string()).expect("write pid file");
    let end = std::time::Instant::now() + Duration::from_millis(ms);
    while std::time::Instant::now() < end {
        std::hint::spin_loop();
    }
    ms
}

#[test]
fn cancel_interrupts_a_running_task_by_ending_its_worker() {
    cluster();
    let path = marker("busy_pid");
    let _ = std::fs::remove_file(&path);
    let busy = busy_with_pid::remote(path.clone(), 120_000u64);
    let mut pid = 0u32;
    assert!(
        wait_until(Duration::from_secs(60), || {
            pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            pid != 0
        }),
        "the task never started"
    );
    assert!(process_running(pid));
    rayforge::cancel(&busy).unwrap();
    // Well before the task's two minutes: the worker was ended.
    match busy.get_timeout(Duration::from_secs(60)) {
        Err(Error::Cancelled(f)) => assert!(f.contains("busy_with_pid"), "{f}"),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert!(
        wait_until(Duration::from_secs(30), || !process_running(pid)),
        "the cancelled task's worker {pid} is still running"
    );
    // Cancelling again, or a finished task, is an error; the node goes on.
    assert!(matches!(rayforge::cancel(&busy), Err(Error::InvalidArgument(_))));
    assert_eq!(add::remote(2i64, 3i64).get().unwrap(), 5);
}

#[rayforge::remote(streaming)]
fn count_to(n: u32) -> impl Iterator<Item = u32> {
    0..n
}

/// Yields one item, then waits for the caller's signal before the next: only
/// works if the caller sees items while the task still runs.
#[rayforge::remote(streaming)]
fn step_by_signal(signal: rayforge::util::Queue<u8>) -> impl Iterator<Item = u32> {
    (0..3u32).inspect(move |i| {
        if *i > 0 {
            signal.get().expect("signal");
        }
    })
}

#[rayforge::remote(streaming)]
fn breaks_at_two(n: u32) -> impl Iterator<Item = rayforge::Buffer<u8>> {
    (0..n).map(|i| {
        if i == 2 {
            panic!("generator broke at item {i}");
        }
        rayforge::Buffer::from(vec![i as u8; 1 << 20])
    })
}

#[test]
fn streaming_generators_yield_items_in_order_as_they_are_produced() {
    cluster();
    let items: Vec<u32> = count_to::remote(50u32).map(|r| r.unwrap().get().unwrap()).collect();
    assert_eq!(items, (0..50).collect::<Vec<_>>());

    let signal = rayforge::util::Queue::<u8>::new(0).unwrap();
    let mut gen = step_by_signal::remote(signal.clone());
    for want in 0..3u32 {
        let r = gen.next().expect("item").unwrap();
        assert_eq!(r.get_timeout(Duration::from_secs(60)).unwrap(), want);
        signal.put(1).unwrap();
    }
    assert!(gen.next().is_none());

    let mut gen = breaks_at_two::remote(5u32);
    for want in 0..2u8 {
        let b = gen.next().expect("item").unwrap().get().unwrap();
        assert_eq!((b.len(), b[0]), (1 << 20, want));
    }
    let err = gen.next().expect("the error").unwrap_err();
    assert!(err.to_string().contains("generator broke at item 2"), "{err}");
    assert!(gen.next().is_none());
}

#[test]
fn scheduling_strategies_on_one_node() {
    use rayforge::SchedulingStrategy;
    cluster();
    let me = rayforge::node_id().unwrap();
    let affinity = |node_id: &str, soft: bool| SchedulingStrategy::NodeAffinity {
        node_id: node_id.to_string(),
        soft,
    };
    // SPREAD over a one-node cluster, and affinity to this node, run here.
    let refs: Vec<_> = (0..6)
        .map(|i| {
            add::options()
                .scheduling_strategy(SchedulingStrategy::Spread)
                .remote(i, 1)
        })
        .collect();
    assert_eq!(rayforge::get_all(&refs).unwrap(), (1..7).collect::<Vec<i64>>());
    let r = add::options().scheduling_strategy(affinity(&me, false)).remote(2, 2);
    assert_eq!(r.get().unwrap(), 4);
    // A node that does not exist: soft falls back, hard fails naming it.
    let r = add::options()
        .scheduling_strategy(affinity("feedfacefeedface", true))
        .remote(1, 1);
    assert_eq!(r.get().unwrap(), 2);
    let err = add::options()
        .scheduling_strategy(affinity("feedfacefeedface", false))
        .remote(1, 1)
        .get()
        .unwrap_err();
    assert!(
        matches!(err, Error::Infeasible { .. }) && err.to_string().contains("feedfacefeedface"),
        "{err}"
    );
    // Hard affinity to this node for more than it has can never run.
    let err = add::options()
        .scheduling_strategy(affinity(&me, false))
        .num_cpus(64.0)
        .remote(1, 1)
        .get()
        .unwrap_err();
    assert!(matches!(err, Error::Infeasible { .. }), "{err}");
    let err = add::options()
        .scheduling_strategy(affinity("", false))
        .remote(1, 1)
        .get()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

#[test]
fn errors_keep_their_kind_and_user_errors_their_value_across_a_process_hop() {
    cluster();
    // A rayforge::Error a task returns reaches the caller as itself.
    match wait_briefly_for_a_slow_task::remote().get() {
        Err(e @ Error::GetTimeout(d)) => {
            assert_eq!(d, Duration::from_millis(20));
            assert!(e.is_retriable());
        }
        other => panic!("expected GetTimeout, got {other:?}"),
    }
    let err = call_a_killed_actor::remote().get().unwrap_err();
    assert!(matches!(err, Error::ActorDied { .. }), "{err:?}");
    // A user error type comes back as its value, one or several returns.
    let err = diverge::remote(7).get().unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed { function, message, .. }
        if function.ends_with("diverge") && message == "diverged at step 7"),
        "{err:?}"
    );
    assert_eq!(err.user_error::<StepError>(), Some(StepError::Diverged { step: 7 }));
    assert_eq!(err.user_error::<String>(), None);
    let (a, _) = diverge_two::remote(9);
    let err = a.get().unwrap_err();
    assert_eq!(err.user_error::<StepError>(), Some(StepError::Diverged { step: 9 }));
    // A String error still carries its message (and, serializable, its value).
    let err = checked_div::remote(1i64, 0i64).get().unwrap_err();
    assert_eq!(err.user_error::<String>().as_deref(), Some("cannot divide 1 by zero"));
}
