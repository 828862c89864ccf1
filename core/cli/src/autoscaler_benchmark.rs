//! `rayforge autoscaler-benchmark`: how long the autoscaler's decision
//! ([`rayforge::autoscaler::policy::plan`]) takes on a large cluster: by
//! default 1,000 nodes of four types, 100,000 queued tasks of 20 resource
//! shapes, a few pending placement groups and an explicit request, with
//! half the nodes idle past the timeout. Prints the median and the best of
//! the rounds, and what the decision was.

use std::collections::BTreeMap;
use std::time::Instant;

use rayforge::autoscaler::config::{AutoscalerConfig, NodeTypeConfig};
use rayforge::autoscaler::policy::{plan, Action, Demand, GroupDemand, NodeView, Phase};
use rayforge::PlacementStrategy;

/// What to measure.
pub(crate) struct Settings {
    pub(crate) nodes: usize,
    pub(crate) tasks: u32,
    pub(crate) shapes: usize,
    pub(crate) rounds: usize,
}

fn res(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The cluster, its demand and the config the decision is timed on.
fn scenario(s: &Settings) -> (Vec<NodeView>, Demand, AutoscalerConfig) {
    let types = [
        ("cpu4", res(&[("CPU", 4.0), ("memory", 16e9)])),
        ("cpu16", res(&[("CPU", 16.0), ("memory", 64e9)])),
        ("gpu1", res(&[("CPU", 8.0), ("GPU", 1.0), ("memory", 32e9)])),
        ("gpu8", res(&[("CPU", 64.0), ("GPU", 8.0), ("memory", 512e9)])),
    ];
    let mut cfg = AutoscalerConfig {
        max_workers: (s.nodes as u32).saturating_mul(2),
        idle_timeout_s: 60.0,
        ..Default::default()
    };
    for (name, r) in &types {
        cfg.node_types.insert(
            name.to_string(),
            NodeTypeConfig {
                resources: r.clone(),
                min_workers: 0,
                max_workers: s.nodes as u32,
            },
        );
    }
    let now = 10_000_000u64;
    let nodes: Vec<NodeView> = (0..s.nodes)
        .map(|i| {
            let (name, total) = &types[i % types.len()];
            let idle = i % 2 == 0;
            let mut available = total.clone();
            if !idle {
                // Busy: half of each resource in use.
                available.values_mut().for_each(|v| *v /= 2.0);
            }
            NodeView {
                id: format!("node-{i:05}"),
                node_type: Some(name.to_string()),
                phase: if i % 50 == 0 { Phase::Launching } else { Phase::Running },
                total: total.clone(),
                available,
                idle_since_ms: idle.then_some(now - 120_000),
            }
        })
        .collect();
    let shapes = s.shapes.max(1);
    let per_shape = s.tasks / shapes as u32;
    let tasks = (0..shapes)
        .map(|k| {
            let cpu = 1.0 + (k % 4) as f64;
            let mut r = res(&[("CPU", cpu), ("memory", 1e9 * (1 + k % 3) as f64)]);
            if k % 5 == 0 {
                r.insert("GPU".into(), 1.0);
            }
            (r, per_shape)
        })
        .collect();
    let groups = (0..4)
        .map(|g| GroupDemand {
            id: format!("{g:016x}"),
            strategy: if g % 2 == 0 {
                PlacementStrategy::StrictSpread
            } else {
                PlacementStrategy::Pack
            },
            bundles: vec![res(&[("CPU", 2.0)]); 8],
        })
        .collect();
    let demand = Demand {
        tasks,
        groups,
        requested: vec![res(&[("GPU", 1.0)]); 16],
    };
    (nodes, demand, cfg)
}

/// Runs the rounds and prints the timings and the decision.
pub(crate) fn run(s: &Settings) -> rayforge::Result<()> {
    let (nodes, demand, cfg) = scenario(s);
    let now = 10_000_000u64;
    let mut times = Vec::new();
    let mut actions = Vec::new();
    for _ in 0..s.rounds.max(1) {
        let t = Instant::now();
        actions = plan(&nodes, &demand, &cfg, now);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let (launched, terminated) = actions.iter().fold((0u32, 0u32), |(l, t), a| match a {
        Action::Launch { count, .. } => (l + count, t),
        Action::Terminate { .. } => (l, t + 1),
        _ => (l, t),
    });
    println!(
        "autoscaler decision: {} nodes, {} queued tasks of {} shapes, {} groups, {} requested bundles",
        nodes.len(),
        demand.tasks.iter().map(|(_, n)| u64::from(*n)).sum::<u64>(),
        demand.tasks.len(),
        demand.groups.len(),
        demand.requested.len()
    );
    println!(
        "  median {:.3} ms, best {:.3} ms over {} rounds; decided: launch {launched} nodes, remove {terminated}, {} other actions",
        times[times.len() / 2] * 1e3,
        times[0] * 1e3,
        times.len(),
        actions.len() as u32 - terminated - actions.iter().filter(|a| matches!(a, Action::Launch { .. })).count() as u32
    );
    Ok(())
}

/// When the task started, milliseconds since the Unix epoch.
#[rayforge::remote]
fn started_at() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The idle timeout of the scaling benchmark's cluster, seconds.
const SCALING_IDLE_S: f64 = 3.0;

/// `rayforge autoscaler-benchmark --scaling ROUNDS`: a head with no CPUs
/// and an autoscaler with one 1-CPU node type (the local provider); each
/// round submits one 1-CPU task and measures the time from submission to
/// the task running on a node launched for it, then from the task's end to
/// the node's removal (the idle timeout is 3 s of that).
pub(crate) fn run_scaling(rounds: usize) -> rayforge::Result<()> {
    use rayforge::Error;
    let dir = std::env::temp_dir().join(format!("rayforge-scaling-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let yaml = dir.join("cluster.yaml");
    std::fs::write(
        &yaml,
        format!(
            "cluster_name: bench\nmax_workers: 1\nidle_timeout_s: {SCALING_IDLE_S}\nprovider:\n  type: local\n\
             available_node_types:\n  cpu1:\n    resources: {{CPU: 1}}\n    max_workers: 1\n"
        ),
    )
    .map_err(|e| Error::io("writing the benchmark's cluster.yaml", e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the rayforge binary", e))?;
    let cluster_file = dir.join("cluster.json");
    let mut head = std::process::Command::new(&exe)
        .args([
            "start",
            "--head",
            "--port",
            "0",
            "--jobs-port",
            "0",
            "--num-cpus",
            "0",
            "--block",
        ])
        .arg("--state-dir")
        .arg(dir.join("head"))
        .arg("--autoscaling-config")
        .arg(&yaml)
        .env("RAYFORGE_CLUSTER_FILE", &cluster_file)
        .env_remove("RAYFORGE_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| Error::io("starting the head", e))?;
    let result = (|| {
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let (address, token) = loop {
            if let Ok(text) = std::fs::read_to_string(&cluster_file) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    if let (Some(a), Some(t)) = (v["address"].as_str(), v["token"].as_str()) {
                        break (a.to_string(), t.to_string());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Runtime("the benchmark's head did not start within 60 s".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        rayforge::init(rayforge::Config::address(&address).token(&token))?;
        let mut head_client = rayforge::cluster::HeadClient::connect(&address, Some(&token))?;
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let t0 = now_ms();
            let started = started_at::options().num_cpus(1.0).remote().get()?;
            let done = now_ms();
            let first = started.saturating_sub(t0) as f64 / 1000.0;
            // Removal: the worker node gone from the alive ones.
            let removed = loop {
                let alive = head_client.nodes()?.iter().filter(|n| n.alive && !n.is_head).count();
                if alive == 0 {
                    break now_ms();
                }
                if now_ms() - done > 120_000 {
                    return Err(Error::Runtime("the idle node was not removed within 120 s".into()));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            let removal = removed.saturating_sub(done) as f64 / 1000.0;
            println!(
                "round {}: first task on a new node {first:.2} s; idle to removal {removal:.2} s (idle timeout {SCALING_IDLE_S} s)",
                round + 1
            );
            up.push(first);
            down.push(removal);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            v[v.len() / 2]
        };
        println!(
            "median over {rounds} rounds: pending demand to the first task running on a new node {:.2} s; \
             idle to removal {:.2} s (idle timeout {SCALING_IDLE_S} s)",
            median(&mut up),
            median(&mut down)
        );
        rayforge::shutdown();
        Ok(())
    })();
    let _ = head.kill();
    let _ = head.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
