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
    rayforge_integration_tests::own_process!();
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
    // The dashboard's overview carries the same, node by node with reasons.
    let auth = format!("Bearer {}", cluster.token);
    let r = rayforge_integration_tests::http(
        &cluster.jobs_address,
        "GET",
        "/api/v0/cluster",
        &[("Authorization", &auth)],
        "",
    );
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
    let a = &v["autoscaler"]["nodes"];
    assert_eq!(a.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(a[0]["phase"], "idle", "{v}");
    assert!(a[0]["reason"].as_str().unwrap().starts_with("idle "), "{v}");
    assert!(
        v["autoscaler"]["recent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("terminating")),
        "{v}"
    );

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

/// The ledger of the local provider: (id, pid) of each node it started.
fn ledger(cluster: &LocalCluster) -> Vec<(String, u32)> {
    let path = cluster.state_dir.join("autoscaler").join("ledger.json");
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["id"].as_str()?.to_string(), n["pid"].as_u64()? as u32)))
        .collect()
}

#[test]
fn a_strict_spread_group_gets_its_nodes_together_and_a_node_killed_while_starting_is_replaced() {
    rayforge_integration_tests::own_process!();
    use rayforge::{placement_group, remove_placement_group, PlacementStrategy};
    let dir = std::env::temp_dir().join(format!("rayforge-autoscaler-pg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The first node to start hangs (and is killed by the test); the
    // others start at once.
    let first = dir.join("first");
    let yaml = dir.join("cluster.yaml");
    std::fs::write(
        &yaml,
        format!(
            r#"
cluster_name: spread
max_workers: 4
idle_timeout_s: 3
provider:
  type: local
  wrapper: [sh, -c, 'if mkdir {0} 2>/dev/null; then echo $RAYFORGE_PROVIDER_NODE_ID > {0}/id; exec sleep 120; fi; exec "$@"', sh]
available_node_types:
  cpu2:
    resources: {{CPU: 2}}
    max_workers: 4
"#,
            first.display()
        ),
    )
    .unwrap();
    let cluster = LocalCluster::start(
        &["--num-cpus", "0", "--autoscaling-config", yaml.to_str().unwrap()],
        5000,
    );
    let mut hc = rayforge::cluster::HeadClient::connect(&cluster.address, Some(&cluster.token)).unwrap();
    rayforge::init(cluster.config()).expect("join the cluster");
    assert!(phases(&mut hc).is_empty(), "min_workers 0: nothing launched yet");

    // Three bundles, each on its own node, on a cluster with none: the
    // three nodes are launched in one decision.
    let one_cpu: BTreeMap<String, f64> = [("CPU".to_string(), 1.0)].into();
    let pg = placement_group(vec![one_cpu; 3], PlacementStrategy::StrictSpread)
        .create()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || ledger(&cluster).len() >= 3),
        "{:?}",
        hc.autoscaler_status()
    );
    let launches = events(&mut hc, "AUTOSCALER_LAUNCH");
    assert!(
        launches.iter().any(|m| m.contains("3 x cpu2 for placement group")),
        "{launches:?}"
    );
    // Kill the node that hangs while starting (whichever of the three ran
    // its wrapper first: it wrote its provider id).
    let mut victim = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            victim = std::fs::read_to_string(first.join("id"))
                .unwrap_or_default()
                .trim()
                .to_string();
            !victim.is_empty()
        }),
        "no node hangs at start"
    );
    let (_, pid) = ledger(&cluster)
        .into_iter()
        .find(|(id, _)| *id == victim)
        .expect("the hanging node in the ledger");
    // SAFETY: kill(2) of a process this test's cluster started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    // It is reported and replaced; the group is placed on three nodes.
    assert!(
        pg.wait(Duration::from_secs(120)).unwrap(),
        "{:?}",
        hc.autoscaler_status()
    );
    let nodes: BTreeSet<String> = pg.bundle_nodes().unwrap().into_iter().collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let lost = events(&mut hc, "AUTOSCALER_NODE_LOST");
    assert!(
        lost.iter()
            .any(|m| m.contains(&victim) && m.contains("before it joined")),
        "{lost:?}"
    );
    // No node the group counted on was removed while it waited, though
    // the two that joined first sat idle past the timeout meanwhile.
    assert!(
        events(&mut hc, "AUTOSCALER_TERMINATE").is_empty(),
        "{:?}",
        events(&mut hc, "AUTOSCALER_TERMINATE")
    );

    // Removed, the group's nodes go idle and are removed (min_workers 0).
    remove_placement_group(&pg).unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || phases(&mut hc).is_empty()),
        "{:?}",
        hc.autoscaler_status()
    );
    assert_eq!(events(&mut hc, "AUTOSCALER_TERMINATE").len(), 3);

    // Actors: one no node can hold yet waits for a node instead of failing;
    // a second that finds the first's node busy queues there, then moves
    // to the node launched for it.
    use crate::cluster_actors::Tally;
    let a = Tally::options().num_cpus(2.0).remote(0).unwrap();
    let a_node = a.node().get().unwrap();
    let b = Tally::options().num_cpus(2.0).remote(0).unwrap();
    let b_node = b.node().get().unwrap();
    assert_ne!(a_node, b_node);
    assert_eq!((a.inc().get().unwrap(), b.inc().get().unwrap()), (1, 1));
    // Both on nodes the autoscaler launched.
    let launched: Vec<String> = hc
        .autoscaler_status()
        .unwrap()
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    assert!(
        launched.contains(&a_node) && launched.contains(&b_node),
        "{launched:?} {a_node} {b_node}"
    );
    rayforge::kill(&a).unwrap();
    rayforge::kill(&b).unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || phases(&mut hc).is_empty()),
        "{:?}",
        hc.autoscaler_status()
    );
    rayforge::shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_provider_that_fails_is_reported_and_retried_with_backoff_and_a_bad_config_is_refused() {
    rayforge_integration_tests::own_process!();
    let dir = std::env::temp_dir().join(format!("rayforge-autoscaler-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A mistake in cluster.yaml: `rayforge start` refuses it, naming it,
    // before anything starts.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "cluster_name: bad\nprovider: {type: local}\navailable_node_types:\n  cpu2:\n    resources: {CPU: 2}\n    min_workers: 3\n    max_workers: 2\n",
    )
    .unwrap();
    let out = std::process::Command::new(rayforge_integration_tests::rayforge_bin())
        .args([
            "start",
            "--head",
            "--port",
            "0",
            "--jobs-port",
            "0",
            "--block",
            "--autoscaling-config",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("min_workers 3 is above max_workers 2"), "{err}");

    // A provider whose every launch fails: each failure is an event naming
    // the cause, the next try waits longer, and the head carries on.
    let yaml = dir.join("cluster.yaml");
    std::fs::write(
        &yaml,
        "cluster_name: failing\nprovider:\n  type: local\n  wrapper: [/nonexistent/rayforge-wrapper]\n\
         available_node_types:\n  cpu2:\n    resources: {CPU: 2}\n    min_workers: 1\n    max_workers: 2\n",
    )
    .unwrap();
    let cluster = LocalCluster::start(
        &["--num-cpus", "1", "--autoscaling-config", yaml.to_str().unwrap()],
        5000,
    );
    let mut hc = rayforge::cluster::HeadClient::connect(&cluster.address, Some(&cluster.token)).unwrap();
    let failures = |hc: &mut rayforge::cluster::HeadClient| -> Vec<(u64, String)> {
        hc.events()
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "AUTOSCALER_LAUNCH_FAILED")
            .map(|e| (e.time_ms, e.message))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(90), || failures(&mut hc).len() >= 3),
        "{:?}",
        hc.autoscaler_status()
    );
    let failed = failures(&mut hc);
    assert!(
        failed.iter().all(|(_, m)| m.contains("/nonexistent/rayforge-wrapper")),
        "{failed:?}"
    );
    // Backoff: 5 s after the first failure, then 10 s (load only makes
    // the gaps longer).
    let gaps: Vec<u64> = failed.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps[0] >= 4_500 && gaps[1] >= 9_500, "{gaps:?}");
    // Between tries, the status says what waits and why.
    let mut status = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            status = cluster.status();
            status.contains("held back") && status.contains("next try in")
        }),
        "{status}"
    );
    // The cluster itself works.
    assert!(hc.nodes().unwrap().iter().any(|n| n.alive && n.is_head));
    let _ = std::fs::remove_dir_all(&dir);
}
