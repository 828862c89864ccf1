//! A real multi-node cluster on this machine: a head and node daemons (each a
//! `rayforge start` process on its own loopback ports), this test process as
//! the driver joining it with `Config::address`. Tasks are scheduled across
//! nodes by resources, objects move between nodes, and killing a node is
//! survived.

use std::time::Duration;

use rayforge::{Buffer, Error, ObjectRef};
use rayforge_integration_tests::{wait_until, LocalCluster};

#[rayforge::remote]
pub(crate) fn where_am_i() -> String {
    rayforge::node_id().expect("node id")
}

/// A large object (stored in the producing node's shared memory).
#[rayforge::remote(num_returns = 2)]
fn produce(n: usize) -> (String, Buffer<u64>) {
    let v: Vec<u64> = (0..n as u64).collect();
    (rayforge::node_id().expect("node id"), Buffer::from(v))
}

#[rayforge::remote]
fn consume(b: Buffer<u64>) -> (String, u64) {
    (rayforge::node_id().expect("node id"), b.iter().sum())
}

#[rayforge::remote]
pub(crate) fn wait_for_file(path: String) -> String {
    while !std::path::Path::new(&path).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    rayforge::node_id().expect("node id")
}

/// One driver per test process: every scenario below runs in this one test.
#[test]
fn tasks_and_objects_span_nodes_and_survive_a_killed_node() {
    rayforge_integration_tests::own_process!();
    let mut cluster = LocalCluster::start(&["--num-cpus", "1"], 2000);
    let head = cluster.daemons[0].1.clone();
    let b = cluster.add_node(&["--num-cpus", "1", "--resources", r#"{"b": 1, "x": 1}"#]);
    let c = cluster.add_node(&["--num-cpus", "1", "--resources", r#"{"c": 1, "x": 1}"#]);
    rayforge::init(cluster.config()).expect("join the cluster");

    // The driver attaches to the head's node; plain tasks run there.
    assert_eq!(rayforge::node_id().unwrap(), head);
    assert_eq!(where_am_i::remote().get().unwrap(), head);
    // Custom resources only other nodes have: the lease spills over to them.
    assert_eq!(where_am_i::options().resource("b", 1.0).remote().get().unwrap(), b);
    assert_eq!(where_am_i::options().resource("c", 1.0).remote().get().unwrap(), c);
    // Nothing in the cluster has it: reported, not hung.
    let err = where_am_i::options()
        .resource("nowhere", 1.0)
        .remote()
        .get()
        .unwrap_err();
    assert!(matches!(err, Error::Infeasible { .. }), "{err}");

    // A 8 MiB object made on b, read on c (pulled b -> c) and here (b -> head).
    let n = 1 << 20;
    let (origin, big): (ObjectRef<String>, ObjectRef<Buffer<u64>>) = produce::options().resource("b", 1.0).remote(n);
    assert_eq!(origin.get().unwrap(), b);
    let expect: u64 = (0..n as u64).sum();
    let (ran_on, sum) = consume::options().resource("c", 1.0).remote(&big).get().unwrap();
    assert_eq!((ran_on.as_str(), sum), (c.as_str(), expect));
    let here = big.get().unwrap();
    assert_eq!(here.len(), n);
    assert_eq!(here[n - 1], n as u64 - 1);
    // Locality: a task with no placement constraint goes to the node
    // holding its large argument (b), not the driver's node.
    let (ran_on, sum) = consume::options().num_cpus(0.0).remote(&big).get().unwrap();
    assert_eq!((ran_on.as_str(), sum), (b.as_str(), expect));
    // Concurrent reads of one object from two tasks on c share one transfer.
    let (o2, big2) = produce::options().resource("b", 1.0).remote(n);
    assert_eq!(o2.get().unwrap(), b);
    let r1 = consume::options().num_cpus(0.0).resource("c", 0.5).remote(&big2);
    let r2 = consume::options().num_cpus(0.0).resource("c", 0.5).remote(&big2);
    assert_eq!(r1.get().unwrap().1, expect);
    assert_eq!(r2.get().unwrap().1, expect);

    // A `put` from the driver (stored on the head's node), read on b.
    let put = rayforge::put(Buffer::from((0..n as u64).collect::<Vec<u64>>())).unwrap();
    let (ran_on, sum) = consume::options().resource("b", 1.0).remote(&put).get().unwrap();
    assert_eq!((ran_on.as_str(), sum), (b.as_str(), expect));

    // The head's view: three alive nodes, and the job running.
    let mut head_client = rayforge::cluster::HeadClient::connect(&cluster.address, Some(&cluster.token)).unwrap();
    let nodes = head_client.nodes().unwrap();
    assert_eq!(nodes.iter().filter(|n| n.alive).count(), 3, "{nodes:?}");
    // (Resource use reaches the head with the next heartbeat.)
    let mut report = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            report = head_client.status_report().unwrap();
            report.contains("3 alive") && report.contains("b 0/1") && report.contains("Jobs: 1 running")
        }),
        "{report}"
    );
    assert_eq!(
        head_client
            .jobs()
            .unwrap()
            .iter()
            .filter(|j| j.state == "RUNNING")
            .count(),
        1
    );

    // A task running on one of the "x" nodes is retried on the other when
    // its node is SIGKILLed; an object whose only copy was on the killed node
    // is rebuilt from lineage, or, when its task cannot run anywhere else,
    // lost with an error naming the node.
    let gate = std::env::temp_dir().join(format!("rayforge-gate-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    let blocked = wait_for_file::options()
        .resource("x", 1.0)
        .max_retries(3)
        .remote(gate.to_string_lossy().to_string());
    let mut victim = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let busy = head_client
                .nodes()
                .unwrap()
                .into_iter()
                .find(|n| n.available.get("x") == Some(&0.0));
            if let Some(n) = busy {
                victim = n.node_id;
            }
            !victim.is_empty()
        }),
        "the gated task never started"
    );
    let (survivor, victim_res) = if victim == b {
        (c.clone(), "b")
    } else {
        (b.clone(), "c")
    };
    let (o3, doomed) = produce::options()
        .num_cpus(0.0)
        .resource(victim_res, 1.0)
        .remote(1 << 16);
    assert_eq!(o3.get().unwrap(), victim);
    // Made on the victim by a task that could run elsewhere: rebuilt from
    // lineage after the node dies.
    let (o4, rebuildable) = produce::options()
        .num_cpus(0.0)
        .scheduling_strategy(rayforge::SchedulingStrategy::NodeAffinity {
            node_id: victim.clone(),
            soft: true,
        })
        .remote(n);
    assert_eq!(o4.get().unwrap(), victim);
    let victim_addr = nodes.iter().find(|x| x.node_id == victim).unwrap().address.clone();
    cluster.kill_node(&victim);
    assert!(
        wait_until(Duration::from_secs(30), || {
            head_client
                .nodes()
                .unwrap()
                .iter()
                .any(|n| n.node_id == victim && !n.alive && n.death_cause.contains("no heartbeat"))
        }),
        "the killed node was never declared dead"
    );
    let err = doomed.get().unwrap_err();
    assert!(
        matches!(err, Error::ObjectLost { .. }) && err.to_string().contains(&victim_addr),
        "{err}"
    );
    std::fs::write(&gate, b"go").unwrap();
    assert_eq!(
        blocked.get().unwrap(),
        survivor,
        "the task was retried on the surviving node"
    );
    // A task on the survivor reads the lost object: its owner (this driver)
    // re-runs the task that made it, and the reader gets the new copy; the
    // driver reads it too. The inline return made with it is unchanged.
    let survivor_res = if victim_res == "b" { "c" } else { "b" };
    let (ran_on, sum) = consume::options()
        .resource(survivor_res, 1.0)
        .remote(&rebuildable)
        .get()
        .unwrap();
    assert_eq!((ran_on.as_str(), sum), (survivor.as_str(), expect));
    let back = rebuildable.get().unwrap();
    assert_eq!((back.len(), back[n - 1]), (n, n as u64 - 1));
    assert_eq!(o4.get().unwrap(), victim);
    assert_eq!(head_client.nodes().unwrap().iter().filter(|n| n.alive).count(), 2);

    rayforge::shutdown();
    let jobs = head_client.jobs().unwrap();
    assert!(jobs.iter().all(|j| j.state == "SUCCEEDED"), "{jobs:?}");
    let _ = std::fs::remove_file(&gate);
}

/// A counter placed by a scheduling strategy.
#[rayforge::actor]
pub struct Placed {
    n: u32,
}

#[rayforge::actor]
impl Placed {
    fn new() -> Self {
        Placed { n: 0 }
    }

    fn node(&mut self) -> String {
        self.n += 1;
        rayforge::node_id().expect("node id")
    }
}

#[test]
fn spread_and_node_affinity_choose_nodes() {
    rayforge_integration_tests::own_process!();
    use rayforge::SchedulingStrategy;
    let mut cluster = LocalCluster::start(&["--num-cpus", "2"], 2000);
    let head = cluster.daemons[0].1.clone();
    let b = cluster.add_node(&["--num-cpus", "2"]);
    let c = cluster.add_node(&["--num-cpus", "2", "--resources", r#"{"c": 1}"#]);
    rayforge::init(cluster.config()).expect("join the cluster");
    let affinity = |node_id: &str, soft: bool| SchedulingStrategy::NodeAffinity {
        node_id: node_id.to_string(),
        soft,
    };

    // SPREAD: tasks that all fit on the driver's node still land on all three.
    let refs: Vec<_> = (0..12)
        .map(|_| {
            where_am_i::options()
                .scheduling_strategy(SchedulingStrategy::Spread)
                .remote()
        })
        .collect();
    let nodes: std::collections::HashSet<String> = rayforge::get_all(&refs).unwrap().into_iter().collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    // Node affinity: tasks and actors go where they are told.
    for node in [&head, &b, &c] {
        let ran = where_am_i::options()
            .scheduling_strategy(affinity(node, false))
            .remote();
        assert_eq!(&ran.get().unwrap(), node);
    }
    let actor = Placed::options()
        .scheduling_strategy(affinity(&c, false))
        .remote()
        .unwrap();
    assert_eq!(actor.node().get().unwrap(), c);
    let spread: Vec<PlacedHandle> = (0..3)
        .map(|_| {
            Placed::options()
                .scheduling_strategy(SchedulingStrategy::Spread)
                .remote()
        })
        .collect::<rayforge::Result<_>>()
        .unwrap();
    let actor_nodes: std::collections::HashSet<String> = spread.iter().map(|a| a.node().get().unwrap()).collect();
    assert_eq!(actor_nodes.len(), 3, "{actor_nodes:?}");
    // Soft affinity to a node lacking the resource: runs where it exists.
    let ran = where_am_i::options()
        .scheduling_strategy(affinity(&b, true))
        .resource("c", 1.0)
        .remote();
    assert_eq!(ran.get().unwrap(), c);
    let err = where_am_i::options()
        .scheduling_strategy(affinity(&b, false))
        .resource("c", 1.0)
        .remote()
        .get()
        .unwrap_err();
    assert!(
        matches!(err, Error::Infeasible { .. }) && err.to_string().contains(&b),
        "{err}"
    );

    // A killed node: hard affinity to it fails, soft runs elsewhere.
    cluster.kill_node(&b);
    let mut head_client = rayforge::cluster::HeadClient::connect(&cluster.address, Some(&cluster.token)).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || head_client
            .nodes()
            .unwrap()
            .iter()
            .any(|n| n.node_id == b && !n.alive)),
        "b never declared dead"
    );
    assert!(
        wait_until(Duration::from_secs(30), || where_am_i::options()
            .scheduling_strategy(affinity(&b, false))
            .remote()
            .get()
            .is_err_and(|e| e.to_string().contains("not an alive node"))),
        "hard affinity to a dead node"
    );
    let ran = where_am_i::options().scheduling_strategy(affinity(&b, true)).remote();
    assert_ne!(ran.get().unwrap(), b);
    rayforge::shutdown();
}

/// One object read on four other nodes at once: the owner's node sends it
/// at most twice; the other nodes get it from the copies.
#[test]
fn a_broadcast_spreads_over_copies_instead_of_the_owner_sending_it_to_every_node() {
    rayforge_integration_tests::own_process!();
    let mut cluster = LocalCluster::start(&["--num-cpus", "1"], 5000);
    let readers: Vec<String> = (0..4)
        .map(|i| cluster.add_node(&["--num-cpus", "1", "--resources", &format!(r#"{{"r{i}": 1}}"#)]))
        .collect();
    rayforge::init(cluster.config()).expect("join the cluster");
    let n = 2 << 20;
    let expect: u64 = (0..n as u64).sum();
    let put = rayforge::put(Buffer::from((0..n as u64).collect::<Vec<u64>>())).unwrap();
    let refs: Vec<_> = (0..4)
        .map(|i| consume::options().resource(&format!("r{i}"), 1.0).remote(&put))
        .collect();
    let got = rayforge::get_all(&refs).unwrap();
    let mut nodes: Vec<String> = got.iter().map(|(node, _)| node.clone()).collect();
    nodes.sort();
    let mut want = readers.clone();
    want.sort();
    assert_eq!(nodes, want, "one read per node");
    assert!(got.iter().all(|(_, sum)| *sum == expect));
    let stats = rayforge::store_stats().unwrap();
    assert!(
        (1..=2).contains(&stats.transfers_sent),
        "the owner's node sent the object {} times to 4 readers",
        stats.transfers_sent
    );
    assert!(stats.reads_redirected >= 2, "{stats:?}");
    rayforge::shutdown();
}
