//! What the code running now can learn about where it runs: its node (and
//! the address other nodes reach it at), its job, the task or actor it is
//! part of, the GPUs it holds and its placement-group bundle — what a
//! library needs to wire processes together (Train's rendezvous: rank 0
//! publishes `node_ip:port`; NCCL picks the device from the GPU ids).
//!
//! The executor sets the task's part around each task it runs ([`scope`]
//! for synchronous code, [`scope_async`] for async actor methods): the task
//! id, and a shared context (an actor's method calls all share their
//! actor's, so a call costs no copy); the node's part is asked of the node
//! once per process.

use std::cell::RefCell;
use std::sync::Arc;

use crate::codec::Encoded;
use crate::error::{Error, Result};
use crate::ids::{ActorId, TaskId};
use crate::proto;
use crate::worker;

/// Where the calling code runs (see [`runtime_context`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RuntimeContext {
    /// The node's id (as [`crate::node_id`] and `rayforge list nodes`).
    pub node_id: String,
    /// The node service's `host:port`, as other nodes dial it ("" on the
    /// embedded cluster, which has no TCP service).
    pub node_address: String,
    /// The host other processes reach this node at: the host of
    /// `node_address`, or `127.0.0.1` on the embedded cluster. A process that
    /// listens for its peers binds there.
    pub node_ip: String,
    /// The job ("" on the embedded cluster).
    pub job_id: String,
    /// Whether this is the driver (the program that called `init`).
    pub is_driver: bool,
    /// The task running now (an actor method call is a task too); `None` in
    /// the driver.
    pub task_id: Option<TaskId>,
    /// The actor this process hosts, inside an actor.
    pub actor_id: Option<ActorId>,
    /// The GPUs the task or actor holds (also in `CUDA_VISIBLE_DEVICES`).
    pub gpu_ids: Vec<u32>,
    /// The placement group it runs in.
    pub placement_group: Option<String>,
    /// Its bundle in that group; `None` when any bundle would do.
    pub bundle_index: Option<usize>,
}

/// The task-dependent part of the context (an actor's method calls share
/// their actor's; each call only has its own task id).
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskContext {
    pub(crate) actor_id: Option<ActorId>,
    pub(crate) gpu_ids: Vec<u32>,
    pub(crate) placement_group: Option<String>,
    pub(crate) bundle_index: Option<usize>,
    /// Where a streaming actor method's items go, while one runs.
    pub(crate) emit: Option<Emitter>,
}

/// Hands each item of a streaming actor method to its caller (the
/// executor makes one per streaming call; [`emit`] uses the current one).
#[derive(Clone)]
pub(crate) struct Emitter(Arc<parking_lot::Mutex<EmitFn>>);

type EmitFn = Box<dyn FnMut(Encoded) -> Result<()> + Send>;

impl Emitter {
    pub(crate) fn new(f: impl FnMut(Encoded) -> Result<()> + Send + 'static) -> Emitter {
        Emitter(Arc::new(parking_lot::Mutex::new(Box::new(f))))
    }
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Emitter")
    }
}

/// Sends one item of the streaming actor method running now to its caller.
pub(crate) fn emit(item: Encoded) -> Result<()> {
    let emitter = current_task()
        .and_then(|(_, t)| t.emit.clone())
        .ok_or_else(|| Error::Internal("a streaming method's item was emitted outside a streaming call".into()))?;
    let mut f = emitter.0.lock();
    (*f)(item)
}

impl TaskContext {
    /// The context of a task or an actor's creation (an actor's method
    /// calls run in the context of its creation).
    pub(crate) fn of(spec: &proto::TaskSpec) -> TaskContext {
        let in_group = !spec.placement_group.is_empty();
        TaskContext {
            actor_id: ActorId::from_bytes(&spec.actor_id),
            gpu_ids: spec.gpu_ids.clone(),
            placement_group: in_group.then(|| spec.placement_group.clone()),
            bundle_index: usize::try_from(spec.bundle_index).ok().filter(|_| in_group),
            emit: None,
        }
    }
}

/// The task running now and its context.
type Current = (Option<TaskId>, Arc<TaskContext>);

thread_local! {
    static TASK: RefCell<Option<Current>> = const { RefCell::new(None) };
}

tokio::task_local! {
    static ASYNC_TASK: Current;
}

/// Runs `f` (synchronous user code) as task `task` in context `ctx`.
pub(crate) fn scope<R>(task: Option<TaskId>, ctx: Arc<TaskContext>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Current>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            TASK.with(|t| *t.borrow_mut() = prev);
        }
    }
    let prev = TASK.with(|t| t.borrow_mut().replace((task, ctx)));
    let _restore = Restore(prev);
    f()
}

/// Runs `f` (an async actor method) as task `task` in context `ctx`.
pub(crate) async fn scope_async<F: std::future::Future>(
    task: Option<TaskId>,
    ctx: Arc<TaskContext>,
    f: F,
) -> F::Output {
    ASYNC_TASK.scope((task, ctx), f).await
}

fn current_task() -> Option<Current> {
    ASYNC_TASK
        .try_with(|c| c.clone())
        .ok()
        .or_else(|| TASK.with(|t| t.borrow().clone()))
}

/// Where the calling code runs: node, job, task, actor, GPUs and placement
/// group (as Ray's `ray.get_runtime_context()`).
///
/// ```no_run
/// #[rayforge::remote]
/// fn whereabouts() -> (String, Vec<u32>) {
///     let ctx = rayforge::runtime_context().expect("inside a task");
///     (ctx.node_ip, ctx.gpu_ids)
/// }
///
/// # fn main() -> rayforge::Result<()> {
/// rayforge::init(rayforge::Config::default())?;
/// let ctx = rayforge::runtime_context()?;
/// assert!(ctx.is_driver && ctx.task_id.is_none());
/// let (ip, gpus) = whereabouts::remote().get()?;
/// assert_eq!(ip, "127.0.0.1");
/// assert!(gpus.is_empty());
/// # Ok(()) }
/// ```
pub fn runtime_context() -> Result<RuntimeContext> {
    let cw = worker::current()?;
    cw.block_on(runtime_context_async())?
}

/// Async form of [`runtime_context`].
pub async fn runtime_context_async() -> Result<RuntimeContext> {
    let task = current_task();
    let cw = worker::current()?;
    let (node_id, node_address) = cw.node_identity().await?;
    let node_ip = match node_address.rsplit_once(':') {
        Some((host, _)) if !host.is_empty() => host.trim_matches(['[', ']']).to_string(),
        _ => "127.0.0.1".to_string(),
    };
    let (task_id, t) = match task {
        Some((id, ctx)) => (id, (*ctx).clone()),
        None => (None, TaskContext::default()),
    };
    Ok(RuntimeContext {
        node_id,
        node_address,
        node_ip,
        job_id: cw.job_id.clone(),
        is_driver: cw.is_driver,
        task_id,
        actor_id: t.actor_id,
        gpu_ids: t.gpu_ids,
        placement_group: t.placement_group,
        bundle_index: t.bundle_index,
    })
}

/// Sets environment variables, putting each back as it was when dropped
/// (unless `keep`).
pub(crate) struct EnvGuard {
    saved: Vec<(String, Option<std::ffi::OsString>)>,
}

impl EnvGuard {
    /// Sets `vars`. Call only from the thread that runs user code, before it
    /// runs: other threads of a worker do not read the environment.
    pub(crate) fn set<'a>(vars: impl IntoIterator<Item = (&'a String, &'a String)>) -> EnvGuard {
        let mut saved = Vec::new();
        for (k, v) in vars {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                tracing::warn!(name = %k, "skipping an environment variable with an invalid name or value");
                continue;
            }
            saved.push((k.clone(), std::env::var_os(k)));
            // SAFETY: see the method's contract: no other thread of this
            // process reads the environment while user code is started.
            unsafe { std::env::set_var(k, v) };
        }
        EnvGuard { saved }
    }

    /// Keeps the variables set (an actor's, for its process's life).
    pub(crate) fn keep(mut self) {
        self.saved.clear();
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        for (k, v) in self.saved.drain(..).rev() {
            // SAFETY: as in `set`: on the task thread, after user code ran.
            unsafe {
                match v {
                    Some(v) => std::env::set_var(&k, v),
                    None => std::env::remove_var(&k),
                }
            }
        }
    }
}
