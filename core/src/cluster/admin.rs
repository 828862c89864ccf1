//! [`HeadClient`]: a client of the head's control service for operators
//! (what `rayforge status` and `rayforge list` use), and the status records
//! it returns.
use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::proto::{self, control_service_client::ControlServiceClient};
use crate::rpc::Chan;

use super::*;

/// A client of a cluster's head, for tools (`rayforge status`, tests).
pub struct HeadClient {
    addr: String,
    client: ControlServiceClient<Chan>,
    rt: Option<tokio::runtime::Runtime>,
}

/// One node as the head sees it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// The node's id.
    pub node_id: String,
    /// Its service address.
    pub address: String,
    /// Whether it runs the head.
    pub is_head: bool,
    /// Whether it is alive (heartbeating).
    pub alive: bool,
    /// Restored from a restarted head's state and not heard from since:
    /// not counted alive, offers nothing, until it reconnects (or dies at
    /// its heartbeat timeout).
    pub reconnecting: bool,
    /// Why it was declared dead.
    pub death_cause: String,
    /// Resources it offers.
    pub total: HashMap<String, f64>,
    /// Resources free at its last heartbeat.
    pub available: HashMap<String, f64>,
    /// Lease requests queued there.
    pub pending: Vec<String>,
    /// Worker processes.
    pub num_workers: u32,
    /// Its HTTP endpoints (`host:port`: `/metrics`, `/healthz`, `/readyz`,
    /// `/api/node`); empty when it serves none.
    pub http_address: String,
}

/// One entry of the cluster's events feed.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterEvent {
    /// Milliseconds since the epoch.
    pub time_ms: u64,
    /// INFO, WARNING or ERROR.
    pub severity: String,
    /// NODE_JOINED, NODE_DIED, ACTOR_RESTARTED, ACTOR_DIED, TASK_KILLED_OOM
    /// or JOB_STATE_CHANGED.
    pub kind: String,
    /// What happened, in words.
    pub message: String,
    /// The node concerned, if any.
    pub node_id: String,
    /// The actor concerned (hex), if any.
    pub actor_id: String,
    /// The job concerned, if any.
    pub job_id: String,
}

/// One job as the head sees it.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    /// The job's id.
    pub job_id: String,
    /// RUNNING, SUCCEEDED, FAILED or STOPPED.
    pub state: String,
    /// The driver's command line.
    pub entrypoint: String,
    /// Milliseconds since the epoch.
    pub start_ms: u64,
    /// Milliseconds since the epoch (0 while running).
    pub end_ms: u64,
    /// How it ended (e.g. why it failed); empty while running.
    pub message: String,
}

/// One actor as the head's actor manager recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct ActorStatus {
    /// The actor's id (hex).
    pub actor_id: String,
    /// The actor's type (`module::Type`).
    pub class_name: String,
    /// Its name, if it has one.
    pub name: String,
    /// The job that created it.
    pub job_id: String,
    /// PENDING_CREATION, ALIVE, RESTARTING or DEAD.
    pub state: String,
    /// Whether it outlives its job.
    pub detached: bool,
    /// The node hosting it (its address; empty unless alive or starting).
    pub node: String,
    /// Times its process was restarted.
    pub num_restarts: u32,
    /// Why it died.
    pub death_cause: String,
    /// The node's id for the worker process hosting it (0: none); the
    /// node's [`NodeStats`](crate::state::NodeStats) give its pid.
    pub worker_id: u64,
}

/// One placement group as the head recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementGroupStatus {
    /// The group's id.
    pub id: String,
    /// Its name, if it has one.
    pub name: String,
    /// PACK, SPREAD, STRICT_PACK or STRICT_SPREAD.
    pub strategy: String,
    /// PENDING, CREATED or REMOVED.
    pub state: String,
    /// Why it is pending.
    pub reason: String,
    /// Each bundle's resources.
    pub bundles: Vec<HashMap<String, f64>>,
    /// The node holding each bundle ("" while unplaced).
    pub nodes: Vec<String>,
}

impl From<proto::NodeEntry> for NodeStatus {
    fn from(n: proto::NodeEntry) -> Self {
        NodeStatus {
            node_id: n.node_id,
            address: n.addr,
            is_head: n.is_head,
            alive: n.alive && !n.reconnecting,
            reconnecting: n.reconnecting,
            death_cause: n.death_cause,
            total: n.total,
            available: n.available,
            pending: n.pending_demands,
            num_workers: n.num_workers,
            http_address: n.http_addr,
        }
    }
}

impl From<proto::ActorRecord> for ActorStatus {
    fn from(a: proto::ActorRecord) -> Self {
        ActorStatus {
            actor_id: crate::ids::hex(&a.actor_id),
            state: proto::ActorState::try_from(a.state)
                .map(|s| s.as_str_name().to_string())
                .unwrap_or_else(|_| "UNKNOWN".into()),
            class_name: a.class_name,
            name: a.name,
            job_id: a.job_id,
            detached: a.detached,
            node: a.node_addr,
            num_restarts: a.num_restarts,
            death_cause: a.death_cause,
            worker_id: a.worker_id,
        }
    }
}

impl From<proto::PlacementGroupRecord> for PlacementGroupStatus {
    fn from(g: proto::PlacementGroupRecord) -> Self {
        let state = g.state().as_str_name().trim_start_matches("GROUP_STATE_").to_string();
        PlacementGroupStatus {
            state,
            strategy: proto::PlacementStrategy::try_from(g.strategy)
                .map(|s| s.as_str_name().to_string())
                .unwrap_or_default(),
            nodes: g
                .bundles
                .iter()
                .map(|b| if b.placed { b.node_addr.clone() } else { String::new() })
                .collect(),
            bundles: g.bundles.into_iter().map(|b| b.resources).collect(),
            id: g.id,
            name: g.name,
            reason: g.reason,
        }
    }
}

impl HeadClient {
    /// Connects to the head at `address` ("auto": this machine's cluster).
    pub fn connect(address: &str, token: Option<&str>) -> Result<HeadClient> {
        let (addr, token) = resolve(address, token)?;
        if let Some(t) = token {
            crate::rpc::set_token(&t)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting a runtime", e))?;
        let client = {
            let _g = rt.enter();
            crate::gcs::client(&addr)?
        };
        Ok(HeadClient {
            addr,
            client,
            rt: Some(rt),
        })
    }

    fn call<T>(&mut self, f: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>) -> Result<T> {
        let rt = self.rt.as_ref().ok_or_else(|| Error::Internal("no runtime".into()))?;
        rt.block_on(ask_head(&self.addr, f))
    }

    /// The head's address.
    pub fn address(&self) -> &str {
        &self.addr
    }

    /// Every node the head knows, alive or dead.
    pub fn nodes(&mut self) -> Result<Vec<NodeStatus>> {
        let mut c = self.client.clone();
        let r = self.call(async move { c.list_nodes(proto::ListNodesRequest {}).await })?;
        Ok(r.into_inner().nodes.into_iter().map(NodeStatus::from).collect())
    }

    /// Every job the head knows.
    pub fn jobs(&mut self) -> Result<Vec<JobStatus>> {
        let mut c = self.client.clone();
        let r = self.call(async move { c.list_jobs(proto::ListJobsRequest {}).await })?;
        Ok(r.into_inner()
            .jobs
            .into_iter()
            .map(|j| JobStatus {
                job_id: j.job_id,
                state: j.state,
                entrypoint: j.entrypoint,
                start_ms: j.start_ms,
                end_ms: j.end_ms,
                message: j.message,
            })
            .collect())
    }

    /// Every actor of the cluster (dead ones included).
    pub fn actors(&mut self) -> Result<Vec<ActorStatus>> {
        let mut c = self.client.clone();
        let r = self.call(async move { c.list_actors(proto::ListActorsRequest {}).await })?;
        Ok(r.into_inner().actors.into_iter().map(ActorStatus::from).collect())
    }

    /// Every placement group of the cluster (removed ones included).
    pub fn placement_groups(&mut self) -> Result<Vec<PlacementGroupStatus>> {
        let mut c = self.client.clone();
        let r = self.call(async move { c.list_placement_groups(proto::ListPlacementGroupsRequest {}).await })?;
        Ok(r.into_inner()
            .groups
            .into_iter()
            .map(PlacementGroupStatus::from)
            .collect())
    }

    /// A client of a node's service, to ask it for the whole cluster: the
    /// head's node when it is alive, else any alive node.
    fn any_node(&mut self) -> Result<(String, proto::node_service_client::NodeServiceClient<Chan>)> {
        let nodes = self.nodes()?;
        let pick = nodes
            .iter()
            .filter(|n| n.alive)
            .max_by_key(|n| n.is_head)
            .ok_or_else(|| Error::NotFound(format!("the cluster at {} has no alive node", self.addr)))?;
        let rt = self.rt.as_ref().ok_or_else(|| Error::Internal("no runtime".into()))?;
        let _g = rt.enter();
        let ch = crate::rpc::channel(&pick.address)?;
        Ok((pick.address.clone(), crate::rpc::node_client(ch)))
    }

    /// What libraries published for the dashboard under `kind` (see
    /// [`crate::state::publish`]): (name, status) pairs in name order.
    pub fn published(&mut self, kind: &str) -> Result<Vec<(String, serde_json::Value)>> {
        let prefix = crate::kv::full_key(crate::state::DASHBOARD_NAMESPACE, &format!("{kind}/"))?;
        let mut c = self.client.clone();
        let req = proto::KvListRequest { prefix: prefix.clone() };
        let keys = self.call(async move { c.kv_list(req).await })?.into_inner().keys;
        let mut out = Vec::new();
        for k in keys {
            let name = k[prefix.len()..].to_string();
            if let Some(v) = self.kv_get(&k)? {
                let v = serde_json::from_slice(&v)
                    .unwrap_or_else(|_| serde_json::json!({"raw": String::from_utf8_lossy(&v)}));
                out.push((name, v));
            }
        }
        Ok(out)
    }

    /// The cluster's events feed, oldest first (the newest 2,000).
    pub fn events(&mut self) -> Result<Vec<ClusterEvent>> {
        let mut c = self.client.clone();
        let r = self.call(async move { c.list_events(proto::ListEventsRequest {}).await })?;
        Ok(r.into_inner()
            .events
            .into_iter()
            .map(|e| ClusterEvent {
                time_ms: e.time_ms,
                severity: e.severity,
                kind: e.kind,
                message: e.message,
                node_id: e.node_id,
                actor_id: e.actor_id,
                job_id: e.job_id,
            })
            .collect())
    }

    /// Kills the actor with id `actor_id` (hex); with `no_restart` off it
    /// restarts if its restarts allow. An unknown actor is
    /// [`Error::NotFound`].
    pub fn kill_actor(&mut self, actor_id: &str, no_restart: bool) -> Result<()> {
        let id = crate::ids::ActorId::from_hex(actor_id)
            .ok_or_else(|| Error::InvalidArgument(format!("`{actor_id}` is not an actor id (24 hex digits)")))?;
        if !self
            .actors()?
            .iter()
            .any(|a| a.actor_id == actor_id.to_ascii_lowercase())
        {
            return Err(Error::NotFound(format!("no actor {actor_id}")));
        }
        let (addr, mut c) = self.any_node()?;
        let req = proto::KillActorRequest {
            actor_id: id.0.to_vec(),
            no_restart,
            cause: "killed from the dashboard".into(),
        };
        let r = self
            .call_node(&addr, async move { c.kill_actor(req).await })?
            .into_inner();
        r.error.map_or(Ok(()), |e| Err(Error::from_proto(&e)))
    }

    /// The tasks every node recorded (see [`crate::state`]), oldest first.
    pub fn tasks(&mut self) -> Result<crate::state::Listing<crate::state::TaskInfo>> {
        let (addr, c) = self.any_node()?;
        self.call_node(&addr, crate::state::fetch_tasks(c))
    }

    /// The objects in every node's store.
    pub fn objects(&mut self) -> Result<crate::state::Listing<crate::state::ObjectInfo>> {
        let (addr, c) = self.any_node()?;
        self.call_node(&addr, crate::state::fetch_objects(c))
    }

    /// Worker output on every node (only process `pid`, only the last
    /// `tail_bytes` of each log, when given).
    pub fn worker_logs(
        &mut self,
        pid: Option<u32>,
        tail_bytes: Option<u64>,
    ) -> Result<crate::state::Listing<crate::state::WorkerLog>> {
        let (addr, c) = self.any_node()?;
        self.call_node(&addr, crate::state::fetch_logs(c, pid, tail_bytes))
    }

    fn call_node<T>(
        &mut self,
        addr: &str,
        f: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    ) -> Result<T> {
        let rt = self.rt.as_ref().ok_or_else(|| Error::Internal("no runtime".into()))?;
        rt.block_on(ask(&format!("the node at {addr}"), Duration::from_secs(30), f))
    }

    /// Stores `value` under `key` in the head's key-value store; returns
    /// whether it was written (false: it existed and `overwrite` was off).
    pub fn kv_put(&mut self, key: &str, value: &[u8], overwrite: bool) -> Result<bool> {
        let mut c = self.client.clone();
        let req = proto::KvPutRequest {
            key: key.into(),
            value: value.to_vec(),
            overwrite,
        };
        Ok(self.call(async move { c.kv_put(req).await })?.into_inner().written)
    }

    /// Reads a key of the head's key-value store.
    pub fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut c = self.client.clone();
        let req = proto::KvGetRequest { key: key.into() };
        let r = self.call(async move { c.kv_get(req).await })?.into_inner();
        Ok(r.found.then_some(r.value))
    }

    /// A human-readable cluster summary (what `rayforge status` prints).
    pub fn status_report(&mut self) -> Result<String> {
        use std::fmt::Write;
        let nodes = self.nodes()?;
        let jobs = self.jobs()?;
        let alive: Vec<&NodeStatus> = nodes.iter().filter(|n| n.alive).collect();
        let mut out = String::new();
        let _ = writeln!(out, "======== Cluster status: {} ========", self.addr);
        let reconnecting = nodes.iter().filter(|n| n.reconnecting).count();
        let _ = writeln!(
            out,
            "Nodes: {} alive, {reconnecting} reconnecting, {} dead",
            alive.len(),
            nodes.len() - alive.len() - reconnecting
        );
        for n in &nodes {
            let _ = writeln!(
                out,
                "  {} {:<21} {:<5} {:<5} workers={} {}",
                n.node_id,
                n.address,
                if n.alive {
                    "ALIVE"
                } else if n.reconnecting {
                    "RECON"
                } else {
                    "DEAD"
                },
                if n.is_head { "head" } else { "" },
                n.num_workers,
                if n.alive {
                    fmt_used(&n.total, &n.available)
                } else if n.reconnecting {
                    "not heard from since the head restarted".to_string()
                } else {
                    n.death_cause.clone()
                }
            );
        }
        let mut total: HashMap<String, f64> = HashMap::new();
        let mut avail: HashMap<String, f64> = HashMap::new();
        for n in &alive {
            for (k, v) in &n.total {
                *total.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &n.available {
                *avail.entry(k.clone()).or_default() += v;
            }
        }
        let _ = writeln!(out, "Resources (used/total): {}", fmt_used(&total, &avail));
        let pending: Vec<String> = alive
            .iter()
            .flat_map(|n| n.pending.iter().map(move |p| format!("{p} on {}", n.address)))
            .collect();
        // Placement groups that do not fit yet, or never will ("infeasible"
        // in the reason): tasks and actors asking for more than any node has
        // fail at once instead of waiting.
        let groups: Vec<String> = self
            .placement_groups()?
            .into_iter()
            .filter(|g| g.state == "PENDING")
            .map(|g| {
                let name = if g.name.is_empty() {
                    g.id.clone()
                } else {
                    g.name.clone()
                };
                format!("placement group {name} ({} bundles): {}", g.bundles.len(), g.reason)
            })
            .collect();
        if pending.is_empty() && groups.is_empty() {
            let _ = writeln!(out, "Pending demands: (none)");
        } else {
            let _ = writeln!(out, "Pending demands:");
            for p in pending.into_iter().chain(groups) {
                let _ = writeln!(out, "  {p}");
            }
        }
        if let Some(status) = self.autoscaler_status()? {
            out.push_str(&status.report());
        }
        let running = jobs.iter().filter(|j| j.state == "RUNNING").count();
        let _ = writeln!(out, "Jobs: {running} running, {} total", jobs.len());
        Ok(out)
    }

    /// What the cluster's autoscaler last decided (`None` when the cluster
    /// has none).
    pub fn autoscaler_status(&mut self) -> Result<Option<crate::autoscaler::monitor::Status>> {
        use crate::autoscaler::{monitor::Status, KV_NAMESPACE, STATUS_KEY};
        let key = crate::kv::full_key(KV_NAMESPACE, STATUS_KEY)?;
        self.kv_get(&key)?.map(|json| Status::decode(&json)).transpose()
    }
}

impl Drop for HeadClient {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn fmt_used(total: &HashMap<String, f64>, avail: &HashMap<String, f64>) -> String {
    let mut keys: Vec<&String> = total.keys().collect();
    keys.sort();
    keys.iter()
        .filter(|k| total[**k] > 0.0)
        .map(|k| {
            let t = total[*k];
            let used = t - avail.get(*k).copied().unwrap_or(0.0);
            if k.as_str() == "memory" {
                format!(
                    "{k} {:.1}/{:.1} GiB",
                    used / (1u64 << 30) as f64,
                    t / (1u64 << 30) as f64
                )
            } else {
                format!("{k} {used}/{t}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
