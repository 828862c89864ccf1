//! The head's global control service: the node table (registration,
//! heartbeats, failure detection), the job table, content-addressed job
//! binaries, a key-value store and the record of the actor table (kept by
//! the head node's actor manager), served over TCP as `ControlService`.
//!
//! Its tables are persisted in the head's directory (`state.pb`, written
//! atomically after every change), so a restarted head comes back with every
//! node, job and key; nodes keep heartbeating and drivers reconnect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::ids::hex;
use crate::proto::{self, control_service_server::ControlService};

pub(crate) use crate::clock::now_ms;

/// Hex SHA-256 of a file's contents.
pub(crate) fn file_sha256(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Chunk size for binary and object transfers.
pub(crate) const CHUNK: usize = 1 << 20;

/// The persisted tables.
#[derive(Clone, PartialEq, prost::Message)]
struct Snapshot {
    #[prost(message, repeated, tag = "1")]
    nodes: Vec<proto::NodeEntry>,
    #[prost(message, repeated, tag = "2")]
    jobs: Vec<proto::JobInfo>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    kv: BTreeMap<String, Vec<u8>>,
    #[prost(uint32, tag = "4")]
    next_job: u32,
    #[prost(message, repeated, tag = "5")]
    actors: Vec<proto::ActorRecord>,
    #[prost(message, repeated, tag = "6")]
    groups: Vec<proto::PlacementGroupRecord>,
    #[prost(message, repeated, tag = "7")]
    events: Vec<proto::ClusterEvent>,
}

/// Events the head keeps (the newest).
pub(crate) const MAX_EVENTS: usize = 2_000;

#[derive(Default)]
struct Tables {
    nodes: BTreeMap<String, proto::NodeEntry>,
    jobs: BTreeMap<String, proto::JobInfo>,
    kv: crate::kv::KvTable,
    next_job: u32,
    actors: BTreeMap<Vec<u8>, proto::ActorRecord>,
    groups: BTreeMap<String, proto::PlacementGroupRecord>,
    events: std::collections::VecDeque<proto::ClusterEvent>,
    /// Nodes restored from the state file that have not reached this head
    /// yet: listed as reconnecting, offering nothing, until they do (a node
    /// stopped with the old head never will, and dies at its heartbeat
    /// timeout).
    unconfirmed: std::collections::BTreeSet<String>,
}

impl Tables {
    /// The nodes as listed: a restored node not heard from yet is marked
    /// reconnecting, with nothing available.
    fn listed_nodes(&self) -> Vec<proto::NodeEntry> {
        self.nodes
            .values()
            .map(|n| {
                let mut n = n.clone();
                if n.alive && self.unconfirmed.contains(&n.node_id) {
                    n.reconnecting = true;
                    n.available.clear();
                }
                n
            })
            .collect()
    }

    fn event(&mut self, ev: proto::ClusterEvent) {
        self.events.push_back(ev);
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }
}

/// A new event, stamped now.
pub(crate) fn event(severity: &str, kind: &str, message: String) -> proto::ClusterEvent {
    proto::ClusterEvent {
        time_ms: now_ms(),
        severity: severity.into(),
        kind: kind.into(),
        message,
        ..Default::default()
    }
}

/// How the death cause of a node that said it stops begins.
const STOPPED_CLEANLY: &str = "stopped cleanly";

/// Marks `n` dead for `cause`; the event that says so.
fn node_gone(n: &mut proto::NodeEntry, cause: String, severity: &str) -> proto::ClusterEvent {
    n.alive = false;
    n.death_cause = cause;
    n.available.clear();
    if severity == "ERROR" {
        tracing::warn!(node = %n.node_id, addr = %n.addr, "node declared dead: {}", n.death_cause);
    } else {
        tracing::info!(node = %n.node_id, addr = %n.addr, "node gone: {}", n.death_cause);
    }
    let mut ev = event(
        severity,
        "NODE_DIED",
        format!("node {} ({}) died: {}", n.node_id, n.addr, n.death_cause),
    );
    ev.node_id = n.node_id.clone();
    ev
}

/// The control service's state.
pub(crate) struct Gcs {
    dir: PathBuf,
    tables: Mutex<Tables>,
    heartbeat_timeout: Duration,
    /// Held while writing `state.pb`, so snapshots land in order.
    writing: Mutex<()>,
    /// Why the last write of `state.pb` failed, until one succeeds.
    write_error: Mutex<Option<String>>,
    /// Wakes the writer that batches actor-table changes.
    dirty: tokio::sync::Notify,
    /// The cluster's file store (`cluster://`), under `storage/`.
    files: Arc<crate::storage::file_store::FileStore>,
    /// The node types the autoscaler may launch, told to every node.
    node_types: Mutex<Vec<proto::NodeTypeShape>>,
    /// Wakes the autoscaler: a node's demand changed, or a node joined.
    autoscaler_wake: tokio::sync::Notify,
}

impl Gcs {
    /// Opens (or creates) the head's state in `dir`, its file store held
    /// to `storage_budget` bytes.
    pub(crate) fn open(dir: &Path, heartbeat_timeout: Duration, storage_budget: u64) -> Result<Arc<Gcs>> {
        std::fs::create_dir_all(dir.join("binaries"))
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut t = Tables::default();
        let path = dir.join("state.pb");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let s = Snapshot::decode(bytes.as_slice())
                    .map_err(|e| Error::Runtime(format!("the head's state file {} is corrupt: {e}", path.display())))?;
                let now = now_ms();
                for mut n in s.nodes {
                    // Give every node a full timeout to reach the new head.
                    n.last_heartbeat_ms = now;
                    if n.alive {
                        t.unconfirmed.insert(n.node_id.clone());
                    }
                    t.nodes.insert(n.node_id.clone(), n);
                }
                t.jobs = s.jobs.into_iter().map(|j| (j.job_id.clone(), j)).collect();
                t.kv = crate::kv::KvTable(s.kv);
                t.next_job = s.next_job;
                t.actors = s.actors.into_iter().map(|a| (a.actor_id.clone(), a)).collect();
                t.groups = s.groups.into_iter().map(|g| (g.id.clone(), g)).collect();
                t.events = s.events.into_iter().collect();
                tracing::info!(
                    nodes = t.nodes.len(),
                    jobs = t.jobs.len(),
                    keys = t.kv.0.len(),
                    actors = t.actors.len(),
                    "head state restored from {}",
                    path.display()
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
        let files = crate::storage::file_store::FileStore::open(&dir.join("storage"), storage_budget)?;
        Ok(Arc::new(Gcs {
            files,
            node_types: Mutex::new(Vec::new()),
            autoscaler_wake: tokio::sync::Notify::new(),
            dir: dir.to_path_buf(),
            tables: Mutex::new(t),
            heartbeat_timeout,
            writing: Mutex::new(()),
            write_error: Mutex::new(None),
            dirty: tokio::sync::Notify::new(),
        }))
    }

    /// Writes the tables to disk (temporary file, fsync, rename). Call it
    /// without holding the tables' lock.
    fn persist(&self) {
        let _w = self.writing.lock();
        let snap = {
            let t = self.tables.lock();
            Snapshot {
                nodes: t.nodes.values().cloned().collect(),
                jobs: t.jobs.values().cloned().collect(),
                kv: t.kv.0.clone(),
                next_job: t.next_job,
                actors: t.actors.values().cloned().collect(),
                groups: t.groups.values().cloned().collect(),
                events: t.events.iter().cloned().collect(),
            }
        };
        let tmp = self.dir.join("state.pb.tmp");
        let res = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&snap.encode_to_vec())?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.dir.join("state.pb"))
        })();
        let mut failed = self.write_error.lock();
        match res {
            Err(e) => {
                let why = format!("cannot write the head's state in {}: {e}", self.dir.display());
                if failed.is_none() {
                    tracing::error!("{why}");
                }
                *failed = Some(why);
            }
            Ok(()) => {
                if failed.take().is_some() {
                    tracing::info!("the head's state is written again");
                }
            }
        }
    }

    /// Why the last write of the head's state failed (a full disk, a
    /// directory gone); `None` once one succeeds again. `/readyz` says
    /// not ready while it is set.
    pub(crate) fn write_error(&self) -> Option<String> {
        self.write_error.lock().clone()
    }

    /// Marks nodes whose heartbeats stopped as dead.
    pub(crate) fn check_heartbeats(&self) {
        let now = now_ms();
        let timeout = self.heartbeat_timeout.as_millis() as u64;
        let mut t = self.tables.lock();
        let mut died = Vec::new();
        for n in t.nodes.values_mut() {
            if n.alive && now.saturating_sub(n.last_heartbeat_ms) > timeout {
                let cause = format!(
                    "no heartbeat for {} ms (the heartbeat timeout is {timeout} ms)",
                    now - n.last_heartbeat_ms
                );
                died.push(node_gone(n, cause, "ERROR"));
            }
        }
        let changed = !died.is_empty();
        for ev in died {
            t.event(ev);
        }
        drop(t);
        if changed {
            self.persist();
        }
    }

    /// Adds a job (a driver that joined, or a submission) and returns its
    /// id. A driver started by a submitted job (`job_id` set to the
    /// submission's) takes over that record instead.
    pub(crate) fn register_job(&self, mut j: proto::JobInfo) -> String {
        let mut t = self.tables.lock();
        if let Some(existing) = t.jobs.get_mut(&j.job_id) {
            if existing.submitted && existing.binary_hash.is_empty() && existing.state == "RUNNING" {
                existing.binary_hash = j.binary_hash;
                existing.driver_pid = j.driver_pid;
                existing.driver_node = j.driver_node;
                existing.env.extend(j.env);
                let id = existing.job_id.clone();
                tracing::info!(job = %id, "the submitted job's driver joined");
                drop(t);
                self.persist();
                return id;
            }
        }
        t.next_job += 1;
        j.job_id = format!("{:08x}", t.next_job);
        j.state = "RUNNING".into();
        j.start_ms = now_ms();
        tracing::info!(job = %j.job_id, entrypoint = %j.entrypoint, submitted = j.submitted, "job started");
        let id = j.job_id.clone();
        let mut ev = event(
            "INFO",
            "JOB_STATE_CHANGED",
            format!("job {id} RUNNING: {}", j.entrypoint),
        );
        ev.job_id = id.clone();
        t.event(ev);
        t.jobs.insert(id.clone(), j);
        drop(t);
        self.persist();
        id
    }

    /// Records the process group of a submitted job's entrypoint.
    pub(crate) fn set_job_pgid(&self, id: &str, pgid: u32) {
        if let Some(j) = self.tables.lock().jobs.get_mut(id) {
            j.entrypoint_pgid = pgid;
        }
        self.persist();
    }

    /// Ends a running job (its workers are then stopped on every node).
    pub(crate) fn end_job(&self, id: &str, state: &str, message: &str) -> bool {
        let mut t = self.tables.lock();
        let Some(j) = t.jobs.get_mut(id) else { return false };
        if j.state != "RUNNING" {
            return false;
        }
        j.state = state.to_string();
        j.message = message.to_string();
        j.end_ms = now_ms();
        tracing::info!(job = %j.job_id, state = %j.state, "job ended: {message}");
        let severity = if state == "FAILED" { "ERROR" } else { "INFO" };
        let mut ev = event(severity, "JOB_STATE_CHANGED", format!("job {id} {state}: {message}"));
        ev.job_id = id.to_string();
        t.event(ev);
        drop(t);
        self.persist();
        true
    }

    /// One job.
    pub(crate) fn job(&self, id: &str) -> Option<proto::JobInfo> {
        self.tables.lock().jobs.get(id).cloned()
    }

    /// Every job.
    pub(crate) fn jobs(&self) -> Vec<proto::JobInfo> {
        self.tables.lock().jobs.values().cloned().collect()
    }

    /// The head's state directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a content-addressed blob (a job binary or a working-directory
    /// package) unless present; returns its SHA-256.
    pub(crate) fn store_blob(&self, data: &[u8]) -> Result<String> {
        let hash = hex(&Sha256::digest(data));
        let path = self.blob_path(&hash)?;
        if !path.exists() {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, data)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| Error::io(format!("storing {}", path.display()), e))?;
        }
        Ok(hash)
    }

    /// Whether a blob is stored.
    pub(crate) fn has_blob(&self, hash: &str) -> bool {
        self.blob_path(hash).is_ok_and(|p| p.exists())
    }

    /// Records an actor's new state; written to disk within milliseconds
    /// (changes are batched: an actor table changes often).
    pub(crate) fn save_actor(&self, rec: proto::ActorRecord) {
        let mut t = self.tables.lock();
        let before = t.actors.get(&rec.actor_id).map(|a| a.state);
        if before != Some(rec.state) {
            let what = if rec.name.is_empty() {
                rec.class_name.clone()
            } else {
                format!("{} `{}`", rec.class_name, rec.name)
            };
            let id = crate::ids::hex(&rec.actor_id);
            let ev = if rec.state == proto::ActorState::Restarting as i32 {
                Some(event(
                    "WARNING",
                    "ACTOR_RESTARTED",
                    format!(
                        "actor {what} ({id}) is restarting (restart {}): {}",
                        rec.num_restarts, rec.death_cause
                    ),
                ))
            } else if rec.state == proto::ActorState::Dead as i32 {
                let cause = if rec.death_cause.is_empty() {
                    "killed"
                } else {
                    rec.death_cause.as_str()
                };
                Some(event(
                    "WARNING",
                    "ACTOR_DIED",
                    format!("actor {what} ({id}) died: {cause}"),
                ))
            } else {
                None
            };
            if let Some(mut ev) = ev {
                ev.actor_id = id;
                ev.job_id = rec.job_id.clone();
                t.event(ev);
            }
        }
        t.actors.insert(rec.actor_id.clone(), rec);
        drop(t);
        self.dirty.notify_one();
    }

    /// Records an event (persisted with the next write of the tables).
    pub(crate) fn add_event(&self, ev: proto::ClusterEvent) {
        self.tables.lock().event(ev);
        self.dirty.notify_one();
    }

    /// The recorded events, oldest first.
    pub(crate) fn events(&self) -> Vec<proto::ClusterEvent> {
        self.tables.lock().events.iter().cloned().collect()
    }

    /// Records a placement group's new state (batched like actors).
    pub(crate) fn save_group(&self, rec: proto::PlacementGroupRecord) {
        self.tables.lock().groups.insert(rec.id.clone(), rec);
        self.dirty.notify_one();
    }

    /// Writes the tables to disk now and returns once they are there (for
    /// changes a caller is told about only once they are durable).
    pub(crate) async fn flush(self: &Arc<Self>) {
        let g = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || g.persist()).await {
            tracing::error!("writing the head's state: {e}");
        }
    }

    /// Forgets a placement group (a removed one aged out).
    pub(crate) fn forget_group(&self, id: &str) {
        self.tables.lock().groups.remove(id);
        self.dirty.notify_one();
    }

    /// The recorded placement groups.
    pub(crate) fn groups(&self) -> Vec<proto::PlacementGroupRecord> {
        self.tables.lock().groups.values().cloned().collect()
    }

    /// The node table as listed (restored nodes not heard from yet marked
    /// reconnecting).
    pub(crate) fn nodes(&self) -> Vec<proto::NodeEntry> {
        self.tables.lock().listed_nodes()
    }

    /// Notified when the autoscaler should look again: a node's demand or
    /// idleness changed.
    pub(crate) fn autoscaler_wake(&self) -> &tokio::sync::Notify {
        &self.autoscaler_wake
    }

    /// Sets the node types the autoscaler may launch, told to every node
    /// with its next heartbeat.
    pub(crate) fn set_node_types(&self, types: Vec<proto::NodeTypeShape>) {
        *self.node_types.lock() = types;
    }

    /// A value of the key-value store (`namespace`/`key`), if set.
    pub(crate) fn kv_value(&self, namespace: &str, key: &str) -> Option<Vec<u8>> {
        let key = crate::kv::full_key(namespace, key).ok()?;
        let t = self.tables.lock();
        t.kv.0.get(&key).cloned()
    }

    /// Sets a value of the key-value store (kept in memory; written with
    /// the next change to the tables).
    pub(crate) fn set_kv_value(&self, namespace: &str, key: &str, value: Vec<u8>) {
        if let Ok(key) = crate::kv::full_key(namespace, key) {
            self.tables.lock().kv.0.insert(key, value);
        }
    }

    /// How many recorded nodes are alive and dead.
    pub(crate) fn nodes_alive_dead(&self) -> (usize, usize) {
        let t = self.tables.lock();
        let alive = t.listed_nodes().iter().filter(|n| n.alive && !n.reconnecting).count();
        (alive, t.nodes.len() - alive)
    }

    /// The recorded actor table.
    pub(crate) fn actors(&self) -> Vec<proto::ActorRecord> {
        self.tables.lock().actors.values().cloned().collect()
    }

    pub(crate) fn blob_path(&self, hash: &str) -> Result<PathBuf> {
        if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(format!("`{hash}` is not a SHA-256 hex digest")));
        }
        Ok(self.dir.join("binaries").join(hash))
    }

    /// Serves the control service on `listener` until the process ends.
    pub(crate) fn serve(self: &Arc<Self>, incoming: crate::rpc::Incoming) -> Result<()> {
        let svc = proto::control_service_server::ControlServiceServer::new(GcsService(self.clone()))
            .max_decoding_message_size(64 << 20);
        let svc = tonic::service::interceptor::InterceptedService::new(svc, crate::rpc::check_token);
        let mut server = crate::rpc::tcp_server()?;
        tokio::spawn(async move {
            if let Err(e) = server.add_service(svc).serve_with_incoming(incoming).await {
                tracing::error!("control service stopped: {e}");
            }
        });
        let g = self.clone();
        tokio::spawn(async move {
            loop {
                g.dirty.notified().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let g2 = g.clone();
                let _ = tokio::task::spawn_blocking(move || g2.persist()).await;
            }
        });
        let g = self.clone();
        let period = (self.heartbeat_timeout / 5).max(Duration::from_millis(50));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                g.check_heartbeats();
            }
        });
        Ok(())
    }
}

struct GcsService(Arc<Gcs>);

type ChunkStream = Pin<Box<dyn Stream<Item = std::result::Result<proto::BinaryChunk, Status>> + Send>>;

fn err_status(e: Error) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl ControlService for GcsService {
    async fn register_node(
        &self,
        req: Request<proto::NodeEntry>,
    ) -> std::result::Result<Response<proto::RegisterNodeReply>, Status> {
        let mut n = req.into_inner();
        if n.node_id.is_empty() || n.addr.is_empty() {
            return Err(Status::invalid_argument("a node registers with its id and address"));
        }
        n.alive = true;
        n.death_cause.clear();
        n.last_heartbeat_ms = now_ms();
        tracing::info!(node = %n.node_id, addr = %n.addr, head = n.is_head, "node registered");
        let mut t = self.0.tables.lock();
        t.unconfirmed.remove(&n.node_id);
        let mut ev = event("INFO", "NODE_JOINED", format!("node {} ({}) joined", n.node_id, n.addr));
        ev.node_id = n.node_id.clone();
        t.event(ev);
        t.nodes.insert(n.node_id.clone(), n);
        drop(t);
        self.0.autoscaler_wake.notify_one();
        self.0.persist();
        Ok(Response::new(proto::RegisterNodeReply {
            error: None,
            heartbeat_timeout_ms: self.0.heartbeat_timeout.as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<proto::HeartbeatRequest>,
    ) -> std::result::Result<Response<proto::HeartbeatReply>, Status> {
        let r = req.into_inner();
        if r.stopping {
            let mut t = self.0.tables.lock();
            let ev = t
                .nodes
                .get_mut(&r.node_id)
                .filter(|n| n.alive)
                .map(|n| node_gone(n, format!("{STOPPED_CLEANLY} (rayforge stop or SIGTERM)"), "INFO"));
            if let Some(ev) = ev {
                t.unconfirmed.remove(&r.node_id);
                t.event(ev);
                drop(t);
                self.0.persist();
            }
            return Ok(Response::new(proto::HeartbeatReply::default()));
        }
        let mut t = self.0.tables.lock();
        let known = match t.nodes.get_mut(&r.node_id) {
            Some(n) if n.alive => {
                let id = n.node_id.clone();
                n.last_heartbeat_ms = now_ms();
                n.available = r.available;
                if !r.total.is_empty() {
                    n.total = r.total;
                }
                n.pending_leases = r.pending_leases;
                n.pending_demands = r.pending_demands;
                if n.demands != r.demands || (n.idle_since_ms == 0) != (r.idle_since_ms == 0) {
                    self.0.autoscaler_wake.notify_one();
                }
                n.demands = r.demands;
                n.idle_since_ms = r.idle_since_ms;
                n.num_workers = r.num_workers;
                t.unconfirmed.remove(&id);
                true
            }
            // A beat sent before the node said it stops, arriving after:
            // the node is gone, not asked to come back.
            Some(n) => n.death_cause.starts_with(STOPPED_CLEANLY),
            None => false,
        };
        let recent = now_ms().saturating_sub(600_000);
        Ok(Response::new(proto::HeartbeatReply {
            reregister: !known,
            nodes: t.listed_nodes().into_iter().filter(|n| n.alive).collect(),
            finished_jobs: t
                .jobs
                .values()
                .filter(|j| j.state != "RUNNING" && j.end_ms >= recent)
                .map(|j| j.job_id.clone())
                .collect(),
            // A submitted job's supervisor reports its end instead.
            local_drivers: t
                .jobs
                .values()
                .filter(|j| j.state == "RUNNING" && !j.submitted && j.driver_node == r.node_id && j.driver_pid > 0)
                .map(|j| proto::LocalDriver {
                    job_id: j.job_id.clone(),
                    pid: j.driver_pid,
                })
                .collect(),
            node_types: self.0.node_types.lock().clone(),
        }))
    }

    async fn list_nodes(
        &self,
        _req: Request<proto::ListNodesRequest>,
    ) -> std::result::Result<Response<proto::ListNodesReply>, Status> {
        let t = self.0.tables.lock();
        Ok(Response::new(proto::ListNodesReply {
            nodes: t.listed_nodes(),
        }))
    }

    async fn register_job(
        &self,
        req: Request<proto::JobInfo>,
    ) -> std::result::Result<Response<proto::RegisterJobReply>, Status> {
        let j = req.into_inner();
        let path = self.0.blob_path(&j.binary_hash).map_err(err_status)?;
        if !path.exists() {
            return Err(Status::failed_precondition(format!(
                "binary {} was not uploaded before registering the job",
                j.binary_hash
            )));
        }
        let id = self.0.register_job(j);
        Ok(Response::new(proto::RegisterJobReply {
            error: None,
            job_id: id,
        }))
    }

    async fn get_job(
        &self,
        req: Request<proto::GetJobRequest>,
    ) -> std::result::Result<Response<proto::GetJobReply>, Status> {
        let id = req.into_inner().job_id;
        let t = self.0.tables.lock();
        Ok(Response::new(match t.jobs.get(&id) {
            Some(j) => proto::GetJobReply {
                error: None,
                job: Some(j.clone()),
            },
            None => proto::GetJobReply {
                error: Some(Error::NotFound(format!("no job `{id}`")).to_proto()),
                job: None,
            },
        }))
    }

    async fn finish_job(
        &self,
        req: Request<proto::FinishJobRequest>,
    ) -> std::result::Result<Response<proto::FinishJobReply>, Status> {
        let r = req.into_inner();
        let submitted = self
            .0
            .job(&r.job_id)
            .ok_or_else(|| Status::not_found(format!("no job `{}`", r.job_id)))?
            .submitted;
        // A submitted job ends when its entrypoint exits, not its driver.
        if !submitted {
            self.0.end_job(&r.job_id, &r.state, &r.message);
        }
        Ok(Response::new(proto::FinishJobReply {}))
    }

    async fn list_jobs(
        &self,
        _req: Request<proto::ListJobsRequest>,
    ) -> std::result::Result<Response<proto::ListJobsReply>, Status> {
        let t = self.0.tables.lock();
        Ok(Response::new(proto::ListJobsReply {
            jobs: t.jobs.values().cloned().collect(),
        }))
    }

    async fn has_binary(
        &self,
        req: Request<proto::HasBinaryRequest>,
    ) -> std::result::Result<Response<proto::HasBinaryReply>, Status> {
        let path = self.0.blob_path(&req.into_inner().hash).map_err(err_status)?;
        Ok(Response::new(proto::HasBinaryReply { present: path.exists() }))
    }

    async fn put_binary(
        &self,
        req: Request<Streaming<proto::BinaryChunk>>,
    ) -> std::result::Result<Response<proto::PutBinaryReply>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let path = self.0.blob_path(&first.hash).map_err(err_status)?;
        let tmp = path.with_extension(format!("{}.tmp", crate::ids::ObjectId::for_put().hex()));
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| Status::internal(format!("creating {}: {e}", tmp.display())))?;
        let mut h = Sha256::new();
        let mut chunk = first.data;
        loop {
            use tokio::io::AsyncWriteExt;
            h.update(&chunk);
            f.write_all(&chunk)
                .await
                .map_err(|e| Status::internal(format!("writing {}: {e}", tmp.display())))?;
            match inbound.message().await? {
                Some(c) => chunk = c.data,
                None => break,
            }
        }
        drop(f);
        let got = hex(&h.finalize());
        if got != first.hash {
            let _ = std::fs::remove_file(&tmp);
            return Ok(Response::new(proto::PutBinaryReply {
                error: Some(
                    Error::InvalidArgument(format!(
                        "uploaded binary hashes to {got}, not the announced {}",
                        first.hash
                    ))
                    .to_proto(),
                ),
            }));
        }
        std::fs::rename(&tmp, &path).map_err(|e| Status::internal(format!("storing {}: {e}", path.display())))?;
        tracing::info!(hash = %first.hash, "job binary stored");
        Ok(Response::new(proto::PutBinaryReply { error: None }))
    }

    type GetBinaryStream = ChunkStream;

    async fn get_binary(
        &self,
        req: Request<proto::HasBinaryRequest>,
    ) -> std::result::Result<Response<ChunkStream>, Status> {
        let path = self.0.blob_path(&req.into_inner().hash).map_err(err_status)?;
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::not_found(format!("binary {}: {e}", path.display())))?;
        let s = futures::stream::unfold(Some(f), |f| async move {
            let mut f = f?;
            let mut buf = vec![0u8; CHUNK];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((
                        Ok(proto::BinaryChunk {
                            hash: String::new(),
                            data: buf,
                        }),
                        Some(f),
                    ))
                }
                Err(e) => Some((Err(Status::internal(e.to_string())), None)),
            }
        });
        Ok(Response::new(s.boxed()))
    }

    async fn kv_put(
        &self,
        req: Request<proto::KvPutRequest>,
    ) -> std::result::Result<Response<proto::KvPutReply>, Status> {
        let reply = self.0.tables.lock().kv.put(req.into_inner());
        if reply.written {
            self.0.persist();
        }
        Ok(Response::new(reply))
    }

    async fn kv_get(
        &self,
        req: Request<proto::KvGetRequest>,
    ) -> std::result::Result<Response<proto::KvGetReply>, Status> {
        Ok(Response::new(self.0.tables.lock().kv.get(&req.into_inner())))
    }

    async fn kv_delete(
        &self,
        req: Request<proto::KvGetRequest>,
    ) -> std::result::Result<Response<proto::KvDeleteReply>, Status> {
        let reply = self.0.tables.lock().kv.delete(&req.into_inner());
        if reply.deleted {
            self.0.persist();
        }
        Ok(Response::new(reply))
    }

    async fn kv_list(
        &self,
        req: Request<proto::KvListRequest>,
    ) -> std::result::Result<Response<proto::KvListReply>, Status> {
        Ok(Response::new(self.0.tables.lock().kv.list(&req.into_inner())))
    }

    async fn list_placement_groups(
        &self,
        _req: Request<proto::ListPlacementGroupsRequest>,
    ) -> std::result::Result<Response<proto::ListPlacementGroupsReply>, Status> {
        Ok(Response::new(proto::ListPlacementGroupsReply {
            groups: self.0.groups(),
        }))
    }

    async fn list_actors(
        &self,
        _req: Request<proto::ListActorsRequest>,
    ) -> std::result::Result<Response<proto::ListActorsReply>, Status> {
        Ok(Response::new(proto::ListActorsReply {
            actors: self.0.actors(),
        }))
    }

    async fn list_events(
        &self,
        _req: Request<proto::ListEventsRequest>,
    ) -> std::result::Result<Response<proto::ListEventsReply>, Status> {
        Ok(Response::new(proto::ListEventsReply {
            events: self.0.events(),
        }))
    }

    async fn report_event(
        &self,
        req: Request<proto::ClusterEvent>,
    ) -> std::result::Result<Response<proto::ReportEventReply>, Status> {
        let mut ev = req.into_inner();
        if ev.time_ms == 0 {
            ev.time_ms = now_ms();
        }
        self.0.add_event(ev);
        Ok(Response::new(proto::ReportEventReply {}))
    }

    async fn storage_put(
        &self,
        req: Request<Streaming<proto::StorageChunk>>,
    ) -> std::result::Result<Response<proto::StoragePutReply>, Status> {
        Ok(Response::new(self.0.files.serve_put(req.into_inner()).await))
    }

    type StorageGetStream = crate::storage::file_store::StorageChunkStream;

    async fn storage_get(
        &self,
        req: Request<proto::StorageGetRequest>,
    ) -> std::result::Result<Response<Self::StorageGetStream>, Status> {
        Ok(Response::new(self.0.files.get(&req.into_inner().key).await?))
    }

    async fn storage_list(
        &self,
        req: Request<proto::StorageListRequest>,
    ) -> std::result::Result<Response<proto::StorageListReply>, Status> {
        Ok(Response::new(
            self.0.files.clone().serve_list(req.into_inner().prefix).await,
        ))
    }

    async fn storage_delete(
        &self,
        req: Request<proto::StorageListRequest>,
    ) -> std::result::Result<Response<proto::StorageDeleteReply>, Status> {
        Ok(Response::new(
            self.0.files.clone().serve_delete(req.into_inner().prefix).await,
        ))
    }
}

/// A client of the head's control service.
pub(crate) fn client(addr: &str) -> Result<proto::control_service_client::ControlServiceClient<crate::rpc::Chan>> {
    Ok(
        proto::control_service_client::ControlServiceClient::new(crate::rpc::channel(addr)?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
    )
}

/// Uploads a binary to the head unless it already has it; returns its hash.
pub(crate) async fn upload_binary(
    head: &mut proto::control_service_client::ControlServiceClient<crate::rpc::Chan>,
    path: &Path,
) -> Result<String> {
    let p = path.to_path_buf();
    let hash = tokio::task::spawn_blocking(move || file_sha256(&p))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    let present = head
        .has_binary(proto::HasBinaryRequest { hash: hash.clone() })
        .await
        .map_err(|s| Error::rpc("asking the head for the job's binary", s))?
        .into_inner()
        .present;
    if present {
        return Ok(hash);
    }
    let data = tokio::fs::read(path)
        .await
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut chunks: Vec<proto::BinaryChunk> = data
        .chunks(CHUNK)
        .map(|c| proto::BinaryChunk {
            hash: String::new(),
            data: c.to_vec(),
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(proto::BinaryChunk::default());
    }
    chunks[0].hash = hash.clone();
    let r = head
        .put_binary(futures::stream::iter(chunks))
        .await
        .map_err(|s| Error::rpc("uploading the job's binary to the head", s))?
        .into_inner();
    if let Some(e) = r.error {
        return Err(Error::from_proto(&e));
    }
    Ok(hash)
}
