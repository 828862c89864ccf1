//! The object store: zero-copy reads, reference counting back to baseline,
//! references inside values.

use std::time::Duration;

use rayforge::{Buffer, ObjectRef};
use rayforge_integration_tests::{cluster, wait_until};

/// Sums a buffer and reports whether it was read from shared memory.
#[rayforge::remote]
fn inspect(b: Buffer<f64>) -> (f64, bool) {
    (b.iter().sum(), b.is_shared())
}

#[rayforge::remote]
fn make_big(n: usize) -> Buffer<u8> {
    Buffer::from(vec![7u8; n])
}

#[rayforge::remote]
fn make_filled(n: usize, byte: u8) -> Buffer<u8> {
    Buffer::build(n, |s| s.fill(byte))
}

/// Puts an object here (this worker owns it) and returns a reference to it.
#[rayforge::remote]
fn make_nested() -> Vec<ObjectRef<Buffer<u8>>> {
    vec![rayforge::put(Buffer::from(vec![3u8; 1 << 20])).expect("put")]
}

/// Returns the references it was given.
#[rayforge::remote]
fn echo_refs(refs: Vec<ObjectRef<Buffer<u8>>>) -> Vec<ObjectRef<Buffer<u8>>> {
    refs
}

/// Gets every reference inside a list.
#[rayforge::remote]
fn sum_refs(refs: Vec<ObjectRef<i64>>) -> i64 {
    refs.iter().map(|r| r.get().expect("inner ref")).sum()
}

fn store_used() -> u64 {
    rayforge::store_stats().unwrap().used_bytes
}

#[test]
fn large_buffers_are_read_zero_copy_everywhere() {
    rayforge_integration_tests::own_process!();
    cluster();
    let n = 4 << 20; // 32 MiB of f64
    let r = rayforge::put(Buffer::from((0..n).map(|i| (i % 7) as f64).collect::<Vec<f64>>())).unwrap();
    let expect: f64 = (0..n).map(|i| (i % 7) as f64).sum();
    let a = r.get().unwrap();
    let b = r.get().unwrap();
    assert!(a.is_shared(), "driver reads from shared memory");
    assert_eq!(a.as_ptr(), b.as_ptr(), "two gets share one mapping");
    let outs: Vec<_> = (0..4).map(|_| inspect::remote(&r)).collect();
    for o in outs {
        let (sum, shared) = o.get().unwrap();
        assert_eq!(sum, expect);
        assert!(shared, "tasks read the argument from shared memory");
    }
}

#[test]
fn store_memory_returns_to_baseline_when_references_drop() {
    rayforge_integration_tests::own_process!();
    cluster();
    let base = store_used();
    let owned_before = rayforge::owned_object_count().unwrap();
    {
        let puts: Vec<_> = (0..5)
            .map(|_| rayforge::put(Buffer::from(vec![1u8; 1 << 20])).unwrap())
            .collect();
        let made = make_big::remote(3usize << 20);
        assert_eq!(made.get().unwrap().len(), 3 << 20);
        assert!(store_used() >= base + (8 << 20), "objects are in the store");
        // Copies of references keep the objects alive.
        let copies = puts.clone();
        drop(puts);
        assert_eq!(copies[0].get().unwrap().len(), 1 << 20);
    }
    assert!(
        wait_until(Duration::from_secs(30), || store_used() == base),
        "store usage {} did not return to {}",
        store_used(),
        base
    );
    assert!(wait_until(Duration::from_secs(30), || rayforge::owned_object_count()
        .unwrap()
        == owned_before));
}

#[test]
fn freed_memory_is_reused_but_never_under_a_reader() {
    rayforge_integration_tests::own_process!();
    cluster();
    let n = 8 << 20;
    let base = store_used();
    let pooled = || rayforge::store_stats().unwrap().pooled_bytes;
    // Written by a worker, mapped by the driver, then freed while mapped:
    // its memory cannot be reused.
    let r1 = make_filled::remote(n, 1);
    let held = r1.get().unwrap();
    assert!(held.is_shared());
    drop(r1);
    assert!(wait_until(Duration::from_secs(30), || store_used() == base));
    assert_eq!(pooled(), 0, "a mapped object's memory must not be pooled");

    // Freed with nobody mapping it: pooled, then written over by the next
    // object of its size.
    let r2 = make_filled::remote(n, 2);
    r2.get().map(drop).unwrap();
    drop(r2);
    assert!(wait_until(Duration::from_secs(30), || pooled() > n as u64));
    let r3 = make_filled::remote(n, 3);
    let b3 = r3.get().unwrap();
    assert_eq!(pooled(), 0, "the new object reused the pooled memory");
    assert!(b3.len() == n && b3.iter().all(|x| *x == 3));
    assert!(
        held.len() == n && held.iter().all(|x| *x == 1),
        "a held buffer never changes"
    );
}

/// Puts, reads and drops a large object `times` times; returns how many
/// values read back wrong.
#[rayforge::remote]
fn put_drop_loop(n: usize, times: u8) -> usize {
    (0..times)
        .filter(|i| {
            let r = rayforge::put(Buffer::build(n, |s| s.fill(*i))).expect("put");
            let b = r.get().expect("get");
            !(b.len() == n && b.iter().all(|x| x == i))
        })
        .count()
}

#[test]
fn a_put_after_a_drop_writes_over_the_freed_memory() {
    rayforge_integration_tests::own_process!();
    cluster();
    let n = 4 << 20;
    let reused = || rayforge::store_stats().unwrap().reused_total;
    // The free of a dropped object travels with the next reservation, so
    // each put of a loop finds the memory its predecessor left.
    let values: Vec<Buffer<u8>> = (0..6u8).map(|i| Buffer::build(n, |s| s.fill(i))).collect();
    let before = reused();
    let mut last = None;
    for v in &values {
        drop(last.take());
        last = Some(rayforge::put(v.clone()).unwrap());
    }
    assert!(reused() - before >= 5, "{} of 5 puts reused memory", reused() - before);
    let b = last.unwrap().get().unwrap();
    assert!(
        b.len() == n && b.iter().all(|x| *x == 5),
        "the last put read back wrong"
    );
    // The same from a worker, whose writes go through its kept mapping.
    let before = reused();
    assert_eq!(put_drop_loop::remote(n, 6).get().unwrap(), 0);
    assert!(reused() - before >= 5, "{} of 5 puts reused memory", reused() - before);
}

#[test]
fn references_inside_a_result_are_released_with_it_read_or_not() {
    rayforge_integration_tests::own_process!();
    cluster();
    let base = store_used();
    // Never read: the references inside go with the result.
    let r = make_nested::remote();
    let (ready, _) = rayforge::wait(std::slice::from_ref(&r), 1, Some(Duration::from_secs(60))).unwrap();
    assert_eq!(ready.len(), 1);
    assert!(store_used() >= base + (1 << 20));
    drop((ready, r));
    assert!(
        wait_until(Duration::from_secs(30), || store_used() == base),
        "an unread result kept the object inside it alive ({} bytes used, baseline {base})",
        store_used()
    );

    // Read: the references live as long as the decoded value holds them.
    let r = make_nested::remote();
    let inner = r.get().unwrap();
    drop(r);
    assert_eq!(inner[0].get().unwrap().len(), 1 << 20);
    drop(inner);
    assert!(wait_until(Duration::from_secs(30), || store_used() == base));

    // Our own object handed back by a task is freed too.
    let mine = rayforge::put(Buffer::from(vec![4u8; 1 << 20])).unwrap();
    let back = echo_refs::remote(vec![mine]).get().unwrap();
    assert_eq!(back[0].get().unwrap().len(), 1 << 20);
    drop(back);
    assert!(
        wait_until(Duration::from_secs(30), || store_used() == base),
        "an object of ours returned by a task was never freed"
    );
}

#[test]
fn references_inside_values_stay_alive_and_resolve() {
    rayforge_integration_tests::own_process!();
    cluster();
    let inner: Vec<ObjectRef<i64>> = (1..=10).map(|i| rayforge::put(i as i64).unwrap()).collect();
    let outer = rayforge::put(inner.clone()).unwrap();
    drop(inner);
    // The inner objects live on because the outer value holds them.
    let back: Vec<ObjectRef<i64>> = outer.get().unwrap();
    assert_eq!(rayforge::get_all(&back).unwrap(), (1..=10).collect::<Vec<_>>());
    assert_eq!(sum_refs::remote(outer).get().unwrap(), 55);
    assert_eq!(sum_refs::remote(back).get().unwrap(), 55);
}

/// An actor keeping references it was given.
#[rayforge::actor]
pub struct Keeper {
    refs: Vec<ObjectRef<i64>>,
}

#[rayforge::actor]
impl Keeper {
    fn new(refs: Vec<ObjectRef<i64>>) -> Self {
        Keeper { refs }
    }

    fn sum(&self) -> i64 {
        self.refs.iter().map(|r| r.get().expect("kept ref")).sum()
    }

    fn pid(&self) -> u32 {
        std::process::id()
    }
}

#[test]
fn objects_kept_only_by_a_dead_borrower_are_freed() {
    rayforge_integration_tests::own_process!();
    cluster();
    let before = rayforge::owned_object_count().unwrap();
    let x = rayforge::put(5i64).unwrap();
    let k = Keeper::remote(vec![x.clone()]).unwrap();
    assert_eq!(k.sum().get().unwrap(), 5);
    let pid = k.pid().get().unwrap();
    // Only the actor's process holds `x` now; it is SIGKILLed and never
    // says it is done with it.
    drop(x);
    // SAFETY: a plain signal to the actor's worker process.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    drop(k);
    let mut now = 0;
    assert!(
        wait_until(Duration::from_secs(60), || {
            now = rayforge::owned_object_count().unwrap();
            now == before
        }),
        "{now} objects still owned, {before} before"
    );
}

/// Keeps references for whoever asks for them back.
#[rayforge::actor]
pub struct Locker {
    kept: std::collections::VecDeque<ObjectRef<Vec<u64>>>,
}

#[rayforge::actor]
impl Locker {
    fn new() -> Self {
        Locker {
            kept: Default::default(),
        }
    }

    fn push(&mut self, r: Vec<ObjectRef<Vec<u64>>>) -> usize {
        self.kept.extend(r);
        self.kept.len()
    }

    fn pop(&mut self) -> Vec<ObjectRef<Vec<u64>>> {
        self.kept.pop_front().into_iter().collect()
    }
}

#[test]
fn an_object_handed_back_to_its_owner_survives_the_borrower_dropping_it() {
    rayforge_integration_tests::own_process!();
    cluster();
    let locker = Locker::remote().unwrap();
    for i in 0..300u64 {
        // Large enough to live in the store (a free would lose it).
        let r = rayforge::put(vec![i; 20_000]).unwrap();
        assert_eq!(locker.push(vec![r]).get().unwrap(), 1);
        // The owner now holds no reference: only the actor does, until it
        // hands it back and drops its own copy.
        let back = locker.pop().get().unwrap();
        let v = back[0].get().unwrap_or_else(|e| panic!("round {i}: {e}"));
        assert_eq!((v.len(), v[0]), (20_000, i));
    }
}
