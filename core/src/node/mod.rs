//! The node daemon: one per node, it runs the worker pool, the local
//! scheduler, the shared-memory object store's accounting, the memory monitor
//! and (in the embedded cluster) the actor table. It serves `NodeService`
//! over a Unix socket; the driver and every worker talk to it there.

pub(crate) mod actors;
pub(crate) mod cluster;
pub(crate) mod http;
pub(crate) mod memory_monitor;
pub(crate) mod observe;
pub(crate) mod placement;
pub(crate) mod scheduler;
pub(crate) mod spawner;
pub(crate) mod strategy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tonic::{Request, Response, Status, Streaming};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids::{new_worker_id, ActorId, ObjectId};
use crate::object_store::StoreManager;
use crate::proto::{self, node_service_server::NodeService};
use actors::ActorTable;
use scheduler::{Action, LeaseRequest, Scheduler};

use crate::resources::Resources;
use crate::session::{
    SessionPaths, ENV_BIND_HOST, ENV_JOB_ID, ENV_NODE_ADDR, ENV_NODE_TCP, ENV_SESSION_DIR, ENV_TOKEN, ENV_WORKER,
    ENV_WORKER_ID,
};

/// Removes session (and spill) directories left by drivers that died without
/// cleaning up: `rayforge-<pid>-...` whose pid is gone.
fn remove_stale_sessions(root: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(root) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("rayforge-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

pub(crate) struct NodeState {
    pub(crate) paths: SessionPaths,
    pub(crate) node_id: String,
    /// TCP address of the node service ("" in the embedded cluster).
    pub(crate) tcp_addr: String,
    pub(crate) cluster: Option<cluster::ClusterLink>,
    cfg: Config,
    exe: PathBuf,
    pub(crate) sched: Mutex<Scheduler>,
    pub(crate) store: Mutex<StoreManager>,
    pub(crate) actors: Mutex<ActorTable>,
    pub(crate) groups: Mutex<placement::GroupTable>,
    children: Mutex<HashMap<u64, u32>>,
    /// Recent task events reported by this node's workers.
    pub(crate) task_events: Mutex<observe::TaskTable>,
    /// Every worker process's log file, oldest first.
    pub(crate) log_files: Mutex<Vec<observe::LogFile>>,
    /// Each job's worker output, for its driver.
    pub(crate) job_output: Mutex<HashMap<String, Arc<observe::JobOutput>>>,
    tasks: Mutex<JoinSet<()>>,
    memory_threshold: f64,
    shutting_down: std::sync::atomic::AtomicBool,
    /// Round-robin position of SPREAD leases.
    pub(crate) spread_next: std::sync::atomic::AtomicUsize,
    /// Worker lease requests received since start.
    lease_requests: std::sync::atomic::AtomicU64,
    /// The key-value store of the embedded cluster (a cluster's node uses
    /// the head's).
    kv: Mutex<crate::kv::KvTable>,
    /// The cluster store (`cluster://`) of the embedded cluster, opened on
    /// first use in the session directory (a cluster's node uses the
    /// head's).
    files: Mutex<Option<Arc<crate::storage::file_store::FileStore>>>,
}

impl NodeState {
    /// The embedded cluster's own file store, opened once (under the lock:
    /// opening clears the store's unfinished uploads, which must never be
    /// another caller's upload in flight).
    fn files(&self) -> std::result::Result<Arc<crate::storage::file_store::FileStore>, Status> {
        let mut files = self.files.lock();
        if let Some(f) = &*files {
            return Ok(f.clone());
        }
        let opened = crate::storage::file_store::FileStore::open(&self.paths.dir.join("storage"), u64::MAX)
            .map_err(|e| Status::internal(e.to_string()))?;
        *files = Some(opened.clone());
        Ok(opened)
    }
}

/// A running node daemon; dropping it does not stop it: call `shutdown`.
#[derive(Clone)]
pub(crate) struct NodeDaemon {
    pub(crate) state: Arc<NodeState>,
}

fn detect_gpus() -> f64 {
    let Ok(rd) = std::fs::read_dir("/dev") else { return 0.0 };
    rd.flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.strip_prefix("nvidia")
                .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_digit()))
        })
        .count() as f64
}

impl NodeDaemon {
    /// Starts the daemon's services on the current tokio runtime: an
    /// embedded single node, or (with `role`) a node of a cluster.
    pub(crate) async fn start(cfg: Config, role: Option<cluster::ClusterRole>) -> Result<NodeDaemon> {
        // Packages, binaries and caches go under it: refused if another
        // user made it.
        crate::util::rayforge_tmp()?;
        let paths = SessionPaths::new(&cfg);
        for dir in [&paths.dir, &paths.spill, &paths.logs] {
            if let Some(parent) = dir.parent() {
                remove_stale_sessions(parent);
            }
        }
        // Names made up here: anything already there is not ours.
        for dir in [&paths.dir, &paths.logs] {
            crate::util::fresh_private_dir(dir)?;
        }
        let cpus = cfg.num_cpus.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0)
        });
        let mut total: Resources = cfg.resources.iter().map(|(k, v)| (k.clone(), *v)).collect();
        total.insert("CPU".into(), cpus);
        total.insert("GPU".into(), cfg.num_gpus.unwrap_or_else(detect_gpus));
        let mem = memory_monitor::read_meminfo().map(|m| m.total).unwrap_or(8 << 30);
        total.insert("memory".into(), mem as f64);
        let capacity = cfg.object_store_memory.unwrap_or(mem * 3 / 10);
        let store = StoreManager::new(paths.store.clone(), paths.spill.clone(), capacity)?;
        // Cluster nodes run the workers of whichever jobs come: none up front.
        let prestart = match role {
            Some(_) => 0,
            None => cfg.prestart_workers.unwrap_or(cpus.ceil() as usize),
        };
        let tcp = match &role {
            Some(r) => Some(crate::rpc::bind_tcp(&format!("{}:{}", r.bind_host, r.port)).await?),
            None => None,
        };
        let tcp_addr = tcp
            .as_ref()
            .map(|(_, a)| crate::rpc::advertised(*a))
            .unwrap_or_default();
        let node_id = ObjectId::for_put().hex()[..16].to_string();
        let record = role.as_ref().and_then(|r| r.gcs.clone());
        let cluster = match role {
            Some(r) => Some(cluster::ClusterLink::new(r)?),
            None => None,
        };
        let idle = Duration::from_secs_f64(cfg.idle_worker_timeout_s.unwrap_or(10.0));
        let exe = std::env::current_exe().map_err(|e| Error::io("locating the program's own binary", e))?;
        let state = Arc::new(NodeState {
            sched: Mutex::new(Scheduler::new(total, prestart, idle)),
            store: Mutex::new(store),
            actors: Mutex::new(ActorTable {
                record: record.clone(),
                ..ActorTable::default()
            }),
            groups: Mutex::new(placement::GroupTable {
                record: record.clone(),
                ..Default::default()
            }),
            children: Mutex::new(HashMap::new()),
            task_events: Mutex::new(observe::TaskTable::default()),
            log_files: Mutex::new(Vec::new()),
            job_output: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            memory_threshold: cfg.memory_usage_threshold.unwrap_or(0.95),
            spread_next: std::sync::atomic::AtomicUsize::new(0),
            lease_requests: std::sync::atomic::AtomicU64::new(0),
            kv: Mutex::new(crate::kv::KvTable::default()),
            files: Mutex::new(None),
            shutting_down: false.into(),
            paths,
            node_id,
            tcp_addr,
            cluster,
            cfg,
            exe,
        });
        let daemon = NodeDaemon { state };
        let incoming = crate::rpc::bind_uds(&daemon.state.paths.node_sock)?;
        let svc = proto::node_service_server::NodeServiceServer::new(daemon.clone())
            .max_decoding_message_size(crate::rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::rpc::MAX_MESSAGE_BYTES);
        let svc = tonic::service::interceptor::InterceptedService::new(svc, crate::rpc::check_token);
        let svc2 = svc.clone();
        daemon.spawn(async move {
            if let Err(e) = crate::rpc::server()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::error!("node service stopped: {e}");
            }
        });
        if let Some((incoming, _)) = tcp {
            let mut server = crate::rpc::tcp_server()?;
            daemon.spawn(async move {
                if let Err(e) = server.add_service(svc2).serve_with_incoming(incoming).await {
                    tracing::error!("node service (TCP) stopped: {e}");
                }
            });
        }
        let d = daemon.clone();
        daemon.spawn(async move { d.housekeeping().await });
        for _ in 0..prestart {
            daemon.state.sched.lock().prestarting("");
            daemon.start_worker(String::new());
        }
        if daemon.state.cluster.is_some() {
            if let Err(e) = daemon.join_cluster(Duration::from_secs(30)).await {
                daemon.shutdown();
                return Err(e);
            }
        }
        if let Some(gcs) = record {
            daemon.state.groups.lock().restore(gcs.groups());
            daemon.readopt_bundles();
            daemon.restore_actors(gcs.actors());
        }
        tracing::info!(
            dir = %daemon.state.paths.dir.display(),
            node = %daemon.state.node_id,
            addr = %daemon.state.tcp_addr,
            cpus,
            store_bytes = capacity,
            "node daemon started"
        );
        Ok(daemon)
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.state.tasks.lock().spawn(f);
    }

    /// Periodic work: reaping idle workers, the memory monitor.
    async fn housekeeping(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last_kill = Instant::now() - Duration::from_secs(10);
        loop {
            tick.tick().await;
            let acts = self.state.sched.lock().reap_idle(Instant::now());
            self.apply(acts);
            if self.state.store.lock().pool_has_idle(Instant::now()) {
                // Unlinking large files frees their pages: off the reactor.
                let d = self.clone();
                let _ = tokio::task::spawn_blocking(move || d.state.store.lock().trim_pool(Instant::now())).await;
            }
            self.check_groups(None);
            if self.state.memory_threshold < 1.0 && last_kill.elapsed() > Duration::from_millis(500) {
                if let Some(m) = memory_monitor::read_meminfo() {
                    let used = m.used_fraction();
                    if used > self.state.memory_threshold {
                        let victim = self.state.sched.lock().memory_victim();
                        if let Some((worker_id, pid)) = victim {
                            let cause = format!(
                                "node memory usage {:.1}% is above the threshold of {:.1}%; the newest \
                                 retriable task was killed to keep the node alive (Config::memory_usage_threshold)",
                                used * 100.0,
                                self.state.memory_threshold * 100.0
                            );
                            tracing::warn!(worker_id, pid, "{cause}");
                            let mut ev = crate::gcs::event(
                                "ERROR",
                                "TASK_KILLED_OOM",
                                format!("node {}: worker {pid} killed: {cause}", self.state.node_id),
                            );
                            ev.node_id = self.state.node_id.clone();
                            self.report_event(ev);
                            {
                                let mut s = self.state.sched.lock();
                                if let Some(w) = s.workers.get_mut(&worker_id) {
                                    w.exit_cause = Some(cause);
                                    w.killed_for_memory = true;
                                }
                            }
                            kill_pid(pid);
                            last_kill = Instant::now();
                        }
                    }
                }
            }
        }
    }

    /// Carries out what the scheduler asked for.
    fn apply(&self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::StartWorker { job } => self.start_worker(job),
                Action::AskRetire { worker_id, addr, since } => {
                    let d = self.clone();
                    self.spawn(async move {
                        // A worker that cannot answer is stopped as before.
                        let (may_exit, why) = match ask_retire(&addr).await {
                            Ok(r) => (r.may_exit, r.reason),
                            Err(e) => (true, e),
                        };
                        if may_exit {
                            let acts = d.state.sched.lock().retire(worker_id, since);
                            d.apply(acts);
                        } else {
                            tracing::debug!(worker_id, "idle worker kept: {why}");
                        }
                    });
                }
                Action::KillWorker { worker_id, pid } => {
                    tracing::debug!(worker_id, pid, "stopping worker");
                    if let Some(w) = self.state.sched.lock().workers.get_mut(&worker_id) {
                        w.exit_cause
                            .get_or_insert_with(|| "stopped by the node (idle or released)".into());
                    }
                    kill_pid(pid);
                }
            }
        }
    }

    /// Starts a worker process running `job`'s program ("" = our own).
    fn start_worker(&self, job: String) {
        if job.is_empty() {
            let rt = cluster::JobRuntime {
                binary: self.state.exe.clone(),
                env: HashMap::new(),
                working_dir: None,
            };
            self.spawn_worker(&job, &rt);
            return;
        }
        let d = self.clone();
        self.spawn(async move {
            match d.job_runtime(&job).await {
                Ok(rt) => d.spawn_worker(&job, &rt),
                Err(e) => {
                    tracing::error!(job = %job, "cannot start a worker for the job: {e}");
                    d.state.sched.lock().start_failed(&job, e.to_string());
                }
            }
        });
    }

    fn spawn_worker(&self, job: &str, rt: &cluster::JobRuntime) {
        if self.state.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let worker_id = new_worker_id();
        let mut cmd = tokio::process::Command::new(&rt.binary);
        cmd.env(ENV_WORKER, "1")
            .env(ENV_NODE_ADDR, &self.state.paths.node_sock)
            .env(ENV_WORKER_ID, worker_id.to_string())
            .env(ENV_SESSION_DIR, &self.state.paths.dir)
            .envs(&self.state.cfg.worker_env)
            .envs(&rt.env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(dir) = &rt.working_dir {
            cmd.current_dir(dir);
        }
        if let Some(link) = self.link() {
            cmd.env(ENV_NODE_TCP, &self.state.tcp_addr)
                .env(ENV_JOB_ID, job)
                .env(ENV_BIND_HOST, &link.role.bind_host)
                .env(ENV_TOKEN, crate::rpc::token().unwrap_or_default());
        }
        // SAFETY: prctl is async-signal-safe; it makes the worker die with us.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        // Recorded before the process exists: under load a fresh worker can
        // register before `spawn` returns here, and must be recognised.
        self.state.sched.lock().worker_starting(worker_id, 0, job);
        // From the lasting thread: forked here, the worker would die with
        // this thread (PR_SET_PDEATHSIG), which may be about to end.
        match spawner::spawn(cmd) {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                self.state.sched.lock().set_pid(worker_id, pid);
                self.state.children.lock().insert(worker_id, pid);
                if self.state.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
                    // Shutdown began while this one started and missed it.
                    kill_pid(pid);
                    return;
                }
                tracing::debug!(worker_id, pid, "started worker process");
                self.capture_output(&mut child, worker_id, pid, job);
                let d = self.clone();
                self.spawn(async move {
                    let status = child.wait().await;
                    let cause = match status {
                        Ok(s) => describe_exit(s),
                        Err(e) => format!("lost track of the process: {e}"),
                    };
                    d.on_worker_exit(worker_id, cause);
                });
            }
            Err(e) => {
                tracing::error!("cannot start worker process {}: {e}", rt.binary.display());
                let mut s = self.state.sched.lock();
                s.workers.remove(&worker_id);
                s.start_failed(job, e.to_string());
            }
        }
    }

    /// Sends a new worker's output to its log file (and, in the embedded
    /// cluster, to our terminal).
    fn capture_output(&self, child: &mut tokio::process::Child, worker_id: u64, pid: u32, job: &str) {
        let path = self.logs_dir().join(format!("worker-{worker_id:016x}-{pid}.log"));
        // The pipes must be drained whatever happens, or the worker blocks
        // once they fill: without a log file its output goes nowhere.
        let file = match std::fs::File::create(&path) {
            Ok(f) => f,
            // The session directory went away with a shutdown: nothing to log.
            Err(_) if self.state.shutting_down.load(std::sync::atomic::Ordering::Relaxed) => return,
            Err(e) => {
                tracing::warn!(pid, "cannot create the worker's log {}: {e}", path.display());
                match std::fs::OpenOptions::new().write(true).open("/dev/null") {
                    Ok(f) => f,
                    Err(_) => return,
                }
            }
        };
        let file = Arc::new(Mutex::new(file));
        self.state.log_files.lock().push(observe::LogFile {
            worker_id,
            pid,
            job_id: job.to_string(),
            path,
        });
        let embedded = self.state.cluster.is_none();
        let forward = (!embedded && !job.is_empty()).then(|| self.job_output(job));
        let echo = |to_stderr: bool| observe::Echo {
            terminal: embedded.then_some(to_stderr),
            forward: forward.clone().map(|tx| (tx, to_stderr)),
        };
        if let Some(out) = child.stdout.take() {
            let f = file.clone();
            self.spawn(observe::pump_output(out, f, pid, echo(false)));
        }
        if let Some(err) = child.stderr.take() {
            self.spawn(observe::pump_output(err, file, pid, echo(true)));
        }
    }

    fn on_worker_exit(&self, worker_id: u64, cause: String) {
        self.state.children.lock().remove(&worker_id);
        self.prune_worker_logs();
        self.state.task_events.lock().worker_died(worker_id, &cause);
        let _ = std::fs::remove_file(SessionPaths::worker_sock(&self.state.paths.dir, worker_id));
        if self.state.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let (_lease, acts) = self.state.sched.lock().worker_exited(worker_id, cause.clone());
        tracing::debug!(worker_id, %cause, "worker exited");
        self.apply(acts);
        // A worker that died (crashed, killed, its task cancelled) takes the
        // actors it created with it; one the node stopped for idleness
        // leaves them to their handles.
        let reaped = self
            .state
            .sched
            .lock()
            .workers
            .get(&worker_id)
            .is_some_and(|w| w.reaped_idle);
        if !reaped {
            self.report_owner_death(worker_id, &cause);
        }
        let actor = self.state.actors.lock().by_worker.remove(&worker_id);
        if let Some(actor_id) = actor {
            let cause = self
                .state
                .sched
                .lock()
                .workers
                .get(&worker_id)
                .and_then(|w| w.exit_cause.clone())
                .unwrap_or(cause);
            self.report_actor_death(actor_id, worker_id, cause);
        }
    }

    /// Stops every worker and removes the session's files.
    pub(crate) fn shutdown(&self) {
        self.state
            .shutting_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let pids: Vec<u32> = self.state.children.lock().values().copied().collect();
        for pid in pids {
            kill_pid(pid);
        }
        self.state.tasks.lock().abort_all();
        let _ = std::fs::remove_dir_all(&self.state.paths.dir);
        let _ = std::fs::remove_dir_all(&self.state.paths.spill);
        let _ = std::fs::remove_dir_all(&self.state.paths.logs);
    }
}

/// Asks an idle worker whether it may stop.
async fn ask_retire(addr: &str) -> std::result::Result<proto::ExitIfIdleReply, String> {
    let call = async {
        let ch = crate::rpc::connect(addr).await.map_err(|e| e.to_string())?;
        crate::rpc::worker_client(ch)
            .exit_if_idle(proto::ExitIfIdleRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()))
}

/// A chunk of an object's bytes, sent without copying them first.
struct ChunkOf(crate::codec::ObjectBytes, usize, usize);

impl AsRef<[u8]> for ChunkOf {
    fn as_ref(&self) -> &[u8] {
        &self.0.as_slice()[self.1..self.2]
    }
}

fn group_reply(r: Result<proto::PlacementGroupRecord>) -> proto::PlacementGroupReply {
    match r {
        Ok(g) => proto::PlacementGroupReply {
            error: None,
            group: Some(g),
        },
        Err(e) => proto::PlacementGroupReply {
            error: Some(e.to_proto()),
            group: None,
        },
    }
}

pub(crate) fn kill_pid(pid: u32) {
    if pid > 0 {
        // SAFETY: plain syscall on a child pid we started.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = s.signal() {
        let name = match sig {
            9 => " (SIGKILL)",
            15 => " (SIGTERM)",
            11 => " (SIGSEGV)",
            6 => " (SIGABRT)",
            _ => "",
        };
        format!("the worker process was killed by signal {sig}{name}")
    } else {
        format!("the worker process exited with code {}", s.code().unwrap_or(-1))
    }
}

impl NodeDaemon {
    /// Waits, counted as demand, until a node with room for `res` joins:
    /// returns it, or a node that fits `res` but is busy once one has been
    /// there for 2 s (the request queues there, and moves on when another
    /// node has room), or `None` once the cluster can no longer grow a node
    /// that fits (the request is then infeasible).
    async fn wait_for_growth(&self, link: &cluster::ClusterLink, res: &Resources) -> Option<String> {
        let _counted = link.wait_for_growth(res);
        let mut fits_busy_since: Option<Instant> = None;
        loop {
            if let Some(addr) = link.free_target(&self.state.node_id, res) {
                return Some(addr);
            }
            if link.any_node_feasible(res) {
                let since = *fits_busy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(2) {
                    if let Some(addr) = self.spillback_target(res) {
                        return Some(addr);
                    }
                }
            } else {
                fits_busy_since = None;
            }
            if !link.may_grow_for(res) || self.state.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
                return self.spillback_target(res);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tonic::async_trait]
impl NodeService for NodeDaemon {
    async fn register_worker(
        &self,
        req: Request<proto::RegisterWorkerRequest>,
    ) -> std::result::Result<Response<proto::RegisterWorkerReply>, Status> {
        let r = req.into_inner();
        let acts = self.state.sched.lock().worker_registered(r.worker_id, r.addr);
        self.apply(acts);
        Ok(Response::new(proto::RegisterWorkerReply {
            store_dir: self.state.paths.store.to_string_lossy().into(),
            session_dir: self.state.paths.dir.to_string_lossy().into(),
        }))
    }

    async fn request_worker_lease(
        &self,
        req: Request<proto::LeaseRequest>,
    ) -> std::result::Result<Response<proto::LeaseReply>, Status> {
        let r = req.into_inner();
        self.state
            .lease_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resources: Resources = r.resources.into_iter().collect();
        let choice = match (&r.strategy, r.no_spillback) {
            (Some(s), false) => match self.strategy_choice(&resources, s, &r.display_name) {
                Ok(c) => c,
                Err(e) => {
                    return Ok(Response::new(proto::LeaseReply {
                        result: Some(proto::lease_reply::Result::Error(e.to_proto())),
                    }))
                }
            },
            _ => strategy::Choice::Default,
        };
        if let strategy::Choice::There(addr) = choice {
            tracing::debug!(to = %addr, "lease sent to another node by its scheduling strategy");
            return Ok(Response::new(proto::LeaseReply {
                result: Some(proto::lease_reply::Result::Spillback(addr)),
            }));
        }
        if !r.no_spillback && choice == strategy::Choice::Default {
            let mut target = self.spillback_target(&resources);
            let locally_infeasible = || scheduler::infeasibility(&self.state.sched.lock().total, &resources).is_some();
            // Before calling a request infeasible, make sure the view is
            // not missing a node that joined since the last heartbeat.
            // A heartbeat reply sent before the node joined can still land
            // after a refresh, and on a loaded machine a refresh can be
            // slow: look a few times over ten seconds (the cluster
            // benchmark's just-joined nodes were once missed within two).
            // (A locally infeasible request goes to any node whose total
            // fits it, busy or not, so no target means no such node in the
            // view. Asking the view separately whether one exists once let
            // a heartbeat landing in between make a feasible request look
            // infeasible.)
            // No node fits it, but the cluster can grow one: wait for a
            // node with room (counted as demand meanwhile) rather than
            // failing as infeasible.
            if let (None, Some(link)) = (&target, self.link()) {
                if locally_infeasible() && link.may_grow_for(&resources) {
                    target = self.wait_for_growth(link, &resources).await;
                }
            }
            if let (None, Some(link)) = (&target, self.link()) {
                let deadline = Instant::now() + Duration::from_secs(10);
                while target.is_none() && locally_infeasible() && Instant::now() <= deadline {
                    link.refresh_view().await;
                    target = self.spillback_target(&resources);
                    if target.is_none() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            // A placement group placed a moment ago may not be in this
            // node's view yet: give the view a few heartbeats.
            let in_group = resources.keys().any(|k| scheduler::group_of(k).is_some());
            if target.is_none() && in_group && self.link().is_some() {
                let deadline = Instant::now() + Duration::from_secs(5);
                while target.is_none() && Instant::now() < deadline && locally_infeasible() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    target = self.spillback_target(&resources);
                }
            }
            // Nothing fits it, and the cluster cannot grow a node that
            // does: say which node types it may launch.
            if let (None, Some(link)) = (&target, self.link()) {
                let why = scheduler::infeasibility(&self.state.sched.lock().total, &resources);
                if let (Some(why), Some(types)) = (why, link.node_types_text()) {
                    let e = Error::Infeasible {
                        function: r.display_name.clone(),
                        detail: format!(
                            "{why}; no node has it, and no node type the autoscaler may launch offers it \
                             (types: {types})"
                        ),
                    };
                    return Ok(Response::new(proto::LeaseReply {
                        result: Some(proto::lease_reply::Result::Error(e.to_proto())),
                    }));
                }
            }
            if let Some(addr) = target {
                tracing::debug!(to = %addr, "lease spilled back to another node");
                return Ok(Response::new(proto::LeaseReply {
                    result: Some(proto::lease_reply::Result::Spillback(addr)),
                }));
            }
        }
        let for_actor = ActorId::from_bytes(&r.for_actor);
        let (tx, rx) = oneshot::channel();
        // A task's request with no scheduling strategy may move to a node
        // with room while queued (an actor's is answered where its manager
        // asked; a strategy chose this node).
        let movable = for_actor.is_none() && r.strategy.is_none();
        let (moved_tx, moved_rx) = oneshot::channel();
        let acts = self.state.sched.lock().request(LeaseRequest {
            resources,
            retriable: r.retriable,
            for_actor,
            display_name: r.display_name,
            job: r.job_id,
            requester: r.requester_id,
            reply: tx,
            moved: movable.then_some(moved_tx),
            queued_at: Instant::now(),
        });
        self.apply(acts);
        let answer = tokio::select! {
            // Moved first: a moved request's reply is dropped too.
            biased;
            Ok(addr) = moved_rx => {
                tracing::debug!(to = %addr, "queued lease moved to a node with room");
                return Ok(Response::new(proto::LeaseReply {
                    result: Some(proto::lease_reply::Result::Spillback(addr)),
                }));
            }
            a = rx => a,
        };
        let result = match answer {
            Ok(Ok(g)) => proto::lease_reply::Result::Lease({
                if let Some(a) = for_actor {
                    // Its death is reported to the actor manager.
                    self.state.actors.lock().by_worker.insert(g.worker_id, a);
                }
                proto::Lease {
                    lease_id: g.lease_id,
                    worker_id: g.worker_id,
                    worker_addr: g.worker_addr,
                    gpu_ids: g.gpu_ids,
                }
            }),
            Ok(Err(e)) => proto::lease_reply::Result::Error(e.to_proto()),
            Err(_) => return Err(Status::unavailable("node is shutting down")),
        };
        Ok(Response::new(proto::LeaseReply { result: Some(result) }))
    }

    async fn return_worker(
        &self,
        req: Request<proto::ReturnWorkerRequest>,
    ) -> std::result::Result<Response<proto::ReturnWorkerReply>, Status> {
        let r = req.into_inner();
        let acts = {
            let mut s = self.state.sched.lock();
            if r.disconnect && !r.cause.is_empty() {
                if let Some(w) = s.leases.get(&r.lease_id).map(|l| l.worker_id) {
                    if let Some(info) = s.workers.get_mut(&w) {
                        info.exit_cause = Some(r.cause.clone());
                    }
                }
            }
            s.return_lease(r.lease_id, r.disconnect)
        };
        self.apply(acts);
        Ok(Response::new(proto::ReturnWorkerReply {}))
    }

    async fn notify_blocked(
        &self,
        req: Request<proto::NotifyBlockedRequest>,
    ) -> std::result::Result<Response<proto::NotifyBlockedReply>, Status> {
        let r = req.into_inner();
        let acts = self.state.sched.lock().set_blocked(r.worker_id, r.blocked);
        self.apply(acts);
        Ok(Response::new(proto::NotifyBlockedReply {}))
    }

    async fn worker_exit_cause(
        &self,
        req: Request<proto::WorkerExitCauseRequest>,
    ) -> std::result::Result<Response<proto::WorkerExitCauseReply>, Status> {
        let id = req.into_inner().worker_id;
        // The exit is noticed asynchronously: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            {
                let s = self.state.sched.lock();
                match s.workers.get(&id) {
                    Some(w) if w.state == scheduler::WorkerState::Dead => {
                        return Ok(Response::new(proto::WorkerExitCauseReply {
                            cause: w.exit_cause.clone().unwrap_or_default(),
                            out_of_memory: w.killed_for_memory,
                            exited: true,
                        }))
                    }
                    None => {
                        return Ok(Response::new(proto::WorkerExitCauseReply {
                            cause: "unknown worker".into(),
                            out_of_memory: false,
                            exited: true,
                        }))
                    }
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                return Ok(Response::new(proto::WorkerExitCauseReply::default()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn create_object(
        &self,
        req: Request<proto::CreateObjectRequest>,
    ) -> std::result::Result<Response<proto::CreateObjectReply>, Status> {
        let r = req.into_inner();
        let id = ObjectId::from_bytes(&r.id).ok_or_else(|| Status::invalid_argument("bad object id"))?;
        let freed: Vec<ObjectId> = r.free.iter().filter_map(|b| ObjectId::from_bytes(b)).collect();
        self.forward_frees(&freed);
        let d = self.clone();
        // Spilling does file I/O: keep it off the reactor.
        let res = tokio::task::spawn_blocking(move || {
            let mut store = d.state.store.lock();
            for f in freed {
                store.free(f);
            }
            store.reserve(id, r.size)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(match res {
            Ok(reuse) => proto::CreateObjectReply {
                error: None,
                reuse: reuse.unwrap_or_default(),
            },
            Err(e) => proto::CreateObjectReply {
                error: Some(e.to_proto()),
                reuse: String::new(),
            },
        }))
    }

    async fn restore_object(
        &self,
        req: Request<proto::RestoreObjectRequest>,
    ) -> std::result::Result<Response<proto::RestoreObjectReply>, Status> {
        let id = ObjectId::from_bytes(&req.into_inner().id).ok_or_else(|| Status::invalid_argument("bad object id"))?;
        let d = self.clone();
        let res = tokio::task::spawn_blocking(move || d.state.store.lock().restore(id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::RestoreObjectReply {
            error: res.err().map(|e| e.to_proto()),
        }))
    }

    async fn free_objects(
        &self,
        req: Request<proto::FreeObjectsRequest>,
    ) -> std::result::Result<Response<proto::FreeObjectsReply>, Status> {
        let ids: Vec<ObjectId> = req
            .into_inner()
            .ids
            .iter()
            .filter_map(|b| ObjectId::from_bytes(b))
            .collect();
        self.forward_frees(&ids);
        let d = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = d.state.store.lock();
            for id in ids {
                s.free(id);
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::FreeObjectsReply {}))
    }

    async fn report_task_events(
        &self,
        req: Request<proto::ReportTaskEventsRequest>,
    ) -> std::result::Result<Response<proto::ReportTaskEventsReply>, Status> {
        let r = req.into_inner();
        if r.has_queued {
            let mut queued = r.queued;
            for ev in &mut queued {
                ev.node_id = self.state.node_id.clone();
            }
            self.state.task_events.lock().record_queued(r.reporter, queued);
        }
        self.record_task_events(r.events);
        Ok(Response::new(proto::ReportTaskEventsReply {}))
    }

    async fn list_tasks(
        &self,
        req: Request<proto::ListStateRequest>,
    ) -> std::result::Result<Response<proto::ListTasksReply>, Status> {
        Ok(Response::new(
            NodeDaemon::list_tasks(self, req.into_inner().cluster).await,
        ))
    }

    async fn list_objects(
        &self,
        req: Request<proto::ListStateRequest>,
    ) -> std::result::Result<Response<proto::ListObjectsReply>, Status> {
        Ok(Response::new(
            NodeDaemon::list_objects(self, req.into_inner().cluster).await,
        ))
    }

    async fn worker_logs(
        &self,
        req: Request<proto::WorkerLogsRequest>,
    ) -> std::result::Result<Response<proto::WorkerLogsReply>, Status> {
        Ok(Response::new(NodeDaemon::worker_logs(self, req.into_inner()).await))
    }

    type StreamWorkerOutputStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = std::result::Result<proto::WorkerOutputLine, Status>> + Send + 'static>,
    >;

    async fn kv_put(
        &self,
        req: Request<proto::KvPutRequest>,
    ) -> std::result::Result<Response<proto::KvPutReply>, Status> {
        match &self.state.cluster {
            Some(link) => link.head.clone().kv_put(req.into_inner()).await,
            None => Ok(Response::new(self.state.kv.lock().put(req.into_inner()))),
        }
    }

    async fn kv_get(
        &self,
        req: Request<proto::KvGetRequest>,
    ) -> std::result::Result<Response<proto::KvGetReply>, Status> {
        match &self.state.cluster {
            Some(link) => link.head.clone().kv_get(req.into_inner()).await,
            None => Ok(Response::new(self.state.kv.lock().get(&req.into_inner()))),
        }
    }

    async fn kv_delete(
        &self,
        req: Request<proto::KvGetRequest>,
    ) -> std::result::Result<Response<proto::KvDeleteReply>, Status> {
        match &self.state.cluster {
            Some(link) => link.head.clone().kv_delete(req.into_inner()).await,
            None => Ok(Response::new(self.state.kv.lock().delete(&req.into_inner()))),
        }
    }

    async fn kv_list(
        &self,
        req: Request<proto::KvListRequest>,
    ) -> std::result::Result<Response<proto::KvListReply>, Status> {
        match &self.state.cluster {
            Some(link) => link.head.clone().kv_list(req.into_inner()).await,
            None => Ok(Response::new(self.state.kv.lock().list(&req.into_inner()))),
        }
    }

    async fn list_actors(
        &self,
        req: Request<proto::ListActorsRequest>,
    ) -> std::result::Result<Response<proto::ListActorsReply>, Status> {
        if let Some(link) = &self.state.cluster {
            return link.head.clone().list_actors(req.into_inner()).await;
        }
        let t = self.state.actors.lock();
        Ok(Response::new(proto::ListActorsReply {
            actors: t.actors.iter().map(|(id, a)| a.to_record(id)).collect(),
        }))
    }

    async fn list_nodes(
        &self,
        req: Request<proto::ListNodesRequest>,
    ) -> std::result::Result<Response<proto::ListNodesReply>, Status> {
        if let Some(link) = &self.state.cluster {
            return link.head.clone().list_nodes(req.into_inner()).await;
        }
        // The embedded cluster is this one node, head and all.
        let mut me = self.entry();
        me.is_head = true;
        me.num_workers = self
            .state
            .sched
            .lock()
            .workers
            .values()
            .filter(|w| w.state != scheduler::WorkerState::Dead)
            .count() as u32;
        Ok(Response::new(proto::ListNodesReply { nodes: vec![me] }))
    }

    async fn list_placement_groups(
        &self,
        req: Request<proto::ListPlacementGroupsRequest>,
    ) -> std::result::Result<Response<proto::ListPlacementGroupsReply>, Status> {
        if let Some(link) = &self.state.cluster {
            return link.head.clone().list_placement_groups(req.into_inner()).await;
        }
        let t = self.state.groups.lock();
        Ok(Response::new(proto::ListPlacementGroupsReply {
            groups: t.groups.values().map(|g| g.rec.clone()).collect(),
        }))
    }

    async fn storage_put(
        &self,
        req: Request<Streaming<proto::StorageChunk>>,
    ) -> std::result::Result<Response<proto::StoragePutReply>, Status> {
        match &self.state.cluster {
            Some(link) => {
                link.head
                    .clone()
                    .storage_put(crate::storage::file_store::forward(req.into_inner()))
                    .await
            }
            None => Ok(Response::new(self.state.files()?.serve_put(req.into_inner()).await)),
        }
    }

    type StorageGetStream = crate::storage::file_store::StorageChunkStream;

    async fn storage_get(
        &self,
        req: Request<proto::StorageGetRequest>,
    ) -> std::result::Result<Response<Self::StorageGetStream>, Status> {
        match &self.state.cluster {
            Some(link) => {
                let s = link.head.clone().storage_get(req.into_inner()).await?.into_inner();
                Ok(Response::new(Box::pin(s)))
            }
            None => Ok(Response::new(self.state.files()?.get(&req.into_inner().key).await?)),
        }
    }

    async fn storage_list(
        &self,
        req: Request<proto::StorageListRequest>,
    ) -> std::result::Result<Response<proto::StorageListReply>, Status> {
        match &self.state.cluster {
            Some(link) => link.head.clone().storage_list(req.into_inner()).await,
            None => Ok(Response::new(
                self.state.files()?.serve_list(req.into_inner().prefix).await,
            )),
        }
    }

    async fn storage_delete(
        &self,
        req: Request<proto::StorageListRequest>,
    ) -> std::result::Result<Response<proto::StorageDeleteReply>, Status> {
        match &self.state.cluster {
            Some(link) => link.head.clone().storage_delete(req.into_inner()).await,
            None => Ok(Response::new(
                self.state.files()?.serve_delete(req.into_inner().prefix).await,
            )),
        }
    }

    async fn stream_worker_output(
        &self,
        req: Request<proto::StreamWorkerOutputRequest>,
    ) -> std::result::Result<Response<Self::StreamWorkerOutputStream>, Status> {
        let r = req.into_inner();
        if r.job_id.is_empty() {
            return Err(Status::invalid_argument("a job id is needed"));
        }
        Ok(Response::new(Box::pin(self.subscribe_output(
            &r.job_id,
            r.after_seq,
            r.until_now,
        ))))
    }

    async fn store_stats(
        &self,
        _req: Request<proto::StoreStatsRequest>,
    ) -> std::result::Result<Response<proto::StoreStatsReply>, Status> {
        let s = self.state.store.lock().stats();
        let (sent, redirected) = self.link().map_or((0, 0), |l| {
            use std::sync::atomic::Ordering::Relaxed;
            (l.sent.load(Relaxed), l.redirected.load(Relaxed))
        });
        Ok(Response::new(proto::StoreStatsReply {
            transfers_sent: sent,
            reads_redirected: redirected,
            used_bytes: s.used_bytes,
            capacity_bytes: s.capacity_bytes,
            num_objects: s.num_objects,
            spilled_bytes: s.spilled_bytes,
            num_spilled: s.num_spilled,
            restored_total: s.restored_total,
            spilled_total: s.spilled_total,
            pooled_bytes: s.pooled_bytes,
            reused_total: s.reused_total,
        }))
    }

    async fn create_actor(
        &self,
        req: Request<proto::CreateActorRequest>,
    ) -> std::result::Result<Response<proto::CreateActorReply>, Status> {
        let error = self.create_actor(req.into_inner()).await.err().map(|e| e.to_proto());
        Ok(Response::new(proto::CreateActorReply { error }))
    }

    async fn get_actor_info(
        &self,
        req: Request<proto::GetActorInfoRequest>,
    ) -> std::result::Result<Response<proto::GetActorInfoReply>, Status> {
        match self.actor_info(req.into_inner()).await {
            Ok(r) => Ok(Response::new(r)),
            Err(e) => Ok(Response::new(proto::GetActorInfoReply {
                error: Some(e.to_proto()),
                ..Default::default()
            })),
        }
    }

    async fn kill_actor(
        &self,
        req: Request<proto::KillActorRequest>,
    ) -> std::result::Result<Response<proto::KillActorReply>, Status> {
        let error = self.kill_actor(req.into_inner()).await.err().map(|e| e.to_proto());
        Ok(Response::new(proto::KillActorReply { error }))
    }

    async fn create_placement_group(
        &self,
        req: Request<proto::PlacementGroupRecord>,
    ) -> std::result::Result<Response<proto::PlacementGroupReply>, Status> {
        Ok(Response::new(group_reply(self.create_group(req.into_inner()).await)))
    }

    async fn get_placement_group(
        &self,
        req: Request<proto::GetPlacementGroupRequest>,
    ) -> std::result::Result<Response<proto::PlacementGroupReply>, Status> {
        Ok(Response::new(group_reply(self.get_group(req.into_inner()).await)))
    }

    async fn remove_placement_group(
        &self,
        req: Request<proto::GetPlacementGroupRequest>,
    ) -> std::result::Result<Response<proto::PlacementGroupReply>, Status> {
        Ok(Response::new(group_reply(self.remove_group(req.into_inner()).await)))
    }

    async fn reserve_bundles(
        &self,
        req: Request<proto::ReserveBundlesRequest>,
    ) -> std::result::Result<Response<proto::ReserveBundlesReply>, Status> {
        let r = req.into_inner();
        let bundles = r
            .bundles
            .into_iter()
            .map(|(i, b)| (i, b.resources.into_iter().collect::<Resources>()))
            .collect();
        let refused = {
            let mut s = self.state.sched.lock();
            s.reserve_bundles(&r.group_id, &bundles).err().unwrap_or_default()
        };
        if refused.is_empty() {
            tracing::debug!(group = %r.group_id, "bundles reserved");
            let acts = self.state.sched.lock().dispatch();
            self.apply(acts);
        }
        Ok(Response::new(proto::ReserveBundlesReply { refused }))
    }

    async fn release_bundles(
        &self,
        req: Request<proto::ReleaseBundlesRequest>,
    ) -> std::result::Result<Response<proto::ReleaseBundlesReply>, Status> {
        let id = req.into_inner().group_id;
        let acts = self.state.sched.lock().release_bundles(&id);
        tracing::debug!(group = %id, "bundles released");
        self.apply(acts);
        Ok(Response::new(proto::ReleaseBundlesReply {}))
    }

    async fn actor_worker_died(
        &self,
        req: Request<proto::ActorWorkerDiedRequest>,
    ) -> std::result::Result<Response<proto::ActorWorkerDiedReply>, Status> {
        let r = req.into_inner();
        if r.owner_died {
            self.owner_died(r.worker_id, &r.cause);
            return Ok(Response::new(proto::ActorWorkerDiedReply {}));
        }
        let id = ActorId::from_bytes(&r.actor_id).ok_or_else(|| Status::invalid_argument("bad actor id"))?;
        self.actor_process_died(id, Some(r.worker_id), r.cause);
        Ok(Response::new(proto::ActorWorkerDiedReply {}))
    }

    async fn node_info(
        &self,
        req: Request<proto::NodeInfoRequest>,
    ) -> std::result::Result<Response<proto::NodeInfoReply>, Status> {
        let whole = req.into_inner().cluster;
        let nodes = match (&self.state.cluster, whole) {
            (Some(link), true) => link.alive_nodes(),
            _ => Vec::new(),
        };
        let s = self.state.sched.lock();
        let (total, available): (HashMap<String, f64>, HashMap<String, f64>) = if nodes.is_empty() {
            (
                s.total.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                s.available.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            )
        } else {
            (
                sum_resources(nodes.iter().map(|n| &n.total)),
                sum_resources(nodes.iter().map(|n| &n.available)),
            )
        };
        Ok(Response::new(proto::NodeInfoReply {
            total,
            available,
            num_workers: s
                .workers
                .values()
                .filter(|w| w.state != scheduler::WorkerState::Dead)
                .count() as u32,
            num_idle_workers: s.idle_count() as u32,
            pending_leases: s.pending_count() as u32,
            node_id: self.state.node_id.clone(),
            addr: self.state.tcp_addr.clone(),
            store_dir: self.state.paths.store.to_string_lossy().into(),
            lease_requests: self.state.lease_requests.load(std::sync::atomic::Ordering::Relaxed),
        }))
    }

    async fn pull_object(
        &self,
        req: Request<proto::PullObjectRequest>,
    ) -> std::result::Result<Response<proto::PullObjectReply>, Status> {
        let r = req.into_inner();
        let id = ObjectId::from_bytes(&r.id).ok_or_else(|| Status::invalid_argument("bad object id"))?;
        let error = self.pull_object(id, r.from_addr).await.err().map(|e| e.to_proto());
        Ok(Response::new(proto::PullObjectReply { error }))
    }

    type ReadObjectStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = std::result::Result<proto::ObjectChunk, Status>> + Send>>;

    async fn read_object(
        &self,
        req: Request<proto::ReadObjectRequest>,
    ) -> std::result::Result<Response<Self::ReadObjectStream>, Status> {
        use futures::StreamExt;
        let r = req.into_inner();
        let id = ObjectId::from_bytes(&r.id).ok_or_else(|| Status::invalid_argument("bad object id"))?;
        self.finish_pull(id).await;
        let mut guard = match self.plan_read(id, &r.requester_addr, r.no_redirect) {
            cluster::ReadPlan::Send(g) => g,
            cluster::ReadPlan::Redirect(to) => {
                tracing::debug!(object = %id.hex(), reader = %r.requester_addr, to = %to, "redirecting a read");
                let first = proto::ObjectChunk {
                    redirect: to,
                    ..Default::default()
                };
                return Ok(Response::new(futures::stream::iter([Ok(first)]).boxed()));
            }
            cluster::ReadPlan::Busy => {
                let first = proto::ObjectChunk {
                    busy: true,
                    ..Default::default()
                };
                return Ok(Response::new(futures::stream::iter([Ok(first)]).boxed()));
            }
        };
        let d = self.clone();
        let bytes = tokio::task::spawn_blocking(move || -> Result<crate::codec::ObjectBytes> {
            if !d.state.store.lock().contains(&id) {
                return Err(Error::ObjectLost {
                    id: id.hex(),
                    cause: format!("node {} does not hold it (freed)", d.state.tcp_addr),
                });
            }
            for _ in 0..2 {
                if let Some(b) = crate::object_store::map_object(&d.state.paths.store, &id)? {
                    return Ok(b);
                }
                d.state.store.lock().restore(id)?;
            }
            Err(Error::ObjectLost {
                id: id.hex(),
                cause: "it vanished while being read".into(),
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::not_found(e.to_string()))?;
        self.note_copy(id, &r.requester_addr);
        let total = bytes.as_slice().len();
        let chunks = total.div_ceil(crate::gcs::CHUNK).max(1);
        let s = futures::stream::iter(0..chunks).map(move |i| {
            let lo = i * crate::gcs::CHUNK;
            let hi = (lo + crate::gcs::CHUNK).min(total);
            // The guard lives as long as the stream: the last chunk handed
            // out makes the reader a holder of a complete copy.
            let g = &mut guard;
            g.finished = i + 1 == chunks;
            Ok(proto::ObjectChunk {
                total: if i == 0 { total as u64 } else { 0 },
                data: bytes::Bytes::from_owner(ChunkOf(bytes.clone(), lo, hi)),
                ..Default::default()
            })
        });
        Ok(Response::new(s.boxed()))
    }
}

/// Resource maps added up by name.
fn sum_resources<'a, M>(maps: impl Iterator<Item = &'a M>) -> HashMap<String, f64>
where
    M: 'a,
    &'a M: IntoIterator<Item = (&'a String, &'a f64)>,
{
    let mut out = HashMap::new();
    for m in maps {
        for (k, v) in m {
            *out.entry(k.clone()).or_default() += v;
        }
    }
    out
}
