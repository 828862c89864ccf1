//! Executing tasks in a worker process, and the `CoreWorkerService` every
//! process serves.
//!
//! Tasks arrive on streams pushed by lease holders and actor callers. Normal
//! tasks, actor construction and sync actor methods run one at a time on the
//! process's task thread (a worker runs one task at a time), except that a
//! sync actor's quick methods run on the runtime thread that received them
//! (see [`INLINE_METHOD_US`]); async actor methods run as futures, up to the
//! actor's `max_concurrency`. A panic fails
//! only its task: the message and location travel back to the caller.

use std::cell::RefCell;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::codec::ObjectBytes;
use crate::context::{self, EnvGuard, TaskContext};
use crate::error::{Error, Result};
use crate::ids::{ObjectId, TaskId};
use crate::proto::{self, core_worker_service_server::CoreWorkerService};
use crate::registry::{self, ActorInstance, AsyncMethod, Returns, SyncMethod};
use crate::session::{
    SessionPaths, ENV_BIND_HOST, ENV_JOB_ID, ENV_NODE_ADDR, ENV_NODE_TCP, ENV_SESSION_DIR, ENV_TOKEN, ENV_WORKER_ID,
};

use super::events::TaskRecorder;
use super::{current, CoreWorker, Location, INLINE_MAX};

struct Job {
    spec: proto::TaskSpec,
    reply: mpsc::Sender<std::result::Result<proto::PushTaskReply, Status>>,
}

/// Runs what is pushed to this worker.
pub(crate) struct Executor {
    jobs: std::sync::mpsc::Sender<Job>,
    async_actor: Mutex<Option<(AsyncMethod, Arc<Semaphore>)>>,
    events: Arc<TaskRecorder>,
    waiting: Mutex<Waiting>,
    /// The sync actor this process hosts, if any.
    actor: Mutex<Option<SyncMethod>>,
    /// Jobs handed to the task thread and not finished.
    on_thread: std::sync::atomic::AtomicUsize,
    /// How long the last sync actor method ran, in microseconds.
    last_us: std::sync::atomic::AtomicU64,
    /// The context of the actor this process hosts (its id, GPUs and
    /// bundle), which its method calls run in.
    actor_ctx: Mutex<Option<Arc<TaskContext>>>,
}

/// Jobs queued for the task thread that have not started, and those of
/// them their caller asked to drop (a task pushed behind another, then
/// cancelled, or taken back for an idle worker).
#[derive(Default)]
struct Waiting {
    queued: HashSet<Vec<u8>>,
    skipped: HashSet<Vec<u8>>,
}

type ReplyTx = mpsc::Sender<std::result::Result<proto::PushTaskReply, Status>>;

/// Sends a reply from the runtime without waiting, unless the stream's
/// buffer is full.
fn reply_now(reply: &ReplyTx, r: proto::PushTaskReply) {
    if let Err(mpsc::error::TrySendError::Full(r)) = reply.try_send(Ok(r)) {
        let reply = reply.clone();
        tokio::spawn(async move {
            let _ = reply.send(r).await;
        });
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records panic messages with their location so the caller sees where a
/// task failed; still prints them like the default hook.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            s.to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_string()
        };
        let loc = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let text = format!("panicked at {loc}: {msg}");
        eprintln!("rayforge worker {}: {text}", std::process::id());
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
    }));
}

fn panic_message() -> String {
    LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .unwrap_or_else(|| "panicked".into())
}

fn reply_err(spec: &proto::TaskSpec, e: Error) -> proto::PushTaskReply {
    proto::PushTaskReply {
        task_id: spec.task_id.clone(),
        returns: Vec::new(),
        error: Some(e.to_proto()),
        num_generated: 0,
        skipped: false,
    }
}

fn failed(spec: &proto::TaskSpec, message: String) -> Error {
    Error::TaskFailed {
        function: spec.display_name.clone(),
        message,
        payload: None,
    }
}

/// Names the task in a failure its user code returned (the macros cannot
/// know the display name). A failure that already names a function (one
/// passed up from a nested call) keeps it; every other error keeps its kind.
fn named(spec: &proto::TaskSpec, e: Error) -> Error {
    match e {
        Error::TaskFailed {
            function,
            message,
            payload,
        } if function.is_empty() => Error::TaskFailed {
            function: spec.display_name.clone(),
            message,
            payload,
        },
        other => other,
    }
}

/// A sync actor method runs on the runtime thread that received it, not on
/// the task thread, when the actor's last call ran within this many
/// microseconds and the task thread has nothing queued (so calls keep their
/// order): a synchronous call then costs two thread hand-offs less. Should
/// such a method block after all, the worker's second runtime thread keeps
/// its I/O going, and a `get` inside it hands the runtime thread's work on
/// (see `CoreWorker::block_on`).
const INLINE_METHOD_US: u64 = 50;

impl Executor {
    fn dispatch(
        self: &Arc<Self>,
        spec: proto::TaskSpec,
        reply: mpsc::Sender<std::result::Result<proto::PushTaskReply, Status>>,
    ) {
        let is_method = spec.kind == proto::TaskKind::ActorMethod as i32;
        let async_actor = if is_method {
            self.async_actor.lock().clone()
        } else {
            None
        };
        match async_actor {
            Some((method, sem)) => {
                let Ok(cw) = current() else { return };
                let events = self.events.clone();
                let ctx = self.context_of(&cw, &spec, proto::TaskKind::ActorMethod);
                cw.clone().handle.spawn(async move {
                    let Ok(_permit) = sem.acquire_owned().await else { return };
                    events.started(&spec);
                    let tid = TaskId::from_bytes(&spec.task_id);
                    let r = context::scope_async(tid, ctx, run_async_method(&cw, &spec, method)).await;
                    events.finished(&spec, &r);
                    let _ = reply.send(Ok(r)).await;
                });
            }
            None if is_method
                && spec.gpu_ids.is_empty()
                && self.on_thread.load(std::sync::atomic::Ordering::Acquire) == 0
                && self.last_us.load(std::sync::atomic::Ordering::Relaxed) < INLINE_METHOD_US =>
            {
                let Ok(cw) = current() else { return };
                let r = self.run_recorded(&cw, &spec);
                reply_now(&reply, r);
            }
            None => {
                self.waiting.lock().queued.insert(spec.task_id.clone());
                self.on_thread.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let _ = self.jobs.send(Job { spec, reply });
            }
        }
    }

    /// Drops a queued task that has not started, answering for it at once
    /// (ahead of the task running now); one that has started runs on.
    fn skip(&self, task_id: Vec<u8>, reply: &ReplyTx) {
        {
            let mut w = self.waiting.lock();
            if !w.queued.remove(&task_id) {
                return;
            }
            w.skipped.insert(task_id.clone());
        }
        let r = proto::PushTaskReply {
            task_id,
            skipped: true,
            ..Default::default()
        };
        reply_now(reply, r);
    }

    /// Runs a task with the sync actor this process hosts (if any), records
    /// its start and end, and for an actor method how long it ran.
    fn run_recorded(self: &Arc<Self>, cw: &Arc<CoreWorker>, spec: &proto::TaskSpec) -> proto::PushTaskReply {
        self.events.started(spec);
        let t0 = std::time::Instant::now();
        let reply = {
            let mut a = self.actor.lock();
            self.run_one(cw, spec, &mut a)
        };
        if spec.kind == proto::TaskKind::ActorMethod as i32 {
            self.last_us
                .store(t0.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        self.events.finished(spec, &reply);
        reply
    }

    /// The task thread: runs jobs one at a time until the process ends.
    fn run_jobs(self: &Arc<Self>, rx: std::sync::mpsc::Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            let skipped = {
                let mut w = self.waiting.lock();
                w.queued.remove(&job.spec.task_id);
                w.skipped.remove(&job.spec.task_id)
            };
            if skipped {
                self.on_thread.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                continue; // answered when it was dropped
            }
            let Ok(cw) = current() else { return };
            let span = tracing::debug_span!("task", name = %job.spec.display_name);
            let _g = span.enter();
            let reply = self.run_recorded(&cw, &job.spec);
            let _ = job.reply.blocking_send(Ok(reply));
            self.on_thread.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    fn run_one(
        self: &Arc<Self>,
        cw: &Arc<CoreWorker>,
        spec: &proto::TaskSpec,
        actor: &mut Option<SyncMethod>,
    ) -> proto::PushTaskReply {
        let cw2 = cw.clone();
        let spec2 = spec.clone();
        // Fast path: every argument travelled inline (no runtime round trip).
        let inline: Option<Vec<ObjectBytes>> = spec
            .args
            .iter()
            .map(|a| match &a.kind {
                Some(proto::task_arg::Kind::Inline(b)) => Some(ObjectBytes::from_vec(b.clone())),
                _ => None,
            })
            .collect();
        let args = match inline {
            Some(a) => a,
            None => match cw.block_on(async move { resolve_args(&cw2, &spec2).await }) {
                Ok(Ok(a)) => a,
                Ok(Err(e)) | Err(e) => return reply_err(spec, e),
            },
        };
        let kind = proto::TaskKind::try_from(spec.kind).unwrap_or(proto::TaskKind::Normal);
        let ctx = self.context_of(cw, spec, kind);
        let env = enter_environment(kind, spec);
        let tid = TaskId::from_bytes(&spec.task_id);
        let outcome = context::scope(tid, ctx.clone(), || self.run_user_code(cw, spec, kind, actor, args));
        if kind == proto::TaskKind::ActorCreation && outcome.is_ok() {
            // An actor's variables and context last as long as it does.
            env.keep();
            *self.actor_ctx.lock() = Some(ctx);
        } else {
            drop(env); // a task's variables are put back as they were
        }
        let cw2 = cw.clone();
        let spec2 = spec.clone();
        match outcome {
            Ok(values) if values.iter().all(|v| v.len() <= INLINE_MAX && v.refs.is_empty()) => {
                inline_reply(spec, values).unwrap_or_else(|e| reply_err(spec, e))
            }
            Ok(values) => match cw.block_on(async move { build_reply(&cw2, &spec2, values).await }) {
                Ok(Ok(r)) => r,
                Ok(Err(e)) | Err(e) => reply_err(spec, e),
            },
            Err(e) => reply_err(spec, e),
        }
    }

    /// The context a task runs in: a method call shares its actor's (no
    /// copy per call), unless it streams (its own emitter); anything else
    /// gets one of its own.
    fn context_of(&self, cw: &Arc<CoreWorker>, spec: &proto::TaskSpec, kind: proto::TaskKind) -> Arc<TaskContext> {
        if kind != proto::TaskKind::ActorMethod {
            return Arc::new(TaskContext::of(spec));
        }
        let actor = self.actor_ctx.lock().clone().unwrap_or_default();
        if !spec.streaming {
            return actor;
        }
        Arc::new(TaskContext {
            emit: Some(context::Emitter::new(generator_emitter(cw.clone(), spec.clone()))),
            ..(*actor).clone()
        })
    }

    /// Runs the user code of a task, an actor's constructor or a method of
    /// a sync actor, turning a panic into a failure of the task.
    fn run_user_code(
        self: &Arc<Self>,
        cw: &Arc<CoreWorker>,
        spec: &proto::TaskSpec,
        kind: proto::TaskKind,
        actor: &mut Option<SyncMethod>,
        args: Vec<ObjectBytes>,
    ) -> Result<Returns> {
        match kind {
            proto::TaskKind::Normal => match registry::function(&spec.function) {
                None => Err(Error::NotFound(format!(
                    "remote function `{}` is not registered in this binary (was it compiled in?)",
                    spec.function
                ))),
                Some(f) if spec.streaming => match f.stream {
                    None => Err(Error::InvalidArgument(format!(
                        "`{}` is not a streaming generator",
                        spec.function
                    ))),
                    Some(stream) => {
                        let mut emit = generator_emitter(cw.clone(), spec.clone());
                        match std::panic::catch_unwind(AssertUnwindSafe(|| stream(args, &mut emit))) {
                            Ok(r) => r.map(|()| Vec::new()).map_err(|e| named(spec, e)),
                            Err(_) => Err(failed(spec, panic_message())),
                        }
                    }
                },
                Some(f) => match std::panic::catch_unwind(AssertUnwindSafe(|| (f.invoke)(args))) {
                    Ok(r) => r.map_err(|e| named(spec, e)),
                    Err(_) => Err(failed(spec, panic_message())),
                },
            },
            proto::TaskKind::ActorCreation => match registry::class(&spec.function) {
                None => Err(Error::NotFound(format!(
                    "actor class `{}` is not registered in this binary",
                    spec.function
                ))),
                Some(c) => match std::panic::catch_unwind(AssertUnwindSafe(|| (c.construct)(args))) {
                    Ok(Ok(ActorInstance::Sync(f))) => {
                        *actor = Some(f);
                        Ok(Vec::new())
                    }
                    Ok(Ok(ActorInstance::Async(f))) => {
                        let n = spec.max_concurrency.max(1) as usize;
                        *self.async_actor.lock() = Some((f, Arc::new(Semaphore::new(n))));
                        Ok(Vec::new())
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(failed(spec, panic_message())),
                },
            },
            proto::TaskKind::ActorMethod => match actor.as_mut() {
                None => Err(Error::Internal(
                    "actor method pushed to a worker hosting no actor".into(),
                )),
                Some(f) => match std::panic::catch_unwind(AssertUnwindSafe(|| f(&spec.function, args))) {
                    Ok(r) => r.map_err(|e| named(spec, e)),
                    Err(_) => Err(failed(spec, panic_message())),
                },
            },
        }
    }
}

/// Sets up the environment user code starts in: `CUDA_VISIBLE_DEVICES`
/// names exactly the GPUs a task or actor holds (and is cleared for one that
/// holds none, which a reused worker may have had set), then the variables
/// its options asked for. A method call runs in its actor's environment,
/// set when the actor was created.
fn enter_environment(kind: proto::TaskKind, spec: &proto::TaskSpec) -> EnvGuard {
    if kind == proto::TaskKind::ActorMethod {
        return EnvGuard::set(std::iter::empty());
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Whether the variable may be set in this process (inherited, or set
    /// for an earlier task): only then does a task without GPUs clear it.
    static MAY_BE_SET: AtomicBool = AtomicBool::new(true);
    // SAFETY: on the thread that runs user code, before it runs; other
    // threads of a worker do not read the environment.
    unsafe {
        if spec.gpu_ids.is_empty() {
            if MAY_BE_SET.swap(false, Ordering::Relaxed) {
                std::env::remove_var(CUDA_VISIBLE_DEVICES);
            }
        } else {
            let ids: Vec<String> = spec.gpu_ids.iter().map(|g| g.to_string()).collect();
            std::env::set_var(CUDA_VISIBLE_DEVICES, ids.join(","));
            MAY_BE_SET.store(true, Ordering::Relaxed);
        }
    }
    EnvGuard::set(&spec.env)
}

/// The variable CUDA (and so libtorch and NCCL) reads to pick devices.
pub(crate) const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";

/// A task must return as many values as it declared.
fn check_return_count(spec: &proto::TaskSpec, values: &Returns) -> Result<()> {
    if spec.kind != proto::TaskKind::ActorCreation as i32 && values.len() != spec.num_returns as usize {
        return Err(failed(
            spec,
            format!("returned {} values, expected {}", values.len(), spec.num_returns),
        ));
    }
    Ok(())
}

/// The reply for small return values holding no references: all inline.
fn inline_reply(spec: &proto::TaskSpec, values: Returns) -> Result<proto::PushTaskReply> {
    let tid = TaskId::from_bytes(&spec.task_id).ok_or_else(|| Error::Internal("bad task id".into()))?;
    check_return_count(spec, &values)?;
    let returns = values
        .into_iter()
        .enumerate()
        .map(|(i, enc)| proto::ReturnObject {
            id: tid.return_id(i as u32).0.to_vec(),
            kind: Some(proto::return_object::Kind::Inline(enc.to_vec())),
            node_addr: String::new(),
            contained: Vec::new(), // only values holding no references come here
        })
        .collect();
    Ok(proto::PushTaskReply {
        task_id: spec.task_id.clone(),
        returns,
        error: None,
        num_generated: 0,
        skipped: false,
    })
}

/// Stores each generated item and reports it to the caller, in order.
fn generator_emitter(
    cw: Arc<CoreWorker>,
    spec: proto::TaskSpec,
) -> impl FnMut(crate::codec::Encoded) -> Result<()> + Send + 'static {
    let tid = TaskId::from_bytes(&spec.task_id).unwrap_or_default();
    let mut index = 0u32;
    move |enc| {
        let id = tid.return_id(index);
        let size = enc.len() as u64;
        if !enc.refs.is_empty() {
            let cw2 = cw.clone();
            let (owner, refs) = (spec.owner_addr.clone(), enc.refs.clone());
            cw.block_on(async move { cw2.lend(&owner, &refs).await })?;
        }
        let kind = match cw.store_value(id, &enc)? {
            Location::Inline(b) => proto::return_object::Kind::Inline(b.as_slice().to_vec()),
            Location::Store(_) => proto::return_object::Kind::InStore(size),
        };
        let mut owner = cw.peer(&spec.owner_addr)?;
        let req = proto::GeneratorItemRequest {
            task_id: spec.task_id.clone(),
            index: index as u64,
            item: Some(proto::ReturnObject {
                id: id.0.to_vec(),
                node_addr: stored_on(&kind, &cw),
                kind: Some(kind),
                contained: ref_protos(&enc.refs),
            }),
        };
        cw.block_on(async move { owner.report_generator_item(req).await })?
            .map_err(|s| Error::rpc("reporting a generated item to the caller", s))?;
        index += 1;
        Ok(())
    }
}

async fn run_async_method(cw: &Arc<CoreWorker>, spec: &proto::TaskSpec, method: AsyncMethod) -> proto::PushTaskReply {
    let args = match resolve_args(cw, spec).await {
        Ok(a) => a,
        Err(e) => return reply_err(spec, e),
    };
    let fut = AssertUnwindSafe(method(spec.function.clone(), args)).catch_unwind();
    match fut.await {
        Ok(Ok(values)) => build_reply(cw, spec, values)
            .await
            .unwrap_or_else(|e| reply_err(spec, e)),
        Ok(Err(e)) => reply_err(spec, named(spec, e)),
        Err(_) => reply_err(spec, failed(spec, panic_message())),
    }
}

/// Fetches every argument's bytes (waiting on the owners as needed).
async fn resolve_args(cw: &CoreWorker, spec: &proto::TaskSpec) -> Result<Vec<ObjectBytes>> {
    let mut out = Vec::with_capacity(spec.args.len());
    for a in &spec.args {
        match &a.kind {
            Some(proto::task_arg::Kind::Inline(b)) => out.push(ObjectBytes::from_vec(b.clone())),
            Some(proto::task_arg::Kind::ByRef(r)) => {
                let id = ObjectId::from_bytes(&r.id).ok_or_else(|| Error::Internal("bad argument id".into()))?;
                out.push(cw.fetch(id, &r.owner_addr).await?);
            }
            None => return Err(Error::Internal("empty task argument".into())),
        }
    }
    Ok(out)
}

/// Turns return values into the reply: small ones inline, large ones into
/// the shared-memory store. References inside them are lent to the caller.
async fn build_reply(cw: &Arc<CoreWorker>, spec: &proto::TaskSpec, values: Returns) -> Result<proto::PushTaskReply> {
    let tid = TaskId::from_bytes(&spec.task_id).ok_or_else(|| Error::Internal("bad task id".into()))?;
    check_return_count(spec, &values)?;
    let mut returns = Vec::with_capacity(values.len());
    for (i, enc) in values.into_iter().enumerate() {
        let id = tid.return_id(i as u32);
        if !enc.refs.is_empty() {
            cw.lend(&spec.owner_addr, &enc.refs).await;
        }
        let contained = ref_protos(&enc.refs);
        let kind = if enc.len() <= INLINE_MAX {
            proto::return_object::Kind::Inline(enc.to_vec())
        } else {
            let cw2 = cw.clone();
            let size = enc.len() as u64;
            let loc = tokio::task::spawn_blocking(move || cw2.store_value(id, &enc))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
            match loc {
                Location::Inline(b) => proto::return_object::Kind::Inline(b.as_slice().to_vec()),
                Location::Store(_) => proto::return_object::Kind::InStore(size),
            }
        };
        returns.push(proto::ReturnObject {
            id: id.0.to_vec(),
            node_addr: stored_on(&kind, cw),
            kind: Some(kind),
            contained,
        });
    }
    Ok(proto::PushTaskReply {
        task_id: spec.task_id.clone(),
        returns,
        error: None,
        num_generated: 0,
        skipped: false,
    })
}

/// The references inside a returned value, for its caller.
fn ref_protos(refs: &[crate::codec::ContainedRef]) -> Vec<proto::ObjectRefProto> {
    refs.iter()
        .map(|r| proto::ObjectRefProto {
            id: r.id.0.to_vec(),
            owner_addr: r.owner_addr.clone(),
        })
        .collect()
}

/// The node a return value is stored on ("" when inline).
fn stored_on(kind: &proto::return_object::Kind, cw: &CoreWorker) -> String {
    match kind {
        proto::return_object::Kind::InStore(_) => cw.node_addr.clone(),
        proto::return_object::Kind::Inline(_) => String::new(),
    }
}

/// The `CoreWorkerService` of this process.
pub(crate) struct WorkerService;

type ReplyStream = Pin<Box<dyn Stream<Item = std::result::Result<proto::PushTaskReply, Status>> + Send>>;

#[tonic::async_trait]
impl CoreWorkerService for WorkerService {
    type PushTasksStream = ReplyStream;

    async fn push_tasks(
        &self,
        req: Request<Streaming<proto::PushTaskRequest>>,
    ) -> std::result::Result<Response<ReplyStream>, Status> {
        let cw = current().map_err(|e| Status::unavailable(e.to_string()))?;
        let exec = cw
            .executor
            .clone()
            .ok_or_else(|| Status::unimplemented("this process does not run tasks"))?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        cw.handle.spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if let Some(spec) = r.spec {
                    exec.dispatch(spec, tx.clone());
                } else if !r.skip_task_id.is_empty() {
                    exec.skip(r.skip_task_id, &tx);
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|r| r))))
    }

    async fn get_object(
        &self,
        req: Request<proto::GetObjectRequest>,
    ) -> std::result::Result<Response<proto::GetObjectReply>, Status> {
        let cw = current().map_err(|e| Status::unavailable(e.to_string()))?;
        let id = ObjectId::from_bytes(&req.into_inner().id).ok_or_else(|| Status::invalid_argument("bad object id"))?;
        Ok(Response::new(cw.serve_object(id).await))
    }

    async fn rebuild_object(
        &self,
        req: Request<proto::RebuildObjectRequest>,
    ) -> std::result::Result<Response<proto::RebuildObjectReply>, Status> {
        let cw = current().map_err(|e| Status::unavailable(e.to_string()))?;
        let r = req.into_inner();
        let id = ObjectId::from_bytes(&r.id).ok_or_else(|| Status::invalid_argument("bad object id"))?;
        let loss = r
            .loss
            .map(|e| Error::from_proto(&e))
            .unwrap_or_else(|| Error::ObjectLost {
                id: id.hex(),
                cause: format!("the node at {} holding it is gone", r.lost_node),
            });
        let error = cw.rebuild(id, &r.lost_node, &loss).err().map(|e| e.to_proto());
        Ok(Response::new(proto::RebuildObjectReply { error }))
    }

    async fn exit_if_idle(
        &self,
        _req: Request<proto::ExitIfIdleRequest>,
    ) -> std::result::Result<Response<proto::ExitIfIdleReply>, Status> {
        let cw = current().map_err(|e| Status::unavailable(e.to_string()))?;
        let owned = cw.num_owned();
        let actors = cw.actor_lifetimes.lock().len();
        let reason = if owned > 0 {
            format!("it owns {owned} objects others may still read")
        } else if actors > 0 {
            format!("it created {actors} actors still in use")
        } else {
            String::new()
        };
        Ok(Response::new(proto::ExitIfIdleReply {
            may_exit: reason.is_empty(),
            reason,
        }))
    }

    async fn update_borrowers(
        &self,
        req: Request<proto::UpdateBorrowersRequest>,
    ) -> std::result::Result<Response<proto::UpdateBorrowersReply>, Status> {
        let cw = current().map_err(|e| Status::unavailable(e.to_string()))?;
        let r = req.into_inner();
        let ids = |v: &[Vec<u8>]| v.iter().filter_map(|b| ObjectId::from_bytes(b)).collect::<Vec<_>>();
        cw.update_borrowers(&r.borrower_addr, &ids(&r.add), &ids(&r.remove));
        Ok(Response::new(proto::UpdateBorrowersReply {}))
    }

    async fn report_generator_item(
        &self,
        req: Request<proto::GeneratorItemRequest>,
    ) -> std::result::Result<Response<proto::GeneratorItemReply>, Status> {
        let cw = current().map_err(|e| Status::unavailable(e.to_string()))?;
        let r = req.into_inner();
        let task = TaskId::from_bytes(&r.task_id).ok_or_else(|| Status::invalid_argument("bad task id"))?;
        let item = r
            .item
            .ok_or_else(|| Status::invalid_argument("generator item without a value"))?;
        cw.generator_item(task, item);
        Ok(Response::new(proto::GeneratorItemReply {}))
    }
}

/// Serves `CoreWorkerService` from the current runtime: on the Unix socket
/// `uds`, or on TCP at `tcp_host` (any free port) when the process must be
/// reachable from other nodes. Returns the address callers dial.
pub(crate) async fn serve(uds: &std::path::Path, tcp_host: Option<&str>) -> Result<String> {
    let svc = proto::core_worker_service_server::CoreWorkerServiceServer::new(WorkerService)
        .max_decoding_message_size(crate::rpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::rpc::MAX_MESSAGE_BYTES);
    let svc = tonic::service::interceptor::InterceptedService::new(svc, crate::rpc::check_token);
    let addr = match tcp_host {
        Some(host) => {
            let router = crate::rpc::tcp_server()?.add_service(svc);
            let (incoming, local) = crate::rpc::bind_tcp(&format!("{host}:0")).await?;
            tokio::spawn(async move {
                if let Err(e) = router.serve_with_incoming(incoming).await {
                    tracing::error!("core worker service stopped: {e}");
                }
            });
            crate::rpc::advertised(local)
        }
        None => {
            let router = crate::rpc::server().add_service(svc);
            let incoming = crate::rpc::bind_uds(uds)?;
            tokio::spawn(async move {
                if let Err(e) = router.serve_with_incoming(incoming).await {
                    tracing::error!("core worker service stopped: {e}");
                }
            });
            uds.to_string_lossy().into()
        }
    };
    Ok(addr)
}

/// Entry point of a worker process: connect to the node, serve, register,
/// then run tasks on this thread until the node goes away.
pub(crate) fn run_worker_process() -> ! {
    // We run before Rust's own start-up code (from a constructor), which is
    // what normally ignores SIGPIPE: a write to a closed socket must be an
    // error, not the end of the process.
    // SAFETY: setting a signal disposition to SIG_IGN is always sound.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    crate::init_logging();
    install_panic_hook();
    let code = match worker_main() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rayforge worker {}: {e}", std::process::id());
            1
        }
    };
    std::process::exit(code)
}

fn worker_main() -> Result<()> {
    let env = |k: &str| std::env::var(k).map_err(|_| Error::Runtime(format!("worker started without {k}")));
    let worker_id: u64 = env(ENV_WORKER_ID)?
        .parse()
        .map_err(|_| Error::Runtime("bad worker id".into()))?;
    let node_addr = env(ENV_NODE_ADDR)?;
    let session = std::path::PathBuf::from(env(ENV_SESSION_DIR)?);
    let opt = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(t) = opt(ENV_TOKEN) {
        crate::rpc::set_token(&t)?;
    }
    let tcp_host = opt(ENV_BIND_HOST);
    let place = super::NodePlace {
        store_dir: session.join("objects"),
        node_addr: opt(ENV_NODE_TCP).unwrap_or_default(),
        job_id: opt(ENV_JOB_ID).unwrap_or_default(),
    };
    // Two runtime threads: a quick sync actor method runs on the one that
    // received it, and should it block after all, the other keeps this
    // process's I/O going.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rayforge-worker")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the worker's runtime", e))?;
    let uds = SessionPaths::worker_sock(&session, worker_id);
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
    let events = Arc::new(TaskRecorder::new(worker_id, place.job_id.clone()));
    let exec = Arc::new(Executor {
        jobs: jobs_tx,
        async_actor: Mutex::new(None),
        events: events.clone(),
        waiting: Mutex::new(Waiting::default()),
        actor: Mutex::new(None),
        on_thread: 0.into(),
        last_us: u64::MAX.into(),
        actor_ctx: Mutex::new(None),
    });
    let (addr, node) = rt.block_on(async {
        let addr = serve(&uds, tcp_host.as_deref()).await?;
        Ok::<_, Error>((addr, crate::rpc::connect(&node_addr).await?))
    })?;
    let node = crate::rpc::node_client(node);
    let cw = CoreWorker::new(
        worker_id,
        addr.clone(),
        false,
        rt.handle().clone(),
        node.clone(),
        place,
        Some(exec.clone()),
    );
    super::install(cw)?;
    let mut n = node.clone();
    rt.block_on(async move {
        n.register_worker(proto::RegisterWorkerRequest {
            worker_id,
            addr,
            pid: std::process::id(),
        })
        .await
    })
    .map_err(|s| Error::rpc("registering with the node", s))?;
    rt.spawn(events.flush_loop(node.clone()));
    // Exit when the node daemon goes away.
    rt.spawn(async move {
        let mut n = node;
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if n.node_info(proto::NodeInfoRequest::default()).await.is_err() {
                std::process::exit(0);
            }
        }
    });
    exec.run_jobs(jobs_rx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller sending more than [`crate::rpc::MAX_MESSAGE_BYTES`] in one
    /// message is refused by the receiving service (which would otherwise
    /// buffer it whole), and the service goes on answering.
    #[test]
    fn a_message_over_the_limit_is_refused_and_the_service_goes_on() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("rf-msg-limit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("worker.sock");
        rt.block_on(async {
            let addr = serve(&uds, None).await.unwrap();
            let ch = crate::rpc::connect(&addr).await.unwrap();
            // A client that sends whatever it is given, as a runaway or
            // hostile one would.
            let mut c = proto::core_worker_service_client::CoreWorkerServiceClient::new(ch)
                .max_encoding_message_size(usize::MAX);
            let big = proto::GetObjectRequest {
                id: vec![0; crate::rpc::MAX_MESSAGE_BYTES + 1],
            };
            let err = c.get_object(big).await.expect_err("an oversized message was taken");
            assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
            assert!(err.message().contains("too large"), "{err}");
            // A small one reaches the handler (which answers, whatever it says).
            let small = c.get_object(proto::GetObjectRequest { id: vec![0; 20] }).await;
            assert!(small
                .as_ref()
                .map_or_else(|s| s.code() != tonic::Code::OutOfRange, |_| true));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
