//! The node's local scheduler: resource accounting, the worker pool and the
//! queue of lease requests. Pure state, no I/O: the daemon applies the
//! [`Action`]s it returns (start a process, answer a request), so the policy
//! is testable on its own.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::Error;
use crate::ids::ActorId;
pub(crate) use crate::resources::{bundle_index_of, group_of, group_resource, Resources, BUNDLE_MARKER};

const EPS: f64 = 1e-9;

/// A granted lease as sent back to the requester.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub(crate) lease_id: u64,
    pub(crate) worker_id: u64,
    pub(crate) worker_addr: String,
    pub(crate) gpu_ids: Vec<u32>,
}

pub(crate) type LeaseResult = Result<Grant, Error>;

pub(crate) struct LeaseRequest {
    pub(crate) resources: Resources,
    pub(crate) retriable: bool,
    pub(crate) for_actor: Option<ActorId>,
    pub(crate) display_name: String,
    /// The job whose program the worker runs ("" = the node's own program).
    pub(crate) job: String,
    /// The worker that asked (0: none known, as for actors); its leases end
    /// when it dies.
    pub(crate) requester: u64,
    pub(crate) reply: oneshot::Sender<LeaseResult>,
    /// Set for a request another node may take over while it is queued:
    /// the address of the node it moved to is sent here (and `reply` is
    /// dropped).
    pub(crate) moved: Option<oneshot::Sender<String>>,
    /// When it was asked for.
    pub(crate) queued_at: Instant,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WorkerState {
    Starting,
    Idle(Instant),
    Leased(u64),
    Dead,
}

#[derive(Debug)]
pub(crate) struct WorkerInfo {
    pub(crate) pid: u32,
    pub(crate) addr: String,
    pub(crate) state: WorkerState,
    pub(crate) exit_cause: Option<String>,
    pub(crate) killed_for_memory: bool,
    pub(crate) blocked: bool,
    pub(crate) job: String,
    /// Stopped by the node for having been idle too long.
    pub(crate) reaped_idle: bool,
    /// When the node last asked this idle worker whether it may stop.
    pub(crate) asked_to_retire: Option<Instant>,
}

#[derive(Debug, Clone)]
pub(crate) struct LeaseInfo {
    pub(crate) worker_id: u64,
    /// The worker the lease was granted to (0: none known).
    pub(crate) requester: u64,
    pub(crate) resources: Resources,
    pub(crate) retriable: bool,
    pub(crate) granted_at: Instant,
    pub(crate) gpu_ids: Vec<u32>,
    pub(crate) for_actor: Option<ActorId>,
}

/// What the daemon must do after a state change.
#[derive(Debug, PartialEq)]
pub(crate) enum Action {
    StartWorker {
        job: String,
    },
    KillWorker {
        worker_id: u64,
        pid: u32,
    },
    /// Ask an idle worker whether it may stop (it may not while it owns
    /// objects or actors others use); `since` identifies this idle spell.
    AskRetire {
        worker_id: u64,
        addr: String,
        since: Instant,
    },
}

pub(crate) struct Scheduler {
    pub(crate) total: Resources,
    pub(crate) available: Resources,
    pub(crate) workers: HashMap<u64, WorkerInfo>,
    pub(crate) leases: HashMap<u64, LeaseInfo>,
    pending: VecDeque<LeaseRequest>,
    idle: VecDeque<u64>,
    /// Worker processes starting, by job.
    starting: HashMap<String, usize>,
    /// What is left of each GPU device (indexed by device id; 1.0 = free):
    /// fractional requests share a device, whole ones take whole devices.
    gpu_left: Vec<f64>,
    next_lease: u64,
    /// Workers kept even when idle.
    pub(crate) min_workers: usize,
    pub(crate) idle_timeout: Duration,
    /// Cap on worker processes, so a burst of zero-CPU actors cannot fork-bomb.
    pub(crate) max_workers: usize,
    /// Placement-group bundles reserved here: group -> bundle index -> resources.
    pub(crate) bundles: HashMap<String, BTreeMap<u32, Resources>>,
}

/// Whether `req` fits in `avail`.
pub(crate) fn fits(avail: &Resources, req: &Resources) -> bool {
    req.iter()
        .all(|(k, v)| *v <= EPS || avail.get(k).copied().unwrap_or(0.0) + EPS >= *v)
}

/// Describes why `req` can never fit in `total`, or `None` when it can.
pub(crate) fn infeasibility(total: &Resources, req: &Resources) -> Option<String> {
    let missing: Vec<String> = req
        .iter()
        .filter(|(k, v)| **v > EPS && total.get(*k).copied().unwrap_or(0.0) + EPS < **v)
        .map(|(k, v)| format!("{k}: requested {v}, node has {}", total.get(k).copied().unwrap_or(0.0)))
        .collect();
    (!missing.is_empty()).then(|| missing.join("; "))
}

/// How many GPU devices a demand takes and how much of each: a fraction
/// below one shares a device; a whole number takes that many whole devices.
/// GPUs are asked for directly or through a placement-group bundle.
fn gpu_shares(res: &Resources) -> (usize, f64) {
    let gpus: f64 = res
        .iter()
        .filter(|(k, _)| *k == "GPU" || k.starts_with("GPU_group_"))
        .map(|(_, v)| *v)
        .sum();
    if gpus <= EPS {
        (0, 0.0)
    } else if gpus < 1.0 {
        (1, gpus)
    } else {
        (gpus.ceil() as usize, 1.0)
    }
}

/// The devices a GPU demand gets: whole devices, lowest ids first; a
/// fraction goes to the fullest device that still has room for it, so
/// fractions pack onto shared devices (two `num_gpus(0.5)` share one). When
/// only the node's total had room (fractions spread over devices), the one
/// with the most left is used.
fn pick_gpus(left: &[f64], devices: usize, share: f64) -> Vec<u32> {
    if devices == 0 {
        return Vec::new();
    }
    if share >= 1.0 {
        return (0..left.len() as u32)
            .filter(|&i| left[i as usize] >= 1.0 - EPS)
            .take(devices)
            .collect();
    }
    let fullest_with_room = (0..left.len())
        .filter(|&i| left[i] + EPS >= share)
        .min_by(|&a, &b| left[a].total_cmp(&left[b]));
    let emptiest = || (0..left.len()).max_by(|&a, &b| left[a].total_cmp(&left[b]));
    fullest_with_room
        .or_else(emptiest)
        .map(|i| vec![i as u32])
        .unwrap_or_default()
}

impl Scheduler {
    pub(crate) fn new(total: Resources, min_workers: usize, idle_timeout: Duration) -> Scheduler {
        let gpus = total.get("GPU").copied().unwrap_or(0.0).floor() as u32;
        Scheduler {
            available: total.clone(),
            total,
            workers: HashMap::new(),
            leases: HashMap::new(),
            pending: VecDeque::new(),
            idle: VecDeque::new(),
            starting: HashMap::new(),
            gpu_left: vec![1.0; gpus as usize],
            next_lease: 1,
            min_workers,
            idle_timeout,
            max_workers: 4096,
            bundles: HashMap::new(),
        }
    }

    /// Reserves a placement group's bundles: their resources leave the
    /// free pool and come back renamed for the group (see
    /// [`group_resource`]). Idempotent; reserves nothing when they do not fit.
    pub(crate) fn reserve_bundles(&mut self, group: &str, bundles: &BTreeMap<u32, Resources>) -> Result<(), String> {
        if let Some(have) = self.bundles.get(group) {
            if bundles.keys().all(|i| have.contains_key(i)) {
                return Ok(());
            }
        }
        let mut sum = Resources::new();
        for b in bundles.values() {
            for (k, v) in b {
                *sum.entry(k.clone()).or_insert(0.0) += v;
            }
        }
        if !fits(&self.available, &sum) {
            return Err(format!(
                "not enough free resources for {sum:?} (free: {:?})",
                self.available
            ));
        }
        for (k, v) in &sum {
            *self.available.entry(k.clone()).or_insert(0.0) -= v;
        }
        let mut add = |k: String, v: f64| {
            *self.total.entry(k.clone()).or_insert(0.0) += v;
            *self.available.entry(k).or_insert(0.0) += v;
        };
        for (i, b) in bundles {
            for (k, v) in b {
                add(group_resource(k, group, Some(*i)), *v);
                add(group_resource(k, group, None), *v);
            }
            add(group_resource("bundle", group, Some(*i)), BUNDLE_MARKER);
            add(group_resource("bundle", group, None), BUNDLE_MARKER);
        }
        self.bundles
            .entry(group.to_string())
            .or_default()
            .extend(bundles.clone());
        Ok(())
    }

    /// Releases a placement group's bundles: what runs in them is stopped,
    /// requests for them fail, their resources go back to the free pool.
    pub(crate) fn release_bundles(&mut self, group: &str) -> Vec<Action> {
        let Some(bundles) = self.bundles.remove(group) else {
            return Vec::new();
        };
        let in_group = |r: &Resources| r.keys().any(|k| group_of(k) == Some(group));
        let mut i = 0;
        while i < self.pending.len() {
            if in_group(&self.pending[i].resources) {
                if let Some(req) = self.pending.remove(i) {
                    let _ = req.reply.send(Err(Error::Infeasible {
                        function: req.display_name.clone(),
                        detail: format!("its placement group {group} was removed"),
                    }));
                }
            } else {
                i += 1;
            }
        }
        let leases: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| in_group(&l.resources))
            .map(|(id, _)| *id)
            .collect();
        let mut actions = Vec::new();
        for id in leases {
            if let Some(w) = self.leases.get(&id).and_then(|l| self.workers.get_mut(&l.worker_id)) {
                w.exit_cause = Some(format!("its placement group {group} was removed"));
            }
            actions.extend(self.return_lease(id, true));
        }
        // Exactly the names `reserve_bundles` added (scanning the maps
        // would cost as much as there are groups).
        for (i, b) in &bundles {
            let names = b
                .keys()
                .map(String::as_str)
                .chain(["bundle"])
                .flat_map(|k| [group_resource(k, group, Some(*i)), group_resource(k, group, None)]);
            for name in names {
                self.total.remove(&name);
                self.available.remove(&name);
            }
        }
        for b in bundles.values() {
            for (k, v) in b {
                *self.available.entry(k.clone()).or_insert(0.0) += v;
            }
        }
        actions.extend(self.dispatch());
        actions
    }

    pub(crate) fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Queued requests by resource shape (for the autoscaler, and in words
    /// for `rayforge status`).
    pub(crate) fn demands(&self) -> Vec<(Resources, u32)> {
        let mut counts: BTreeMap<String, (Resources, u32)> = BTreeMap::new();
        for r in self.pending.iter().filter(|r| !r.reply.is_closed()) {
            let key = format!("{:?}", r.resources);
            counts.entry(key).or_insert_with(|| (r.resources.clone(), 0)).1 += 1;
        }
        counts.into_values().collect()
    }

    /// Whether anything is leased or queued here.
    pub(crate) fn is_busy(&self) -> bool {
        !self.leases.is_empty() || self.pending.iter().any(|r| !r.reply.is_closed())
    }

    /// Takes queued requests that another node can run now off the queue:
    /// `elsewhere(resources)` names a node with room for one (and counts
    /// it as sent there). Only requests queued for at least `min_wait`,
    /// not bound to a placement group and marked movable are moved; the
    /// others keep their order. Returns how many moved.
    pub(crate) fn move_queued(
        &mut self,
        min_wait: Duration,
        mut elsewhere: impl FnMut(&Resources) -> Option<String>,
    ) -> usize {
        let now = Instant::now();
        let mut moved = 0;
        let mut kept = VecDeque::with_capacity(self.pending.len());
        while let Some(mut r) = self.pending.pop_front() {
            let movable = r.moved.is_some()
                && now.duration_since(r.queued_at) >= min_wait
                && !r.resources.keys().any(|k| group_of(k).is_some())
                && !r.reply.is_closed();
            let to = if movable { elsewhere(&r.resources) } else { None };
            match (to, r.moved.take()) {
                (Some(addr), Some(tx)) => {
                    moved += 1;
                    let _ = tx.send(addr);
                }
                (_, back) => {
                    r.moved = back;
                    kept.push_back(r);
                }
            }
        }
        self.pending = kept;
        moved
    }

    pub(crate) fn idle_count(&self) -> usize {
        self.idle.len()
    }

    /// Queues a lease request, or answers it at once when it can never fit.
    pub(crate) fn request(&mut self, req: LeaseRequest) -> Vec<Action> {
        if let Some(why) = infeasibility(&self.total, &req.resources) {
            let _ = req.reply.send(Err(Error::Infeasible {
                function: req.display_name.clone(),
                detail: why,
            }));
            return Vec::new();
        }
        self.pending.push_back(req);
        self.dispatch()
    }

    /// Records a worker process the daemon just started.
    pub(crate) fn worker_starting(&mut self, worker_id: u64, pid: u32, job: &str) {
        self.workers.insert(
            worker_id,
            WorkerInfo {
                pid,
                addr: String::new(),
                state: WorkerState::Starting,
                exit_cause: None,
                killed_for_memory: false,
                blocked: false,
                job: job.to_string(),
                reaped_idle: false,
                asked_to_retire: None,
            },
        );
    }

    /// Counts a worker the daemon starts on its own (prestarted at boot) as
    /// on its way, as `dispatch` counts those it asks for: a request that
    /// arrives before it registers waits for it instead of starting another.
    pub(crate) fn prestarting(&mut self, job: &str) {
        *self.starting.entry(job.to_string()).or_default() += 1;
    }

    /// Sets the process id of a worker recorded before its process started.
    pub(crate) fn set_pid(&mut self, worker_id: u64, pid: u32) {
        if let Some(w) = self.workers.get_mut(&worker_id) {
            w.pid = pid;
        }
    }

    fn done_starting(&mut self, job: &str) {
        if let Some(n) = self.starting.get_mut(job) {
            *n = n.saturating_sub(1);
        }
    }

    /// Ends every worker of a finished job.
    /// Stops a finished job's workers, except those hosting actors (the
    /// actor manager ends those that do not outlive their job).
    pub(crate) fn job_finished(&mut self, job: &str) -> Vec<Action> {
        let leases = &self.leases;
        let hosts_actor = |w: &WorkerInfo| match w.state {
            WorkerState::Leased(l) => leases.get(&l).is_some_and(|l| l.for_actor.is_some()),
            _ => false,
        };
        self.workers
            .iter_mut()
            .filter(|(_, w)| w.job == job && w.state != WorkerState::Dead && !hosts_actor(w))
            .map(|(id, w)| {
                w.exit_cause.get_or_insert_with(|| format!("its job {job} finished"));
                Action::KillWorker {
                    worker_id: *id,
                    pid: w.pid,
                }
            })
            .collect()
    }

    /// A started worker is up and serving at `addr`.
    pub(crate) fn worker_registered(&mut self, worker_id: u64, addr: String) -> Vec<Action> {
        let Some(w) = self.workers.get_mut(&worker_id) else {
            return Vec::new();
        };
        if w.state != WorkerState::Starting {
            return Vec::new();
        }
        w.addr = addr;
        w.state = WorkerState::Idle(Instant::now());
        let job = w.job.clone();
        self.done_starting(&job);
        self.idle.push_back(worker_id);
        self.dispatch()
    }

    /// The daemon failed to start a process for `job`: the requests waiting
    /// for one fail with the reason.
    pub(crate) fn start_failed(&mut self, job: &str, why: String) {
        self.done_starting(job);
        if let Some(i) = self.pending.iter().position(|r| r.job == job) {
            if let Some(req) = self.pending.remove(i) {
                let _ = req
                    .reply
                    .send(Err(Error::Runtime(format!("cannot start a worker process: {why}"))));
            }
        }
    }

    fn grant_resources(&mut self, res: &Resources) -> Vec<u32> {
        for (k, v) in res {
            *self.available.entry(k.clone()).or_insert(0.0) -= v;
        }
        let (devices, share) = gpu_shares(res);
        let ids = pick_gpus(&self.gpu_left, devices, share);
        for &i in &ids {
            self.gpu_left[i as usize] -= share;
        }
        ids
    }

    fn release_resources(&mut self, lease: &LeaseInfo, blocked: bool) {
        for (k, v) in &lease.resources {
            if blocked && k == "CPU" {
                continue; // already lent back while blocked
            }
            *self.available.entry(k.clone()).or_insert(0.0) += v;
        }
        let (_, share) = gpu_shares(&lease.resources);
        for &i in &lease.gpu_ids {
            if let Some(left) = self.gpu_left.get_mut(i as usize) {
                *left = (*left + share).min(1.0);
            }
        }
    }

    /// Grants whatever pending requests fit, oldest first; asks for worker
    /// processes when requests fit but no idle worker is left.
    pub(crate) fn dispatch(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut i = 0;
        let mut waiting_for_workers: HashMap<String, usize> = HashMap::new();
        // Resources of the requests counted as waiting for a worker: a
        // worker is asked for only when its request fits beside them (20
        // one-CPU requests on two free CPUs need two workers, not 20).
        let mut promised = Resources::new();
        while i < self.pending.len() {
            if self.pending[i].reply.is_closed() {
                self.pending.remove(i);
                continue;
            }
            if !fits(&self.available, &self.pending[i].resources) {
                i += 1;
                continue;
            }
            let job = &self.pending[i].job;
            let Some(pos) = self
                .idle
                .iter()
                .position(|w| self.workers.get(w).is_some_and(|w| &w.job == job))
            else {
                let req = &self.pending[i].resources;
                let room_left = req.iter().all(|(k, v)| {
                    *v <= EPS
                        || self.available.get(k).copied().unwrap_or(0.0) - promised.get(k).copied().unwrap_or(0.0) + EPS
                            >= *v
                });
                if room_left {
                    for (k, v) in req {
                        *promised.entry(k.clone()).or_insert(0.0) += v;
                    }
                    *waiting_for_workers.entry(job.clone()).or_default() += 1;
                }
                i += 1;
                continue;
            };
            let Some(worker_id) = self.idle.remove(pos) else { break };
            let Some(req) = self.pending.remove(i) else { break };
            let gpu_ids = self.grant_resources(&req.resources);
            let lease_id = self.next_lease;
            self.next_lease += 1;
            let w = self.workers.get_mut(&worker_id).expect("idle worker is in the table");
            w.state = WorkerState::Leased(lease_id);
            let grant = Grant {
                lease_id,
                worker_id,
                worker_addr: w.addr.clone(),
                gpu_ids: gpu_ids.clone(),
            };
            self.leases.insert(
                lease_id,
                LeaseInfo {
                    worker_id,
                    requester: req.requester,
                    resources: req.resources.clone(),
                    retriable: req.retriable,
                    granted_at: Instant::now(),
                    gpu_ids,
                    for_actor: req.for_actor,
                },
            );
            if let Err(Ok(g)) = req.reply.send(Ok(grant)) {
                // The requester went away: take the lease straight back.
                actions.extend(self.return_lease(g.lease_id, false));
            }
        }
        let mut alive = self.workers.values().filter(|w| w.state != WorkerState::Dead).count()
            + self.starting.values().sum::<usize>();
        let mut jobs: Vec<(String, usize)> = waiting_for_workers.into_iter().collect();
        jobs.sort();
        for (job, waiting) in jobs {
            let starting = self.starting.entry(job.clone()).or_default();
            while *starting < waiting && alive < self.max_workers {
                *starting += 1;
                alive += 1;
                actions.push(Action::StartWorker { job: job.clone() });
            }
        }
        actions
    }

    /// Ends a lease; the worker goes back to the idle pool (or is killed when
    /// `disconnect`).
    pub(crate) fn return_lease(&mut self, lease_id: u64, disconnect: bool) -> Vec<Action> {
        let Some(lease) = self.leases.remove(&lease_id) else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        let blocked = self.workers.get(&lease.worker_id).map(|w| w.blocked).unwrap_or(false);
        self.release_resources(&lease, blocked);
        if let Some(w) = self.workers.get_mut(&lease.worker_id) {
            w.blocked = false;
            if w.state == WorkerState::Leased(lease_id) {
                if disconnect {
                    actions.push(Action::KillWorker {
                        worker_id: lease.worker_id,
                        pid: w.pid,
                    });
                } else {
                    w.state = WorkerState::Idle(Instant::now());
                    self.idle.push_back(lease.worker_id);
                }
            }
        }
        actions.extend(self.dispatch());
        actions
    }

    /// A worker blocked in `get` lends its CPUs back (and takes them again
    /// when unblocked), so nested tasks cannot deadlock the node.
    pub(crate) fn set_blocked(&mut self, worker_id: u64, blocked: bool) -> Vec<Action> {
        let Some(w) = self.workers.get_mut(&worker_id) else {
            return Vec::new();
        };
        let WorkerState::Leased(lease_id) = w.state else {
            return Vec::new();
        };
        if w.blocked == blocked {
            return Vec::new();
        }
        w.blocked = blocked;
        let cpus = self
            .leases
            .get(&lease_id)
            .and_then(|l| l.resources.get("CPU").copied())
            .unwrap_or(0.0);
        let avail = self.available.entry("CPU".into()).or_insert(0.0);
        if blocked {
            *avail += cpus;
        } else {
            *avail -= cpus;
        }
        self.dispatch()
    }

    /// A worker process exited. Returns the lease it held, if any.
    pub(crate) fn worker_exited(&mut self, worker_id: u64, cause: String) -> (Option<LeaseInfo>, Vec<Action>) {
        let Some(w) = self.workers.get_mut(&worker_id) else {
            return (None, Vec::new());
        };
        let prev = std::mem::replace(&mut w.state, WorkerState::Dead);
        if w.exit_cause.is_none() {
            w.exit_cause = Some(cause);
        }
        let blocked = w.blocked;
        let mut lease = None;
        match prev {
            WorkerState::Starting => {
                let job = w.job.clone();
                self.done_starting(&job);
            }
            WorkerState::Idle(_) => self.idle.retain(|id| *id != worker_id),
            WorkerState::Leased(lease_id) => {
                if let Some(l) = self.leases.remove(&lease_id) {
                    self.release_resources(&l, blocked);
                    lease = Some(l);
                }
            }
            WorkerState::Dead => {}
        }
        // The leases it was granted run tasks for an owner that is gone:
        // their workers are ended and their resources freed (else a task in
        // flight when its owner died would hold its CPUs for good).
        let orphaned: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.requester != 0 && l.requester == worker_id)
            .map(|(id, _)| *id)
            .collect();
        let mut actions = Vec::new();
        for id in orphaned {
            actions.extend(self.return_lease(id, true));
        }
        actions.extend(self.dispatch());
        (lease, actions)
    }

    /// Idle workers that have idled past the timeout, beyond the minimum
    /// kept for the node's own program (the oldest idle go first).
    pub(crate) fn reap_idle(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut own_idle = self
            .idle
            .iter()
            .filter(|id| self.workers.get(id).is_some_and(|w| w.job.is_empty()))
            .count();
        let min = self.min_workers;
        let timeout = self.idle_timeout;
        for id in &self.idle {
            let Some(w) = self.workers.get_mut(id) else { continue };
            let WorkerState::Idle(since) = w.state else { continue };
            if now.duration_since(since) < timeout || (w.job.is_empty() && own_idle <= min) {
                continue;
            }
            if w.job.is_empty() {
                own_idle -= 1;
            }
            // Asked already during this idle spell: again after another
            // timeout (what it owned may be gone by then).
            if w.asked_to_retire
                .is_some_and(|at| at >= since && now.duration_since(at) < timeout)
            {
                continue;
            }
            w.asked_to_retire = Some(now);
            actions.push(Action::AskRetire {
                worker_id: *id,
                addr: w.addr.clone(),
                since,
            });
        }
        actions
    }

    /// An idle worker agreed to stop: stops it, unless it was leased since
    /// it was asked (`since` is no longer its idle spell).
    pub(crate) fn retire(&mut self, worker_id: u64, since: Instant) -> Vec<Action> {
        let Some(w) = self.workers.get_mut(&worker_id) else {
            return Vec::new();
        };
        if w.state != WorkerState::Idle(since) {
            return Vec::new();
        }
        w.reaped_idle = true;
        let pid = w.pid;
        self.idle.retain(|id| *id != worker_id);
        vec![Action::KillWorker { worker_id, pid }]
    }

    /// The lease the memory monitor should end: the newest retriable one,
    /// else the newest of all.
    pub(crate) fn memory_victim(&self) -> Option<(u64, u32)> {
        let newest = |retriable: bool| {
            self.leases
                .values()
                .filter(|l| l.retriable == retriable && l.for_actor.is_none())
                .max_by_key(|l| l.granted_at)
                .map(|l| l.worker_id)
        };
        let id = newest(true).or_else(|| newest(false))?;
        self.workers.get(&id).map(|w| (id, w.pid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpu: f64) -> Resources {
        [("CPU".to_string(), cpu)].into_iter().collect()
    }

    fn req(cpu: f64) -> (LeaseRequest, oneshot::Receiver<LeaseResult>) {
        let (tx, rx) = oneshot::channel();
        (
            LeaseRequest {
                resources: res(cpu),
                retriable: true,
                for_actor: None,
                display_name: "f".into(),
                job: String::new(),
                requester: 0,
                reply: tx,
                moved: None,
                queued_at: Instant::now(),
            },
            rx,
        )
    }

    #[test]
    fn queued_requests_move_to_a_node_with_room_after_a_while_in_order() {
        let mut s = Scheduler::new(res(2.0), 8, Duration::from_secs(10));
        let movable = |cpu: f64, ago: Duration| {
            let (mut r, rx) = req(cpu);
            let (mtx, mrx) = oneshot::channel();
            r.moved = Some(mtx);
            r.queued_at = Instant::now() - ago;
            (r, rx, mrx)
        };
        // Nothing runs here yet (no worker): all three queue.
        let (a, _ra, mut ma) = movable(1.0, Duration::from_secs(2));
        let (b, _rb, mut mb) = movable(1.0, Duration::ZERO);
        let (c, _rc) = req(1.0);
        s.request(a);
        s.request(b);
        s.request(c);
        assert_eq!(s.pending_count(), 3);
        // Only the one queued long enough and marked movable moves.
        let moved = s.move_queued(Duration::from_millis(500), |_| Some("other:1".to_string()));
        assert_eq!(moved, 1);
        assert_eq!(ma.try_recv().unwrap(), "other:1");
        assert!(mb.try_recv().is_err());
        assert_eq!(s.pending_count(), 2);
        assert_eq!(s.demands(), vec![(res(1.0), 2)]);
        // No room anywhere: nothing moves.
        assert_eq!(s.move_queued(Duration::ZERO, |_| None), 0);
        assert_eq!(s.pending_count(), 2);
        assert!(s.is_busy());
    }

    fn add_worker(s: &mut Scheduler, id: u64) -> Vec<Action> {
        s.worker_starting(id, id as u32, "");
        s.worker_registered(id, format!("w{id}"))
    }

    #[test]
    fn many_requests_on_few_cpus_start_only_the_workers_that_can_run() {
        let mut s = Scheduler::new(res(2.0), 8, Duration::from_secs(10));
        for id in [1, 2] {
            s.prestarting("");
            s.worker_starting(id, id as u32, "");
        }
        // Twenty one-CPU tasks before the two prestarted workers register:
        // two can run at once, and two workers are on their way.
        let mut replies = Vec::new();
        for _ in 0..20 {
            let (r, rx) = req(1.0);
            assert!(s.request(r).is_empty(), "started a worker that could not run");
            replies.push(rx);
        }
        // Without workers on their way, two (not twenty) are asked for.
        let mut s = Scheduler::new(res(2.0), 8, Duration::from_secs(10));
        let starts: usize = (0..20)
            .map(|_| {
                let (r, rx) = req(1.0);
                replies.push(rx);
                s.request(r).len()
            })
            .sum();
        assert_eq!(starts, 2);
    }

    #[test]
    fn a_request_before_the_prestarted_workers_register_waits_for_them() {
        let mut s = Scheduler::new(res(2.0), 2, Duration::from_secs(10));
        for id in [1, 2] {
            s.prestarting("");
            s.worker_starting(id, id as u32, "");
        }
        let (a, mut ra) = req(1.0);
        assert!(s.request(a).is_empty(), "two workers are on their way: start no third");
        assert!(ra.try_recv().is_err());
        s.worker_registered(1, "w1".into());
        assert_eq!(ra.try_recv().unwrap().unwrap().worker_addr, "w1");
        // Once both are up, a request finding none idle starts one again.
        s.worker_registered(2, "w2".into());
        let (b, _rb) = req(1.0);
        assert!(s.request(b).is_empty(), "w2 is idle");
        let (c, _rc) = req(0.0);
        assert_eq!(s.request(c), vec![Action::StartWorker { job: String::new() }]);
    }

    #[test]
    fn queues_until_resources_free_and_reuses_workers() {
        let mut s = Scheduler::new(res(1.0), 1, Duration::from_secs(10));
        let (a, mut ra) = req(1.0);
        assert_eq!(s.request(a), vec![Action::StartWorker { job: String::new() }]);
        add_worker(&mut s, 1);
        let g = ra.try_recv().unwrap().unwrap();
        assert_eq!(g.worker_addr, "w1");
        let (b, mut rb) = req(1.0);
        assert!(s.request(b).is_empty(), "no CPU left: must queue, not start workers");
        assert!(rb.try_recv().is_err());
        s.return_lease(g.lease_id, false);
        let g2 = rb.try_recv().unwrap().unwrap();
        assert_eq!(g2.worker_id, 1, "idle worker is reused");
        assert_eq!(s.available["CPU"], 0.0);
        s.return_lease(g2.lease_id, false);
        assert_eq!(s.available["CPU"], 1.0);
    }

    #[test]
    fn infeasible_requests_are_answered_at_once() {
        let mut s = Scheduler::new(res(2.0), 0, Duration::from_secs(10));
        let (a, mut ra) = req(8.0);
        assert!(s.request(a).is_empty());
        let err = ra.try_recv().unwrap().unwrap_err();
        assert!(matches!(err, Error::Infeasible { .. }));
        assert!(err.to_string().contains("CPU: requested 8"), "{err}");
        assert_eq!(s.pending_count(), 0);
    }

    #[test]
    fn blocked_worker_lends_its_cpu() {
        let mut s = Scheduler::new(res(1.0), 0, Duration::from_secs(10));
        let (a, mut ra) = req(1.0);
        s.request(a);
        add_worker(&mut s, 1);
        let g = ra.try_recv().unwrap().unwrap();
        let (b, mut rb) = req(1.0);
        s.request(b);
        assert_eq!(s.set_blocked(1, true), vec![Action::StartWorker { job: String::new() }]);
        add_worker(&mut s, 2);
        let g2 = rb.try_recv().unwrap().unwrap();
        assert_eq!(g2.worker_id, 2);
        s.return_lease(g2.lease_id, false);
        s.set_blocked(1, false);
        assert_eq!(s.available["CPU"], 0.0);
        s.return_lease(g.lease_id, false);
        assert_eq!(s.available["CPU"], 1.0);
    }

    #[test]
    fn fractional_gpus_share_a_device_and_whole_ones_take_free_devices() {
        let left = vec![1.0, 1.0];
        assert_eq!(pick_gpus(&left, 1, 0.5), vec![0]);
        // The second half goes to the device already half used.
        assert_eq!(pick_gpus(&[0.5, 1.0], 1, 0.5), vec![0]);
        assert_eq!(pick_gpus(&[0.0, 1.0], 1, 0.5), vec![1]);
        // Whole devices only come from fully free ones.
        assert_eq!(pick_gpus(&[0.5, 1.0], 1, 1.0), vec![1]);
        assert_eq!(pick_gpus(&[1.0, 1.0, 1.0], 2, 1.0), vec![0, 1]);
        let gpu = |n: f64| -> Resources { [("GPU".to_string(), n)].into_iter().collect() };
        assert_eq!(gpu_shares(&gpu(0.25)), (1, 0.25));
        assert_eq!(gpu_shares(&gpu(2.0)), (2, 1.0));
        assert_eq!(gpu_shares(&res(1.0)), (0, 0.0));
    }

    #[test]
    fn dead_worker_frees_its_lease_and_memory_victim_is_newest_retriable() {
        let mut s = Scheduler::new(res(2.0), 0, Duration::from_secs(10));
        let (a, mut ra) = req(1.0);
        let (b, mut rb) = req(1.0);
        s.request(a);
        s.request(b);
        add_worker(&mut s, 1);
        add_worker(&mut s, 2);
        let _ga = ra.try_recv().unwrap().unwrap();
        let gb = rb.try_recv().unwrap().unwrap();
        assert_eq!(s.memory_victim().map(|v| v.0), Some(gb.worker_id));
        let (lease, _) = s.worker_exited(gb.worker_id, "signal 9".into());
        assert!(lease.is_some());
        assert_eq!(s.available["CPU"], 1.0);
        assert_eq!(s.workers[&gb.worker_id].exit_cause.as_deref(), Some("signal 9"));
    }

    #[test]
    fn the_leases_of_a_requester_that_died_are_ended_and_their_workers_killed() {
        let mut s = Scheduler::new(res(2.0), 0, Duration::from_secs(10));
        add_worker(&mut s, 1);
        add_worker(&mut s, 2);
        // Worker 1 runs something that asks for a worker for its task.
        let (owner_task, mut r1) = req(1.0);
        s.request(owner_task);
        let g1 = r1.try_recv().unwrap().unwrap();
        let (mut child, mut r2) = req(1.0);
        child.requester = g1.worker_id;
        s.request(child);
        let g2 = r2.try_recv().unwrap().unwrap();
        assert_eq!(s.available["CPU"], 0.0);
        // The owner dies mid-task: both CPUs come back, the orphan's worker
        // is killed.
        let pid = s.workers[&g2.worker_id].pid;
        let (_, acts) = s.worker_exited(g1.worker_id, "signal 9".into());
        assert!(acts.contains(&Action::KillWorker {
            worker_id: g2.worker_id,
            pid
        }));
        assert_eq!(s.available["CPU"], 2.0);
    }

    #[test]
    fn idle_workers_above_minimum_are_asked_to_stop_and_stop_if_they_agree() {
        let mut s = Scheduler::new(res(2.0), 1, Duration::from_millis(50));
        add_worker(&mut s, 1);
        add_worker(&mut s, 2);
        let later = Instant::now() + Duration::from_millis(100);
        let acts = s.reap_idle(later);
        let [Action::AskRetire { worker_id, since, .. }] = acts.as_slice() else {
            panic!("one worker above the minimum is asked: {acts:?}");
        };
        let (asked, since) = (*worker_id, *since);
        assert!(s.reap_idle(later).is_empty(), "asked once per timeout");
        // A worker that refused is asked again after another timeout.
        let again = s.reap_idle(later + Duration::from_millis(60));
        assert!(matches!(again.as_slice(), [Action::AskRetire { worker_id, .. }] if *worker_id == asked));
        // It agrees: stopped, unless it was leased in between.
        let pid = s.workers[&asked].pid;
        assert_eq!(
            s.retire(asked, since),
            vec![Action::KillWorker { worker_id: asked, pid }]
        );
        assert_eq!(s.idle_count(), 1);
        assert!(s.workers[&asked].reaped_idle);
        let other = if asked == 1 { 2 } else { 1 };
        let stale = Instant::now() - Duration::from_secs(1);
        assert!(
            s.retire(other, stale).is_empty(),
            "a different idle spell is not stopped"
        );
    }

    #[test]
    fn workers_serve_only_their_own_job_and_end_with_it() {
        let mut s = Scheduler::new(res(2.0), 0, Duration::from_secs(10));
        let job_req = |job: &str| {
            let (mut r, rx) = req(1.0);
            r.job = job.to_string();
            (r, rx)
        };
        let (a, mut ra) = job_req("j1");
        assert_eq!(s.request(a), vec![Action::StartWorker { job: "j1".into() }]);
        s.worker_starting(1, 1, "j1");
        s.worker_registered(1, "w1".into());
        let g = ra.try_recv().unwrap().unwrap();
        s.return_lease(g.lease_id, false);
        // An idle j1 worker must not run j2's code: j2 gets its own process.
        let (b, mut rb) = job_req("j2");
        assert_eq!(s.request(b), vec![Action::StartWorker { job: "j2".into() }]);
        assert!(rb.try_recv().is_err());
        s.worker_starting(2, 2, "j2");
        s.worker_registered(2, "w2".into());
        assert_eq!(rb.try_recv().unwrap().unwrap().worker_id, 2);
        // When j1 ends, its workers are stopped; j2's are not.
        assert_eq!(s.job_finished("j1"), vec![Action::KillWorker { worker_id: 1, pid: 1 }]);
        assert!(s.demands().is_empty());
    }

    #[test]
    fn bundles_reserve_rename_and_release_resources() {
        let g = "0123456789abcdef";
        let mut s = Scheduler::new(res(4.0), 0, Duration::from_secs(10));
        let bundles: BTreeMap<u32, Resources> = [(0, res(1.0)), (1, res(2.0))].into_iter().collect();
        s.reserve_bundles(g, &bundles).unwrap();
        assert_eq!(s.available["CPU"], 1.0);
        assert_eq!(s.available[&group_resource("CPU", g, Some(1))], 2.0);
        assert_eq!(s.total[&group_resource("CPU", g, None)], 3.0);
        assert_eq!(group_of(&group_resource("CPU", g, Some(0))), Some(g));
        assert_eq!(group_of("CPU"), None);
        assert_eq!(bundle_index_of(&group_resource("CPU", g, Some(12))), Some(12));
        assert_eq!(bundle_index_of(&group_resource("CPU", g, None)), None);
        assert_eq!(bundle_index_of("CPU"), None);
        // Idempotent; and what does not fit is refused whole.
        s.reserve_bundles(g, &bundles).unwrap();
        assert_eq!(s.available["CPU"], 1.0);
        let big: BTreeMap<u32, Resources> = [(0, res(2.0))].into_iter().collect();
        assert!(s.reserve_bundles("fedcba9876543210", &big).is_err());
        assert_eq!(s.available["CPU"], 1.0);

        // A task in bundle 1 runs; a second one waits; release ends both.
        let (mut a, mut ra) = req(0.0);
        a.resources = [(group_resource("CPU", g, Some(1)), 2.0)].into_iter().collect();
        let acts = s.request(a);
        assert_eq!(acts, vec![Action::StartWorker { job: String::new() }]);
        add_worker(&mut s, 1);
        assert!(ra.try_recv().unwrap().is_ok());
        let (mut b, mut rb) = req(0.0);
        b.resources = [(group_resource("CPU", g, None), 1.0)].into_iter().collect();
        s.request(b);
        // Another group's resources stay when this one goes.
        let h = "fedcba9876543210";
        let one: BTreeMap<u32, Resources> = [(0, res(1.0))].into_iter().collect();
        s.reserve_bundles(h, &one).unwrap();
        let acts = s.release_bundles(g);
        assert!(acts.contains(&Action::KillWorker { worker_id: 1, pid: 1 }), "{acts:?}");
        assert!(matches!(rb.try_recv().unwrap(), Err(Error::Infeasible { .. })));
        assert_eq!(s.available["CPU"], 3.0);
        for m in [&s.total, &s.available] {
            assert!(m.keys().all(|k| group_of(k) != Some(g)), "{m:?}");
            assert_eq!(m.keys().filter(|k| group_of(k) == Some(h)).count(), 4, "{m:?}");
        }
        assert!(s.release_bundles(g).is_empty());
        s.release_bundles(h);
        assert_eq!(s.available["CPU"], 4.0);
        assert!(s.total.keys().all(|k| group_of(k).is_none()), "{:?}", s.total);
    }
}
