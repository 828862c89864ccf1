//! A node daemon's part in a multi-node cluster: registration and heartbeats
//! with the head, the cluster view behind spillback scheduling, job binaries
//! fetched from the head, and object transfer between nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

use super::scheduler::{fits, infeasibility, Resources};
use super::NodeDaemon;
use crate::error::{Error, Result};
use crate::ids::ObjectId;
use crate::object_store;
use crate::proto::{self, control_service_client::ControlServiceClient};
use crate::rpc::Chan;

/// How a node daemon joins a cluster.
#[derive(Clone)]
pub(crate) struct ClusterRole {
    /// The head's control service, `host:port`.
    pub(crate) head_addr: String,
    /// The interface this node's services listen on.
    pub(crate) bind_host: String,
    /// TCP port of the node's service (0: any free port).
    pub(crate) port: u16,
    pub(crate) is_head: bool,
    /// On the head: its control service, which persists the actor table.
    pub(crate) gcs: Option<std::sync::Arc<crate::gcs::Gcs>>,
    /// The node's HTTP endpoints (`host:port`; "" when none).
    pub(crate) http_addr: String,
}

/// What a node needs to start a job's workers.
#[derive(Clone)]
pub(crate) struct JobRuntime {
    pub(crate) binary: PathBuf,
    pub(crate) env: HashMap<String, String>,
    pub(crate) working_dir: Option<PathBuf>,
}

type Pull = Shared<BoxFuture<'static, Result<()>>>;

/// An answer to a read request.
enum Opened {
    Stream(Box<OpenStream>),
    Busy,
}

/// A transfer under way: the node sending, the stream and its first chunk.
struct OpenStream(String, tonic::Streaming<proto::ObjectChunk>, proto::ObjectChunk);

/// The transfers of a node's objects: counted per object.
type SendTable = Arc<Mutex<HashMap<ObjectId, Sends>>>;

/// The cluster state a node keeps.
pub(crate) struct ClusterLink {
    pub(crate) role: ClusterRole,
    pub(crate) head: ControlServiceClient<Chan>,
    /// Alive nodes, as last reported by the head.
    view: Mutex<Vec<proto::NodeEntry>>,
    /// Resources of the lease requests sent to each node since the last
    /// view: counted as taken, so a burst of requests spreads over the
    /// nodes instead of all going to the one that looked freest.
    sent_since_view: Mutex<HashMap<String, Resources>>,
    /// Set once the first view arrived.
    view_ready: tokio::sync::watch::Sender<bool>,
    finished_jobs: Mutex<HashSet<String>>,
    jobs: tokio::sync::Mutex<HashMap<String, JobRuntime>>,
    pulls: Mutex<HashMap<ObjectId, Pull>>,
    /// Nodes that pulled a copy of one of our objects: told when it is freed.
    copies: Mutex<HashMap<ObjectId, HashSet<String>>>,
    /// Objects this node is sending to others (see [`Sends`]).
    sends: SendTable,
    /// Transfers this node started sending, and reads it sent elsewhere.
    pub(crate) sent: std::sync::atomic::AtomicU64,
    pub(crate) redirected: std::sync::atomic::AtomicU64,
    peers: crate::rpc::ChannelCache,
    /// What each node type an autoscaler may launch offers (empty: the
    /// cluster does not grow), as the head last said.
    node_types: Mutex<Vec<(String, Resources)>>,
    /// Lease requests waiting for the cluster to grow, by shape: reported
    /// to the head as demand.
    growth_waiting: Mutex<BTreeMap<String, (Resources, u32)>>,
    /// Since when this node has been idle (see [`NodeDaemon::idle_since_ms`]).
    idle_since_ms: Mutex<Option<u64>>,
}

/// A lease request counted as waiting for the cluster to grow while it
/// lives.
pub(crate) struct GrowthWait<'a> {
    link: &'a ClusterLink,
    key: String,
}

impl Drop for GrowthWait<'_> {
    fn drop(&mut self) {
        let mut m = self.link.growth_waiting.lock();
        if let Some(e) = m.get_mut(&self.key) {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Transfers of one object from this node, for broadcasts: at most
/// [`MAX_SENDS_PER_OBJECT`] at a time until a first copy is complete; from
/// then on reads go round-robin to the nodes holding complete copies, which
/// do the same with theirs. One object reaching N nodes thus spreads as a
/// tree instead of being sent N times by its owner's node.
#[derive(Default)]
pub(crate) struct Sends {
    active: usize,
    /// Nodes holding a complete copy sent from here.
    complete: Vec<String>,
    next: usize,
}

/// Concurrent transfers of one object from one node.
pub(crate) const MAX_SENDS_PER_OBJECT: usize = 2;
/// How long a reader told "busy" keeps asking before insisting.
const BUSY_PATIENCE: Duration = Duration::from_secs(20);

/// What a node does with a request to read one of its objects.
pub(crate) enum ReadPlan {
    /// Send it; the guard tracks the transfer.
    Send(SendGuard),
    /// The reader should pull from this node instead.
    Redirect(String),
    /// Ask again shortly.
    Busy,
}

/// One transfer in progress; marks the reader's copy complete when every
/// chunk was handed out, and frees the slot when dropped.
pub(crate) struct SendGuard {
    sends: Option<(SendTable, ObjectId, String)>,
    pub(crate) finished: bool,
}

impl Drop for SendGuard {
    fn drop(&mut self) {
        let Some((sends, id, reader)) = self.sends.take() else {
            return;
        };
        let mut m = sends.lock();
        tracing::debug!(object = %id.hex(), reader, finished = self.finished, "send ended");
        if let Some(s) = m.get_mut(&id) {
            s.active = s.active.saturating_sub(1);
            if self.finished && !reader.is_empty() && !s.complete.contains(&reader) {
                s.complete.push(reader);
            }
        }
    }
}

impl ClusterLink {
    pub(crate) fn new(role: ClusterRole) -> Result<ClusterLink> {
        Ok(ClusterLink {
            head: crate::gcs::client(&role.head_addr)?,
            role,
            view: Mutex::new(Vec::new()),
            sent_since_view: Mutex::new(HashMap::new()),
            view_ready: tokio::sync::watch::channel(false).0,
            finished_jobs: Mutex::new(HashSet::new()),
            jobs: tokio::sync::Mutex::new(HashMap::new()),
            pulls: Mutex::new(HashMap::new()),
            copies: Mutex::new(HashMap::new()),
            sends: Default::default(),
            sent: Default::default(),
            redirected: Default::default(),
            peers: Default::default(),
            node_types: Mutex::new(Vec::new()),
            growth_waiting: Mutex::new(BTreeMap::new()),
            idle_since_ms: Mutex::new(None),
        })
    }

    /// Whether an autoscaler may launch a node that fits `res`.
    pub(crate) fn may_grow_for(&self, res: &Resources) -> bool {
        self.node_types
            .lock()
            .iter()
            .any(|(_, t)| infeasibility(t, res).is_none())
    }

    /// The node types an autoscaler may launch, as `cpu2 {CPU: 2}, ...`
    /// (`None` when the cluster does not grow).
    pub(crate) fn node_types_text(&self) -> Option<String> {
        let types = self.node_types.lock();
        (!types.is_empty()).then(|| {
            types
                .iter()
                .map(|(name, r)| format!("{name} {}", crate::autoscaler::policy::shape(r)))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    /// Counts a lease request as waiting for the cluster to grow until the
    /// returned guard drops.
    pub(crate) fn wait_for_growth(&self, res: &Resources) -> GrowthWait<'_> {
        let key = format!("{res:?}");
        self.growth_waiting
            .lock()
            .entry(key.clone())
            .or_insert_with(|| (res.clone(), 0))
            .1 += 1;
        GrowthWait { link: self, key }
    }

    /// An alive node other than `me` with `res` free now, by the view less
    /// what was sent there since; counted as sent.
    pub(crate) fn free_target(&self, me: &str, res: &Resources) -> Option<String> {
        let view = self.view.lock();
        let mut sent = self.sent_since_view.lock();
        pick_free(&view, &mut sent, me, res)
    }

    pub(crate) fn node_client(&self, addr: &str) -> Result<proto::node_service_client::NodeServiceClient<Chan>> {
        Ok(crate::rpc::node_client(self.peers.get(addr)?))
    }

    /// The head's node (where the actor manager runs), if it is alive.
    pub(crate) fn head_node_addr(&self) -> Option<String> {
        self.view
            .lock()
            .iter()
            .find(|n| n.is_head && n.alive)
            .map(|n| n.addr.clone())
    }

    /// Replaces the view with the head's node table now (a node that
    /// joined a moment ago is not in the heartbeat's view yet).
    pub(crate) async fn refresh_view(&self) {
        let mut head = self.head.clone();
        let asked = tokio::time::timeout(Duration::from_secs(5), head.list_nodes(proto::ListNodesRequest {})).await;
        if let Ok(Ok(r)) = asked {
            let nodes: Vec<proto::NodeEntry> = r.into_inner().nodes.into_iter().filter(|n| n.alive).collect();
            *self.view.lock() = nodes;
            self.sent_since_view.lock().clear();
        }
    }

    /// Whether some alive node could ever host `res`.
    pub(crate) fn any_node_feasible(&self, res: &Resources) -> bool {
        self.view.lock().iter().any(|n| {
            n.alive
                && !n.reconnecting
                && infeasibility(&n.total.iter().map(|(k, v)| (k.clone(), *v)).collect(), res).is_none()
        })
    }

    /// Each alive node's address and free resources, as of the last view
    /// (a node reconnecting to a restarted head offers none).
    pub(crate) fn free_resources(&self) -> Vec<(String, Resources)> {
        self.view
            .lock()
            .iter()
            .filter(|n| n.alive && !n.reconnecting)
            .map(|n| {
                (
                    n.addr.clone(),
                    n.available.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                )
            })
            .collect()
    }

    /// Each alive node's address, free and total amounts of the resources
    /// named in `keys` only (what placing a group needs: a node's map also
    /// holds every placement group's own resources, which grow with the
    /// groups), as of the last view.
    pub(crate) fn resources_of(&self, keys: &BTreeSet<String>) -> Vec<(String, Resources, Resources)> {
        let pick = |m: &HashMap<String, f64>| -> Resources {
            keys.iter().filter_map(|k| m.get(k).map(|v| (k.clone(), *v))).collect()
        };
        self.view
            .lock()
            .iter()
            .filter(|n| n.alive && !n.reconnecting)
            .map(|n| (n.addr.clone(), pick(&n.available), pick(&n.total)))
            .collect()
    }

    /// The alive nodes, as of the last view (not those reconnecting to a
    /// restarted head).
    pub(crate) fn alive_nodes(&self) -> Vec<proto::NodeEntry> {
        self.view
            .lock()
            .iter()
            .filter(|n| n.alive && !n.reconnecting)
            .cloned()
            .collect()
    }

    /// Each alive node's address and total resources (not those
    /// reconnecting to a restarted head).
    pub(crate) fn totals(&self) -> Vec<(String, Resources)> {
        self.view
            .lock()
            .iter()
            .filter(|n| n.alive && !n.reconnecting)
            .map(|n| (n.addr.clone(), n.total.iter().map(|(k, v)| (k.clone(), *v)).collect()))
            .collect()
    }

    /// Resolves once the node at `addr` is no longer in the view.
    pub(crate) async fn node_gone(&self, addr: &str) {
        let mut rx = self.view_ready.subscribe();
        loop {
            if !self.view.lock().iter().any(|n| n.addr == addr) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits (at most `limit`) for the first cluster view.
    pub(crate) async fn wait_for_view(&self, limit: Duration) {
        let mut rx = self.view_ready.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|ready| *ready)).await;
    }
}

/// Fetches a content-addressed blob (a binary, a package) from the head.
async fn fetch_blob(head: &mut ControlServiceClient<Chan>, hash: &str, what: &str) -> Result<Vec<u8>> {
    let context = format!("fetching {what} from the head");
    let mut stream = head
        .get_binary(proto::HasBinaryRequest { hash: hash.to_string() })
        .await
        .map_err(|s| Error::rpc(&context, s))?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(c) = stream.message().await.map_err(|s| Error::rpc(&context, s))? {
        bytes.extend_from_slice(&c.data);
    }
    Ok(bytes)
}

/// This machine's host name.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl NodeDaemon {
    pub(crate) fn link(&self) -> Option<&ClusterLink> {
        self.state.cluster.as_ref()
    }

    /// This node's entry in the head's node table.
    /// This node as the head's node table holds it.
    pub(crate) fn entry(&self) -> proto::NodeEntry {
        let s = self.state.sched.lock();
        proto::NodeEntry {
            node_id: self.state.node_id.clone(),
            addr: self.state.tcp_addr.clone(),
            uds_path: self.state.paths.node_sock.to_string_lossy().into(),
            store_dir: self.state.paths.store.to_string_lossy().into(),
            hostname: hostname(),
            is_head: self.link().is_some_and(|l| l.role.is_head),
            alive: true,
            total: s.total.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            available: s.available.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            http_addr: self.link().map(|l| l.role.http_addr.clone()).unwrap_or_default(),
            provider_id: std::env::var(crate::autoscaler::PROVIDER_ID_ENV).unwrap_or_default(),
            node_type: std::env::var(crate::autoscaler::NODE_TYPE_ENV).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Records an event in the head's feed (in-process on the head, over
    /// RPC elsewhere; the embedded cluster only logs it).
    pub(crate) fn report_event(&self, ev: proto::ClusterEvent) {
        let Some(link) = self.link() else { return };
        if let Some(gcs) = &link.role.gcs {
            gcs.add_event(ev);
            return;
        }
        let mut head = link.head.clone();
        self.spawn(async move {
            if let Err(e) = head.report_event(ev).await {
                tracing::warn!("cannot report an event to the head: {e}");
            }
        });
    }

    async fn register(&self) -> Result<()> {
        let Some(link) = self.link() else { return Ok(()) };
        let r = link
            .head
            .clone()
            .register_node(self.entry())
            .await
            .map_err(|s| Error::rpc(&format!("registering with the head at {}", link.role.head_addr), s))?
            .into_inner();
        match r.error {
            Some(e) => Err(Error::from_proto(&e)),
            None => Ok(()),
        }
    }

    /// Registers with the head (waiting up to `patience` for it to come
    /// up), then heartbeats in the background.
    pub(crate) async fn join_cluster(&self, patience: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.register().await {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!("head not reachable yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
        let d = self.clone();
        self.spawn(async move { d.heartbeat_loop().await });
        Ok(())
    }

    /// Tells the head this node is stopping cleanly (a last heartbeat,
    /// waited for at most 3 s): it is then recorded as stopped, not as alive
    /// until its heartbeat times out.
    pub(crate) async fn say_stopping(&self) {
        // From now on the heartbeat loop neither beats nor registers again:
        // a beat still in flight would otherwise bring this node back.
        self.state
            .shutting_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let Some(link) = self.link() else { return };
        let req = proto::HeartbeatRequest {
            node_id: self.state.node_id.clone(),
            stopping: true,
            ..Default::default()
        };
        let mut head = link.head.clone();
        match tokio::time::timeout(Duration::from_secs(3), head.heartbeat(req)).await {
            Ok(Ok(_)) => tracing::info!("the head knows this node stopped"),
            Ok(Err(e)) => tracing::warn!("cannot tell the head this node stops: {}", e.message()),
            Err(_) => tracing::warn!("cannot tell the head this node stops: no answer within 3 s"),
        }
    }

    /// Whether this node is stopping (it said so to the head, or shut down).
    fn stopping(&self) -> bool {
        self.state.shutting_down.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn heartbeat_loop(&self) {
        let Some(link) = self.link() else { return };
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut head_down_since: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            if self.stopping() {
                return;
            }
            let idle_since_ms = self.idle_since_ms().unwrap_or(0);
            let waiting: Vec<(Resources, u32)> = link.growth_waiting.lock().values().cloned().collect();
            let req = {
                let s = self.state.sched.lock();
                let queued = s.demands();
                // The same demand in words, for `rayforge status`.
                let shape = crate::autoscaler::policy::shape;
                let mut pending_demands: Vec<String> =
                    queued.iter().map(|(r, n)| format!("{} x{n}", shape(r))).collect();
                pending_demands.sort();
                pending_demands.extend(
                    waiting
                        .iter()
                        .map(|(r, n)| format!("{} x{n} (waiting for a node to launch)", shape(r))),
                );
                proto::HeartbeatRequest {
                    node_id: self.state.node_id.clone(),
                    available: s.available.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    total: s.total.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    pending_leases: s.pending_count() as u32,
                    pending_demands,
                    num_workers: s
                        .workers
                        .values()
                        .filter(|w| w.state != super::scheduler::WorkerState::Dead)
                        .count() as u32,
                    stopping: false,
                    demands: queued
                        .into_iter()
                        .chain(waiting)
                        .map(|(shape, count)| proto::ResourceDemand {
                            shape: shape.into_iter().collect(),
                            count,
                        })
                        .collect(),
                    idle_since_ms,
                }
            };
            let reply = match link.head.clone().heartbeat(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    let since = *head_down_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > Duration::from_secs(2) {
                        tracing::warn!("cannot reach the head at {}: {}", link.role.head_addr, s.message());
                        head_down_since = Some(tokio::time::Instant::now());
                    }
                    continue;
                }
            };
            if head_down_since.take().is_some() {
                tracing::info!("head at {} reachable again", link.role.head_addr);
            }
            if reply.reregister && self.stopping() {
                return;
            }
            if reply.reregister {
                tracing::info!("the head does not know this node: registering again");
                if let Err(e) = self.register().await {
                    tracing::warn!("re-registering: {e}");
                }
            }
            let alive: HashSet<String> = reply.nodes.iter().map(|n| n.addr.clone()).collect();
            *link.view.lock() = reply.nodes;
            link.sent_since_view.lock().clear();
            *link.node_types.lock() = reply
                .node_types
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        t.resources.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    )
                })
                .collect();
            self.move_queued_requests();
            // Every view counts as a change (node_gone re-checks).
            link.view_ready.send_replace(true);
            self.check_drivers(&link.head, &reply.local_drivers);
            self.check_actors(&alive, &reply.finished_jobs);
            self.check_groups(Some(&alive));
            for job in reply.finished_jobs {
                if link.finished_jobs.lock().insert(job.clone()) {
                    tracing::info!(job = %job, "job finished: stopping its workers");
                    link.jobs.lock().await.remove(&job);
                    self.state.job_output.lock().remove(&job);
                    let acts = self.state.sched.lock().job_finished(&job);
                    self.apply(acts);
                }
            }
        }
    }

    /// Fails the jobs whose driver process on this machine is gone without
    /// having called `shutdown` (killed, crashed): their workers and
    /// non-detached actors are then stopped like any finished job's.
    fn check_drivers(&self, head: &ControlServiceClient<Chan>, drivers: &[proto::LocalDriver]) {
        for d in drivers {
            if crate::util::process_alive(d.pid) {
                continue;
            }
            let message = format!(
                "its driver process (pid {}) exited without calling rayforge::shutdown",
                d.pid
            );
            tracing::warn!(job = %d.job_id, "{message}");
            let mut head = head.clone();
            let job_id = d.job_id.clone();
            self.spawn(async move {
                let r = head
                    .finish_job(proto::FinishJobRequest {
                        job_id,
                        state: "FAILED".into(),
                        message,
                    })
                    .await;
                if let Err(s) = r {
                    tracing::warn!("reporting a dead driver: {}", s.message());
                }
            });
        }
    }

    /// Moves lease requests queued here for a while to nodes that have
    /// room for them now (a node that joined since they were queued, one
    /// that finished its work): they would otherwise wait here for this
    /// node's resources while others sit idle.
    pub(crate) fn move_queued_requests(&self) {
        let Some(link) = self.link() else { return };
        // Copies, so no lock of the view is held under the scheduler's.
        let view: Vec<proto::NodeEntry> = link.view.lock().clone();
        let mut sent = link.sent_since_view.lock().clone();
        let me = self.state.node_id.clone();
        let moved = self
            .state
            .sched
            .lock()
            .move_queued(Duration::from_millis(500), |res| pick_free(&view, &mut sent, &me, res));
        if moved > 0 {
            tracing::debug!(moved, "queued lease requests moved to nodes with room");
            *link.sent_since_view.lock() = sent;
        }
    }

    /// Records whether this node is idle now (no leases, queued requests
    /// or primary objects) and returns since when, in milliseconds since
    /// the Unix epoch; `None` while busy.
    pub(crate) fn idle_since_ms(&self) -> Option<u64> {
        let link = self.link()?;
        let busy = self.state.sched.lock().is_busy()
            || !link.growth_waiting.lock().is_empty()
            || self.state.store.lock().primary_count() > 0;
        let mut since = link.idle_since_ms.lock();
        if busy {
            *since = None;
        } else if since.is_none() {
            *since = Some(crate::clock::now_ms());
        }
        *since
    }

    /// Another node to send a lease request to when this one cannot serve
    /// it: one that could ever fit it when we cannot, else one that has the
    /// resources free now when we have not.
    pub(crate) fn spillback_target(&self, res: &Resources) -> Option<String> {
        let link = self.link()?;
        let (local_feasible, local_fits) = {
            let s = self.state.sched.lock();
            (infeasibility(&s.total, res).is_none(), fits(&s.available, res))
        };
        if local_fits {
            return None;
        }
        let view = link.view.lock();
        let mut sent = link.sent_since_view.lock();
        let as_res = |m: &HashMap<String, f64>| m.iter().map(|(k, v)| (k.clone(), *v)).collect::<Resources>();
        let others = view.iter().filter(|n| n.alive && n.node_id != self.state.node_id);
        let mut best: Option<(&proto::NodeEntry, bool, f64)> = None;
        for n in others {
            if infeasibility(&as_res(&n.total), res).is_some() {
                continue;
            }
            let mut avail = as_res(&n.available);
            for (k, v) in sent.get(&n.addr).into_iter().flatten() {
                *avail.entry(k.clone()).or_insert(0.0) -= v;
            }
            let free_now = fits(&avail, res);
            if local_feasible && !free_now {
                continue;
            }
            let cpu = avail.get("CPU").copied().unwrap_or(0.0);
            if best.is_none_or(|(_, f, c)| (free_now, cpu) > (f, c)) {
                best = Some((n, free_now, cpu));
            }
        }
        if let Some((n, _, _)) = best {
            let taken = sent.entry(n.addr.clone()).or_default();
            for (k, v) in res {
                *taken.entry(k.clone()).or_insert(0.0) += v;
            }
        }
        best.map(|(n, _, _)| n.addr.clone())
    }

    /// The binary and environment of a job's workers, fetching the binary
    /// from the head the first time.
    pub(crate) async fn job_runtime(&self, job: &str) -> Result<JobRuntime> {
        // The head may be restarting: keep asking for a while.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self.try_job_runtime(job).await {
                Err(Error::Io { context, message }) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(job, "head unreachable ({context}: {message}); retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_job_runtime(&self, job: &str) -> Result<JobRuntime> {
        let link = self
            .link()
            .ok_or_else(|| Error::Internal("job workers outside a cluster".into()))?;
        let mut jobs = link.jobs.lock().await;
        // The caches keep a few binaries and packages only: one pruned away
        // since is fetched again.
        if let Some(rt) = jobs
            .get(job)
            .filter(|rt| rt.binary.exists() && rt.working_dir.as_ref().is_none_or(|d| d.is_dir()))
        {
            return Ok(rt.clone());
        }
        let mut head = link.head.clone();
        let r = head
            .get_job(proto::GetJobRequest { job_id: job.into() })
            .await
            .map_err(|s| Error::rpc("looking up a job at the head", s))?
            .into_inner();
        if let Some(e) = r.error {
            return Err(Error::from_proto(&e));
        }
        let info = r.job.ok_or_else(|| Error::Internal("job reply without a job".into()))?;
        let cache = crate::util::rayforge_tmp()?.join("binaries");
        std::fs::create_dir_all(&cache).map_err(|e| Error::io(format!("creating {}", cache.display()), e))?;
        let path = cache.join(&info.binary_hash);
        if !cached_binary_intact(&path, &info.binary_hash).await {
            let bytes = fetch_blob(&mut head, &info.binary_hash, "the job's binary").await?;
            let tmp = cache.join(format!("{}.{}.tmp", info.binary_hash, ObjectId::for_put().hex()));
            let write = || -> std::io::Result<()> {
                use std::os::unix::fs::PermissionsExt;
                std::fs::write(&tmp, &bytes)?;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
                // Linked, not renamed: nodes sharing a machine may fetch the
                // same binary at once, and a copy renamed over the one a
                // worker is already running would leave that worker's
                // program without a file.
                let linked = match std::fs::hard_link(&tmp, &path) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                    other => other,
                };
                let _ = std::fs::remove_file(&tmp);
                linked
            };
            write().map_err(|e| Error::io(format!("storing the job's binary at {}", path.display()), e))?;
            tracing::info!(job, hash = %info.binary_hash, bytes = bytes.len(), "fetched job binary");
            prune_binaries(&cache, &path);
        }
        let working_dir = match crate::jobs::package_hash(&info.working_dir) {
            Some(hash) if crate::jobs::package_dir(hash).is_dir() => {
                let dir = crate::jobs::package_dir(hash);
                mark_used(&dir);
                Some(dir)
            }
            Some(hash) => {
                let data = fetch_blob(&mut head, hash, "the job's working directory").await?;
                let hash = hash.to_string();
                let in_use: HashSet<PathBuf> = jobs.values().filter_map(|rt| rt.working_dir.clone()).collect();
                let dir = tokio::task::spawn_blocking(move || {
                    let dir = crate::jobs::unpack(&hash, &data)?;
                    mark_used(&dir);
                    if let Some(root) = dir.parent() {
                        prune_packages(root, &dir, &in_use, std::time::SystemTime::now());
                    }
                    Ok::<_, Error>(dir)
                })
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
                tracing::info!(job, dir = %dir.display(), "unpacked the job's working directory");
                Some(dir)
            }
            None => (!info.working_dir.is_empty()).then(|| PathBuf::from(&info.working_dir)),
        };
        let rt = JobRuntime {
            binary: path,
            env: info.env.into_iter().collect(),
            working_dir,
        };
        jobs.insert(job.to_string(), rt.clone());
        Ok(rt)
    }

    /// Makes a local copy of an object held by the node at `from`. Pulls of
    /// the same object share one transfer.
    pub(crate) async fn pull_object(&self, id: ObjectId, from: String) -> Result<()> {
        let link = self
            .link()
            .ok_or_else(|| Error::InvalidArgument("this node is not part of a cluster".into()))?;
        let pull = {
            let mut pulls = link.pulls.lock();
            match pulls.get(&id) {
                // In flight: its space is reserved but the file is not there yet.
                Some(p) => p.clone(),
                None if self.state.store.lock().contains(&id) => return Ok(()),
                None => {
                    let d = self.clone();
                    let p = async move {
                        let r = d.transfer(id, &from).await;
                        if let Some(l) = d.link() {
                            l.pulls.lock().remove(&id);
                        }
                        r
                    }
                    .boxed()
                    .shared();
                    pulls.insert(id, p.clone());
                    p
                }
            }
        };
        pull.await
    }

    /// Pulls an object from the node at `from` (its primary copy), or from
    /// the node holding a complete copy that `from` redirects to; falls back
    /// to `from` itself when that fails.
    async fn transfer(&self, id: ObjectId, from: &str) -> Result<()> {
        let mut busy_since: Option<std::time::Instant> = None;
        let mut insist = false;
        loop {
            let (src, stream) = match self.open_read(id, from, insist).await? {
                Opened::Stream(o) => {
                    let OpenStream(src, stream, first) = *o;
                    (src, (stream, first))
                }
                Opened::Busy => {
                    let since = *busy_since.get_or_insert_with(std::time::Instant::now);
                    insist = since.elapsed() > BUSY_PATIENCE;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            match self.receive(id, &src, stream.0, stream.1).await {
                Err(e) if src != from && !insist => {
                    tracing::debug!(object = %id.hex(), from = %src, "pull from a copy failed ({e}); asking the owner's node");
                    insist = true;
                }
                r => return r,
            }
        }
    }

    /// Asks `from` for the object, following one redirect.
    async fn open_read(&self, id: ObjectId, from: &str, insist: bool) -> Result<Opened> {
        let link = self.link().ok_or_else(|| Error::Internal("no cluster".into()))?;
        let mut src = from.to_string();
        let mut no_redirect = insist;
        loop {
            let lost = |why: String| Error::ObjectLost {
                id: id.hex(),
                cause: format!("the node at {src} holding it could not send it: {why}"),
            };
            let opened = async {
                let mut client = link.node_client(&src)?;
                let mut stream = client
                    .read_object(proto::ReadObjectRequest {
                        id: id.0.to_vec(),
                        requester_addr: self.state.tcp_addr.clone(),
                        no_redirect,
                    })
                    .await
                    .map_err(|s| lost(s.message().to_string()))?
                    .into_inner();
                let first = stream
                    .message()
                    .await
                    .map_err(|s| lost(s.message().to_string()))?
                    .ok_or_else(|| lost("empty stream".into()))?;
                Ok::<_, Error>((stream, first))
            }
            .await;
            match opened {
                Ok((_, first)) if first.busy => return Ok(Opened::Busy),
                Ok((_, first)) if !first.redirect.is_empty() && !no_redirect => {
                    src = first.redirect;
                    no_redirect = true;
                }
                Ok((stream, first)) => return Ok(Opened::Stream(Box::new(OpenStream(src, stream, first)))),
                // A copy holder that cannot send: back to the owner's node.
                Err(e) if src != from => {
                    tracing::debug!(object = %id.hex(), "redirected pull failed ({e})");
                    src = from.to_string();
                    no_redirect = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives an opened transfer into the local store.
    async fn receive(
        &self,
        id: ObjectId,
        from: &str,
        mut stream: tonic::Streaming<proto::ObjectChunk>,
        first: proto::ObjectChunk,
    ) -> Result<()> {
        let lost = |why: String| Error::ObjectLost {
            id: id.hex(),
            cause: format!("the node at {from} holding it could not send it: {why}"),
        };
        let total = first.total;
        let d = self.clone();
        let reuse = tokio::task::spawn_blocking(move || {
            let mut store = d.state.store.lock();
            let new = !store.contains(&id);
            let reuse = store.reserve(id, total);
            if new {
                store.mark_copy(&id);
            }
            reuse
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        let dir = self.state.paths.store.clone();
        let mut new = match object_store::NewObject::create(&dir, &id, total, reuse.as_deref()) {
            Ok(n) => Some(n),
            Err(e) => {
                self.state.store.lock().free(id);
                return Err(e);
            }
        };
        // The file is sized up front and mapped: each chunk is copied once,
        // straight into the page cache of the store's tmpfs.
        let result = async {
            let len = usize::try_from(total).map_err(|_| lost(format!("{total} bytes do not fit in memory")))?;
            let mut map = match new.as_mut() {
                Some(n) if len > 0 => Some(
                    // SAFETY: the file is ours (a fresh temporary name, or a
                    // pooled file the daemon handed to this write only) and
                    // nobody else writes or truncates it while we do.
                    unsafe {
                        memmap2::MmapOptions::new()
                            .offset(object_store::HEADER as u64)
                            .len(len)
                            .map_mut(&*n.file())
                    }
                    .map_err(|e| Error::io("mapping a pulled object", e))?,
                ),
                _ => None,
            };
            let mut written = 0usize;
            let mut put = |data: &[u8]| -> Result<()> {
                let end = written + data.len();
                match map.as_mut() {
                    Some(m) if end <= len => m[written..end].copy_from_slice(data),
                    _ if data.is_empty() => {}
                    _ => return Err(lost(format!("sent more than the {total} bytes announced"))),
                }
                written = end;
                Ok(())
            };
            put(&first.data)?;
            while let Some(c) = stream.message().await.map_err(|s| lost(s.message().to_string()))? {
                put(&c.data)?;
            }
            if written != len {
                return Err(lost(format!("got {written} of {total} bytes")));
            }
            drop(map);
            match new.take() {
                Some(n) => tokio::task::spawn_blocking(move || n.commit())
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?,
                None => Ok(()),
            }
        }
        .await;
        if result.is_err() {
            if let Some(n) = new {
                n.abort();
            }
            self.state.store.lock().free(id);
        } else {
            tracing::debug!(object = %id.hex(), bytes = total, from, "pulled object");
        }
        result
    }

    /// Waits for a pull of `id` into this node under way, if any (a node
    /// is told to serve its copy as soon as the copy's bytes were all sent).
    pub(crate) async fn finish_pull(&self, id: ObjectId) {
        let pull = self.link().and_then(|l| l.pulls.lock().get(&id).cloned());
        if let Some(p) = pull {
            let _ = p.await;
        }
    }

    /// Decides how to answer a read of object `id` by node `reader`.
    pub(crate) fn plan_read(&self, id: ObjectId, reader: &str, no_redirect: bool) -> ReadPlan {
        let Some(link) = self.link() else {
            return ReadPlan::Send(SendGuard {
                sends: None,
                finished: false,
            });
        };
        let mut m = link.sends.lock();
        let s = m.entry(id).or_default();
        if !no_redirect {
            let holders: Vec<&String> = s.complete.iter().filter(|n| *n != reader).collect();
            if !holders.is_empty() {
                let to = holders[s.next % holders.len()].clone();
                s.next += 1;
                link.redirected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return ReadPlan::Redirect(to);
            }
            if s.active >= MAX_SENDS_PER_OBJECT {
                return ReadPlan::Busy;
            }
        }
        link.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(object = %id.hex(), reader, active = s.active, complete = s.complete.len(), no_redirect, "sending an object");
        s.active += 1;
        ReadPlan::Send(SendGuard {
            sends: Some((link.sends.clone(), id, reader.to_string())),
            finished: false,
        })
    }

    /// Notes that `node` holds a copy of our object `id`.
    pub(crate) fn note_copy(&self, id: ObjectId, node: &str) {
        if let Some(l) = self.link() {
            if !node.is_empty() {
                l.copies.lock().entry(id).or_default().insert(node.to_string());
            }
        }
    }

    /// Tells the nodes holding copies of freed objects to drop them too.
    pub(crate) fn forward_frees(&self, ids: &[ObjectId]) {
        let Some(link) = self.link() else { return };
        let mut by_node: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        {
            let mut sends = link.sends.lock();
            for id in ids {
                sends.remove(id);
            }
        }
        {
            let mut copies = link.copies.lock();
            for id in ids {
                for n in copies.remove(id).unwrap_or_default() {
                    by_node.entry(n).or_default().push(id.0.to_vec());
                }
            }
        }
        for (node, ids) in by_node {
            if let Ok(mut c) = link.node_client(&node) {
                self.spawn(async move {
                    let _ = c.free_objects(proto::FreeObjectsRequest { ids }).await;
                });
            }
        }
    }
}

/// Whether the cached binary at `path` is there and still hashes to
/// `hash`; one that does not (changed on disk since it was fetched) is
/// removed, to be fetched again: a program is run only as the head has it.
async fn cached_binary_intact(path: &std::path::Path, hash: &str) -> bool {
    if !path.exists() {
        return false;
    }
    let p = path.to_path_buf();
    let got = tokio::task::spawn_blocking(move || crate::gcs::file_sha256(&p)).await;
    match got {
        Ok(Ok(h)) if h == hash => true,
        other => {
            tracing::warn!(path = %path.display(), "a cached job binary no longer matches its hash: fetching it again ({other:?})");
            let _ = std::fs::remove_file(path);
            false
        }
    }
}

/// How many fetched job binaries a machine keeps (each is a whole program,
/// often tens of MB): the least recently fetched beyond this are removed.
const KEPT_BINARIES: usize = 8;

/// Removes all but the newest [`KEPT_BINARIES`] files of the binary cache,
/// never `keep`. Running workers are unaffected (their inode stays); a node that
/// needs a removed binary again fetches it again. Best effort: a failure to
/// list or remove only leaves files behind.
fn prune_binaries(cache: &std::path::Path, keep: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(cache) else { return };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path() != keep && !e.path().to_string_lossy().ends_with(".tmp"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, path) in files.into_iter().skip(KEPT_BINARIES - 1) {
        if std::fs::remove_file(&path).is_ok() {
            tracing::debug!(path = %path.display(), "removed an old job binary");
        }
    }
}

/// How many unpacked working-directory packages a machine keeps beyond
/// those in use (each is a job's whole directory): the least recently used
/// beyond this are removed.
const KEPT_PACKAGES: usize = 8;

/// A package used (by a job of any node on this machine) more recently
/// than this is never removed: nodes sharing a machine share its packages,
/// and one node does not know another's jobs.
const PACKAGE_GRACE: Duration = Duration::from_secs(3600);

/// Records that a package directory is in use now (its modification time
/// is its last use), so that pruning on this machine keeps it.
fn mark_used(dir: &std::path::Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Removes unpacked packages under `root` beyond the newest
/// [`KEPT_PACKAGES`], never `keep`, one in `in_use` (this node's running
/// jobs) or one used within [`PACKAGE_GRACE`] of `now`. Best effort: a
/// failure to list or remove only leaves directories behind.
fn prune_packages(
    root: &std::path::Path,
    keep: &std::path::Path,
    in_use: &HashSet<PathBuf>,
    now: std::time::SystemTime,
) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
        .filter_map(|e| {
            let m = e.metadata().ok().filter(|m| m.is_dir())?;
            Some((m.modified().ok()?, e.path()))
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    for (used, path) in dirs.into_iter().skip(KEPT_PACKAGES) {
        let recent = now.duration_since(used).map_or(true, |age| age < PACKAGE_GRACE);
        if recent || path == keep || in_use.contains(&path) {
            continue;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            tracing::debug!(path = %path.display(), "removed an old working-directory package");
        }
    }
}

/// An alive node of `view` other than `me` with `res` free, counting what
/// `sent` records as already sent there; the one with the most CPUs free
/// wins, and `res` is added to what was sent to it.
fn pick_free(
    view: &[proto::NodeEntry],
    sent: &mut HashMap<String, Resources>,
    me: &str,
    res: &Resources,
) -> Option<String> {
    let mut best: Option<(&proto::NodeEntry, f64)> = None;
    for n in view.iter().filter(|n| n.alive && !n.reconnecting && n.node_id != me) {
        let mut avail: Resources = n.available.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (k, v) in sent.get(&n.addr).into_iter().flatten() {
            *avail.entry(k.clone()).or_insert(0.0) -= v;
        }
        if !fits(&avail, res) {
            continue;
        }
        let cpu = avail.get("CPU").copied().unwrap_or(0.0);
        if best.is_none_or(|(_, c)| cpu > c) {
            best = Some((n, cpu));
        }
    }
    let (n, _) = best?;
    let taken = sent.entry(n.addr.clone()).or_default();
    for (k, v) in res {
        *taken.entry(k.clone()).or_insert(0.0) += v;
    }
    Some(n.addr.clone())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::{cached_binary_intact, prune_binaries, prune_packages};
    use crate::util::process_alive;

    /// The names in `dir`, sorted.
    fn names_in(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Unpacked packages beyond the newest eight go, oldest first, unless a
    /// job of this node uses one, it was just unpacked, or it was used
    /// within the hour (by a node sharing this machine).
    #[test]
    fn package_cache_keeps_the_newest_and_those_in_use() {
        let dir = std::env::temp_dir().join(format!("rf-packages-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now = std::time::SystemTime::now();
        // pkg00 is the oldest (14 h), pkg13 the newest (1 h).
        for i in 0..14u64 {
            let d = dir.join(format!("pkg{i:02}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("main.py"), b"print(1)").unwrap();
            let f = std::fs::File::open(&d).unwrap();
            f.set_modified(now - Duration::from_secs(3600 * (14 - i) + 60)).unwrap();
        }
        std::fs::create_dir_all(dir.join("pkgxx.123.tmp")).unwrap();
        // pkg03's last use was 30 minutes ago: though old by count, it stays.
        std::fs::File::open(dir.join("pkg03"))
            .unwrap()
            .set_modified(now - Duration::from_secs(1800))
            .unwrap();
        let in_use: HashSet<_> = [dir.join("pkg01")].into();
        prune_packages(&dir, &dir.join("pkg00"), &in_use, now);
        let left = names_in(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        // Newest eight by use: pkg03 (30 min), pkg13..pkg07; then pkg00
        // (just unpacked), pkg01 (in use) and the unfinished one stay;
        // pkg02, pkg04, pkg05 and pkg06 go.
        let want: Vec<String> = [
            "pkg00",
            "pkg01",
            "pkg03",
            "pkg07",
            "pkg08",
            "pkg09",
            "pkg10",
            "pkg11",
            "pkg12",
            "pkg13",
            "pkgxx.123.tmp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(left, want);
    }

    /// A cached binary changed on disk since it was fetched (another
    /// process of this user, a disk fault) is not run: it is dropped, to be
    /// fetched again.
    #[test]
    fn a_cached_binary_that_no_longer_matches_its_hash_is_dropped() {
        let dir = std::env::temp_dir().join(format!("rf-binary-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prog");
        std::fs::write(&path, b"#!/bin/sh\necho fetched\n").unwrap();
        let hash = crate::gcs::file_sha256(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(rt.block_on(cached_binary_intact(&path, &hash)));
        std::fs::write(&path, b"#!/bin/sh\necho planted\n").unwrap();
        assert!(!rt.block_on(cached_binary_intact(&path, &hash)));
        assert!(!path.exists(), "the changed binary was kept");
        assert!(!rt.block_on(cached_binary_intact(&path, &hash)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_live_process_is_alive_and_a_reaped_one_is_not() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().expect("spawn `true`");
        let pid = child.id();
        child.wait().expect("reap");
        assert!(!process_alive(pid));
    }

    #[test]
    fn binary_cache_keeps_the_newest_files() {
        let dir = std::env::temp_dir().join(format!("rf-binaries-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let start = std::time::SystemTime::now() - Duration::from_secs(3600);
        for i in 0..12u64 {
            let f = std::fs::File::create(dir.join(format!("bin{i:02}"))).unwrap();
            f.set_modified(start + Duration::from_secs(i)).unwrap();
        }
        std::fs::write(dir.join("x.tmp"), b"partial").unwrap();
        // The file just written counts as one of the kept ones even if oldest.
        prune_binaries(&dir, &dir.join("bin00"));
        let left = names_in(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let want: Vec<String> = [
            "bin00", "bin05", "bin06", "bin07", "bin08", "bin09", "bin10", "bin11", "x.tmp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(left, want);
    }
}
