//! Multi-node clusters: the head (control service plus a node), node daemons
//! joining it, and drivers joining with [`Config::address`]. The `rayforge`
//! command line (`start`, `stop`, `status`, `list`) is built on these.
//!
//! ```no_run
//! // What `rayforge start --head --num-cpus 2` does, in-process:
//! let opts = rayforge::cluster::StartOptions { head: true, num_cpus: Some(2.0), ..Default::default() };
//! rayforge::cluster::run_daemon(&opts, |ready| println!("{}", ready.address)).unwrap();
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::node::cluster::ClusterRole;
use crate::node::NodeDaemon;
use crate::proto::{self, control_service_client::ControlServiceClient};
use crate::rpc::Chan;
use crate::worker::{self, CoreWorker};

/// Default port of the head's control service (Ray's too).
pub const DEFAULT_PORT: u16 = 6379;

/// Options of `rayforge start`.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Start a head (control service and a node) rather than join one.
    pub head: bool,
    /// The head to join (`host:port`), for a non-head node.
    pub address: Option<String>,
    /// Port of the head's control service (default 6379).
    pub port: Option<u16>,
    /// Port of this node's service (default: any free port).
    pub node_port: Option<u16>,
    /// Interface to listen on (default 127.0.0.1: loopback only).
    pub bind: Option<String>,
    /// CPUs this node offers (default: detected cores).
    pub num_cpus: Option<f64>,
    /// GPUs this node offers (default: detected devices).
    pub num_gpus: Option<f64>,
    /// Custom resources.
    pub resources: HashMap<String, f64>,
    /// Object store capacity in bytes.
    pub object_store_memory: Option<u64>,
    /// The cluster token (head: default generated; node: default from this
    /// machine's cluster file or `$RAYFORGE_TOKEN`).
    pub token: Option<String>,
    /// Milliseconds without heartbeats before the head declares a node dead
    /// (default 10000).
    pub heartbeat_timeout_ms: Option<u64>,
    /// Where the head keeps its persisted state (default: a directory per
    /// port under the system temp dir).
    pub state_dir: Option<PathBuf>,
    /// Port of the head's HTTP jobs API (default 8265; 0: any free port).
    pub jobs_port: Option<u16>,
}

/// What a started daemon reports once it serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    /// The head's control-service address (`host:port`).
    pub address: String,
    /// The cluster token.
    pub token: String,
    /// This node's service address.
    pub node_address: String,
    /// This node's id.
    pub node_id: String,
    /// The head's HTTP jobs API (`http://host:port`; empty on other nodes).
    #[serde(default)]
    pub jobs_address: String,
}

/// Where `rayforge start --head` records the local cluster (address and
/// token) for `Config::address("auto")` and the CLI.
pub fn cluster_file() -> PathBuf {
    if let Ok(p) = std::env::var("RAYFORGE_CLUSTER_FILE") {
        return PathBuf::from(p);
    }
    std::env::temp_dir().join("rayforge").join("cluster.json")
}

/// Directory where daemons record their pids for `rayforge stop`.
pub fn daemons_dir() -> PathBuf {
    std::env::temp_dir().join("rayforge").join("daemons")
}

/// The address and token of the cluster recorded on this machine.
pub fn local_cluster() -> Result<Ready> {
    let path = cluster_file();
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Error::NotFound(format!(
            "no cluster is running on this machine ({} is missing): start one with `rayforge start --head` \
             or pass an address",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Runtime(format!("{} is malformed: {e}", path.display())))
}

fn random_token() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = crate::ids::ObjectId::for_put();
        b.copy_from_slice(&t.0[..16]);
    }
    crate::ids::hex(&b)
}

/// Resolves a head address and token from what the user gave.
fn resolve(address: &str, token: Option<&str>) -> Result<(String, Option<String>)> {
    let env_token = std::env::var("RAYFORGE_TOKEN").ok().filter(|t| !t.is_empty());
    let addr = if address == "auto" {
        match std::env::var("RAYFORGE_ADDRESS")
            .ok()
            .filter(|a| !a.is_empty() && a != "auto")
        {
            Some(a) => a,
            None => local_cluster()?.address,
        }
    } else {
        address.to_string()
    };
    if addr.is_empty() || !addr.contains(':') || addr.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "cluster address `{addr}` is not of the form host:port"
        )));
    }
    let token = token
        .map(str::to_string)
        .or(env_token)
        .or_else(|| local_cluster().ok().filter(|c| c.address == addr).map(|c| c.token));
    Ok((addr, token))
}

/// Awaits a call to the head, turning silence and refusals into clear errors.
async fn ask_head<T>(
    addr: &str,
    f: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
) -> Result<T> {
    ask(&format!("the head at {addr}"), Duration::from_secs(15), f).await
}

/// Awaits a call to `whom` ("the head at ADDR") for at most `limit`,
/// turning silence and refusals into clear errors.
async fn ask<T>(
    whom: &str,
    limit: Duration,
    f: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
) -> Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| Error::Io {
            context: format!("cannot reach {whom}"),
            message: format!("no answer within {} s", limit.as_secs()),
        })?
        .map_err(|s| refused_or_unreachable(whom, s))
}

fn head_error(addr: &str, s: tonic::Status) -> Error {
    refused_or_unreachable(&format!("the head at {addr}"), s)
}

fn refused_or_unreachable(whom: &str, s: tonic::Status) -> Error {
    if s.code() == tonic::Code::Unauthenticated {
        return Error::InvalidArgument(format!("{whom} refused the call: {}", s.message()));
    }
    Error::Io {
        context: format!("cannot reach {whom}"),
        message: format!("{}: {}", s.code(), s.message()),
    }
}

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
            alive: n.alive,
            death_cause: n.death_cause,
            total: n.total,
            available: n.available,
            pending: n.pending_demands,
            num_workers: n.num_workers,
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
        }
    }
}

impl From<proto::PlacementGroupRecord> for PlacementGroupStatus {
    fn from(g: proto::PlacementGroupRecord) -> Self {
        PlacementGroupStatus {
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
            state: g.state,
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
        Ok((pick.address.clone(), crate::worker::node_client(ch)))
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
        let _ = writeln!(out, "Nodes: {} alive, {} dead", alive.len(), nodes.len() - alive.len());
        for n in &nodes {
            let _ = writeln!(
                out,
                "  {} {:<21} {:<5} {:<5} workers={} {}",
                n.node_id,
                n.address,
                if n.alive { "ALIVE" } else { "DEAD" },
                if n.is_head { "head" } else { "" },
                n.num_workers,
                if n.alive {
                    fmt_used(&n.total, &n.available)
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
            .filter(|g| g.state == crate::node::placement::PENDING)
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
        let running = jobs.iter().filter(|j| j.state == "RUNNING").count();
        let _ = writeln!(out, "Jobs: {running} running, {} total", jobs.len());
        Ok(out)
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

/// Runs a head or node daemon in this process until SIGTERM or SIGINT;
/// `on_ready` is called once it serves.
pub fn run_daemon(opts: &StartOptions, on_ready: impl FnOnce(&Ready)) -> Result<()> {
    crate::init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rayforge-daemon")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the daemon's runtime", e))?;
    rt.block_on(async {
        let bind = opts.bind.clone().unwrap_or_else(|| "127.0.0.1".into());
        let cfg = Config {
            num_cpus: opts.num_cpus,
            num_gpus: opts.num_gpus,
            resources: opts.resources.clone(),
            object_store_memory: opts.object_store_memory,
            ..Config::default()
        };
        cfg.validate()?;
        let mut jobs_address = String::new();
        let (head_addr, token, gcs) = if opts.head {
            let port = opts.port.unwrap_or(DEFAULT_PORT);
            let dir = opts
                .state_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("rayforge").join(format!("head-{port}")));
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            let token = match &opts.token {
                Some(t) => t.clone(),
                None => match std::fs::read_to_string(dir.join("token")) {
                    Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                    _ => random_token(),
                },
            };
            write_private(&dir.join("token"), &token)?;
            crate::rpc::set_token(&token)?;
            let timeout = Duration::from_millis(opts.heartbeat_timeout_ms.unwrap_or(10_000));
            let gcs = crate::gcs::Gcs::open(&dir, timeout)?;
            let (incoming, local) = crate::rpc::bind_tcp(&format!("{bind}:{port}")).await?;
            gcs.serve(incoming);
            tracing::info!(addr = %local, state = %dir.display(), "head control service started");
            let jobs_port = opts.jobs_port.unwrap_or(crate::jobs::DEFAULT_JOBS_PORT);
            let jobs = crate::jobs::serve(gcs.clone(), local.to_string(), token.clone(), &bind, jobs_port).await?;
            jobs_address = format!("http://{jobs}");
            (local.to_string(), token, Some(gcs))
        } else {
            let address = opts
                .address
                .as_deref()
                .ok_or_else(|| Error::InvalidArgument("a node needs --address of the head (or --head)".into()))?;
            let (addr, token) = resolve(address, opts.token.as_deref())?;
            let token = token.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no token for the cluster at {addr}: pass --token (printed by `rayforge start --head`)"
                ))
            })?;
            crate::rpc::set_token(&token)?;
            (addr, token, None)
        };
        let role = ClusterRole {
            head_addr: head_addr.clone(),
            bind_host: bind,
            port: opts.node_port.unwrap_or(0),
            is_head: opts.head,
            gcs,
        };
        let node = NodeDaemon::start(cfg, Some(role)).await?;
        let ready = Ready {
            address: head_addr,
            token,
            node_address: node.state.tcp_addr.clone(),
            node_id: node.state.node_id.clone(),
            jobs_address,
        };
        if opts.head {
            let text = serde_json::to_string(&ready).map_err(|e| Error::Internal(e.to_string()))?;
            let path = cluster_file();
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            write_private(&path, &text)?;
        }
        let pidfile = daemons_dir().join(std::process::id().to_string());
        let _ = std::fs::create_dir_all(daemons_dir());
        let _ = std::fs::write(&pidfile, &ready.node_address);
        on_ready(&ready);
        wait_for_signal().await;
        tracing::info!("stopping the node");
        node.shutdown();
        let _ = std::fs::remove_file(&pidfile);
        if opts.head {
            // Leave the state for a restarted head; forget the address.
            if local_cluster().is_ok_and(|c| c.address == ready.address) {
                let _ = std::fs::remove_file(cluster_file());
            }
        }
        Ok(())
    })
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let res = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Stops every daemon started on this machine (SIGTERM, then SIGKILL after
/// `grace`); returns how many were stopped.
pub fn stop_all(grace: Duration) -> usize {
    let Ok(rd) = std::fs::read_dir(daemons_dir()) else {
        return 0;
    };
    let mut pids = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            // SAFETY: plain syscall.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            pids.push(pid);
        } else {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline && pids.iter().any(|p| Path::new(&format!("/proc/{p}")).exists()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in &pids {
        if Path::new(&format!("/proc/{p}")).exists() {
            // SAFETY: plain syscall.
            unsafe {
                libc::kill(*p, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(daemons_dir().join(p.to_string()));
    }
    pids.len()
}

/// The job a driver runs in a cluster.
pub(crate) struct DriverJob {
    head: ControlServiceClient<Chan>,
    job_id: String,
    /// What this driver has shown of its workers' output.
    printed: Printed,
}

impl DriverJob {
    /// Shows what the job's workers printed that the driver has not shown
    /// yet, then marks the job finished at the head (its workers are then
    /// stopped).
    pub(crate) async fn finish(mut self, state: &str, message: &str) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            show_rest_of_output(&mut self.head, &self.job_id, &self.printed),
        )
        .await;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.head.finish_job(proto::FinishJobRequest {
                job_id: self.job_id.clone(),
                state: state.into(),
                message: message.into(),
            }),
        )
        .await;
    }
}

/// Joins the cluster named in `cfg` as a driver: ships this program's
/// binary, registers a job, and attaches to a node on this machine.
pub(crate) async fn join_as_driver(
    cfg: &Config,
    handle: tokio::runtime::Handle,
) -> Result<(Arc<CoreWorker>, DriverJob)> {
    let address = cfg.address.as_deref().unwrap_or("auto");
    let (addr, token) = resolve(address, cfg.token.as_deref())?;
    if let Some(t) = &token {
        crate::rpc::set_token(t)?;
    }
    let mut head = crate::gcs::client(&addr)?;
    let nodes = ask_head(&addr, head.list_nodes(proto::ListNodesRequest {}))
        .await?
        .into_inner()
        .nodes;
    let here = crate::node::cluster::hostname();
    let mut local: Vec<&proto::NodeEntry> = nodes
        .iter()
        .filter(|n| n.alive && n.hostname == here && Path::new(&n.uds_path).exists())
        .filter(|n| cfg.node_id.as_ref().is_none_or(|want| &n.node_id == want))
        .collect();
    local.sort_by_key(|n| !n.is_head);
    let node = local.first().ok_or_else(|| {
        if let Some(want) = &cfg.node_id {
            return Error::NotFound(format!(
                "no alive node `{want}` of the cluster at {addr} runs on this machine"
            ));
        }
        Error::Runtime(format!(
            "the cluster at {addr} has no alive node on this machine to attach the driver to; start one \
             with `rayforge start --address {addr}`"
        ))
    })?;
    let exe = std::env::current_exe().map_err(|e| Error::io("locating the program's own binary", e))?;
    let hash = crate::gcs::upload_binary(&mut head, &exe).await?;
    let entrypoint = std::env::args().collect::<Vec<_>>().join(" ");
    let r = head
        .register_job(proto::JobInfo {
            binary_hash: hash,
            entrypoint,
            driver_pid: std::process::id(),
            driver_node: node.node_id.clone(),
            env: cfg.worker_env.clone(),
            // Started by a submitted job: take over its record.
            job_id: std::env::var(crate::jobs::ENV_SUBMISSION_ID).unwrap_or_default(),
            ..Default::default()
        })
        .await
        .map_err(|s| head_error(&addr, s))?
        .into_inner();
    if let Some(e) = r.error {
        return Err(Error::from_proto(&e));
    }
    let job_id = r.job_id;
    let bind_host = node
        .addr
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let my_addr = worker::executor::serve(Path::new(""), Some(&bind_host)).await?;
    let ch = crate::rpc::connect(&node.uds_path).await?;
    tracing::info!(job = %job_id, node = %node.node_id, "driver joined the cluster at {addr}");
    let cw = CoreWorker::new(
        crate::ids::new_worker_id(),
        my_addr,
        true,
        handle,
        worker::node_client(ch),
        worker::NodePlace {
            store_dir: PathBuf::from(&node.store_dir),
            node_addr: node.addr.clone(),
            job_id: job_id.clone(),
        },
        None,
    );
    let printed = Printed::default();
    cw.handle
        .spawn(show_worker_output(head.clone(), job_id.clone(), printed.clone()));
    Ok((cw, DriverJob { head, job_id, printed }))
}

/// What a driver has shown of its job's worker output: the last line
/// printed from each node (by node id), so following a node again after a
/// broken stream, or collecting the rest at the end, prints nothing twice.
type Printed = Arc<parking_lot::Mutex<HashMap<String, u64>>>;

/// Prints one line a worker printed, prefixed with its pid and node, unless
/// it was printed already.
fn show_line(printed: &Printed, node_id: &str, l: &proto::WorkerOutputLine) {
    use std::io::Write;
    {
        let mut p = printed.lock();
        let last = p.entry(node_id.to_string()).or_insert(0);
        if l.seq <= *last {
            return;
        }
        *last = l.seq;
    }
    let short = &node_id[..node_id.len().min(8)];
    let text = format!("(pid={}, node={short}) {}\n", l.pid, l.text);
    // A closed terminal is not the job's problem.
    let _ = if l.stderr {
        std::io::stderr().lock().write_all(text.as_bytes())
    } else {
        std::io::stdout().lock().write_all(text.as_bytes())
    };
}

/// Prints what the job's workers print, on every node, as the embedded
/// cluster does: each line prefixed with the worker's pid and node. Nodes
/// that join later are followed within a few seconds.
async fn show_worker_output(mut head: ControlServiceClient<Chan>, job: String, printed: Printed) {
    let following: Arc<parking_lot::Mutex<std::collections::HashSet<String>>> = Default::default();
    loop {
        if let Ok(r) = head.list_nodes(proto::ListNodesRequest {}).await {
            for n in r.into_inner().nodes.into_iter().filter(|n| n.alive) {
                if following.lock().insert(n.addr.clone()) {
                    tokio::spawn(follow_node_output(n, job.clone(), following.clone(), printed.clone()));
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn follow_node_output(
    node: proto::NodeEntry,
    job: String,
    following: Arc<parking_lot::Mutex<std::collections::HashSet<String>>>,
    printed: Printed,
) {
    if let Ok(ch) = crate::rpc::channel(&node.addr) {
        let mut c = worker::node_client(ch);
        let after_seq = printed.lock().get(&node.node_id).copied().unwrap_or(0);
        if let Ok(r) = c
            .stream_worker_output(proto::StreamWorkerOutputRequest {
                job_id: job,
                after_seq,
                until_now: false,
            })
            .await
        {
            let mut lines = r.into_inner();
            while let Ok(Some(l)) = lines.message().await {
                show_line(&printed, &node.node_id, &l);
            }
        }
    }
    following.lock().remove(&node.addr);
}

/// Prints the job's worker output that the live streams have not brought
/// yet: a task's printed lines reach its node before its result reaches the
/// driver, but the stream to the driver can lag behind the result, and a
/// driver that exits at once would lose them.
async fn show_rest_of_output(head: &mut ControlServiceClient<Chan>, job: &str, printed: &Printed) {
    let Ok(r) = head.list_nodes(proto::ListNodesRequest {}).await else {
        return;
    };
    let each = r.into_inner().nodes.into_iter().filter(|n| n.alive).map(|n| {
        let job = job.to_string();
        let printed = printed.clone();
        async move {
            let Ok(ch) = crate::rpc::channel(&n.addr) else {
                return;
            };
            let after_seq = printed.lock().get(&n.node_id).copied().unwrap_or(0);
            let req = proto::StreamWorkerOutputRequest {
                job_id: job,
                after_seq,
                until_now: true,
            };
            if let Ok(r) = worker::node_client(ch).stream_worker_output(req).await {
                let mut lines = r.into_inner();
                while let Ok(Some(l)) = lines.message().await {
                    show_line(&printed, &n.node_id, &l);
                }
            }
        }
    });
    futures::future::join_all(each).await;
}
