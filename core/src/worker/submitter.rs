//! Submitting normal tasks.
//!
//! Tasks are grouped by their resource shape. For each shape the submitter
//! asks the node daemon for worker leases (at most one per queued task), then
//! pushes tasks straight to the leased worker over a stream, one after the
//! other, until its queue is empty; then it hands the worker back. No task
//! goes through a central scheduler. A dead worker's task is retried on a new
//! lease while its retry budget lasts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::codec::ObjectBytes;
use crate::error::{Error, Result};
use crate::ids::{ObjectId, TaskId};
use crate::node::scheduler::Resources;
use crate::object_ref::RefHandle;
use crate::proto;

use super::{CoreWorker, Location, ObjState};

/// A task waiting to run (or being retried).
pub(crate) struct PendingTask {
    pub(crate) spec: proto::TaskSpec,
    pub(crate) resources: Resources,
    pub(crate) retries_left: i32,
    pub(crate) retry_exceptions: bool,
    /// Which node it may run on (`None`: the default).
    pub(crate) strategy: Option<proto::SchedulingStrategy>,
    /// Keeps argument objects alive until the task is done.
    #[allow(dead_code)]
    pub(crate) pins: Vec<Arc<RefHandle>>,
    /// Set when this run rebuilds returns lost with a node: why they were
    /// lost (a failed rebuild then reports the loss).
    pub(crate) rebuilding: Option<String>,
}

/// What it takes to run a finished task again: its lineage. The owner keeps
/// it with the task's returns that sit in a node's shared memory, so that a
/// copy lost with its node is rebuilt by re-running the task (as Ray's
/// lineage reconstruction). Arguments are not pinned for it: a task whose
/// argument is gone too cannot be rebuilt, and says so.
pub(crate) struct Lineage {
    spec: proto::TaskSpec,
    resources: Resources,
    strategy: Option<proto::SchedulingStrategy>,
    retries_left: i32,
    retry_exceptions: bool,
}

impl Lineage {
    /// The task's name, for errors.
    pub(crate) fn name(&self) -> &str {
        &self.spec.display_name
    }

    /// Whether the retry budget allows another run.
    pub(crate) fn can_rerun(&self) -> bool {
        self.retries_left != 0
    }

    pub(crate) fn return_ids(&self) -> Vec<ObjectId> {
        let t = TaskId::from_bytes(&self.spec.task_id).unwrap_or_default();
        (0..self.spec.num_returns).map(|i| t.return_id(i)).collect()
    }

    /// The task to submit to rebuild what was lost (`why`); each rebuild
    /// spends one retry.
    pub(crate) fn rerun(&self, why: String) -> PendingTask {
        PendingTask {
            spec: self.spec.clone(),
            resources: self.resources.clone(),
            strategy: self.strategy.clone(),
            retries_left: if self.retries_left > 0 {
                self.retries_left - 1
            } else {
                self.retries_left
            },
            retry_exceptions: self.retry_exceptions,
            pins: Vec::new(),
            rebuilding: Some(why),
        }
    }
}

impl PendingTask {
    pub(crate) fn task_id(&self) -> TaskId {
        TaskId::from_bytes(&self.spec.task_id).unwrap_or_default()
    }

    pub(crate) fn return_ids(&self) -> Vec<ObjectId> {
        let t = self.task_id();
        (0..self.spec.num_returns).map(|i| t.return_id(i)).collect()
    }
}

/// Lease requests in flight per resource shape (as Ray's
/// max_pending_lease_requests_per_scheduling_category).
const MAX_PENDING_LEASES: usize = 10;

#[derive(Default)]
struct KeyQueue {
    resources: Resources,
    strategy: Option<proto::SchedulingStrategy>,
    /// The node holding the tasks' large arguments, asked first.
    preferred: Option<String>,
    tasks: VecDeque<PendingTask>,
    requesting: usize,
    leased: usize,
    /// Leases whose queue ran dry, lingering for a next task.
    lingering: usize,
    more: Arc<tokio::sync::Notify>,
}

/// How long a lease with nothing to run waits for the next task of its shape
/// before going back to the node: back-to-back calls (a loop of `f.remote()
/// .get()`) then reuse the worker instead of paying two RPCs per task.
const LEASE_LINGER: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Default)]
pub(crate) struct TaskSubmitter {
    queues: Mutex<HashMap<String, KeyQueue>>,
    /// Tasks pushed to a worker and not yet answered: the lease they run
    /// on and its node, so that `cancel` can end the worker.
    running: Mutex<HashMap<TaskId, (u64, String)>>,
    cancelled: Mutex<HashSet<TaskId>>,
}

/// Tasks share leases when they ask for the same resources under the same
/// strategy, with their large arguments on the same node.
fn key_of(res: &Resources, strategy: &Option<proto::SchedulingStrategy>, preferred: &Option<String>) -> String {
    let mut key: String = res.iter().map(|(k, v)| format!("{k}={v};")).collect();
    if let Some(s) = strategy {
        key.push_str(&format!("{s:?}"));
    }
    if let Some(p) = preferred {
        key.push('@');
        key.push_str(p);
    }
    key
}

/// The object an argument passes by reference, when this process owns it.
fn owned_ref_arg(cw: &CoreWorker, arg: &proto::TaskArg) -> Option<ObjectId> {
    match &arg.kind {
        Some(proto::task_arg::Kind::ByRef(r)) if r.owner_addr == cw.addr => ObjectId::from_bytes(&r.id),
        _ => None,
    }
}

/// Locality: the other node holding most of a task's arguments that sit in
/// a node's store (the large ones), when the task has no explicit strategy.
/// Its lease is then asked of that node first, which grants it or passes it
/// on as it would its own (as Ray's locality-aware leasing). Only arguments
/// this process owns are considered: their location is known here.
fn preferred_node(cw: &CoreWorker, task: &PendingTask) -> Option<String> {
    if task.strategy.is_some() || cw.node_addr.is_empty() {
        return None;
    }
    let mut count: HashMap<String, usize> = HashMap::new();
    for id in task.spec.args.iter().filter_map(|a| owned_ref_arg(cw, a)) {
        let Some(rx) = cw.owned_state(&id) else { continue };
        let stored_at = match &*rx.borrow() {
            ObjState::Ready(Location::Store(addr)) if addr.is_empty() => Some(cw.node_addr.clone()),
            ObjState::Ready(Location::Store(addr)) => Some(addr.clone()),
            _ => None,
        };
        if let Some(at) = stored_at {
            *count.entry(at).or_default() += 1;
        }
    }
    let local = count.get(&cw.node_addr).copied().unwrap_or(0);
    count
        .into_iter()
        .filter(|(addr, n)| *addr != cw.node_addr && *n > local)
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map(|(addr, _)| addr)
}

/// Whether the tasks queued under `key` are SPREAD.
fn is_spread(cw: &CoreWorker, key: &str) -> bool {
    cw.submitter.queues.lock().get(key).is_some_and(|q| {
        q.strategy
            .as_ref()
            .is_some_and(|s| matches!(s.kind, Some(proto::scheduling_strategy::Kind::Spread(_))))
    })
}

/// Marks all of a task's return objects failed.
pub(crate) fn fail_returns(cw: &CoreWorker, ids: &[ObjectId], e: &Error) {
    for id in ids {
        cw.resolve(*id, ObjState::Failed(e.clone()), Vec::new());
    }
}

/// Fails a task: its return objects, or its generator's stream. A failed
/// rebuild fails only the returns it was rebuilding, as lost.
pub(crate) fn fail_task(cw: &CoreWorker, task: &PendingTask, e: &Error) {
    cw.queued.remove(&task.spec.task_id);
    if task.spec.streaming {
        cw.generator_end(task.task_id(), Err(e.clone()));
    } else if let Some(why) = &task.rebuilding {
        for id in task.return_ids() {
            if cw.owned_ready(&id) == Some(false) {
                let lost = Error::ObjectLost {
                    id: id.hex(),
                    cause: format!(
                        "{why}; re-running its task `{}` to rebuild it failed: {e}",
                        task.spec.display_name
                    ),
                };
                cw.resolve(id, ObjState::Failed(lost), Vec::new());
            }
        }
    } else {
        fail_returns(cw, &task.return_ids(), e);
    }
}

/// Waits for arguments this process owns; inlines the small ready ones.
/// Returns the error of a failed dependency.
pub(crate) async fn resolve_dependencies(cw: &CoreWorker, spec: &mut proto::TaskSpec) -> Result<()> {
    for arg in spec.args.iter_mut() {
        let Some(id) = owned_ref_arg(cw, arg) else {
            continue;
        };
        let Some(mut rx) = cw.owned_state(&id) else {
            return Err(Error::ObjectLost {
                id: id.hex(),
                cause: "argument was freed before the task ran".into(),
            });
        };
        let st = rx
            .wait_for(|s| !matches!(s, ObjState::Pending))
            .await
            .map(|s| s.clone());
        match st {
            Ok(ObjState::Ready(Location::Inline(b))) => {
                arg.kind = Some(proto::task_arg::Kind::Inline(b.as_slice().to_vec()));
            }
            Ok(ObjState::Failed(e)) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

impl TaskSubmitter {
    /// Queues a task (after its dependencies resolve) and makes sure leases
    /// are being requested for it.
    pub(crate) fn submit(cw: &Arc<CoreWorker>, mut task: PendingTask) {
        cw.queued.add(&task.spec);
        if task.spec.args.iter().all(|a| owned_ref_arg(cw, a).is_none()) {
            // Nothing of ours to wait for: queue it now, without a task.
            Self::enqueue(cw, task);
            return;
        }
        let cw = cw.clone();
        cw.clone().handle.spawn(async move {
            if let Err(e) = resolve_dependencies(&cw, &mut task.spec).await {
                fail_task(&cw, &task, &e);
                return;
            }
            Self::enqueue(&cw, task);
        });
    }

    fn enqueue(cw: &Arc<CoreWorker>, task: PendingTask) {
        let preferred = preferred_node(cw, &task);
        let key = key_of(&task.resources, &task.strategy, &preferred);
        let want_lease = {
            let mut qs = cw.submitter.queues.lock();
            let q = qs.entry(key.clone()).or_default();
            q.resources = task.resources.clone();
            q.strategy = task.strategy.clone();
            q.preferred = preferred;
            q.tasks.push_back(task);
            if q.lingering > 0 {
                q.more.notify_one();
                false
            } else if q.requesting < q.tasks.len().min(MAX_PENDING_LEASES) {
                // Counted now, under the lock, not when the spawned loop
                // first runs: a burst of submissions would otherwise each
                // see none requested and ask for a lease apiece.
                q.requesting += 1;
                true
            } else {
                false
            }
        };
        if want_lease {
            let cw2 = cw.clone();
            cw.handle.spawn(async move { Self::lease_loop(cw2, key).await });
        }
    }

    /// Waits up to [`LEASE_LINGER`] for another task of this shape.
    async fn linger(cw: &CoreWorker, key: &str) -> Option<PendingTask> {
        let more = {
            let mut qs = cw.submitter.queues.lock();
            let q = qs.get_mut(key)?;
            if let Some(t) = q.tasks.pop_front() {
                return Some(t);
            }
            q.lingering += 1;
            q.more.clone()
        };
        let _ = tokio::time::timeout(LEASE_LINGER, more.notified()).await;
        let mut qs = cw.submitter.queues.lock();
        let q = qs.get_mut(key)?;
        q.lingering -= 1;
        q.tasks.pop_front()
    }

    fn pop(cw: &CoreWorker, key: &str) -> Option<PendingTask> {
        cw.submitter
            .queues
            .lock()
            .get_mut(key)
            .and_then(|q| q.tasks.pop_front())
    }

    /// Requests one lease for `key` and runs queued tasks on it until the
    /// queue is empty. The caller has counted the request in `requesting`.
    async fn lease_loop(cw: Arc<CoreWorker>, key: String) {
        while Self::lease_once(&cw, &key).await {}
    }

    /// One lease, already counted in `requesting`: returns whether another
    /// should be requested (and if so, has counted it).
    async fn lease_once(cw: &Arc<CoreWorker>, key: &str) -> bool {
        let key = key.to_string();
        let (resources, strategy, preferred, display, retriable) = {
            let mut qs = cw.submitter.queues.lock();
            let q = qs.entry(key.clone()).or_default();
            let first = q.tasks.front();
            (
                q.resources.clone(),
                q.strategy.clone(),
                q.preferred.clone(),
                first.map(|t| t.spec.display_name.clone()).unwrap_or_default(),
                first.is_some_and(|t| t.retries_left != 0),
            )
        };
        let ask = LeaseAsk {
            resources: &resources,
            strategy,
            preferred,
            retriable,
            display,
        };
        let (reply, lease_node) = request_lease(cw, ask).await;
        let grant = {
            let mut qs = cw.submitter.queues.lock();
            let q = qs.entry(key.clone()).or_default();
            q.requesting -= 1;
            match reply {
                Ok(l) => {
                    q.leased += 1;
                    l
                }
                Err(e) => {
                    // No worker will come for this shape: fail what waits.
                    let failed: Vec<PendingTask> = q.tasks.drain(..).collect();
                    drop(qs);
                    for t in failed {
                        let e = match &e {
                            Error::Infeasible { detail, .. } => Error::Infeasible {
                                function: t.spec.display_name.clone(),
                                detail: detail.clone(),
                            },
                            other => other.clone(),
                        };
                        fail_task(cw, &t, &e);
                    }
                    return false;
                }
            }
        };
        let disconnect = Self::run_on_lease(cw, &key, &grant, &lease_node).await;
        {
            let mut qs = cw.submitter.queues.lock();
            if let Some(q) = qs.get_mut(&key) {
                q.leased -= 1;
            }
        }
        if let Ok(mut node) = cw.node_at(&lease_node) {
            let _ = node
                .return_worker(proto::ReturnWorkerRequest {
                    lease_id: grant.lease_id,
                    disconnect,
                    cause: String::new(),
                })
                .await;
        }
        // Tasks may have been requeued (a retry) or arrived meanwhile. A
        // lease drains its queue, so one is enough, except for SPREAD tasks
        // (a lease each).
        let spread = is_spread(cw, &key);
        let mut qs = cw.submitter.queues.lock();
        let Some(q) = qs.get_mut(&key) else { return false };
        let active = if spread { q.leased } else { 0 };
        let again = (spread || q.leased == 0) && q.requesting + active < q.tasks.len().min(MAX_PENDING_LEASES);
        if again {
            q.requesting += 1;
        }
        again
    }

    /// Pushes queued tasks to the leased worker one at a time. Returns
    /// whether the worker must be discarded.
    async fn run_on_lease(cw: &Arc<CoreWorker>, key: &str, grant: &proto::Lease, node: &str) -> bool {
        let Some(mut task) = Self::pop(cw, key) else {
            return false;
        };
        let mut client = match cw.peer(&grant.worker_addr) {
            Ok(c) => c,
            Err(e) => {
                Self::on_failure(cw, task, e).await;
                return true;
            }
        };
        let (tx, rx) = mpsc::channel(4);
        let mut replies = match client.push_tasks(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(_) => {
                cw.forget_peer(&grant.worker_addr);
                let e = worker_death_error(cw, node, grant.worker_id, &task.spec.display_name).await;
                Self::on_failure(cw, task, e).await;
                return true;
            }
        };
        loop {
            let tid = task.task_id();
            task.spec.gpu_ids = grant.gpu_ids.clone();
            cw.submitter
                .running
                .lock()
                .insert(tid, (grant.lease_id, node.to_string()));
            cw.queued.remove(&task.spec.task_id);
            let sent = tx
                .send(proto::PushTaskRequest {
                    spec: Some(task.spec.clone()),
                })
                .await
                .is_ok();
            let reply = if sent { replies.message().await } else { Ok(None) };
            cw.submitter.running.lock().remove(&tid);
            match reply {
                Ok(Some(r)) => Self::on_reply(cw, task, r).await,
                _ => {
                    cw.forget_peer(&grant.worker_addr);
                    let e = worker_death_error(cw, node, grant.worker_id, &task.spec.display_name).await;
                    Self::on_failure(cw, task, e).await;
                    return true;
                }
            }
            if is_spread(cw, key) {
                // Spread tasks take a lease each, so that each is placed
                // round-robin over the nodes (as Ray schedules them).
                return false;
            }
            match Self::pop(cw, key) {
                Some(t) => task = t,
                None => match Self::linger(cw, key).await {
                    Some(t) => task = t,
                    None => return false,
                },
            }
        }
    }

    async fn on_reply(cw: &Arc<CoreWorker>, task: PendingTask, r: proto::PushTaskReply) {
        if let Some(e) = r.error {
            let err = Error::from_proto(&e);
            return Self::on_failure(cw, task, err).await;
        }
        if cw.submitter.cancelled.lock().remove(&task.task_id()) {
            fail_task(cw, &task, &Error::Cancelled(task.spec.display_name.clone()));
            return;
        }
        if task.spec.streaming {
            cw.generator_end(task.task_id(), Ok(()));
            return;
        }
        let mut returns = r.returns;
        if task.rebuilding.is_some() {
            // Objects are immutable: a rebuild replaces only what was lost,
            // not the returns that are still readable.
            returns.retain(|ret| ObjectId::from_bytes(&ret.id).is_some_and(|id| cw.owned_ready(&id) != Some(true)));
        }
        let stored: Vec<ObjectId> = returns
            .iter()
            .filter(|ret| matches!(ret.kind, Some(proto::return_object::Kind::InStore(_))))
            .filter_map(|ret| ObjectId::from_bytes(&ret.id))
            .collect();
        if !stored.is_empty() {
            // Recorded before the returns are ready, so any reader that
            // finds a copy lost finds the lineage too.
            let lineage = Arc::new(Lineage {
                spec: task.spec,
                resources: task.resources,
                strategy: task.strategy,
                retries_left: task.retries_left,
                retry_exceptions: task.retry_exceptions,
            });
            cw.set_lineage(&stored, lineage);
        }
        store_returns(cw, returns);
    }

    async fn on_failure(cw: &Arc<CoreWorker>, mut task: PendingTask, err: Error) {
        let tid = task.task_id();
        if cw.submitter.cancelled.lock().remove(&tid) {
            fail_task(cw, &task, &Error::Cancelled(task.spec.display_name.clone()));
            return;
        }
        let retry = task.retries_left != 0
            && match &err {
                Error::TaskFailed { .. } => task.retry_exceptions,
                e => e.is_retriable(),
            };
        if retry {
            if task.retries_left > 0 {
                task.retries_left -= 1;
            }
            tracing::info!(task = %task.spec.display_name, retries_left = task.retries_left, "retrying task: {err}");
            Self::enqueue(cw, task);
        } else {
            fail_task(cw, &task, &err);
        }
    }

    /// Cancels a task that has not finished: a queued one is dropped; a
    /// running one is interrupted by ending its worker process (Rust code
    /// cannot be stopped from outside its thread), after which its lease's
    /// worker is replaced. Returns whether the task was found.
    pub(crate) fn cancel(cw: &CoreWorker, id: &ObjectId) -> bool {
        let Some(tid) = TaskId::from_bytes(&id.0[..12]) else {
            return false;
        };
        let removed = {
            let mut qs = cw.submitter.queues.lock();
            let mut found = None;
            for q in qs.values_mut() {
                if let Some(pos) = q.tasks.iter().position(|t| t.task_id() == tid) {
                    found = q.tasks.remove(pos);
                    break;
                }
            }
            found
        };
        if let Some(t) = removed {
            fail_task(cw, &t, &Error::Cancelled(t.spec.display_name.clone()));
            return true;
        }
        let running = cw.submitter.running.lock().get(&tid).cloned();
        if let Some((lease_id, node)) = running {
            cw.submitter.cancelled.lock().insert(tid);
            // The push stream then breaks, and the task fails as cancelled.
            if let Ok(mut client) = cw.node_at(&node) {
                cw.handle.spawn(async move {
                    let r = client
                        .return_worker(proto::ReturnWorkerRequest {
                            lease_id,
                            disconnect: true,
                            cause: "its task was cancelled with rayforge::cancel".into(),
                        })
                        .await;
                    if let Err(s) = r {
                        tracing::warn!("ending the worker of a cancelled task: {}", s.message());
                    }
                });
            }
            return true;
        }
        if cw.owned_ready(id) == Some(false) {
            cw.submitter.cancelled.lock().insert(tid);
            return true;
        }
        false
    }
}

/// Records a task's returned objects.
pub(crate) fn store_returns(cw: &CoreWorker, returns: Vec<proto::ReturnObject>) {
    for ret in returns {
        let Some(id) = ObjectId::from_bytes(&ret.id) else {
            continue;
        };
        let contained = cw.adopt_lent(&ret.contained);
        cw.resolve(id, return_state(ret), contained);
    }
}

/// The state of an object as a task reported it.
pub(crate) fn return_state(ret: proto::ReturnObject) -> ObjState {
    match ret.kind {
        Some(proto::return_object::Kind::Inline(b)) => ObjState::Ready(Location::Inline(ObjectBytes::from_vec(b))),
        Some(proto::return_object::Kind::InStore(_)) => ObjState::Ready(Location::Store(ret.node_addr)),
        None => ObjState::Failed(Error::Internal("return without a value".into())),
    }
}

/// Asks for a worker lease: at the local node, then wherever it redirects
/// (spillback). A node that cannot be reached after a redirect (it died and
/// the cluster view has not caught up) sends the request back to the local
/// node after a pause. Returns the reply and the node that granted it.
/// What a lease is asked for.
struct LeaseAsk<'a> {
    resources: &'a Resources,
    strategy: Option<proto::SchedulingStrategy>,
    /// A node to ask first (it may pass the request on).
    preferred: Option<String>,
    retriable: bool,
    display: String,
}

async fn request_lease(cw: &CoreWorker, ask: LeaseAsk<'_>) -> (Result<proto::Lease>, String) {
    let LeaseAsk {
        resources,
        strategy,
        preferred,
        retriable,
        display,
    } = ask;
    // The node asked, and whether it was told to us by another node (then
    // it must grant or queue, never redirect again).
    let (mut node, mut redirected) = (preferred.unwrap_or_default(), false);
    let mut misses = 0;
    loop {
        let req = proto::LeaseRequest {
            resources: resources.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            retriable,
            requester_id: cw.worker_id,
            display_name: display.clone(),
            job_id: cw.job_id.clone(),
            no_spillback: redirected,
            for_actor: Vec::new(),
            strategy: strategy.clone(),
        };
        let reply = match cw.node_at(&node) {
            Ok(mut c) => c.request_worker_lease(req).await,
            Err(e) => return (Err(e), node),
        };
        match reply {
            Ok(r) => match r.into_inner().result {
                Some(proto::lease_reply::Result::Lease(l)) => return (Ok(l), node),
                Some(proto::lease_reply::Result::Error(e)) => return (Err(Error::from_proto(&e)), node),
                Some(proto::lease_reply::Result::Spillback(to)) => {
                    node = to;
                    redirected = true;
                }
                None => return (Err(Error::Internal("empty lease reply".into())), node),
            },
            Err(s) if !node.is_empty() && misses < 300 => {
                tracing::debug!(node = %node, "spillback target unreachable ({}); asking again", s.message());
                cw.forget_peer(&node);
                misses += 1;
                node.clear();
                redirected = false;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(s) => return (Err(Error::rpc("requesting a worker lease", s)), node),
        }
    }
}

/// Builds the error for a task whose worker vanished, asking its node why.
pub(crate) async fn worker_death_error(cw: &CoreWorker, node: &str, worker_id: u64, function: &str) -> Error {
    let r = match cw.node_at(node) {
        Ok(mut c) => {
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                c.worker_exit_cause(proto::WorkerExitCauseRequest { worker_id }),
            )
            .await
        }
        Err(_) => {
            return Error::WorkerDied {
                function: function.into(),
                cause: format!("its node at {node} is unreachable"),
            }
        }
    };
    let r = match r {
        Ok(r) => r,
        Err(_) => {
            return Error::WorkerDied {
                function: function.into(),
                cause: format!("its node at {node} does not answer"),
            }
        }
    };
    if r.is_err() && !node.is_empty() {
        return Error::WorkerDied {
            function: function.into(),
            cause: format!("its node at {node} died"),
        };
    }
    match r.map(|r| r.into_inner()) {
        Ok(c) if c.out_of_memory => Error::OutOfMemory {
            function: function.into(),
            cause: c.cause,
        },
        Ok(c) if c.exited => Error::WorkerDied {
            function: function.into(),
            cause: c.cause,
        },
        _ => Error::WorkerDied {
            function: function.into(),
            cause: "the connection to the worker was lost".into(),
        },
    }
}
