//! The autoscaler's decisions: a pure function of the cluster's nodes, the
//! demand waiting on it, the configuration and the time ([`plan`]), so
//! every rule is tested without processes, as the node's scheduler is.
//!
//! Demand is packed onto what the cluster already has first (free
//! capacity of running nodes, whole capacity of nodes still launching),
//! then onto new nodes of the cheapest type that fits. A placement group
//! is planned whole: the nodes it needs are launched together, and a node
//! its plan counts on is never removed while it waits.

use std::collections::BTreeMap;

use crate::node::placement;
use crate::resources::Resources;
use crate::PlacementStrategy;

use super::config::{AutoscalerConfig, NodeTypeConfig};

const EPS: f64 = 1e-9;

/// Where a node the autoscaler sees stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Created by the provider, not joined yet.
    Launching,
    /// Joined and heartbeating.
    Running,
    /// Being removed.
    Terminating,
}

/// One node as the policy sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// The provider's id for a node the autoscaler manages; the node id
    /// otherwise (the head, nodes started by hand).
    pub id: String,
    /// The node type of a node the autoscaler manages; `None` otherwise
    /// (never removed).
    pub node_type: Option<String>,
    /// Where it stands.
    pub phase: Phase,
    /// What it offers.
    pub total: Resources,
    /// What it has free now (for a launching node: everything).
    pub available: Resources,
    /// Since when it has been idle (no tasks, actors or primary objects),
    /// milliseconds since the Unix epoch; `None` while busy.
    pub idle_since_ms: Option<u64>,
}

/// A placement group waiting to be placed.
#[derive(Debug, Clone)]
pub struct GroupDemand {
    /// The group's id.
    pub id: String,
    /// How its bundles spread over nodes.
    pub strategy: PlacementStrategy,
    /// Its bundles.
    pub bundles: Vec<Resources>,
}

/// Everything waiting for resources.
#[derive(Debug, Clone, Default)]
pub struct Demand {
    /// Queued tasks and actors: a resource shape and how many wait with it.
    pub tasks: Vec<(Resources, u32)>,
    /// Pending placement groups.
    pub groups: Vec<GroupDemand>,
    /// Bundles asked for through [`super::request_resources`]: the
    /// cluster's capacity (not what is free) must hold them all.
    pub requested: Vec<Resources>,
}

/// What the autoscaler does next, each with the reason it says.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create `count` nodes of `node_type`.
    Launch {
        /// The node type.
        node_type: String,
        /// How many.
        count: u32,
        /// Why ("2 x cpu4 for 5 pending tasks {CPU: 2}").
        reason: String,
    },
    /// Drain and remove node `id` (a provider id).
    Terminate {
        /// The provider's id of the node.
        id: String,
        /// Why ("idle 300 s").
        reason: String,
    },
    /// Demand that no node type can ever hold.
    Infeasible {
        /// The shape, as `{CPU: 64}`.
        shape: String,
        /// Why, naming the largest type.
        reason: String,
    },
    /// Demand that fits a node type but waits on a limit (max_workers).
    AtLimit {
        /// The shape.
        shape: String,
        /// Which limit.
        reason: String,
    },
}

/// Formats a resource shape as `{CPU: 2, GPU: 1}` (zero amounts left out).
pub fn shape(r: &Resources) -> String {
    let parts: Vec<String> = r
        .iter()
        .filter(|(_, v)| **v > EPS)
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn fits(free: &Resources, req: &Resources) -> bool {
    req.iter()
        .all(|(k, v)| *v <= EPS || free.get(k).copied().unwrap_or(0.0) + EPS >= *v)
}

fn take(free: &mut Resources, req: &Resources, times: u32) {
    for (k, v) in req {
        *free.entry(k.clone()).or_insert(0.0) -= v * f64::from(times);
    }
}

/// How many times `req` fits in `free` (at most `cap`).
fn times_fitting(free: &Resources, req: &Resources, cap: u32) -> u32 {
    let mut n = cap;
    for (k, v) in req.iter().filter(|(_, v)| **v > EPS) {
        let have = free.get(k).copied().unwrap_or(0.0) + EPS;
        let t = (have / v).floor();
        if t < f64::from(n) {
            n = if t <= 0.0 { 0 } else { t as u32 };
        }
    }
    n
}

/// A slot demand may be packed onto: an existing node or one this plan
/// launches.
struct Slot {
    free: Resources,
    /// The index of the node in the input, or `None` for a new node.
    node: Option<usize>,
    /// Whether some pending demand was packed onto it.
    needed: bool,
}

/// Node types, cheapest first: fewest GPUs, then CPUs, then memory, then
/// everything else; the name breaks ties.
fn by_cost(types: &BTreeMap<String, NodeTypeConfig>) -> Vec<(&String, &NodeTypeConfig)> {
    let mut v: Vec<_> = types.iter().collect();
    let key = |t: &NodeTypeConfig, name: &str| {
        let g = |k: &str| t.resources.get(k).copied().unwrap_or(0.0);
        let others: f64 = t
            .resources
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "GPU" | "CPU" | "memory"))
            .map(|(_, v)| *v)
            .sum();
        (g("GPU"), g("CPU"), g("memory"), others, name.to_string())
    };
    v.sort_by(|a, b| {
        let (ka, kb) = (key(a.1, a.0), key(b.1, b.0));
        ka.partial_cmp(&kb).unwrap_or(std::cmp::Ordering::Equal)
    });
    v
}

/// Counts of managed nodes (launching or running) per type, and in all.
struct Counts {
    per_type: BTreeMap<String, u32>,
    all: u32,
}

impl Counts {
    fn room(&self, cfg: &AutoscalerConfig, node_type: &str) -> u32 {
        let t = cfg.node_types.get(node_type).map_or(0, |t| t.max_workers);
        let used = self.per_type.get(node_type).copied().unwrap_or(0);
        t.saturating_sub(used).min(cfg.max_workers.saturating_sub(self.all))
    }

    fn add(&mut self, node_type: &str, n: u32) {
        *self.per_type.entry(node_type.to_string()).or_insert(0) += n;
        self.all += n;
    }
}

/// Why no node type holds `req`, for messages: a resource no type offers,
/// or the type with the most of what `req` asks for (`largest: cpu8 {CPU: 8}`).
fn why_none_fits(cfg: &AutoscalerConfig, req: &Resources) -> String {
    let asked: Vec<&String> = req.iter().filter(|(_, v)| **v > EPS).map(|(k, _)| k).collect();
    if let Some(k) = asked.iter().find(|k| {
        cfg.node_types
            .values()
            .all(|t| t.resources.get(**k).copied().unwrap_or(0.0) <= EPS)
    }) {
        let names: Vec<&str> = cfg.node_types.keys().map(String::as_str).collect();
        return format!("no node type offers {k} (types: {})", names.join(", "));
    }
    let offered =
        |t: &NodeTypeConfig| -> f64 { asked.iter().map(|k| t.resources.get(*k).copied().unwrap_or(0.0)).sum() };
    let mut best: Option<(&String, &NodeTypeConfig)> = None;
    for (name, t) in by_cost(&cfg.node_types) {
        if best.is_none_or(|(_, b)| offered(t) > offered(b)) {
            best = Some((name, t));
        }
    }
    match best {
        Some((name, t)) => format!("largest: {name} {}", shape(&t.resources)),
        None => "no node types".to_string(),
    }
}

/// Decides what to launch and what to remove.
pub fn plan(nodes: &[NodeView], demand: &Demand, cfg: &AutoscalerConfig, now_ms: u64) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut counts = Counts {
        per_type: BTreeMap::new(),
        all: 0,
    };
    for n in nodes.iter().filter(|n| n.phase != Phase::Terminating) {
        if let Some(t) = &n.node_type {
            counts.add(t, 1);
        }
    }
    let launching_before = nodes.iter().filter(|n| n.phase == Phase::Launching).count() as u32;
    let mut slots: Vec<Slot> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.phase != Phase::Terminating)
        .map(|(i, n)| Slot {
            free: match n.phase {
                Phase::Launching => n.total.clone(),
                _ => n.available.clone(),
            },
            node: Some(i),
            needed: false,
        })
        .collect();
    // What this plan launches, per type, with the reasons.
    let mut launches: BTreeMap<String, (u32, Vec<String>)> = BTreeMap::new();
    let launch = |launches: &mut BTreeMap<String, (u32, Vec<String>)>,
                  slots: &mut Vec<Slot>,
                  counts: &mut Counts,
                  t: &str,
                  n: u32,
                  reason: String| {
        let res = &cfg.node_types[t].resources;
        for _ in 0..n {
            slots.push(Slot {
                free: res.clone(),
                node: None,
                needed: true,
            });
        }
        counts.add(t, n);
        let e = launches.entry(t.to_string()).or_default();
        e.0 += n;
        e.1.push(reason);
    };

    // 1. Each type's minimum.
    for (name, t) in &cfg.node_types {
        let have = counts.per_type.get(name).copied().unwrap_or(0);
        if have < t.min_workers {
            let n = t.min_workers - have;
            launch(
                &mut launches,
                &mut slots,
                &mut counts,
                name,
                n,
                format!("{n} x {name} for min_workers {}", t.min_workers),
            );
        }
    }

    // 2. Explicit requests: the cluster's capacity must hold them (and
    // the nodes that hold them stay, idle or not).
    let mut held_for_request = vec![false; nodes.len()];
    if !demand.requested.is_empty() {
        // Each with the node it is (None: launched by this plan).
        let mut capacity: Vec<(Option<usize>, Resources)> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.phase != Phase::Terminating)
            .map(|(i, n)| (Some(i), n.total.clone()))
            .chain(
                slots
                    .iter()
                    .filter(|s| s.node.is_none())
                    .map(|s| (None, s.free.clone())),
            )
            .collect();
        let mut requested = demand.requested.clone();
        requested.sort_by(|a, b| size(b).partial_cmp(&size(a)).unwrap_or(std::cmp::Ordering::Equal));
        let mut added: BTreeMap<String, u32> = BTreeMap::new();
        for b in &requested {
            if let Some((i, c)) = capacity.iter_mut().find(|(_, c)| fits(c, b)) {
                take(c, b, 1);
                if let Some(i) = i {
                    held_for_request[*i] = true;
                }
                continue;
            }
            match cheapest_with_room(cfg, &counts, b) {
                Ok(t) => {
                    let mut c = cfg.node_types[&t].resources.clone();
                    take(&mut c, b, 1);
                    capacity.push((None, c));
                    launch(&mut launches, &mut slots, &mut counts, &t, 1, String::new());
                    *added.entry(t).or_default() += 1;
                }
                Err(a) => push_once(&mut actions, a),
            }
        }
        for (t, n) in added {
            if let Some(e) = launches.get_mut(&t) {
                e.1.pop();
                e.1.retain(|r| !r.is_empty());
                e.1.push(format!(
                    "{n} x {t} for request_resources ({} bundles)",
                    demand.requested.len()
                ));
            }
        }
    }

    // 3. Pending placement groups, each whole.
    for g in &demand.groups {
        let free: Vec<Resources> = slots.iter().map(|s| s.free.clone()).collect();
        let none = vec![None; g.bundles.len()];
        if let Ok(assign) = placement::plan(g.strategy.to_proto(), &g.bundles, &none, &free) {
            for (b, s) in g.bundles.iter().zip(&assign) {
                take(&mut slots[*s].free, b, 1);
                slots[*s].needed = true;
            }
            continue;
        }
        match plan_group_launch(cfg, &counts, g, &free) {
            Ok((t, k, assign)) => {
                launch(
                    &mut launches,
                    &mut slots,
                    &mut counts,
                    &t,
                    k,
                    format!(
                        "{k} x {t} for placement group {} ({:?}, {} bundles)",
                        g.id,
                        g.strategy,
                        g.bundles.len()
                    ),
                );
                // New nodes follow the existing slots in the same order.
                for (b, s) in g.bundles.iter().zip(&assign) {
                    take(&mut slots[*s].free, b, 1);
                    slots[*s].needed = true;
                }
            }
            Err(a) => push_once(&mut actions, a),
        }
    }

    // 4. Queued tasks and actors, biggest shapes first.
    let mut tasks: Vec<(Resources, u32)> = demand
        .tasks
        .iter()
        .filter(|(r, n)| *n > 0 && !r.keys().any(|k| crate::resources::group_of(k).is_some()))
        .cloned()
        .collect();
    tasks.sort_by(|a, b| size(&b.0).partial_cmp(&size(&a.0)).unwrap_or(std::cmp::Ordering::Equal));
    // Launches for tasks may be cut by upscaling_speed; groups' are not.
    let managed_running = nodes
        .iter()
        .filter(|n| n.phase == Phase::Running && n.node_type.is_some())
        .count() as f64;
    let speed_cap = (cfg.upscaling_speed * managed_running.max(1.0)).ceil().max(5.0) as u32;
    let mut task_budget = speed_cap.saturating_sub(launching_before);
    for (req, count) in &tasks {
        let mut left = *count;
        for s in slots.iter_mut() {
            if left == 0 {
                break;
            }
            let n = times_fitting(&s.free, req, left);
            if n > 0 {
                take(&mut s.free, req, n);
                s.needed = true;
                left -= n;
            }
        }
        if left == 0 {
            continue;
        }
        let mut per_type: BTreeMap<String, u32> = BTreeMap::new();
        while left > 0 {
            let t = match cheapest_with_room(cfg, &counts, req) {
                Ok(t) => t,
                Err(a) => {
                    push_once(&mut actions, a);
                    break;
                }
            };
            if task_budget == 0 {
                push_once(
                    &mut actions,
                    Action::AtLimit {
                        shape: shape(req),
                        reason: format!(
                            "launching at most {speed_cap} nodes at once (upscaling_speed {})",
                            cfg.upscaling_speed
                        ),
                    },
                );
                break;
            }
            task_budget -= 1;
            let mut free = cfg.node_types[&t].resources.clone();
            let n = times_fitting(&free, req, left).max(1);
            take(&mut free, req, n);
            slots.push(Slot {
                free,
                node: None,
                needed: true,
            });
            counts.add(&t, 1);
            *per_type.entry(t).or_default() += 1;
            left = left.saturating_sub(n);
        }
        for (t, n) in per_type {
            let e = launches.entry(t.clone()).or_default();
            e.0 += n;
            e.1.push(format!("{n} x {t} for {count} pending tasks {}", shape(req)));
        }
    }
    for (t, (n, reasons)) in launches {
        actions.push(Action::Launch {
            node_type: t,
            count: n,
            reason: reasons.join("; "),
        });
    }

    // 5. Idle nodes past the timeout, down to each type's minimum; never a
    // node pending demand was packed onto, and nothing while a group's
    // nodes are still starting.
    let group_starting = !demand.groups.is_empty() && launching_before > 0;
    if !group_starting {
        // `as` saturates: a huge timeout is "never".
        let timeout_ms = (cfg.idle_timeout_s * 1000.0) as u64;
        let needed: Vec<bool> = {
            let mut v = vec![false; nodes.len()];
            for s in &slots {
                if let (Some(i), true) = (s.node, s.needed) {
                    v[i] = true;
                }
            }
            for (v, held) in v.iter_mut().zip(&held_for_request) {
                *v |= *held;
            }
            v
        };
        let mut kept = counts.per_type.clone();
        let mut idle: Vec<(usize, u64)> = nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.phase == Phase::Running && n.node_type.is_some() && !needed[*i])
            .filter_map(|(i, n)| n.idle_since_ms.map(|s| (i, now_ms.saturating_sub(s))))
            .filter(|(_, idle)| *idle >= timeout_ms)
            .collect();
        // Longest idle first.
        idle.sort_by_key(|(i, d)| (std::cmp::Reverse(*d), nodes[*i].id.clone()));
        for (i, d) in idle {
            let n = &nodes[i];
            let Some(t) = n.node_type.as_deref() else { continue };
            let min = cfg.node_types.get(t).map_or(0, |c| c.min_workers);
            let have = kept.get(t).copied().unwrap_or(0);
            // A type no longer in the config has a minimum of 0.
            if have <= min {
                continue;
            }
            kept.insert(t.to_string(), have - 1);
            actions.push(Action::Terminate {
                id: n.id.clone(),
                reason: format!("idle {} s", d / 1000),
            });
        }
    }
    actions
}

fn size(r: &Resources) -> f64 {
    r.values().sum()
}

fn push_once(actions: &mut Vec<Action>, a: Action) {
    if !actions.contains(&a) {
        actions.push(a);
    }
}

/// The cheapest type that fits `req` and may launch one more node; or the
/// reason none can.
fn cheapest_with_room(cfg: &AutoscalerConfig, counts: &Counts, req: &Resources) -> Result<String, Action> {
    let fitting: Vec<_> = by_cost(&cfg.node_types)
        .into_iter()
        .filter(|(_, t)| fits(&t.resources, req))
        .collect();
    if fitting.is_empty() {
        return Err(Action::Infeasible {
            shape: shape(req),
            reason: format!("no node type fits {} ({})", shape(req), why_none_fits(cfg, req)),
        });
    }
    fitting
        .iter()
        .find(|(name, _)| counts.room(cfg, name) > 0)
        .map(|(name, _)| name.to_string())
        .ok_or_else(|| Action::AtLimit {
            shape: shape(req),
            reason: format!(
                "{} fits {} but max_workers is reached",
                shape(req),
                fitting.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
            ),
        })
}

/// The fewest new nodes of one type that, with what is free, hold group
/// `g` whole: (type, how many, where each bundle goes).
fn plan_group_launch(
    cfg: &AutoscalerConfig,
    counts: &Counts,
    g: &GroupDemand,
    free: &[Resources],
) -> Result<(String, u32, Vec<usize>), Action> {
    let none = vec![None; g.bundles.len()];
    let mut at_limit = None;
    for (name, t) in by_cost(&cfg.node_types) {
        for k in 1..=g.bundles.len() as u32 {
            let mut with: Vec<Resources> = free.to_vec();
            with.extend(std::iter::repeat_n(t.resources.clone(), k as usize));
            if let Ok(assign) = placement::plan(g.strategy.to_proto(), &g.bundles, &none, &with) {
                if counts.room(cfg, name) >= k {
                    return Ok((name.clone(), k, assign));
                }
                at_limit.get_or_insert_with(|| Action::AtLimit {
                    shape: group_shape(g),
                    reason: format!("placement group {} needs {k} x {name}: max_workers is reached", g.id),
                });
                break;
            }
        }
    }
    Err(at_limit.unwrap_or_else(|| Action::Infeasible {
        shape: group_shape(g),
        reason: format!(
            "placement group {} ({:?}, bundles {}) fits no number of nodes of one type ({})",
            g.id,
            g.strategy,
            group_shape(g),
            why_none_fits(
                cfg,
                &g.bundles.iter().fold(Resources::new(), |mut sum, b| {
                    for (k, v) in b {
                        *sum.entry(k.clone()).or_insert(0.0) += v;
                    }
                    sum
                })
            )
        ),
    }))
}

fn group_shape(g: &GroupDemand) -> String {
    g.bundles.iter().map(shape).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(pairs: &[(&str, f64)]) -> Resources {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn cfg() -> AutoscalerConfig {
        let mut c = AutoscalerConfig {
            max_workers: 10,
            idle_timeout_s: 60.0,
            ..Default::default()
        };
        c.node_types.insert(
            "cpu2".into(),
            NodeTypeConfig {
                resources: res(&[("CPU", 2.0)]),
                min_workers: 0,
                max_workers: 4,
            },
        );
        c.node_types.insert(
            "cpu8".into(),
            NodeTypeConfig {
                resources: res(&[("CPU", 8.0)]),
                min_workers: 0,
                max_workers: 2,
            },
        );
        c.node_types.insert(
            "gpu".into(),
            NodeTypeConfig {
                resources: res(&[("CPU", 4.0), ("GPU", 1.0)]),
                min_workers: 0,
                max_workers: 1,
            },
        );
        c
    }

    fn head() -> NodeView {
        NodeView {
            id: "head".into(),
            node_type: None,
            phase: Phase::Running,
            total: Resources::new(),
            available: Resources::new(),
            idle_since_ms: Some(0),
        }
    }

    fn worker(id: &str, t: &str, total: Resources, available: Resources, idle_since_ms: Option<u64>) -> NodeView {
        NodeView {
            id: id.into(),
            node_type: Some(t.into()),
            phase: Phase::Running,
            total,
            available,
            idle_since_ms,
        }
    }

    fn launches(actions: &[Action]) -> Vec<(String, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Launch { node_type, count, .. } => Some((node_type.clone(), *count)),
                _ => None,
            })
            .collect()
    }

    fn terminated(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Terminate { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_burst_of_small_tasks_takes_the_cheapest_type_up_to_its_limit_then_the_next() {
        let d = Demand {
            tasks: vec![(res(&[("CPU", 1.0)]), 40)],
            ..Default::default()
        };
        let a = plan(&[head()], &d, &cfg(), 0);
        // 4 x cpu2 (8 CPUs), then cpu8 nodes; GPU nodes are not used for CPU work
        // while a cheaper type has room.
        assert_eq!(launches(&a), vec![("cpu2".into(), 4), ("cpu8".into(), 1)]);
        let reason = a
            .iter()
            .find_map(|x| match x {
                Action::Launch { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .expect("a launch");
        assert_eq!(reason, "4 x cpu2 for 40 pending tasks {CPU: 1}");
        // upscaling_speed: at most 5 at once on a cluster with no workers.
        assert!(a.iter().any(|x| matches!(x, Action::AtLimit { .. })), "{a:?}");
    }

    #[test]
    fn free_capacity_and_launching_nodes_are_used_before_new_ones() {
        let nodes = vec![
            head(),
            worker("a", "cpu2", res(&[("CPU", 2.0)]), res(&[("CPU", 1.0)]), None),
            NodeView {
                phase: Phase::Launching,
                ..worker("b", "cpu2", res(&[("CPU", 2.0)]), Resources::new(), None)
            },
        ];
        let d = Demand {
            tasks: vec![(res(&[("CPU", 1.0)]), 3)],
            ..Default::default()
        };
        assert!(launches(&plan(&nodes, &d, &cfg(), 0)).is_empty());
        let d = Demand {
            tasks: vec![(res(&[("CPU", 1.0)]), 4)],
            ..Default::default()
        };
        assert_eq!(launches(&plan(&nodes, &d, &cfg(), 0)), vec![("cpu2".into(), 1)]);
    }

    #[test]
    fn demand_no_type_can_hold_is_infeasible_at_once_naming_the_largest_type() {
        let d = Demand {
            tasks: vec![(res(&[("CPU", 64.0)]), 1), (res(&[("TPU", 1.0)]), 2)],
            ..Default::default()
        };
        let a = plan(&[head()], &d, &cfg(), 0);
        assert!(launches(&a).is_empty(), "{a:?}");
        let reasons: Vec<String> = a
            .iter()
            .filter_map(|x| match x {
                Action::Infeasible { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            reasons,
            vec![
                "no node type fits {CPU: 64} (largest: cpu8 {CPU: 8})".to_string(),
                "no node type fits {TPU: 1} (no node type offers TPU (types: cpu2, cpu8, gpu))".to_string(),
            ]
        );
    }

    #[test]
    fn a_strict_spread_group_launches_its_nodes_together_and_keeps_the_ones_it_counts_on() {
        let g = GroupDemand {
            id: "g1".into(),
            strategy: PlacementStrategy::StrictSpread,
            bundles: vec![res(&[("CPU", 1.0)]); 3],
        };
        let d = Demand {
            groups: vec![g],
            ..Default::default()
        };
        // One idle worker counts as one of the three nodes.
        let idle = worker("a", "cpu2", res(&[("CPU", 2.0)]), res(&[("CPU", 2.0)]), Some(0));
        let a = plan(&[head(), idle.clone()], &d, &cfg(), 3_600_000);
        assert_eq!(launches(&a), vec![("cpu2".into(), 2)]);
        assert!(
            terminated(&a).is_empty(),
            "a node the group counts on was removed: {a:?}"
        );
        // While its nodes start, nothing is removed either.
        let starting = NodeView {
            phase: Phase::Launching,
            ..worker("b", "cpu2", res(&[("CPU", 2.0)]), Resources::new(), None)
        };
        let spare = worker("c", "cpu8", res(&[("CPU", 8.0)]), res(&[("CPU", 8.0)]), Some(0));
        let a = plan(&[head(), idle, starting, spare], &d, &cfg(), 3_600_000);
        assert!(terminated(&a).is_empty(), "{a:?}");
    }

    #[test]
    fn a_group_no_type_can_hold_is_infeasible() {
        let d = Demand {
            groups: vec![GroupDemand {
                id: "g2".into(),
                strategy: PlacementStrategy::StrictPack,
                bundles: vec![res(&[("CPU", 6.0)]); 2],
            }],
            ..Default::default()
        };
        let a = plan(&[head()], &d, &cfg(), 0);
        assert!(
            matches!(&a[..], [Action::Infeasible { reason, .. }] if reason.contains("g2") && reason.contains("largest: cpu8")),
            "{a:?}"
        );
    }

    #[test]
    fn idle_nodes_go_after_the_timeout_down_to_min_workers() {
        let mut c = cfg();
        c.node_types.get_mut("cpu2").unwrap().min_workers = 1;
        let full = res(&[("CPU", 2.0)]);
        let nodes = vec![
            head(),
            worker("a", "cpu2", full.clone(), full.clone(), Some(1_000)),
            worker("b", "cpu2", full.clone(), full.clone(), Some(5_000)),
            worker("c", "cpu2", full.clone(), Resources::new(), None),
        ];
        // 59 s idle: kept.
        assert!(terminated(&plan(&nodes, &Demand::default(), &c, 60_000)).is_empty());
        // a at 65 s, b at 61 s: both go, c (busy) stays and is the minimum.
        let a = plan(&nodes, &Demand::default(), &c, 66_000);
        assert_eq!(terminated(&a), vec!["a".to_string(), "b".to_string()]);
        assert!(a.contains(&Action::Terminate {
            id: "a".into(),
            reason: "idle 65 s".into()
        }));
        // With c idle too, one cpu2 stays.
        let mut all_idle = nodes.clone();
        all_idle[3].available = full.clone();
        all_idle[3].idle_since_ms = Some(0);
        assert_eq!(terminated(&plan(&all_idle, &Demand::default(), &c, 66_000)).len(), 2);
        // Pending tasks that fit an idle node keep it.
        let d = Demand {
            tasks: vec![(res(&[("CPU", 2.0)]), 1)],
            ..Default::default()
        };
        assert_eq!(terminated(&plan(&nodes, &d, &c, 66_000)), vec!["b".to_string()]);
    }

    #[test]
    fn min_workers_are_launched_and_requests_hold_capacity_even_when_busy() {
        let mut c = cfg();
        c.node_types.get_mut("cpu2").unwrap().min_workers = 2;
        let a = plan(&[head()], &Demand::default(), &c, 0);
        assert_eq!(launches(&a), vec![("cpu2".into(), 2)]);
        // Two busy cpu2 workers: a request for 3 x {CPU: 2} needs one more
        // node, though nothing is free.
        let busy = |id: &str| worker(id, "cpu2", res(&[("CPU", 2.0)]), Resources::new(), None);
        let d = Demand {
            requested: vec![res(&[("CPU", 2.0)]); 3],
            ..Default::default()
        };
        let a = plan(&[head(), busy("a"), busy("b")], &d, &c, 0);
        assert_eq!(launches(&a), vec![("cpu2".into(), 1)]);
        assert!(
            matches!(&a[0], Action::Launch { reason, .. } if reason.contains("request_resources")),
            "{a:?}"
        );
    }

    #[test]
    fn idle_nodes_that_hold_requested_capacity_stay() {
        let full = res(&[("CPU", 2.0)]);
        let idle = |id: &str| worker(id, "cpu2", full.clone(), full.clone(), Some(0));
        let nodes = vec![head(), idle("a"), idle("b"), idle("c")];
        let d = Demand {
            requested: vec![full.clone(); 2],
            ..Default::default()
        };
        // Two nodes hold the request; only the third goes, and nothing is
        // launched for it (removing then relaunching would loop).
        let a = plan(&nodes, &d, &cfg(), 600_000);
        assert_eq!(terminated(&a), vec!["c".to_string()]);
        assert!(launches(&a).is_empty(), "{a:?}");
    }

    #[test]
    fn limits_hold_and_say_so() {
        let mut c = cfg();
        c.max_workers = 2;
        let d = Demand {
            tasks: vec![(res(&[("CPU", 2.0)]), 10)],
            ..Default::default()
        };
        let a = plan(&[head()], &d, &c, 0);
        assert_eq!(launches(&a), vec![("cpu2".into(), 2)]);
        assert!(
            a.iter()
                .any(|x| matches!(x, Action::AtLimit { reason, .. } if reason.contains("max_workers"))),
            "{a:?}"
        );
    }
}
