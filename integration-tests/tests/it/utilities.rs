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
