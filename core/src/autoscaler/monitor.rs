//! The autoscaler at work in the head: at least once a second (and as soon
//! as a node's demand or idleness changes, or an idle node reaches its
//! timeout, at most ten times a second) it reads the
//! cluster's nodes, their demand, the pending placement groups and the
//! explicit requests from the head's tables, asks the policy
//! ([`super::policy::plan`]) what to do, and has the provider do it. Each
//! launch and termination is an event in the cluster's feed; the current
//! state, with the reason of each node and of each demand that waits, is
//! kept in the key-value store ([`Status`], shown by `rayforge status`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::ClusterConfig;
use super::policy::{self, Action, Demand, GroupDemand, NodeView, Phase};
use super::provider::NodeProvider;
use super::{KV_NAMESPACE, REQUESTED_KEY, STATUS_KEY};
use crate::gcs::Gcs;
use crate::proto;
use crate::resources::Resources;
use crate::PlacementStrategy;

/// How often the autoscaler looks at the cluster when nothing wakes it.
const PERIOD: Duration = Duration::from_secs(1);
/// A launched node that has not joined in this long is terminated.
const STARTUP_TIMEOUT_MS: u64 = 180_000;

/// One node as the autoscaler's status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The provider's id.
    pub id: String,
    /// Its type.
    pub node_type: String,
    /// `launching`, `running`, `idle` or `terminating`.
    pub phase: String,
    /// The cluster's node id once joined ("" before).
    pub node_id: String,
    /// Why it is in that phase ("2 x cpu2 for 5 pending tasks {CPU: 1}",
    /// "idle 12 s").
    pub reason: String,
}

/// What the autoscaler last decided, kept under `autoscaler/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// When, milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// The nodes it manages.
    pub nodes: Vec<NodeStatus>,
    /// Demand no node type can hold, each with why.
    pub infeasible: Vec<String>,
    /// Demand waiting on a limit (max_workers, upscaling_speed).
    pub at_limit: Vec<String>,
    /// The last decisions, newest last ("launched 2 x cpu2: ...").
    pub recent: Vec<String>,
}

impl Status {
    /// Reads a status stored as JSON.
    pub fn decode(json: &[u8]) -> crate::Result<Status> {
        serde_json::from_slice(json)
            .map_err(|e| crate::Error::InvalidArgument(format!("{KV_NAMESPACE}/{STATUS_KEY} is not a status: {e}")))
    }

    /// The lines `rayforge status` prints.
    pub fn report(&self) -> String {
        use std::fmt::Write;
        let mut out = String::from("Autoscaler:\n");
        if self.nodes.is_empty() {
            out.push_str("  no nodes launched\n");
        }
        for n in &self.nodes {
            let _ = writeln!(
                out,
                "  {:<11} {} ({}) {}{}",
                n.phase,
                n.id,
                n.node_type,
                if n.node_id.is_empty() {
                    String::new()
                } else {
                    format!("node {} ", n.node_id)
                },
                n.reason
            );
        }
        for i in &self.infeasible {
            let _ = writeln!(out, "  infeasible: {i}");
        }
        for a in &self.at_limit {
            let _ = writeln!(out, "  waiting on a limit: {a}");
        }
        for r in self.recent.iter().rev().take(5).rev() {
            let _ = writeln!(out, "  recent: {r}");
        }
        out
    }
}

/// A node type waiting before its next launch.
struct Backoff {
    until_ms: u64,
    failures: u32,
    why: String,
}

/// The wait after the first failed launch of a type; it doubles with each
/// failure in a row, up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: u64 = 5_000;
const MAX_BACKOFF_MS: u64 = 120_000;

/// The autoscaler's memory between rounds.
struct Monitor {
    gcs: Arc<Gcs>,
    cfg: ClusterConfig,
    provider: Arc<dyn NodeProvider>,
    /// Provider ids being terminated, with the reason.
    terminating: BTreeMap<String, String>,
    /// Why each node was launched.
    launch_reason: BTreeMap<String, String>,
    /// Infeasible shapes already reported as events.
    reported: BTreeSet<String>,
    /// The config's file, and the modification time last read.
    path: Option<std::path::PathBuf>,
    seen: Option<std::time::SystemTime>,
    /// Provider ids of nodes terminated or gone: their entries in the
    /// head's table (alive until they say they stop) are not counted.
    ended: BTreeSet<String>,
    /// Node types whose last launch failed (the provider refused, or the
    /// node died before joining): not launched again before the time
    /// (ms), which doubles with each failure in a row, with the reason.
    backoff: BTreeMap<String, Backoff>,
    recent: Vec<String>,
}

fn node_types(cfg: &ClusterConfig) -> Vec<proto::NodeTypeShape> {
    cfg.available_node_types
        .iter()
        .map(|(name, t)| proto::NodeTypeShape {
            name: name.clone(),
            resources: t.resources.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        })
        .collect()
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Runs the autoscaler for `cfg` until the process ends. When `path` is
/// given (the file `cfg` came from), a change to it is applied: node
/// types and limits (a file that no longer parses is reported and the
/// previous config kept; the provider stays as it started).
pub(crate) async fn run(
    gcs: Arc<Gcs>,
    cfg: ClusterConfig,
    path: Option<std::path::PathBuf>,
    provider: Arc<dyn NodeProvider>,
) {
    gcs.set_node_types(node_types(&cfg));
    tracing::info!(
        cluster = %cfg.cluster_name,
        types = ?cfg.available_node_types.keys().collect::<Vec<_>>(),
        max_workers = cfg.max_workers,
        "autoscaler started"
    );
    let mut m = Monitor {
        gcs,
        cfg,
        provider,
        terminating: BTreeMap::new(),
        launch_reason: BTreeMap::new(),
        reported: BTreeSet::new(),
        seen: path.as_deref().and_then(modified),
        path,
        ended: BTreeSet::new(),
        backoff: BTreeMap::new(),
        recent: Vec::new(),
    };
    loop {
        let started = tokio::time::Instant::now();
        // Provider calls block (processes, SSH): off the async threads.
        let (back, next_ms) = match tokio::task::spawn_blocking(move || {
            let next = m.round();
            (m, next)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("the autoscaler's round failed: {e}; the autoscaler stops");
                return;
            }
        };
        m = back;
        // The next round: in a second, when an idle node reaches its
        // timeout, or when demand changes (a node's heartbeat wakes it), but
        // not sooner than MIN_GAP after this one.
        let wait = next_ms
            .map(|t| Duration::from_millis(t.saturating_sub(crate::clock::now_ms()) + 20))
            .map_or(PERIOD, |d| d.min(PERIOD));
        let gcs = m.gcs.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = gcs.autoscaler_wake().notified() => {}
        }
        tokio::time::sleep_until(started + MIN_GAP).await;
    }
}

/// The shortest time between two rounds.
const MIN_GAP: Duration = Duration::from_millis(100);

fn to_res(m: &std::collections::HashMap<String, f64>) -> Resources {
    m.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

impl Monitor {
    fn note(&mut self, severity: &str, kind: &str, text: String) {
        tracing::info!("{text}");
        self.gcs.add_event(crate::gcs::event(severity, kind, text.clone()));
        self.recent.push(text);
        if self.recent.len() > 50 {
            self.recent.remove(0);
        }
    }

    /// Applies a changed config file.
    fn reload(&mut self) {
        let Some(path) = self.path.clone() else { return };
        let m = modified(&path);
        if m == self.seen {
            return;
        }
        self.seen = m;
        match ClusterConfig::load(&path) {
            Ok(c) if c.cluster_name != self.cfg.cluster_name => self.note(
                "ERROR",
                "AUTOSCALER_CONFIG",
                format!(
                    "{} now names cluster {}, not {}: ignored",
                    path.display(),
                    c.cluster_name,
                    self.cfg.cluster_name
                ),
            ),
            Ok(c) => {
                self.gcs.set_node_types(node_types(&c));
                let types: Vec<&String> = c.available_node_types.keys().collect();
                let text = format!(
                    "{} applied: node types {types:?}, max_workers {}, idle_timeout_s {}",
                    path.display(),
                    c.max_workers,
                    c.idle_timeout_s
                );
                self.cfg = c;
                self.note("INFO", "AUTOSCALER_CONFIG", text);
            }
            Err(e) => self.note(
                "ERROR",
                "AUTOSCALER_CONFIG",
                format!("keeping the previous config: {e}"),
            ),
        }
    }

    /// One look at the cluster and what follows from it. Returns when the
    /// next idle node reaches the idle timeout (ms since the epoch), if one
    /// is idle.
    fn round(&mut self) -> Option<u64> {
        self.reload();
        let now = crate::clock::now_ms();
        let listed = match self.provider.list() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("the provider cannot list the cluster's nodes: {e}");
                return None;
            }
        };
        let nodes: Vec<proto::NodeEntry> = self
            .gcs
            .nodes()
            .into_iter()
            .filter(|n| n.alive && !n.reconnecting)
            .collect();
        let by_provider: BTreeMap<&str, &proto::NodeEntry> = nodes
            .iter()
            .filter(|n| !n.provider_id.is_empty())
            .map(|n| (n.provider_id.as_str(), n))
            .collect();
        let mut views = Vec::new();
        let mut statuses = Vec::new();
        let known: BTreeSet<String> = listed.iter().map(|p| p.id.clone()).collect();
        self.terminating.retain(|id, _| known.contains(id));
        for p in &listed {
            if let Some(why) = &p.exited {
                if self.terminating.remove(&p.id).is_none() {
                    let joined = by_provider.contains_key(p.id.as_str());
                    let when = if joined { "" } else { " before it joined" };
                    let text = format!("node {} ({}) is gone{when}: {why}", p.id, p.node_type);
                    self.note("WARNING", "AUTOSCALER_NODE_LOST", text);
                    if !joined {
                        self.failed(&p.node_type, format!("a node died before it joined: {why}"), now);
                    }
                }
                self.launch_reason.remove(&p.id);
                self.ended.insert(p.id.clone());
                continue;
            }
            let Some(t) = self.cfg.available_node_types.get(&p.node_type) else {
                continue;
            };
            let joined = by_provider.get(p.id.as_str());
            if joined.is_some() && self.launch_reason.remove(&p.id).is_some() {
                // Just joined: the type launches fine.
                self.backoff.remove(&p.node_type);
            }
            let (phase, total, available, idle) = if self.terminating.contains_key(&p.id) {
                (Phase::Terminating, t.resources.clone(), Resources::new(), None)
            } else if let Some(n) = joined {
                let idle = (n.idle_since_ms > 0).then_some(n.idle_since_ms);
                (Phase::Running, to_res(&n.total), to_res(&n.available), idle)
            } else {
                (Phase::Launching, t.resources.clone(), t.resources.clone(), None)
            };
            if phase == Phase::Launching && now.saturating_sub(p.created_ms) > STARTUP_TIMEOUT_MS {
                let reason = format!("did not join within {} s", STARTUP_TIMEOUT_MS / 1000);
                self.terminate(&p.id, &p.node_type, &reason);
                continue;
            }
            let reason = match phase {
                Phase::Terminating => self.terminating.get(&p.id).cloned().unwrap_or_default(),
                Phase::Running => match idle {
                    Some(since) => format!("idle {} s", now.saturating_sub(since) / 1000),
                    None => "busy".to_string(),
                },
                Phase::Launching => self.launch_reason.get(&p.id).cloned().unwrap_or_default(),
            };
            statuses.push(NodeStatus {
                id: p.id.clone(),
                node_type: p.node_type.clone(),
                phase: match (phase, idle) {
                    (Phase::Launching, _) => "launching",
                    (Phase::Terminating, _) => "terminating",
                    (Phase::Running, Some(_)) => "idle",
                    (Phase::Running, None) => "running",
                }
                .to_string(),
                node_id: joined.map(|n| n.node_id.clone()).unwrap_or_default(),
                reason,
            });
            views.push(NodeView {
                id: p.id.clone(),
                node_type: Some(p.node_type.clone()),
                phase,
                total,
                available,
                idle_since_ms: idle,
            });
        }
        // Nodes the autoscaler does not manage (the head, nodes started by
        // hand): their free capacity counts, and they are never removed.
        let unmanaged = |n: &&proto::NodeEntry| !known.contains(&n.provider_id) && !self.ended.contains(&n.provider_id);
        for n in nodes.iter().filter(unmanaged) {
            views.push(NodeView {
                id: n.node_id.clone(),
                node_type: None,
                phase: Phase::Running,
                total: to_res(&n.total),
                available: to_res(&n.available),
                idle_since_ms: None,
            });
        }
        let demand = self.demand(&nodes);
        let timeout_ms = (self.cfg.idle_timeout_s * 1000.0) as u64;
        let next_idle = views
            .iter()
            .filter(|v| v.phase == Phase::Running && v.node_type.is_some())
            .filter_map(|v| v.idle_since_ms.map(|s| s.saturating_add(timeout_ms)))
            .filter(|t| *t > now)
            .min();
        let actions = policy::plan(&views, &demand, &self.cfg.autoscaler(), now);
        let mut infeasible = Vec::new();
        let mut at_limit = Vec::new();
        for a in actions {
            match a {
                Action::Launch {
                    node_type,
                    count,
                    reason,
                } => match self.backoff.get(&node_type).filter(|b| b.until_ms > now) {
                    Some(b) => at_limit.push(format!(
                        "{count} x {node_type} ({reason}) held back: {}; next try in {} s",
                        b.why,
                        (b.until_ms - now).div_ceil(1000)
                    )),
                    None => self.launch(&node_type, count, &reason, now),
                },
                Action::Terminate { id, reason } => {
                    let node_type = listed
                        .iter()
                        .find(|p| p.id == id)
                        .map(|p| p.node_type.clone())
                        .unwrap_or_default();
                    self.terminate(&id, &node_type, &reason);
                }
                Action::Infeasible { shape, reason } => {
                    let text = format!("{shape}: {reason}");
                    if self.reported.insert(shape.clone()) {
                        self.note(
                            "WARNING",
                            "AUTOSCALER_INFEASIBLE",
                            format!("no node type can hold {text}"),
                        );
                    }
                    infeasible.push(text);
                }
                Action::AtLimit { shape, reason } => at_limit.push(format!("{shape}: {reason}")),
            }
        }
        let status = Status {
            updated_ms: now,
            nodes: statuses,
            infeasible,
            at_limit,
            recent: self.recent.clone(),
        };
        if let Ok(json) = serde_json::to_vec(&status) {
            self.gcs.set_kv_value(KV_NAMESPACE, STATUS_KEY, json);
        }
        next_idle
    }

    /// Everything waiting: each node's queued and growth-waiting requests,
    /// the pending placement groups, and the explicit request.
    fn demand(&mut self, nodes: &[proto::NodeEntry]) -> Demand {
        let mut tasks: BTreeMap<String, (Resources, u32)> = BTreeMap::new();
        for d in nodes.iter().flat_map(|n| &n.demands) {
            let shape = to_res(&d.shape);
            tasks.entry(format!("{shape:?}")).or_insert_with(|| (shape, 0)).1 += d.count;
        }
        let groups = self
            .gcs
            .groups()
            .into_iter()
            .filter(|g| g.state() == proto::GroupState::Pending)
            .map(|g| GroupDemand {
                strategy: PlacementStrategy::from_proto(g.strategy()),
                bundles: g.bundles.iter().map(|b| to_res(&b.resources)).collect(),
                id: g.id,
            })
            .collect();
        let requested = match self.gcs.kv_value(KV_NAMESPACE, REQUESTED_KEY) {
            Some(json) => match super::decode_request(&json) {
                Ok(r) => r.into_iter().map(|b| b.into_iter().collect()).collect(),
                Err(e) => {
                    tracing::warn!("ignoring the requested resources: {e}");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        Demand {
            tasks: tasks.into_values().collect(),
            groups,
            requested,
        }
    }

    /// Records a failed launch of `node_type`: it waits before the next.
    fn failed(&mut self, node_type: &str, why: String, now: u64) {
        let failures = self.backoff.get(node_type).map_or(0, |b| b.failures) + 1;
        let wait = (FIRST_BACKOFF_MS << (failures - 1).min(10)).min(MAX_BACKOFF_MS);
        self.backoff.insert(
            node_type.to_string(),
            Backoff {
                until_ms: now + wait,
                failures,
                why,
            },
        );
    }

    fn launch(&mut self, node_type: &str, count: u32, reason: &str, now: u64) {
        let Some(t) = self.cfg.available_node_types.get(node_type).cloned() else {
            return;
        };
        match self.provider.create(node_type, &t, count) {
            Ok(ids) => {
                for id in &ids {
                    self.launch_reason.insert(id.clone(), reason.to_string());
                }
                let text = format!("launching {} ({}): {reason}", ids.join(", "), node_type);
                self.note("INFO", "AUTOSCALER_LAUNCH", text);
            }
            Err(e) => {
                let text = format!("launching {count} x {node_type} failed: {e}");
                self.note("ERROR", "AUTOSCALER_LAUNCH_FAILED", text);
                self.failed(node_type, format!("the last launch failed: {e}"), now);
            }
        }
    }

    fn terminate(&mut self, id: &str, node_type: &str, reason: &str) {
        match self.provider.terminate(id) {
            Ok(()) => {
                self.terminating.insert(id.to_string(), reason.to_string());
                self.ended.insert(id.to_string());
                self.launch_reason.remove(id);
                let text = format!("terminating {id} ({node_type}): {reason}");
                self.note("INFO", "AUTOSCALER_TERMINATE", text);
            }
            Err(e) => {
                let text = format!("terminating {id} ({node_type}) failed: {e}");
                self.note("ERROR", "AUTOSCALER_TERMINATE_FAILED", text);
            }
        }
    }
}
