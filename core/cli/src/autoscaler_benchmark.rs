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
