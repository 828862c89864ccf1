//! Actors in real worker processes: ordering, names, handles passed to tasks,
//! restarts after SIGKILL, kill, panics, async actors, and their lifetime
//! (ended with their last handle unless detached).

use std::time::Duration;

use rayforge::{Buffer, Error, ObjectRef};
use rayforge_integration_tests::{cluster, kill_self, marker, process_running, wait_until};

/// A counter actor with ways to crash.
#[rayforge::actor]
pub struct Counter {
    value: i64,
}

#[rayforge::actor]
impl Counter {
    fn new(start: i64) -> Self {
        Counter { value: start }
    }

    fn inc(&mut self) -> i64 {
        self.value += 1;
        self.value
    }

    fn add(&mut self, n: i64) -> i64 {
        self.value += n;
        self.value
    }

    fn value(&self) -> i64 {
        self.value
    }

    fn pid(&self) -> u32 {
        std::process::id()
    }

    fn crash(&mut self) -> i64 {
        kill_self()
    }

    /// Kills the process the first time (marker file), then answers.
    fn crash_once(&mut self, path: String) -> i64 {
        if std::fs::metadata(&path).is_err() {
            let _ = std::fs::write(&path, b"1");
            kill_self();
        }
        self.value
    }

    fn fail(&self) -> i64 {
        panic!("method failed on purpose")
    }

    /// Waits for a thread of its own that uses the API (a `put` and a task),
    /// while this method blocks.
    fn via_helper_thread(&mut self, n: i64) -> i64 {
        let h = std::thread::spawn(move || {
            let r = rayforge::put(n).expect("put from a helper thread");
            let doubled = double::remote(&r).get().expect("task from a helper thread");
            r.get().expect("get") + doubled
        });
        self.value += h.join().expect("helper thread");
        self.value
    }
}

#[rayforge::remote]
fn double(x: i64) -> i64 {
    2 * x
}

/// An actor whose constructor panics.
#[rayforge::actor]
pub struct Broken;

#[rayforge::actor]
impl Broken {
    fn new() -> Self {
        panic!("constructor exploded")
    }

    fn ping(&self) -> u8 {
        1
    }
}

/// Calls an actor from inside a task.
#[rayforge::remote]
fn bump_twice(c: CounterHandle) -> i64 {
    c.inc().get().expect("first call");
    c.inc().get().expect("second call")
}

#[test]
fn calls_run_in_submission_order_in_their_own_process() {
    cluster();
    let c = Counter::remote(0i64).unwrap();
    let refs: Vec<ObjectRef<i64>> = (0..200).map(|_| c.inc()).collect();
    let got = rayforge::get_all(&refs).unwrap();
    assert_eq!(got, (1..=200).collect::<Vec<_>>());
    assert_ne!(c.pid().get().unwrap(), std::process::id());
    // A result passed to the next call of the same actor.
    let v = c.value();
    assert_eq!(c.add(v).get().unwrap(), 400);
}

#[test]
fn handles_travel_to_tasks_and_names_find_actors() {
    cluster();
    let c = Counter::options().name("shared").remote(10i64).unwrap();
    assert_eq!(bump_twice::remote(c.clone()).get().unwrap(), 12);
    let found: CounterHandle = rayforge::get_actor("shared").unwrap();
    assert_eq!(found.inc().get().unwrap(), 13);
    let dup = Counter::options().name("shared").remote(0i64).unwrap_err();
    assert!(dup.to_string().contains("already exists"), "{dup}");
    assert!(matches!(
        rayforge::get_actor::<CounterHandle>("nobody"),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        rayforge::get_actor::<BrokenHandle>("shared"),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_crashed_actor_restarts_within_its_budget_then_dies_with_the_cause() {
    cluster();
    let c = Counter::options().max_restarts(1).remote(100i64).unwrap();
    assert_eq!(c.inc().get().unwrap(), 101);
    let first_pid = c.pid().get().unwrap();
    let err = c.crash().get().unwrap_err();
    assert!(matches!(err, Error::ActorDied { .. }), "{err}");
    // Restarted: the constructor ran again, state is fresh, new process.
    assert_eq!(c.inc().get_timeout(Duration::from_secs(60)).unwrap(), 101);
    assert_ne!(c.pid().get().unwrap(), first_pid);
    let _ = c.crash().get();
    let err = c.inc().get_timeout(Duration::from_secs(60)).unwrap_err();
    match &err {
        Error::ActorDied { cause, .. } => {
            assert!(cause.contains("restarted 1 of 1 times"), "{err}");
            assert!(cause.contains("signal 9"), "{err}");
        }
        other => panic!("expected ActorDied, got {other:?}"),
    }
}

#[test]
fn max_task_retries_resends_a_call_interrupted_by_a_crash() {
    cluster();
    let c = Counter::options()
        .max_restarts(2)
        .max_task_retries(1)
        .name("retrying")
        .remote(5i64)
        .unwrap();
    let m = marker("crash_once");
    assert_eq!(c.crash_once(m).get_timeout(Duration::from_secs(60)).unwrap(), 5);
    // A handle found by name retries the same way.
    let found: CounterHandle = rayforge::get_actor("retrying").unwrap();
    let m2 = marker("crash_once_by_name");
    assert_eq!(found.crash_once(m2).get_timeout(Duration::from_secs(60)).unwrap(), 5);
}

#[test]
fn killed_actor_fails_its_calls_and_is_not_restarted() {
    cluster();
    let c = Counter::options().max_restarts(5).name("doomed").remote(0i64).unwrap();
    assert_eq!(c.inc().get().unwrap(), 1);
    rayforge::kill(&c).unwrap();
    let err = c.inc().get_timeout(Duration::from_secs(60)).unwrap_err();
    match &err {
        Error::ActorDied { cause, .. } => assert!(cause.contains("killed"), "{err}"),
        other => panic!("expected ActorDied, got {other:?}"),
    }
    assert!(
        rayforge::get_actor::<CounterHandle>("doomed").is_err(),
        "name is released"
    );
}

#[test]
fn a_quick_actor_whose_method_then_blocks_on_the_api_does_not_stall() {
    cluster();
    let c = Counter::remote(0i64).unwrap();
    // Quick calls: they may run on the worker's I/O thread.
    for i in 1..=50 {
        assert_eq!(c.inc().get().unwrap(), i);
    }
    // Then a call that blocks until another thread of the actor's process
    // has used the API, which needs that process's I/O to go on.
    let r = c.via_helper_thread(5i64).get_timeout(Duration::from_secs(60));
    assert_eq!(r.unwrap(), 50 + 5 + 10);
    for i in 1..=3 {
        let v = c.via_helper_thread(1i64).get_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(v, 65 + 3 * i);
    }
    assert_eq!(c.value().get().unwrap(), 74);
}

#[test]
fn a_panicking_method_fails_only_that_call() {
    cluster();
    let c = Counter::remote(0i64).unwrap();
    let err = c.fail().get().unwrap_err();
    assert!(err.to_string().contains("method failed on purpose"), "{err}");
    assert_eq!(c.inc().get().unwrap(), 1, "actor state survives a failed call");
}

#[test]
fn a_failing_constructor_kills_the_actor_with_the_reason() {
    cluster();
    let b = Broken::remote().unwrap();
    let err = b.ping().get_timeout(Duration::from_secs(60)).unwrap_err();
    match &err {
        Error::ActorDied { cause, .. } => assert!(cause.contains("constructor exploded"), "{err}"),
        other => panic!("expected ActorDied, got {other:?}"),
    }
}

/// An async actor whose calls wait for each other: they only finish if they
/// run concurrently.
#[rayforge::actor]
pub struct Rendezvous {
    barrier: rayforge::__private::tokio::sync::Barrier,
}

#[rayforge::actor]
impl Rendezvous {
    fn new(n: usize) -> Self {
        Rendezvous {
            barrier: rayforge::__private::tokio::sync::Barrier::new(n),
        }
    }

    async fn meet(&self, i: u32) -> u32 {
        self.barrier.wait().await;
        i
    }

    /// Awaits an object inside async code.
    async fn double_of(&self, r: Vec<ObjectRef<i64>>) -> i64 {
        let mut total = 0;
        for x in r {
            total += x.await.expect("await an object");
        }
        2 * total
    }
}

#[test]
fn async_actors_run_calls_concurrently_up_to_max_concurrency() {
    cluster();
    let r = Rendezvous::options().max_concurrency(8).remote(8usize).unwrap();
    let refs: Vec<_> = (0..8u32).map(|i| r.meet(i)).collect();
    let got = rayforge::get_all(&refs).unwrap();
    assert_eq!(got, (0..8).collect::<Vec<_>>());
    let parts = vec![rayforge::put(20i64).unwrap(), rayforge::put(1i64).unwrap()];
    assert_eq!(r.double_of(parts).get().unwrap(), 42);
}

#[test]
fn infeasible_and_invalid_actor_options_are_errors() {
    cluster();
    let err = Counter::options().num_cpus(99.0).remote(0i64).unwrap_err();
    assert!(matches!(err, Error::Infeasible { .. }), "{err}");
    let err = Counter::options().name("").remote(0i64).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

/// Holds an actor handle until `gate` exists, then calls through it.
#[rayforge::remote]
fn inc_after_gate(c: CounterHandle, gate: String) -> i64 {
    while !std::path::Path::new(&gate).exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    c.inc().get().expect("call through a borrowed handle")
}

#[test]
fn an_actor_ends_when_its_last_handle_anywhere_is_dropped() {
    cluster();
    // A call made just before the last handle drops still completes; then
    // the actor's process ends and its name is released.
    let c = Counter::options().name("collected").remote(0i64).unwrap();
    let pid = c.pid().get().unwrap();
    let last = c.inc();
    drop(c);
    assert_eq!(last.get().unwrap(), 1);
    assert!(
        wait_until(Duration::from_secs(60), || !process_running(pid)),
        "actor process {pid} outlived its last handle"
    );
    assert!(wait_until(Duration::from_secs(60), || rayforge::get_actor::<
        CounterHandle,
    >("collected")
    .is_err()));

    // A handle passed to a task keeps the actor alive after the creator
    // dropped its own, until that task is done with it.
    let gate = marker("gc_gate");
    let c = Counter::options().name("borrowed").remote(0i64).unwrap();
    let pid = c.pid().get().unwrap();
    let r = inc_after_gate::remote(c.clone(), gate.clone());
    drop(c);
    let found: CounterHandle = rayforge::get_actor("borrowed").unwrap();
    assert_eq!(found.value().get().unwrap(), 0);
    std::fs::write(&gate, b"go").unwrap();
    assert_eq!(r.get().unwrap(), 1);
    drop(r);
    assert!(
        wait_until(Duration::from_secs(60), || !process_running(pid)),
        "actor process {pid} outlived the task's handle"
    );
    // A looked-up handle does not keep it alive; its calls fail with the cause.
    match found.inc().get_timeout(Duration::from_secs(60)) {
        Err(Error::ActorDied { cause, .. }) => assert!(cause.contains("handles were dropped"), "{cause}"),
        other => panic!("expected ActorDied, got {other:?}"),
    }

    // A detached actor outlives every handle.
    let d = Counter::options().name("kept").detached().remote(7i64).unwrap();
    let pid = d.pid().get().unwrap();
    drop(d);
    let again: CounterHandle = rayforge::get_actor("kept").unwrap();
    assert_eq!(again.value().get().unwrap(), 7);
    assert!(process_running(pid));
}

/// An actor built from a large object.
#[rayforge::actor]
pub struct Holder {
    data: Buffer<u64>,
}

#[rayforge::actor]
impl Holder {
    fn new(data: Buffer<u64>) -> Self {
        Holder { data }
    }

    fn len(&self) -> usize {
        self.data.len()
    }

    fn crash(&self) -> usize {
        kill_self()
    }
}

#[test]
fn constructor_arguments_live_as_long_as_the_actor_and_no_longer() {
    // Counts every object the process owns.
    rayforge_integration_tests::own_process!();
    cluster();
    let before = rayforge::owned_object_count().unwrap();
    let data = rayforge::put(Buffer::from(vec![3u64; 1 << 16])).unwrap();
    let a = Holder::options().max_restarts(1).remote(&data).unwrap();
    drop(data);
    // The argument outlives the driver's reference: a restart re-runs the
    // constructor with it.
    assert_eq!(a.len().get().unwrap(), 1 << 16);
    assert!(a.crash().get().is_err());
    assert!(wait_until(Duration::from_secs(60), || a.len().get().ok() == Some(1 << 16)));
    // The actor's lifetime object and its argument are all that is left;
    // both go with the last handle.
    assert_eq!(rayforge::owned_object_count().unwrap(), before + 2);
    drop(a);
    let mut now = 0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            now = rayforge::owned_object_count().unwrap();
            now == before
        }),
        "{now} objects owned, {before} before the actor"
    );

    // Killing an actor releases its arguments too.
    let data = rayforge::put(Buffer::from(vec![4u64; 1 << 16])).unwrap();
    let b = Holder::options().detached().remote(&data).unwrap();
    drop(data);
    assert_eq!(b.len().get().unwrap(), 1 << 16);
    assert_eq!(rayforge::owned_object_count().unwrap(), before + 1);
    rayforge::kill(&b).unwrap();
    assert!(wait_until(Duration::from_secs(30), || rayforge::owned_object_count()
        .unwrap()
        == before));
}

/// Creates a counter from inside a task; returns the task's process id and
/// the handle.
#[rayforge::remote]
fn counter_from_a_task(start: i64) -> (u32, CounterHandle) {
    let c = Counter::remote(start).expect("create an actor in a task");
    (std::process::id(), c)
}

#[test]
fn an_actor_dies_with_the_process_that_created_it() {
    // The creating task's worker must stay alive until the test kills it:
    // in a shared cluster another test's task could crash it first.
    rayforge_integration_tests::own_process!();
    cluster();
    let (creator, c) = counter_from_a_task::remote(5i64).get().unwrap();
    assert_eq!(c.inc().get().unwrap(), 6, "the handle works in the driver");
    let actor_pid = c.pid().get().unwrap();
    // SAFETY: a plain signal to the worker process that ran the task.
    unsafe {
        libc::kill(creator as i32, libc::SIGKILL);
    }
    assert!(
        wait_until(Duration::from_secs(60), || !process_running(actor_pid)),
        "the actor outlived its creator"
    );
    match c.inc().get_timeout(Duration::from_secs(60)) {
        Err(Error::ActorDied { cause, .. }) => {
            assert!(cause.contains("the process that created it died"), "{cause}")
        }
        other => panic!("expected ActorDied, got {other:?}"),
    }
}

#[test]
fn actor_handles_report_their_state_and_the_listings_show_the_cluster() {
    rayforge_integration_tests::own_process!();
    use rayforge::{ActorHandleType, ActorState};
    cluster();
    let c = Counter::options()
        .name("stateful")
        .max_restarts(1)
        .remote(0i64)
        .unwrap();
    c.wait_until_alive(Duration::from_secs(60)).unwrap();
    assert_eq!(c.state().unwrap(), ActorState::Alive);
    // Its process dies once: it is restarted, and says so.
    let _ = c.crash().get();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let listed = rayforge::state::list_actors().unwrap();
            let rec = listed.iter().find(|a| a.name == "stateful");
            c.state().unwrap() == ActorState::Alive && rec.is_some_and(|r| r.state == "ALIVE" && r.num_restarts == 1)
        }),
        "{:?}",
        rayforge::state::list_actors()
    );
    assert_eq!(c.inc().get().unwrap(), 1, "a fresh incarnation");
    rayforge::kill(&c).unwrap();
    match c.wait_until_dead(Duration::from_secs(60)).unwrap() {
        ActorState::Dead { num_restarts, cause } => {
            assert_eq!(num_restarts, 1);
            assert!(!cause.is_empty());
        }
        other => panic!("expected Dead, got {other:?}"),
    }
    assert!(matches!(
        c.wait_until_alive(Duration::from_secs(60)),
        Err(Error::ActorDied { .. })
    ));
    let rec = rayforge::state::list_actors().unwrap();
    let rec = rec.iter().find(|a| a.actor_id == c.actor_id().to_string()).unwrap();
    assert_eq!(rec.state, "DEAD");
    // The embedded cluster's one node, and its placement groups.
    let nodes = rayforge::state::list_nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].alive && nodes[0].is_head);
    assert_eq!(nodes[0].node_id, rayforge::node_id().unwrap());
    assert_eq!(nodes[0].total.get("CPU"), Some(&2.0));
    let bundle = [("CPU".to_string(), 0.5)].into_iter().collect();
    let pg = rayforge::placement_group(vec![bundle], rayforge::PlacementStrategy::Pack)
        .create()
        .unwrap();
    assert!(pg.wait(Duration::from_secs(60)).unwrap());
    let groups = rayforge::state::list_placement_groups().unwrap();
    let g = groups.iter().find(|g| g.id == pg.id()).unwrap();
    assert_eq!((g.state.as_str(), g.bundles.len()), ("CREATED", 1));
}

/// An actor whose methods stream or return several values.
#[rayforge::actor]
pub struct Producer {
    base: u32,
}

#[rayforge::actor]
impl Producer {
    fn new(base: u32) -> Self {
        Producer { base }
    }

    /// `base, base + 1, ...`: each item after the previous one was taken
    /// (the test puts into `signal` once per item it received).
    fn count(&self, n: u32, signal: rayforge::util::Queue<u8>) -> impl Iterator<Item = u32> {
        let base = self.base;
        (0..n).map(move |i| {
            if i > 0 {
                signal
                    .get_timeout(Duration::from_secs(60))
                    .expect("the caller's signal");
            }
            base + i
        })
    }

    /// Fails after two items.
    fn breaks(&self) -> impl Iterator<Item = u32> {
        (0..3u32).inspect(|i| assert!(*i < 2, "the stream broke at item {i}"))
    }

    #[rayforge::method(num_returns = 2)]
    fn split(&self, x: u32) -> (u32, String) {
        (self.base + x, format!("x={x}"))
    }
}

/// An async actor streaming from a synchronous method body.
#[rayforge::actor]
pub struct AsyncProducer;

#[rayforge::actor]
impl AsyncProducer {
    fn new() -> Self {
        AsyncProducer
    }

    fn squares(&self, n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| i * i)
    }

    async fn ping(&self) -> u8 {
        1
    }
}

#[test]
fn actor_methods_stream_items_as_they_come_and_return_several_values() {
    cluster();
    let p = Producer::remote(100u32).unwrap();
    let signal = rayforge::util::Queue::<u8>::new(0).unwrap();
    let mut gen = p.count(3u32, signal.clone());
    for want in 100..103u32 {
        // Item i+1 is only produced after item i arrived here.
        let r = gen.next().expect("an item").unwrap();
        assert_eq!(r.get_timeout(Duration::from_secs(60)).unwrap(), want);
        signal.put(1).unwrap();
    }
    assert!(gen.next().is_none());
    let mut gen = p.breaks();
    assert_eq!(gen.next().unwrap().unwrap().get().unwrap(), 0);
    assert_eq!(gen.next().unwrap().unwrap().get().unwrap(), 1);
    let err = gen.next().expect("the error").unwrap_err();
    assert!(err.to_string().contains("the stream broke at item 2"), "{err}");
    assert!(gen.next().is_none());
    // The actor goes on serving after a failed stream.
    let (a, b) = p.split(5u32);
    assert_eq!((a.get().unwrap(), b.get().unwrap()), (105, "x=5".to_string()));

    let ap = AsyncProducer::remote().unwrap();
    assert_eq!(ap.ping().get().unwrap(), 1);
    let squares: Vec<u64> = ap.squares(5u64).map(|r| r.unwrap().get().unwrap()).collect();
    assert_eq!(squares, vec![0, 1, 4, 9, 16]);
}

#[test]
fn the_async_api_creates_calls_waits_and_kills() {
    cluster();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Counter::options().name("async-made").remote_async(5i64).await.unwrap();
        let found: CounterHandle = rayforge::get_actor_async("async-made").await.unwrap();
        assert_eq!(found.inc().await.unwrap(), 6);
        let big = rayforge::put_async(vec![3u8; 4 << 20]).await.unwrap();
        let small = rayforge::put_async(7u32).await.unwrap();
        assert_eq!(big.clone().await.unwrap().len(), 4 << 20);
        let (ready, pending) = rayforge::wait_async(std::slice::from_ref(&small), 1, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!((ready.len(), pending.len()), (1, 0));
        assert_eq!(
            rayforge::get_all_async(&[small.clone(), small]).await.unwrap(),
            vec![7, 7]
        );
        let pg = rayforge::placement_group(
            vec![[("CPU".to_string(), 0.5)].into_iter().collect()],
            rayforge::PlacementStrategy::Pack,
        )
        .create_async()
        .await
        .unwrap();
        assert!(pg.wait_async(Duration::from_secs(60)).await.unwrap());
        rayforge::remove_placement_group_async(&pg).await.unwrap();
        assert_eq!(pg.state_async().await.unwrap(), rayforge::PlacementGroupState::Removed);
        assert!(rayforge::cluster_resources_async().await.unwrap().total["CPU"] >= 2.0);
        rayforge::kill_async(&c).await.unwrap();
        assert!(matches!(c.inc().await, Err(Error::ActorDied { .. })));
    });
}
