//! Pool, ActorPool and Queue.

use std::collections::HashSet;
use std::time::Duration;

use rayforge::util::{ActorPool, Pool, Queue};
use rayforge::Error;
use rayforge_integration_tests::cluster;

#[rayforge::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[rayforge::remote]
fn produce(q: Queue<String>, n: u32) -> u32 {
    for i in 0..n {
        q.put(format!("item {i}")).expect("put");
    }
    n
}

/// Multiplies by a fixed factor.
#[rayforge::actor]
pub struct Scaler {
    factor: i64,
}

#[rayforge::actor]
impl Scaler {
    fn new(factor: i64) -> Self {
        Scaler { factor }
    }

    fn scale(&self, x: i64) -> i64 {
        x * self.factor
    }

    /// Fails for negative inputs, after `-x` milliseconds.
    fn scale_or_fail(&self, x: i64) -> Result<i64, String> {
        if x < 0 {
            std::thread::sleep(Duration::from_millis((-x) as u64));
            return Err(format!("input {x} is negative"));
        }
        Ok(x * self.factor)
    }
}

#[test]
fn pool_map_keeps_order_and_imap_unordered_yields_everything() {
    cluster();
    let pool = Pool::new(3);
    let out = pool.map(square::remote, 0..20u64).unwrap();
    assert_eq!(out, (0..20u64).map(|x| x * x).collect::<Vec<_>>());
    let got: HashSet<u64> = pool
        .imap_unordered(square::remote, 0..10u64)
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got, (0..10u64).map(|x| x * x).collect());
}

#[test]
fn actor_pool_spreads_work_over_its_actors() {
    cluster();
    let actors = vec![Scaler::remote(3i64).unwrap(), Scaler::remote(3i64).unwrap()];
    let pool = ActorPool::new(actors);
    let out = pool.map(|a, v| a.scale(v), vec![1i64, 2, 3, 4, 5]).unwrap();
    assert_eq!(out, vec![3, 6, 9, 12, 15]);
    let mut un = pool.map_unordered(|a, v| a.scale(v), vec![1i64, 2, 3]).unwrap();
    un.sort();
    assert_eq!(un, vec![3, 6, 9]);
    let empty: ActorPool<ScalerHandle> = ActorPool::new(Vec::new());
    assert!(matches!(
        empty.map(|a, v: i64| a.scale(v), vec![1]),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn queue_passes_items_between_tasks_and_driver_in_order() {
    cluster();
    let q: Queue<String> = Queue::new(0).unwrap();
    let done = produce::remote(q.clone(), 5u32);
    let got: Vec<String> = (0..5)
        .map(|_| q.get_timeout(Duration::from_secs(60)).unwrap())
        .collect();
    assert_eq!(got, (0..5).map(|i| format!("item {i}")).collect::<Vec<_>>());
    assert_eq!(done.get().unwrap(), 5);
    assert!(q.is_empty().unwrap());
    assert!(matches!(
        q.get_timeout(Duration::from_millis(50)),
        Err(Error::GetTimeout(_))
    ));
    let bounded: Queue<u8> = Queue::new(1).unwrap();
    bounded.put(1).unwrap();
    assert!(matches!(
        bounded.put_timeout(2, Duration::from_millis(50)),
        Err(Error::GetTimeout(_))
    ));
    assert_eq!(bounded.get().unwrap(), 1);
}

#[test]
fn ordered_actor_pool_reports_the_first_failing_input_not_the_first_to_fail() {
    cluster();
    let actors = vec![Scaler::remote(2i64).unwrap(), Scaler::remote(2i64).unwrap()];
    let pool = ActorPool::new(actors);
    // Input 0 fails after 800 ms, input 1 at once: ordered, input 0's error
    // is the one reported.
    let err = pool.map(|a, v| a.scale_or_fail(v), vec![-800i64, -1]).unwrap_err();
    assert!(err.to_string().contains("input -800"), "{err}");
    let err = pool
        .map_unordered(|a, v| a.scale_or_fail(v), vec![-800i64, -1])
        .unwrap_err();
    assert!(err.to_string().contains("input -1 "), "{err}");
    assert_eq!(
        pool.map(|a, v| a.scale_or_fail(v), vec![1i64, 2, 3]).unwrap(),
        vec![2, 4, 6]
    );
}

#[test]
fn a_reference_inside_a_queued_item_stays_alive_while_queued() {
    // Counts every object the process owns.
    rayforge_integration_tests::own_process!();
    cluster();
    let q: Queue<Vec<rayforge::ObjectRef<Vec<u8>>>> = Queue::new(0).unwrap();
    let before = rayforge::owned_object_count().unwrap();
    // Large enough to live in the object store, not inline.
    let big = rayforge::put(vec![7u8; 1 << 20]).unwrap();
    q.put(vec![big]).unwrap();
    // The queue's actor borrows the object: dropping the driver's own
    // reference must not free it.
    let got = q.get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(got.len(), 1);
    let v = got[0].get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!((v.len(), v[0], v[v.len() - 1]), (1 << 20, 7, 7));
    drop(got);
    assert!(
        rayforge_integration_tests::wait_until(Duration::from_secs(60), || {
            rayforge::owned_object_count().unwrap() <= before
        }),
        "the object is freed once the item is consumed and dropped"
    );
}

/// Claims `key` of the `test` namespace for `who`; returns whether it won.
#[rayforge::remote]
fn claim(key: String, who: String) -> rayforge::Result<bool> {
    rayforge::kv::put("test", &key, who.as_bytes(), false)
}

#[test]
fn the_key_value_store_is_shared_by_driver_and_workers() {
    cluster();
    let claims: Vec<_> = (0..6)
        .map(|i| claim::remote("leader".to_string(), format!("worker {i}")))
        .collect();
    let won: Vec<bool> = rayforge::get_all(&claims).unwrap();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "exactly one claim wins: {won:?}");
    let winner = won.iter().position(|w| *w).unwrap();
    let leader = rayforge::kv::get("test", "leader").unwrap().unwrap();
    assert_eq!(leader, format!("worker {winner}").into_bytes());
    // Another namespace does not see it; overwrite replaces it.
    assert_eq!(rayforge::kv::get("other", "leader").unwrap(), None);
    assert!(rayforge::kv::put("test", "leader", b"driver", true).unwrap());
    assert!(rayforge::kv::put("test", "lead", b"x", false).unwrap());
    assert_eq!(rayforge::kv::list("test", "lead").unwrap(), vec!["lead", "leader"]);
    assert_eq!(rayforge::kv::list("other", "").unwrap(), Vec::<String>::new());
    assert!(rayforge::kv::delete("test", "leader").unwrap());
    assert!(!rayforge::kv::delete("test", "leader").unwrap());
    assert!(matches!(
        rayforge::kv::get("bad\u{1f}ns", "k"),
        Err(Error::InvalidArgument(_))
    ));
}
