//! Submitting normal tasks.
//!
//! Tasks are grouped by their resource shape. For each shape the submitter
//! asks the node daemon for worker leases (at most one per queued task), then
//! pushes tasks straight to the leased worker over a stream, one after the
//! other, until its queue is empty; then it hands the worker back. No task
//! goes through a central scheduler. A dead worker's task is retried on a new
//! lease while its retry budget lasts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::codec::ObjectBytes;
use crate::error::{Error, Result};
use crate::ids::{ObjectId, TaskId};
use crate::object_ref::RefHandle;
use crate::proto;
use crate::resources::Resources;

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

/// Environment of a process's submitter (set for workers from
/// [`crate::Config::max_tasks_in_flight_per_worker`] and
/// [`crate::Config::short_task_us`]).
pub(crate) const ENV_MAX_IN_FLIGHT: &str = "RAYFORGE_MAX_TASKS_IN_FLIGHT_PER_WORKER";
pub(crate) const ENV_SHORT_TASK_US: &str = "RAYFORGE_SHORT_TASK_US";

/// How many tasks a lease keeps pushed to its worker ahead of their replies
/// while its tasks are short: the worker starts the next one as soon as it
/// ends one, instead of idling for a round trip per task.
const PIPELINE_DEPTH: usize = 16;

/// A task answered within this time counts as short. As a task's reply
/// time includes its wait behind the others pushed, a lease keeps about
/// this much work queued at its worker, and no more.
const SHORT_TASK_US: u64 = 1000;

/// A lease with nothing to run takes back tasks that have waited this long
/// on another worker of the same shape behind a task that is not short.
const STEAL_AFTER: std::time::Duration = std::time::Duration::from_millis(2);

/// A lease pushing tasks, as its pushed tasks refer to it.
struct LeaseStream {
    /// The queue its tasks come from.
    key: String,
    lease_id: u64,
    node: String,
    /// To ask the worker to drop a task.
    stream: mpsc::Sender<proto::PushTaskRequest>,
    /// The place in the stream of the oldest unanswered task (the one
    /// running).
    front: AtomicU64,
}

impl LeaseStream {
    /// Asks the worker to drop a pushed task unless it has started.
    fn drop_unstarted(&self, cw: &CoreWorker, tid: TaskId) {
        let req = proto::PushTaskRequest {
            spec: None,
            skip_task_id: tid.0.to_vec(),
        };
        let stream = self.stream.clone();
        cw.handle.spawn(async move {
            let _ = stream.send(req).await;
        });
    }
}

/// A task pushed to a worker and not yet answered.
#[derive(Clone)]
struct Pushed {
    lease: Arc<LeaseStream>,
    /// Its place in the lease's stream (equal to the lease's `front` when
    /// it runs).
    seq: u64,
    pushed_at: Instant,
    /// Whether its worker was asked to drop it.
    skip_asked: bool,
}

pub(crate) struct TaskSubmitter {
    /// Tasks a lease may have pushed and unanswered (1: no pipelining).
    depth: AtomicUsize,
    /// Reply time under which a task counts as short, in microseconds.
    short_us: AtomicU64,
    queues: Mutex<HashMap<String, KeyQueue>>,
    /// Tasks pushed to a worker and not yet answered, so that `cancel` can
    /// drop them there or end the worker.
    running: Mutex<HashMap<TaskId, Pushed>>,
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

impl Default for TaskSubmitter {
    /// Pipelining as this process's environment says, else the defaults.
    fn default() -> Self {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        TaskSubmitter {
            depth: AtomicUsize::new(env(ENV_MAX_IN_FLIGHT).map_or(PIPELINE_DEPTH, |n| n.max(1) as usize)),
            short_us: AtomicU64::new(env(ENV_SHORT_TASK_US).unwrap_or(SHORT_TASK_US)),
            queues: Mutex::default(),
            running: Mutex::default(),
            cancelled: Mutex::default(),
        }
    }
}

impl TaskSubmitter {
    /// Sets how far tasks are pipelined (see [`crate::Config`]).
    pub(crate) fn set_pipelining(&self, depth: Option<usize>, short_us: Option<u64>) {
        if let Some(d) = depth {
            self.depth.store(d.max(1), Ordering::Relaxed);
        }
        if let Some(us) = short_us {
            self.short_us.store(us, Ordering::Relaxed);
        }
    }

    /// Queues a task (after its dependencies resolve) and makes sure leases
    /// are being requested for it.
    pub(crate) fn submit(cw: &Arc<CoreWorker>, mut task: PendingTask) {
        let ready = task.spec.args.iter().all(|a| owned_ref_arg(cw, a).is_none());
        cw.queued.add(&task.spec, &task.resources, ready);
        if ready {
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
            cw.queued.args_ready(&task.spec.task_id);
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

    /// Waits up to [`LEASE_LINGER`] for another task of this shape, taking
    /// back tasks stuck behind long ones on other workers meanwhile.
    async fn linger(cw: &CoreWorker, key: &str) -> Option<PendingTask> {
        let mut since = Instant::now();
        loop {
            let more = {
                let mut qs = cw.submitter.queues.lock();
                let q = qs.get_mut(key)?;
                if let Some(t) = q.tasks.pop_front() {
                    return Some(t);
                }
                q.lingering += 1;
                q.more.clone()
            };
            let left = LEASE_LINGER.saturating_sub(since.elapsed());
            let _ = tokio::time::timeout(left.min(STEAL_AFTER), more.notified()).await;
            {
                let mut qs = cw.submitter.queues.lock();
                let q = qs.get_mut(key)?;
                q.lingering -= 1;
                if let Some(t) = q.tasks.pop_front() {
                    return Some(t);
                }
            }
            if Self::steal(cw, key) {
                // What was asked for comes back within a round trip.
                since = Instant::now();
            } else if since.elapsed() >= LEASE_LINGER {
                return None;
            }
        }
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

    /// Pushes queued tasks to the leased worker: one at a time, or up to
    /// `depth` ahead of their replies while they are short.
    /// Returns whether the worker must be discarded.
    async fn run_on_lease(cw: &Arc<CoreWorker>, key: &str, grant: &proto::Lease, node: &str) -> bool {
        // A lease granted after the others pushed every queued task to their
        // workers takes back those waiting behind a long one, as a lease
        // whose queue ran dry does.
        let first = match Self::pop(cw, key) {
            Some(t) => Some(t),
            None => Self::linger(cw, key).await,
        };
        let Some(first) = first else {
            return false;
        };
        let mut client = match cw.peer(&grant.worker_addr) {
            Ok(c) => c,
            Err(e) => {
                Self::on_failure(cw, first, e).await;
                return true;
            }
        };
        let (tx, rx) = mpsc::channel(16);
        let mut replies = match client.push_tasks(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(_) => {
                cw.forget_peer(&grant.worker_addr);
                let e = worker_death_error(cw, node, grant.worker_id, &first.spec.display_name).await;
                Self::on_failure(cw, first, e).await;
                return true;
            }
        };
        // Spread tasks take a lease each, so that each is placed round-robin
        // over the nodes (as Ray schedules them).
        let spread = is_spread(cw, key);
        let lease = Arc::new(LeaseStream {
            key: key.to_string(),
            lease_id: grant.lease_id,
            node: node.to_string(),
            stream: tx.clone(),
            front: AtomicU64::new(0),
        });
        let mut sent = 0u64;
        // Pushed and unanswered, oldest first: the task, when it was pushed,
        // its place in the stream.
        let mut inflight: VecDeque<(PendingTask, Instant, u64)> = VecDeque::new();
        let mut next = Some(first);
        // Whether the last answered task was short (then more are pushed
        // ahead), and whether the last pushed one streams (nothing waits
        // behind a generator).
        let (mut short, mut behind_stream) = (false, false);
        let depth = cw.submitter.depth.load(Ordering::Relaxed);
        let short_task = std::time::Duration::from_micros(cw.submitter.short_us.load(Ordering::Relaxed));
        loop {
            while let Some(mut task) = next.take() {
                task.spec.gpu_ids = grant.gpu_ids.clone();
                let pushed = Pushed {
                    lease: lease.clone(),
                    seq: sent,
                    pushed_at: Instant::now(),
                    skip_asked: false,
                };
                cw.submitter.running.lock().insert(task.task_id(), pushed);
                cw.queued.remove(&task.spec.task_id);
                let req = proto::PushTaskRequest {
                    spec: Some(task.spec.clone()),
                    skip_task_id: Vec::new(),
                };
                behind_stream = task.spec.streaming;
                inflight.push_back((task, Instant::now(), sent));
                sent += 1;
                if tx.send(req).await.is_err() {
                    break;
                }
                if short && !behind_stream && !spread && inflight.len() < depth {
                    next = Self::pop(cw, key);
                }
            }
            let reply = replies.message().await;
            // Tasks are answered in order, except those dropped unstarted
            // (answered at once).
            let answer = match reply {
                Ok(Some(r)) => match inflight.iter().position(|(t, ..)| t.spec.task_id == r.task_id) {
                    Some(i) if i == 0 || r.skipped => inflight.remove(i).map(|(t, at, _)| (t, at, r)),
                    _ => None,
                },
                _ => None,
            };
            let Some((task, at, r)) = answer else {
                Self::on_broken(cw, key, grant, node, inflight).await;
                return true;
            };
            let oldest = inflight.front().map_or(sent, |(.., seq)| *seq);
            lease.front.store(oldest, Ordering::Release);
            cw.submitter.running.lock().remove(&task.task_id());
            if r.skipped {
                // Dropped unstarted, as asked: cancelled, or taken back for
                // a lease with nothing to run (it waited too long here: push
                // no more until a task is answered short again).
                Self::requeue(cw, key, vec![task]);
                short = false;
            } else {
                short = at.elapsed() < short_task;
                Self::on_reply(cw, task, r).await;
            }
            if spread {
                return false;
            }
            if !inflight.is_empty() {
                if short && !behind_stream && inflight.len() < depth {
                    next = Self::pop(cw, key);
                }
                continue;
            }
            next = match Self::pop(cw, key) {
                Some(t) => Some(t),
                None => match Self::linger(cw, key).await {
                    Some(t) => Some(t),
                    None => return false,
                },
            };
        }
    }

    /// A lease's stream broke (its worker died or was ended). The oldest
    /// unanswered task was the one running: it fails or is retried on its
    /// budget. Those pushed behind it never started: they go back to the
    /// front of the queue as they were (a cancelled one fails as such).
    async fn on_broken(
        cw: &Arc<CoreWorker>,
        key: &str,
        grant: &proto::Lease,
        node: &str,
        inflight: VecDeque<(PendingTask, Instant, u64)>,
    ) {
        cw.forget_peer(&grant.worker_addr);
        let mut behind: Vec<PendingTask> = {
            let mut pushed = cw.submitter.running.lock();
            inflight
                .into_iter()
                .map(|(t, ..)| {
                    pushed.remove(&t.task_id());
                    t
                })
                .collect()
        };
        if behind.is_empty() {
            return;
        }
        let running = behind.remove(0);
        if !behind.is_empty() {
            tracing::debug!(
                n = behind.len(),
                "a worker died with tasks pushed behind its running one; queued again"
            );
        }
        Self::requeue(cw, key, behind);
        let e = worker_death_error(cw, node, grant.worker_id, &running.spec.display_name).await;
        Self::on_failure(cw, running, e).await;
    }

    /// Puts tasks that were pushed but never started back at the front of
    /// their queue, in order, without spending a retry; a cancelled one
    /// fails as such instead.
    fn requeue(cw: &CoreWorker, key: &str, tasks: Vec<PendingTask>) {
        let mut back = Vec::new();
        for t in tasks {
            if cw.submitter.cancelled.lock().remove(&t.task_id()) {
                fail_task(cw, &t, &Error::Cancelled(t.spec.display_name.clone()));
            } else {
                cw.queued.add(&t.spec, &t.resources, true);
                back.push(t);
            }
        }
        if back.is_empty() {
            return;
        }
        let mut qs = cw.submitter.queues.lock();
        let q = qs.entry(key.to_string()).or_default();
        for t in back.into_iter().rev() {
            q.tasks.push_front(t);
        }
        if q.lingering > 0 {
            q.more.notify_one();
        }
    }

    /// Asks the workers of other leases of `key` to drop the tasks pushed
    /// to them that have waited [`STEAL_AFTER`] behind another (which is
    /// then not short); they come back to the queue for the caller, a lease
    /// with nothing to run. Returns whether any was asked for.
    fn steal(cw: &CoreWorker, key: &str) -> bool {
        let mut asked = 0;
        for (tid, p) in cw.submitter.running.lock().iter_mut() {
            if p.lease.key == key
                && !p.skip_asked
                && p.seq > p.lease.front.load(Ordering::Acquire)
                && p.pushed_at.elapsed() >= STEAL_AFTER
            {
                p.skip_asked = true;
                p.lease.drop_unstarted(cw, *tid);
                asked += 1;
            }
        }
        if asked > 0 {
            tracing::debug!(key, n = asked, "taking back tasks waiting on other workers");
        }
        asked > 0
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
        if let Some(p) = running {
            cw.submitter.cancelled.lock().insert(tid);
            if p.seq != p.lease.front.load(Ordering::Acquire) {
                // Pushed behind another task: the worker drops it unless it
                // has started meanwhile (then its result is discarded).
                tracing::debug!(task = %tid, "cancel: asking the worker to drop a task pushed behind another");
                p.lease.drop_unstarted(cw, tid);
                return true;
            }
            let (lease_id, node) = (p.lease.lease_id, p.lease.node.clone());
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
