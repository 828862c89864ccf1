//! The autoscaler with the local provider, in real processes: a head with
//! no CPUs of its own and a `cluster.yaml` of 2-CPU nodes grows for a
//! burst of tasks, removes the nodes once idle down to `min_workers`,
//! holds capacity asked for with `request_resources`, and reports demand
//! no node type can hold.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rayforge::Error;
use rayforge_integration_tests::{wait_until, LocalCluster};

#[rayforge::remote]
fn where_am_i_slowly(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    rayforge::node_id().expect("node id")
}

const CLUSTER_YAML: &str = "
cluster_name: grow
max_workers: 4
idle_timeout_s: 3
provider:
  type: local
available_node_types:
  cpu2:
    resources: {CPU: 2}
    min_workers: 1
    max_workers: 4
";

/// The managed nodes the autoscaler lists, by phase.
fn phases(c: &mut rayforge::cluster::HeadClient) -> Vec<String> {
    c.autoscaler_status()
        .unwrap()
        .map(|s| s.nodes.into_iter().map(|n| n.phase).collect())
        .unwrap_or_default()
}

fn events(c: &mut rayforge::cluster::HeadClient, kind: &str) -> Vec<String> {
    c.events()
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.message)
        .collect()
}

/// One driver per test process: the scenarios follow one another.
#[test]
fn the_cluster_grows_for_a_burst_shrinks_when_idle_and_holds_requested_capacity() {
    let yaml = std::env::temp_dir().join(format!("rayforge-autoscaler-{}.yaml", std::process::id()));
    std::fs::write(&yaml, CLUSTER_YAML).unwrap();
    let cluster = LocalCluster::start(
        &["--num-cpus", "0", "--autoscaling-config", yaml.to_str().unwrap()],
        5000,
    );
    let head = cluster.daemons[0].1.clone();
    let mut hc = rayforge::cluster::HeadClient::connect(&cluster.address, Some(&cluster.token)).unwrap();

    // min_workers: one node comes up with nothing to do.
    assert!(
        wait_until(Duration::from_secs(120), || phases(&mut hc) == ["idle"]),
        "{:?}",
        hc.autoscaler_status()
    );
    rayforge::init(cluster.config()).expect("join the cluster");

    // A burst of 40 one-CPU tasks on a head with no CPUs: the one node
    // takes two at a time, the autoscaler launches up to max_workers, and
    // queued tasks move to the new nodes.
    let t0 = Instant::now();
    let refs: Vec<_> = (0..40).map(|_| where_am_i_slowly::remote(400)).collect();
    let mut ran_on: BTreeMap<String, usize> = BTreeMap::new();
    for r in refs {
        *ran_on.entry(r.get().expect("a task of the burst")).or_default() += 1;
    }
    let took = t0.elapsed();
    assert!(!ran_on.contains_key(&head), "the head has no CPUs: {ran_on:?}");
    assert!(
        (2..=4).contains(&ran_on.len()),
        "the burst should spread over 2 to 4 nodes (max_workers 4): {ran_on:?}"
    );
    let launches = events(&mut hc, "AUTOSCALER_LAUNCH");
    assert!(
        launches.iter().any(|m| m.contains("pending tasks {CPU: 1}")),
        "{launches:?}"
    );
    assert!(launches.iter().any(|m| m.contains("min_workers 1")), "{launches:?}");
    eprintln!("40 tasks of 400 ms on {} nodes in {took:?}: {ran_on:?}", ran_on.len());

    // Idle nodes go after idle_timeout_s (3 s), down to min_workers; each
    // removal is an event naming the idle time, and the nodes' daemons
    // stop cleanly.
    assert!(
        wait_until(Duration::from_secs(120), || phases(&mut hc) == ["idle"]),
        "{:?}",
        hc.autoscaler_status()
    );
    let terminations = events(&mut hc, "AUTOSCALER_TERMINATE");
    assert!(
        terminations.len() >= ran_on.len() - 1 && terminations.iter().all(|m| m.contains("idle")),
        "{terminations:?}"
    );
    let mut nodes_report = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let nodes = hc.nodes().unwrap();
            nodes_report = format!("{nodes:?}");
            let alive: Vec<_> = nodes.iter().filter(|n| n.alive).collect();
            alive.len() == 2
                && nodes
                    .iter()
                    .filter(|n| !n.alive)
                    .all(|n| n.death_cause.contains("stopped cleanly"))
        }),
        "{nodes_report}"
    );
    let status = cluster.status();
    assert!(status.contains("Autoscaler:") && status.contains("idle"), "{status}");

    // request_resources: room for three 2-CPU bundles is held, busy or
    // not: two more nodes come and stay past the idle timeout; withdrawn,
    // they go.
    let two_cpus: BTreeMap<String, f64> = [("CPU".to_string(), 2.0)].into();
    rayforge::autoscaler::request_resources(&vec![two_cpus; 3]).unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || phases(&mut hc).len() == 3
            && phases(&mut hc).iter().all(|p| p == "idle")),
        "{:?}",
        hc.autoscaler_status()
    );
    let launches = events(&mut hc, "AUTOSCALER_LAUNCH");
    assert!(launches.iter().any(|m| m.contains("request_resources")), "{launches:?}");
    // Past the idle timeout, held.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(phases(&mut hc).len(), 3, "{:?}", hc.autoscaler_status());
    rayforge::autoscaler::request_resources(&[]).unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || phases(&mut hc) == ["idle"]),
        "{:?}",
        hc.autoscaler_status()
    );

    // Demand no node type can hold fails at once, naming the types, not
    // waited on.
    let t0 = Instant::now();
    let err = where_am_i_slowly::options().num_cpus(64.0).remote(0).get().unwrap_err();
    assert!(matches!(err, Error::Infeasible { .. }), "{err}");
    assert!(err.to_string().contains("cpu2"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let ids: BTreeSet<String> = hc
        .autoscaler_status()
        .unwrap()
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids.len(), 1);
    rayforge::shutdown();
    let _ = std::fs::remove_file(&yaml);
}
