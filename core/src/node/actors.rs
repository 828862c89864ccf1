//! The actor table and the actor manager.
//!
//! One node keeps the table and manages every actor: the embedded node, or
//! in a cluster the head's node (other nodes forward actor calls to it, and
//! the head's control service persists every change, so a restarted head
//! gets its actors back). An actor's lifecycle is an explicit state machine:
//! `PendingCreation -> Alive <-> Restarting -> Dead`. The manager places an
//! actor on a node with room for it (spilling to another node as tasks do),
//! leases a dedicated worker there and runs the constructor. A process
//! death, or its node's, moves an alive actor to `Restarting` while its
//! restart budget lasts (the constructor runs again with the original
//! arguments, possibly on another node), else to `Dead` with the cause.
//! `kill` moves it straight to `Dead`; so does the end of its job unless it
//! is detached. Callers long-poll for changes through a per-actor version
//! counter.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tonic::Status;

use super::placement::GroupState;
use crate::error::{Error, Result};
use crate::ids::ActorId;
use crate::proto::{self, node_service_client::NodeServiceClient};
use crate::rpc::Chan;

use super::scheduler::{fits, infeasibility, LeaseRequest, Resources};
use super::NodeDaemon;

/// How long calls to the actor manager keep trying while the head restarts.
const MANAGER_PATIENCE: Duration = Duration::from_secs(60);

/// States of an actor (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActorState {
    PendingCreation,
    Alive,
    Restarting,
    Dead,
}

impl ActorState {
    pub(crate) fn to_proto(self) -> proto::ActorState {
        match self {
            ActorState::PendingCreation => proto::ActorState::PendingCreation,
            ActorState::Alive => proto::ActorState::Alive,
            ActorState::Restarting => proto::ActorState::Restarting,
            ActorState::Dead => proto::ActorState::Dead,
        }
    }

    fn from_proto(s: i32) -> ActorState {
        match proto::ActorState::try_from(s) {
            Ok(proto::ActorState::Alive) => ActorState::Alive,
            Ok(proto::ActorState::Restarting) => ActorState::Restarting,
            Ok(proto::ActorState::Dead) => ActorState::Dead,
            _ => ActorState::PendingCreation,
        }
    }
}

pub(crate) struct ActorEntry {
    pub(crate) class_name: String,
    /// The job whose program runs the actor ("" = the node's own).
    pub(crate) job: String,
    pub(crate) name: String,
    /// Outlives its job (only meaningful in a cluster: in the embedded
    /// cluster every actor ends with the driver).
    pub(crate) detached: bool,
    pub(crate) state: ActorState,
    pub(crate) addr: String,
    /// TCP address of the node hosting the actor's process ("" in the
    /// embedded cluster).
    pub(crate) node_addr: String,
    pub(crate) incarnation: u64,
    pub(crate) worker_id: Option<u64>,
    pub(crate) lease_id: Option<u64>,
    pub(crate) death_cause: String,
    pub(crate) num_restarts: u32,
    pub(crate) max_restarts: i32,
    pub(crate) max_task_retries: i32,
    pub(crate) creation: proto::TaskSpec,
    pub(crate) resources: Resources,
    /// Where it may be placed (also on restarts).
    pub(crate) strategy: Option<proto::SchedulingStrategy>,
    pub(crate) owner_id: u64,
    pub(crate) version: watch::Sender<u64>,
}

/// Where an actor's process runs: its worker, its lease and its node's
/// address ("" here).
type ActorPlace = (Option<u64>, Option<u64>, String);

impl ActorEntry {
    pub(crate) fn display(&self) -> String {
        if self.name.is_empty() {
            self.class_name.clone()
        } else {
            format!("{} ({})", self.name, self.class_name)
        }
    }

    pub(crate) fn info(&self, id: &ActorId) -> proto::GetActorInfoReply {
        proto::GetActorInfoReply {
            error: None,
            actor_id: id.0.to_vec(),
            state: self.state.to_proto() as i32,
            addr: self.addr.clone(),
            incarnation: self.incarnation,
            death_cause: self.death_cause.clone(),
            num_restarts: self.num_restarts,
            max_restarts: self.max_restarts,
            class_name: self.display(),
            max_task_retries: self.max_task_retries,
        }
    }

    /// Whether the restart budget allows another restart.
    pub(crate) fn may_restart(&self) -> bool {
        self.max_restarts < 0 || (self.num_restarts as i64) < self.max_restarts as i64
    }

    /// The persisted form.
    pub(crate) fn to_record(&self, id: &ActorId) -> proto::ActorRecord {
        proto::ActorRecord {
            actor_id: id.0.to_vec(),
            class_name: self.class_name.clone(),
            job_id: self.job.clone(),
            name: self.name.clone(),
            detached: self.detached,
            state: self.state.to_proto() as i32,
            addr: self.addr.clone(),
            node_addr: self.node_addr.clone(),
            incarnation: self.incarnation,
            worker_id: self.worker_id.unwrap_or(0),
            lease_id: self.lease_id.unwrap_or(0),
            death_cause: self.death_cause.clone(),
            num_restarts: self.num_restarts,
            max_restarts: self.max_restarts,
            max_task_retries: self.max_task_retries,
            creation: Some(self.creation.clone()),
            resources: self.resources.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            owner_id: self.owner_id,
            strategy: self.strategy.clone(),
        }
    }

    fn from_record(r: proto::ActorRecord) -> ActorEntry {
        ActorEntry {
            class_name: r.class_name,
            job: r.job_id,
            name: r.name,
            detached: r.detached,
            state: ActorState::from_proto(r.state),
            addr: r.addr,
            node_addr: r.node_addr,
            incarnation: r.incarnation,
            worker_id: (r.worker_id != 0).then_some(r.worker_id),
            lease_id: (r.lease_id != 0).then_some(r.lease_id),
            death_cause: r.death_cause,
            num_restarts: r.num_restarts,
            max_restarts: r.max_restarts,
            max_task_retries: r.max_task_retries,
            creation: r.creation.unwrap_or_default(),
            resources: r.resources.into_iter().collect(),
            owner_id: r.owner_id,
            strategy: r.strategy,
            version: watch::channel(0).0,
        }
    }
}

#[derive(Default)]
pub(crate) struct ActorTable {
    /// The actors this node manages (empty on nodes that forward).
    pub(crate) actors: HashMap<ActorId, ActorEntry>,
    pub(crate) names: HashMap<String, ActorId>,
    /// Which actor a worker process of this node hosts.
    pub(crate) by_worker: HashMap<u64, ActorId>,
    /// Actors being placed, and the node chosen (counts as hosting them).
    pub(crate) placing: HashMap<ActorId, String>,
    /// Where changes are persisted (the head's control service).
    pub(crate) record: Option<Arc<crate::gcs::Gcs>>,
}

impl ActorTable {
    /// Publishes a change of an actor: wakes its long-polls and persists it.
    pub(crate) fn changed(&self, id: &ActorId) {
        if let Some(a) = self.actors.get(id) {
            a.version.send_modify(|v| *v += 1);
            if let Some(g) = &self.record {
                g.save_actor(a.to_record(id));
            }
        }
    }

    /// Marks an actor dead with a cause and releases its name.
    pub(crate) fn mark_dead(&mut self, id: &ActorId, cause: String) {
        if let Some(a) = self.actors.get_mut(id) {
            a.state = ActorState::Dead;
            a.death_cause = cause;
            a.addr.clear();
            a.lease_id = None;
            if let Some(w) = a.worker_id.take() {
                self.by_worker.remove(&w);
            }
            if !a.name.is_empty() && self.names.get(&a.name) == Some(id) {
                self.names.remove(&a.name);
            }
            self.changed(id);
        }
    }

    /// Loads the persisted table (a restarted head).
    pub(crate) fn restore(&mut self, records: Vec<proto::ActorRecord>) {
        for r in records {
            let Some(id) = ActorId::from_bytes(&r.actor_id) else {
                continue;
            };
            let a = ActorEntry::from_record(r);
            if a.state != ActorState::Dead && !a.name.is_empty() {
                self.names.insert(a.name.clone(), id);
            }
            self.actors.insert(id, a);
        }
    }
}

/// Where an actor's process was placed.
struct Placement {
    lease_id: u64,
    worker_id: u64,
    worker_addr: String,
    gpu_ids: Vec<u32>,
    /// The hosting node's TCP address ("" or ours: this node).
    node_addr: String,
}

enum CreationError {
    UserError(String),
    Transport(String),
}

async fn push_creation(addr: &str, spec: proto::TaskSpec) -> std::result::Result<(), CreationError> {
    let ch = crate::rpc::connect(addr)
        .await
        .map_err(|e| CreationError::Transport(e.to_string()))?;
    let mut client = crate::rpc::worker_client(ch);
    let out = tokio_stream::once(proto::PushTaskRequest {
        spec: Some(spec),
        skip_task_id: Vec::new(),
    });
    let mut replies = client
        .push_tasks(out)
        .await
        .map_err(|e| CreationError::Transport(e.to_string()))?
        .into_inner();
    match replies.message().await {
        Ok(Some(r)) => match r.error {
            Some(e) => Err(CreationError::UserError(Error::from_proto(&e).to_string())),
            None => Ok(()),
        },
        Ok(None) => Err(CreationError::Transport("stream closed".into())),
        Err(e) => Err(CreationError::Transport(e.to_string())),
    }
}

/// Whether a failed call may succeed against a restarted head.
fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

impl NodeDaemon {
    /// Whether this node keeps the actor table: the embedded node, or the
    /// head's node in a cluster.
    pub(crate) fn is_actor_manager(&self) -> bool {
        self.link().is_none_or(|l| l.role.is_head)
    }

    /// Runs `call` against the actor manager (the head's node), retrying
    /// while the head restarts.
    pub(crate) async fn on_manager<T, F, Fut>(&self, what: &str, call: F) -> Result<T>
    where
        F: Fn(NodeServiceClient<Chan>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Status>>,
    {
        let link = self
            .link()
            .ok_or_else(|| Error::Internal("forwarding actor calls outside a cluster".into()))?;
        let deadline = tokio::time::Instant::now() + MANAGER_PATIENCE;
        loop {
            let failure = match link.head_node_addr() {
                Some(addr) => match call(link.node_client(&addr)?).await {
                    Ok(r) => return Ok(r),
                    Err(s) if transient(&s) => s.message().to_string(),
                    Err(s) => return Err(Error::rpc(what, s)),
                },
                None => "the head's node is not in the cluster view".to_string(),
            };
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Io {
                    context: what.to_string(),
                    message: format!(
                        "the actor manager on the head's node stayed unreachable for {}s: {failure}",
                        MANAGER_PATIENCE.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Why no node of the cluster could ever host `res`, if none can.
    fn infeasible_everywhere(&self, res: &Resources) -> Option<String> {
        let local = infeasibility(&self.state.sched.lock().total, res)?;
        if let Some((id, state)) = self.state.groups.lock().state_for(res) {
            // Feasible once its group is placed (the view may lag behind).
            return match state {
                Some(GroupState::Pending | GroupState::Created) => None,
                _ => Some(format!("its placement group {id} does not exist or was removed")),
            };
        }
        match self.link() {
            // A node that fits it exists, or the autoscaler may launch one.
            Some(l) if l.any_node_feasible(res) || l.may_grow_for(res) => None,
            _ => Some(local),
        }
    }

    /// `CreateActor`: registers the actor and starts placing it.
    pub(crate) async fn create_actor(&self, req: proto::CreateActorRequest) -> Result<()> {
        if !self.is_actor_manager() {
            let r = self
                .on_manager("creating an actor", |mut c| {
                    let req = req.clone();
                    async move { c.create_actor(req).await }
                })
                .await?
                .into_inner();
            return r.error.map_or(Ok(()), |e| Err(Error::from_proto(&e)));
        }
        let spec = req
            .creation
            .ok_or_else(|| Error::InvalidArgument("actor creation without a spec".into()))?;
        let id = ActorId::from_bytes(&spec.actor_id).ok_or_else(|| Error::InvalidArgument("bad actor id".into()))?;
        let resources: Resources = req.resources.into_iter().collect();
        if let Some(why) = self.infeasible_everywhere(&resources) {
            return Err(Error::Infeasible {
                function: spec.display_name.clone(),
                detail: why,
            });
        }
        {
            let mut t = self.state.actors.lock();
            if t.actors.contains_key(&id) {
                // A retried forward of a creation that already arrived.
                return Ok(());
            }
            if !req.name.is_empty() {
                if t.names.contains_key(&req.name) {
                    return Err(Error::InvalidArgument(format!(
                        "an actor named `{}` already exists; pick another name or use get_actor",
                        req.name
                    )));
                }
                t.names.insert(req.name.clone(), id);
            }
            t.actors.insert(
                id,
                ActorEntry {
                    class_name: spec.display_name.clone(),
                    job: req.job_id,
                    name: req.name,
                    detached: req.detached,
                    state: ActorState::PendingCreation,
                    addr: String::new(),
                    node_addr: String::new(),
                    incarnation: 0,
                    worker_id: None,
                    lease_id: None,
                    death_cause: String::new(),
                    num_restarts: 0,
                    max_restarts: req.max_restarts,
                    max_task_retries: req.max_task_retries,
                    creation: spec,
                    resources,
                    strategy: req.strategy,
                    owner_id: req.owner_id,
                    version: watch::channel(0).0,
                },
            );
            t.changed(&id);
        }
        self.schedule_actor(id);
        Ok(())
    }

    /// `GetActorInfo`: an actor's state, optionally long-polling for its
    /// next incarnation or death.
    pub(crate) async fn actor_info(&self, req: proto::GetActorInfoRequest) -> Result<proto::GetActorInfoReply> {
        if !self.is_actor_manager() {
            return self
                .on_manager("looking up an actor", |mut c| {
                    let req = req.clone();
                    async move { c.get_actor_info(req).await }
                })
                .await
                .map(|r| r.into_inner());
        }
        let id = if !req.name.is_empty() {
            let t = self.state.actors.lock();
            *t.names
                .get(&req.name)
                .ok_or_else(|| Error::NotFound(format!("no live actor is named `{}`", req.name)))?
        } else {
            ActorId::from_bytes(&req.actor_id).ok_or_else(|| Error::InvalidArgument("bad actor id".into()))?
        };
        loop {
            let mut rx = {
                let t = self.state.actors.lock();
                let a = t
                    .actors
                    .get(&id)
                    .ok_or_else(|| Error::NotFound(format!("actor {id}")))?;
                let done = !req.wait_alive
                    || a.state == ActorState::Dead
                    || (a.state == ActorState::Alive && a.incarnation > req.after_incarnation);
                if done {
                    return Ok(a.info(&id));
                }
                a.version.subscribe()
            };
            if rx.changed().await.is_err() {
                return Err(Error::NotFound(format!("actor {id}")));
            }
        }
    }

    /// `KillActor`: stops the actor's process; without `no_restart` it is
    /// restarted like after a crash.
    pub(crate) async fn kill_actor(&self, req: proto::KillActorRequest) -> Result<()> {
        if !self.is_actor_manager() {
            let r = self
                .on_manager("killing an actor", |mut c| {
                    let req = req.clone();
                    async move { c.kill_actor(req).await }
                })
                .await?
                .into_inner();
            return r.error.map_or(Ok(()), |e| Err(Error::from_proto(&e)));
        }
        let id = ActorId::from_bytes(&req.actor_id).ok_or_else(|| Error::InvalidArgument("bad actor id".into()))?;
        let place = {
            let mut t = self.state.actors.lock();
            let a = t
                .actors
                .get_mut(&id)
                .ok_or_else(|| Error::NotFound(format!("actor {id}")))?;
            if a.state == ActorState::Dead {
                // Already ended: keep its first death cause.
                return Ok(());
            }
            let place = (a.worker_id, a.lease_id, a.node_addr.clone());
            if req.no_restart {
                a.max_restarts = a.num_restarts as i32;
                let cause = if req.cause.is_empty() {
                    "it was killed with rayforge::kill".to_string()
                } else {
                    req.cause.clone()
                };
                t.mark_dead(&id, cause);
            }
            place
        };
        let cause = if req.cause.is_empty() {
            "killed with rayforge::kill"
        } else {
            req.cause.as_str()
        };
        self.stop_actor_process(place, cause);
        Ok(())
    }

    /// Ends an actor's process wherever it runs.
    fn stop_actor_process(&self, (worker, lease, node_addr): ActorPlace, cause: &str) {
        if node_addr.is_empty() || node_addr == self.state.tcp_addr {
            let Some(w) = worker else { return };
            let pid = {
                let mut s = self.state.sched.lock();
                s.workers.get_mut(&w).map(|info| {
                    info.exit_cause = Some(cause.to_string());
                    info.pid
                })
            };
            if let Some(pid) = pid {
                super::kill_pid(pid);
            }
            return;
        }
        let (Some(lease_id), Some(link)) = (lease, self.link()) else {
            return;
        };
        let Ok(mut c) = link.node_client(&node_addr) else {
            return;
        };
        let cause = cause.to_string();
        self.spawn(async move {
            let r = c
                .return_worker(proto::ReturnWorkerRequest {
                    lease_id,
                    disconnect: true,
                    cause,
                })
                .await;
            if let Err(s) = r {
                tracing::debug!(node = %node_addr, "stopping an actor's process: {}", s.message());
            }
        });
    }

    /// A worker of this node that hosted an actor died: tell the manager.
    pub(crate) fn report_actor_death(&self, id: ActorId, worker_id: u64, cause: String) {
        if self.is_actor_manager() {
            self.actor_process_died(id, Some(worker_id), cause);
            return;
        }
        let d = self.clone();
        self.spawn(async move {
            let req = proto::ActorWorkerDiedRequest {
                actor_id: id.0.to_vec(),
                worker_id,
                cause,
                owner_died: false,
            };
            let r = d
                .on_manager("reporting an actor's death", |mut c| {
                    let req = req.clone();
                    async move { c.actor_worker_died(req).await }
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(actor = %id, "{e}");
            }
        });
    }

    /// A worker of this node died: the actors it created end with it (as
    /// in Ray, an actor shares the fate of its owner unless detached).
    pub(crate) fn report_owner_death(&self, worker_id: u64, cause: &str) {
        if self.is_actor_manager() {
            self.owner_died(worker_id, cause);
            return;
        }
        let d = self.clone();
        let req = proto::ActorWorkerDiedRequest {
            actor_id: Vec::new(),
            worker_id,
            cause: cause.to_string(),
            owner_died: true,
        };
        self.spawn(async move {
            let r = d
                .on_manager("reporting a worker's death", |mut c| {
                    let req = req.clone();
                    async move { c.actor_worker_died(req).await }
                })
                .await;
            if let Err(e) = r {
                tracing::debug!(worker_id, "{e}");
            }
        });
    }

    /// Ends the non-detached actors created by worker `owner`, which died.
    pub(crate) fn owner_died(&self, owner: u64, cause: &str) {
        let doomed: Vec<(ActorId, ActorPlace)> = {
            let mut t = self.state.actors.lock();
            let ids: Vec<ActorId> = t
                .actors
                .iter()
                .filter(|(_, a)| a.owner_id == owner && !a.detached && a.state != ActorState::Dead)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| {
                    let a = t.actors.get_mut(&id)?;
                    a.max_restarts = a.num_restarts as i32;
                    let place = (a.worker_id, a.lease_id, a.node_addr.clone());
                    t.mark_dead(&id, format!("the process that created it died ({cause})"));
                    Some((id, place))
                })
                .collect()
        };
        for (id, place) in doomed {
            tracing::info!(actor = %id, owner, "ending an actor whose creator died");
            self.stop_actor_process(place, "the process that created it died");
        }
    }

    /// The process hosting an actor died (`worker`: which one, when known;
    /// reports about an earlier incarnation's process are ignored).
    pub(crate) fn actor_process_died(&self, id: ActorId, worker: Option<u64>, cause: String) {
        let restart = {
            let mut t = self.state.actors.lock();
            let Some(a) = t.actors.get_mut(&id) else { return };
            if a.state == ActorState::Dead || (worker.is_some() && a.worker_id != worker) {
                return;
            }
            let w = a.worker_id.take();
            a.lease_id = None;
            a.addr.clear();
            a.node_addr.clear();
            let restart = if a.may_restart() {
                a.num_restarts += 1;
                a.state = ActorState::Restarting;
                tracing::info!(actor = %a.display(), restart = a.num_restarts, "restarting actor: {cause}");
                None
            } else {
                Some(format!(
                    "its process died ({cause}); it was restarted {} of {} times",
                    a.num_restarts,
                    if a.max_restarts < 0 {
                        "unlimited".to_string()
                    } else {
                        a.max_restarts.to_string()
                    }
                ))
            };
            if let Some(w) = w {
                t.by_worker.remove(&w);
            }
            match restart {
                None => {
                    t.changed(&id);
                    true
                }
                Some(msg) => {
                    t.mark_dead(&id, msg);
                    false
                }
            }
        };
        if restart {
            self.schedule_actor(id);
        }
    }

    /// Leases a worker for the actor on this node.
    async fn place_locally(&self, id: ActorId, resources: Resources, name: String, job: String) -> Result<Placement> {
        let (tx, rx) = oneshot::channel();
        let acts = self.state.sched.lock().request(LeaseRequest {
            resources,
            retriable: false,
            for_actor: Some(id),
            display_name: name,
            job,
            requester: 0,
            reply: tx,
            moved: None,
            queued_at: Instant::now(),
        });
        self.apply(acts);
        let g = rx
            .await
            .map_err(|_| Error::Runtime("the node is shutting down".into()))??;
        self.state.actors.lock().by_worker.insert(g.worker_id, id);
        Ok(Placement {
            lease_id: g.lease_id,
            worker_id: g.worker_id,
            worker_addr: g.worker_addr,
            gpu_ids: g.gpu_ids,
            node_addr: self.state.tcp_addr.clone(),
        })
    }

    /// Leases a worker for the actor on another node. `Ok(None)`: that node
    /// could not be reached (or left the cluster), or, when `movable`, it
    /// queued the request while another node has room for it now (one the
    /// autoscaler launched, say); place again.
    async fn place_remotely(
        &self,
        addr: &str,
        id: ActorId,
        resources: Resources,
        name: String,
        job: String,
        movable: bool,
    ) -> Result<Option<Placement>> {
        let link = self.link().ok_or_else(|| Error::Internal("no cluster".into()))?;
        let mut c = link.node_client(addr)?;
        let room_elsewhere = async {
            if !movable {
                return std::future::pending().await;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let elsewhere = link
                    .free_resources()
                    .into_iter()
                    .any(|(a, free)| a != addr && a != self.state.tcp_addr && fits(&free, &resources));
                if elsewhere {
                    return;
                }
            }
        };
        let req = proto::LeaseRequest {
            resources: resources.clone().into_iter().collect(),
            retriable: false,
            requester_id: 0,
            display_name: name,
            job_id: job,
            no_spillback: true,
            for_actor: id.0.to_vec(),
            // Already placed by the manager.
            strategy: None,
        };
        let reply = tokio::select! {
            r = c.request_worker_lease(req) => r,
            _ = link.node_gone(addr) => return Ok(None),
            // Dropping the call withdraws the queued request there.
            _ = room_elsewhere => {
                tracing::debug!(node = addr, "an actor's queued lease goes to a node with room");
                return Ok(None);
            }
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(s) => {
                tracing::debug!(node = addr, "placing an actor: {}", s.message());
                return Ok(None);
            }
        };
        match reply.result {
            Some(proto::lease_reply::Result::Lease(l)) => Ok(Some(Placement {
                lease_id: l.lease_id,
                worker_id: l.worker_id,
                worker_addr: l.worker_addr,
                gpu_ids: l.gpu_ids,
                node_addr: addr.to_string(),
            })),
            Some(proto::lease_reply::Result::Error(e)) => Err(Error::from_proto(&e)),
            _ => Ok(None),
        }
    }

    /// The node an actor should go to (`None`: this one). Actors spread:
    /// among the nodes with room for it now, the one hosting the fewest
    /// actors (this node on a tie); when none has room, wherever a task
    /// with that demand would spill to.
    fn actor_target(&self, res: &Resources) -> Option<String> {
        let link = self.link()?;
        // In a placement group: the node of its bundle, whatever the view
        // (which lags the reservation by a heartbeat) says.
        let group_nodes = self.state.groups.lock().nodes_for(res);
        if !group_nodes.is_empty() {
            let own = &self.state.tcp_addr;
            if group_nodes.iter().any(|a| a.is_empty() || a == own) && fits(&self.state.sched.lock().available, res) {
                return None;
            }
            let free: HashMap<String, Resources> = link.free_resources().into_iter().collect();
            let pick = group_nodes
                .iter()
                .find(|a| free.get(*a).is_some_and(|f| fits(f, res)))
                .unwrap_or(&group_nodes[0]);
            return (pick != own && !pick.is_empty()).then(|| pick.clone());
        }
        let mut hosted: HashMap<String, usize> = HashMap::new();
        {
            let t = self.state.actors.lock();
            for a in t.actors.values() {
                if a.state != ActorState::Dead && !a.node_addr.is_empty() {
                    *hosted.entry(a.node_addr.clone()).or_default() += 1;
                }
            }
            for addr in t.placing.values() {
                *hosted.entry(addr.clone()).or_default() += 1;
            }
        }
        let own = self.state.tcp_addr.clone();
        let mut best: Option<(usize, bool, String)> = None;
        if fits(&self.state.sched.lock().available, res) {
            best = Some((hosted.get(&own).copied().unwrap_or(0), false, own.clone()));
        }
        for (addr, free) in link.free_resources() {
            if addr == own || !fits(&free, res) {
                continue;
            }
            let key = (hosted.get(&addr).copied().unwrap_or(0), true, addr);
            if best.as_ref().is_none_or(|b| (key.0, key.1) < (b.0, b.1)) {
                best = Some(key);
            }
        }
        match best {
            Some((_, _, addr)) if addr == own => None,
            Some((_, _, addr)) => Some(addr),
            None => self.spillback_target(res),
        }
    }

    /// Places an actor on a node, leases a dedicated worker there and runs
    /// its constructor.
    pub(crate) fn schedule_actor(&self, id: ActorId) {
        let d = self.clone();
        self.spawn(async move {
            if let Some(link) = d.link() {
                // A head that just started has no view yet.
                link.wait_for_view(Duration::from_secs(5)).await;
            }
            // Counted as demand for the autoscaler while no node fits it.
            let link = d.link();
            let mut growth_wait = None;
            let place = loop {
                let (resources, name, job, strategy) = {
                    let t = d.state.actors.lock();
                    let Some(a) = t.actors.get(&id) else { return };
                    if a.state == ActorState::Dead {
                        return;
                    }
                    (a.resources.clone(), a.display(), a.job.clone(), a.strategy.clone())
                };
                // In a placement group: wait until it is placed.
                let group_state = d.state.groups.lock().state_for(&resources);
                if let Some((group, state)) = group_state {
                    match state {
                        Some(GroupState::Created) => {}
                        Some(GroupState::Pending) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        _ => {
                            d.state
                                .actors
                                .lock()
                                .mark_dead(&id, format!("its placement group {group} was removed"));
                            return;
                        }
                    }
                }
                // No node fits it, but the autoscaler may launch one: wait.
                if let Some(l) = link {
                    let nowhere = !l.any_node_feasible(&resources)
                        && infeasibility(&d.state.sched.lock().total, &resources).is_some();
                    if nowhere && l.may_grow_for(&resources) {
                        growth_wait.get_or_insert_with(|| l.wait_for_growth(&resources));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
                // A node fits it now: it no longer waits for one (counted
                // on, it would have a second node launched for it).
                drop(growth_wait.take());
                let choice = match &strategy {
                    Some(s) => d.strategy_choice(&resources, s, &name),
                    None => Ok(super::strategy::Choice::Default),
                };
                let target = choice.map(|c| match c {
                    super::strategy::Choice::Here => None,
                    super::strategy::Choice::There(addr) => Some(addr),
                    super::strategy::Choice::Default => d.actor_target(&resources),
                });
                let placed = match target {
                    Err(e) => Err(e),
                    Ok(target) => {
                        let chosen = target.clone().unwrap_or_else(|| d.state.tcp_addr.clone());
                        d.state.actors.lock().placing.insert(id, chosen);
                        let placed = match target {
                            None => d.place_locally(id, resources, name, job).await.map(Some),
                            Some(addr) => {
                                let movable = strategy.is_none();
                                d.place_remotely(&addr, id, resources, name, job, movable).await
                            }
                        };
                        d.state.actors.lock().placing.remove(&id);
                        placed
                    }
                };
                match placed {
                    Ok(Some(p)) => break p,
                    Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(e) => {
                        d.state
                            .actors
                            .lock()
                            .mark_dead(&id, format!("cannot be scheduled: {e}"));
                        return;
                    }
                }
            };
            let spec = {
                let mut t = d.state.actors.lock();
                let alive = t.actors.get(&id).is_some_and(|a| a.state != ActorState::Dead);
                let spec = t.actors.get_mut(&id).filter(|_| alive).map(|a| {
                    a.worker_id = Some(place.worker_id);
                    a.lease_id = Some(place.lease_id);
                    a.node_addr = place.node_addr.clone();
                    a.creation.clone()
                });
                if spec.is_some() {
                    t.changed(&id);
                }
                spec
            };
            let place_key = (Some(place.worker_id), Some(place.lease_id), place.node_addr.clone());
            let Some(mut spec) = spec else {
                // Killed while being placed.
                d.stop_actor_process(place_key, "its actor was killed before it started");
                return;
            };
            spec.gpu_ids = place.gpu_ids.clone();
            match push_creation(&place.worker_addr, spec).await {
                Ok(()) => {
                    let mut t = d.state.actors.lock();
                    if let Some(a) = t.actors.get_mut(&id) {
                        if a.state != ActorState::Dead && a.worker_id == Some(place.worker_id) {
                            a.state = ActorState::Alive;
                            a.addr = place.worker_addr.clone();
                            a.incarnation += 1;
                            tracing::debug!(actor = %a.display(), incarnation = a.incarnation, node = %place.node_addr, "actor alive");
                            t.changed(&id);
                        }
                    }
                }
                Err(CreationError::UserError(e)) => {
                    d.state
                        .actors
                        .lock()
                        .mark_dead(&id, format!("its constructor failed: {e}"));
                    d.stop_actor_process(place_key, "its actor's constructor failed");
                }
                Err(CreationError::Transport(e)) => {
                    // The process died while constructing (the exit report
                    // may come first: whichever does decides about restarts).
                    tracing::debug!(actor = %id, "actor creation interrupted: {e}");
                    d.stop_actor_process(place_key, "its actor's construction was interrupted");
                    d.actor_process_died(id, Some(place.worker_id), format!("it died during construction: {e}"));
                }
            }
        });
    }

    /// Cluster bookkeeping on the manager after each heartbeat: actors on
    /// nodes that left the view died with them; actors of finished jobs end
    /// unless detached.
    pub(crate) fn check_actors(&self, alive_nodes: &HashSet<String>, finished_jobs: &[String]) {
        if !self.is_actor_manager() {
            return;
        }
        let mut lost = Vec::new();
        let mut ended = Vec::new();
        {
            let t = self.state.actors.lock();
            for (id, a) in &t.actors {
                if a.state == ActorState::Dead {
                    continue;
                }
                if !a.job.is_empty() && !a.detached && finished_jobs.contains(&a.job) {
                    ended.push(*id);
                } else if !a.node_addr.is_empty() && !alive_nodes.contains(&a.node_addr) {
                    lost.push((*id, a.worker_id, a.node_addr.clone()));
                }
            }
        }
        for (id, worker, node) in lost {
            tracing::warn!(actor = %id, node = %node, "the node hosting an actor is gone");
            self.actor_process_died(id, worker, format!("its node at {node} died"));
        }
        for id in ended {
            let place = {
                let mut t = self.state.actors.lock();
                let Some(a) = t.actors.get(&id) else { continue };
                let place = (a.worker_id, a.lease_id, a.node_addr.clone());
                let job = a.job.clone();
                t.mark_dead(
                    &id,
                    format!("its job {job} finished (only detached actors outlive their job)"),
                );
                place
            };
            self.stop_actor_process(place, "its actor's job finished");
        }
    }

    /// Reloads the actor table a previous head persisted, and places again
    /// the actors that were not running.
    pub(crate) fn restore_actors(&self, records: Vec<proto::ActorRecord>) {
        let pending: Vec<ActorId> = {
            let mut t = self.state.actors.lock();
            t.restore(records);
            let ids: Vec<ActorId> = t
                .actors
                .iter()
                .filter(|(_, a)| matches!(a.state, ActorState::PendingCreation | ActorState::Restarting))
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                if let Some(a) = t.actors.get_mut(id) {
                    a.worker_id = None;
                    a.lease_id = None;
                    a.node_addr.clear();
                }
            }
            ids
        };
        if !pending.is_empty() {
            tracing::info!(
                actors = pending.len(),
                "placing actors that were starting when the head stopped"
            );
        }
        for id in pending {
            self.schedule_actor(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(max_restarts: i32) -> ActorEntry {
        ActorEntry {
            job: String::new(),
            class_name: "m::Counter".into(),
            name: "c".into(),
            detached: false,
            state: ActorState::Alive,
            addr: "a".into(),
            node_addr: String::new(),
            incarnation: 1,
            worker_id: Some(7),
            lease_id: Some(1),
            death_cause: String::new(),
            num_restarts: 0,
            max_restarts,
            max_task_retries: 0,
            creation: proto::TaskSpec::default(),
            resources: Resources::new(),
            strategy: None,
            owner_id: 1,
            version: watch::channel(0).0,
        }
    }

    #[test]
    fn restart_budget_and_death_release_the_name() {
        let mut e = entry(2);
        assert!(e.may_restart());
        e.num_restarts = 2;
        assert!(!e.may_restart());
        assert!(entry(-1).may_restart());
        assert!(!entry(0).may_restart());

        let mut t = ActorTable::default();
        let id = ActorId::new();
        t.names.insert("c".into(), id);
        t.by_worker.insert(7, id);
        t.actors.insert(id, entry(0));
        let rx = t.actors[&id].version.subscribe();
        t.mark_dead(&id, "killed".into());
        assert_eq!(t.actors[&id].state, ActorState::Dead);
        assert!(t.names.is_empty() && t.by_worker.is_empty());
        assert!(rx.has_changed().unwrap());
        assert_eq!(t.actors[&id].info(&id).death_cause, "killed");
    }

    #[test]
    fn records_round_trip_and_restore_live_names() {
        let id = ActorId::new();
        let mut e = entry(3);
        e.detached = true;
        e.node_addr = "127.0.0.1:7000".into();
        e.num_restarts = 2;
        let mut gone = entry(0).to_record(&ActorId::new());
        gone.state = proto::ActorState::Dead as i32;
        gone.name = "gone".into();
        let mut t = ActorTable::default();
        t.restore(vec![e.to_record(&id), gone]);
        assert_eq!(t.names.get("c"), Some(&id));
        assert!(!t.names.contains_key("gone"));
        assert_eq!(t.actors.len(), 2);
        let back = &t.actors[&id];
        assert!(back.detached);
        assert_eq!(back.state, ActorState::Alive);
        assert_eq!(back.node_addr, "127.0.0.1:7000");
        assert_eq!((back.num_restarts, back.max_restarts), (2, 3));
        assert_eq!((back.worker_id, back.lease_id), (Some(7), Some(1)));
    }
}
