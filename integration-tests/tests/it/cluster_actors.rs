//! Actors on a real multi-node cluster (a head and two node daemons, this
//! test process the driver): placement across nodes, names visible from any
//! node, restarts elsewhere when a node is SIGKILLed, and the end of a job
//! ending its actors but not the detached ones.

use std::time::Duration;

use rayforge::Error;
use rayforge_integration_tests::{wait_until, LocalCluster};

use crate::cluster::where_am_i;
use crate::placement_groups::cpu;

/// A counter that reports where it runs.
#[rayforge::actor]
pub struct Tally {
    value: i64,
}

#[rayforge::actor]
impl Tally {
    fn new(start: i64) -> Self {
        Tally { value: start }
    }

    fn inc(&mut self) -> i64 {
        self.value += 1;
        self.value
    }

    fn node(&self) -> String {
        rayforge::node_id().expect("node id")
    }
}

/// A task that finds a named actor from wherever it runs and calls it.
#[rayforge::remote]
fn bump_named(name: String) -> (String, i64) {
    let t: TallyHandle = rayforge::get_actor(&name).expect("named actor");
    (rayforge::node_id().expect("node id"), t.inc().get().expect("call"))
}

#[test]
fn actors_span_nodes_and_restart_elsewhere_when_a_node_dies() {
    rayforge_integration_tests::own_process!();
    let mut cluster = LocalCluster::start(&["--num-cpus", "1"], 2000);
    let head = cluster.daemons[0].1.clone();
    let b = cluster.add_node(&["--num-cpus", "1", "--resources", r#"{"b": 1, "x": 1}"#]);
    let c = cluster.add_node(&["--num-cpus", "1", "--resources", r#"{"c": 1, "x": 1}"#]);
    rayforge::init(cluster.config()).expect("join the cluster");

    // Placed by resources: only b has "b".
    let on_b = Tally::options().resource("b", 0.5).remote(0i64).unwrap();
    assert_eq!(on_b.node().get().unwrap(), b);
    assert_eq!(on_b.inc().get().unwrap(), 1);
    assert_eq!(on_b.inc().get().unwrap(), 2);

    // A named actor on c, found by name from a task on b and from here.
    let named = Tally::options()
        .resource("c", 0.5)
        .name("shared")
        .remote(10i64)
        .unwrap();
    assert_eq!(named.node().get().unwrap(), c);
    let (ran_on, v) = bump_named::options()
        .resource("b", 0.5)
        .remote("shared".to_string())
        .get()
        .unwrap();
    assert_eq!((ran_on.as_str(), v), (b.as_str(), 11));
    let found: TallyHandle = rayforge::get_actor("shared").unwrap();
    assert_eq!(found.inc().get().unwrap(), 12);
    let dup = Tally::options().name("shared").remote(0i64).unwrap_err();
    assert!(dup.to_string().contains("already exists"), "{dup}");
    // No node offers it: reported at creation.
    let err = Tally::options().resource("nowhere", 1.0).remote(0i64).unwrap_err();
    assert!(matches!(err, Error::Infeasible { .. }), "{err}");

    // Zero-resource actors spread over the nodes rather than piling up.
    let spread: Vec<TallyHandle> = (0..6).map(|_| Tally::remote(0i64).unwrap()).collect();
    let mut homes: Vec<String> = spread.iter().map(|t| t.node().get().unwrap()).collect();
    homes.sort();
    homes.dedup();
    assert_eq!(homes.len(), 3, "six actors over three nodes: {homes:?}");

    // A restartable actor on one of the "x" nodes, and a detached one.
    let phoenix = Tally::options()
        .resource("x", 1.0)
        .max_restarts(1)
        .max_task_retries(-1)
        .name("phoenix")
        .remote(100i64)
        .unwrap();
    assert_eq!(phoenix.inc().get().unwrap(), 101);
    let victim = phoenix.node().get().unwrap();
    assert!(victim == b || victim == c, "{victim}");
    let survivor = if victim == b { c.clone() } else { b.clone() };
    let mortal = Tally::options()
        .resource(if victim == b { "b" } else { "c" }, 0.5)
        .remote(0i64)
        .unwrap();
    assert_eq!(mortal.node().get().unwrap(), victim);
    let keeper = Tally::options()
        .resource(if victim == b { "c" } else { "b" }, 0.5)
        .name("keeper")
        .detached()
        .remote(7i64)
        .unwrap();
    assert_eq!(keeper.inc().get().unwrap(), 8);

    // SIGKILL the node: the restartable actor comes back on the survivor
    // (constructor re-run), the other fails with a cause naming the node.
    let mut head_client = rayforge::cluster::HeadClient::connect(&cluster.address, Some(&cluster.token)).unwrap();
    let victim_addr = head_client
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.node_id == victim)
        .unwrap()
        .address;
    cluster.kill_node(&victim);
    assert_eq!(phoenix.node().get().unwrap(), survivor);
    assert_eq!(phoenix.inc().get().unwrap(), 101, "state rebuilt by the constructor");
    let err = mortal.inc().get().unwrap_err();
    assert!(
        matches!(err, Error::ActorDied { .. }) && err.to_string().contains(&victim_addr),
        "{err}"
    );
    let actors = head_client.actors().unwrap();
    let rec = actors.iter().find(|a| a.name == "phoenix").unwrap();
    assert_eq!((rec.state.as_str(), rec.num_restarts), ("ALIVE", 1), "{rec:?}");
    let survivor_addr = head_client
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.node_id == survivor)
        .unwrap()
        .address;
    assert_eq!(rec.node, survivor_addr);

    // The `rayforge list actors` command shows the same table.
    let listed = cluster.list("actors");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "keeper" && a["state"] == "ALIVE" && a["detached"] == true),
        "{listed}"
    );

    // The job ends: its actors end with it, the detached one stays.
    rayforge::shutdown();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let actors = head_client.actors().unwrap();
            let state = |name: &str| actors.iter().find(|a| a.name == name).map(|a| a.state.clone());
            state("keeper").as_deref() == Some("ALIVE") && state("phoenix").as_deref() == Some("DEAD")
        }),
        "{:?}",
        head_client.actors()
    );
    let actors = head_client.actors().unwrap();
    let phoenix = actors.iter().find(|a| a.name == "phoenix").unwrap();
    assert!(phoenix.death_cause.contains("job"), "{phoenix:?}");
    assert_eq!(head, cluster.daemons[0].1);
}

#[test]
fn placement_groups_span_nodes_and_are_placed_again_when_a_node_dies() {
    rayforge_integration_tests::own_process!();
    use rayforge::{placement_group, PlacementGroupState, PlacementStrategy};
    let mut cluster = LocalCluster::start(&["--num-cpus", "1"], 2000);
    cluster.add_node(&["--num-cpus", "2"]);
    cluster.add_node(&["--num-cpus", "2"]);
    rayforge::init(cluster.config()).expect("join the cluster");
    let mut head = rayforge::cluster::HeadClient::connect(&cluster.address, Some(&cluster.token)).unwrap();
    let addr_to_id: std::collections::HashMap<String, String> = head
        .nodes()
        .unwrap()
        .into_iter()
        .map(|n| (n.address, n.node_id))
        .collect();

    // One bundle per node; each bundle's task runs on that bundle's node.
    let spread = placement_group(vec![cpu(1.0); 3], PlacementStrategy::StrictSpread)
        .create()
        .unwrap();
    assert!(spread.wait(Duration::from_secs(60)).unwrap(), "{:?}", spread.state());
    let nodes = spread.bundle_nodes().unwrap();
    let distinct: std::collections::HashSet<&String> = nodes.iter().collect();
    assert_eq!(distinct.len(), 3, "{nodes:?}");
    for (i, addr) in nodes.iter().enumerate() {
        let ran_on = where_am_i::options()
            .placement_group(&spread, Some(i))
            .remote()
            .get()
            .unwrap();
        assert_eq!(&ran_on, &addr_to_id[addr], "bundle {i}");
    }
    // No node has 4 CPUs: STRICT_PACK of two 2-CPU bundles never fits.
    let packed = placement_group(vec![cpu(2.0), cpu(2.0)], PlacementStrategy::StrictPack)
        .create()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || matches!(
            packed.state().unwrap(),
            PlacementGroupState::Pending(ref why) if why.contains("infeasible")
        )),
        "{:?}",
        packed.state()
    );
    let status = cluster.status();
    assert!(
        status
            .lines()
            .any(|l| l.contains("placement group") && l.contains("infeasible")),
        "status names the infeasible group: {status}"
    );
    rayforge::remove_placement_group(&spread).unwrap();
    rayforge::remove_placement_group(&packed).unwrap();

    // A group with an actor in it; the node holding the actor's bundle dies:
    // the group is placed again and the actor restarts inside it.
    let group = placement_group(vec![cpu(1.0), cpu(1.0)], PlacementStrategy::Spread)
        .name("spread")
        .create()
        .unwrap();
    assert!(group.wait(Duration::from_secs(60)).unwrap(), "{:?}", group.state());
    let head_addr = head.nodes().unwrap().into_iter().find(|n| n.is_head).unwrap().address;
    let nodes = group.bundle_nodes().unwrap();
    let (idx, victim_addr) = nodes
        .iter()
        .enumerate()
        .find(|(_, a)| **a != head_addr)
        .map(|(i, a)| (i, a.clone()))
        .expect("a bundle off the head");
    let actor = Tally::options()
        .placement_group(&group, Some(idx))
        .num_cpus(1.0)
        .max_restarts(1)
        .max_task_retries(-1)
        .remote(0i64)
        .unwrap();
    let victim = addr_to_id[&victim_addr].clone();
    let before = group.bundle_nodes().unwrap();
    assert_eq!(actor.node().get().unwrap(), victim);
    cluster.kill_node(&victim);
    let moved_to = actor.node().get().unwrap();
    assert_ne!(moved_to, victim);
    assert!(group.wait(Duration::from_secs(60)).unwrap(), "{:?}", group.state());
    let after = group.bundle_nodes().unwrap();
    assert!(!after.contains(&victim_addr), "{after:?}");
    // Only the lost bundle moved.
    assert_eq!(after[1 - idx], before[1 - idx]);
    assert_eq!(actor.inc().get().unwrap(), 1);

    let listed = cluster.list("placement-groups");
    let groups = listed.as_array().unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g["name"] == "spread" && g["state"] == "CREATED" && g["strategy"] == "SPREAD"),
        "{listed}"
    );
    assert_eq!(groups.iter().filter(|g| g["state"] == "REMOVED").count(), 2, "{listed}");
    rayforge::shutdown();
}
