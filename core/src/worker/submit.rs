//! Turning a user's call into a task the runtime runs: arguments encoded
//! (small ones inline, large ones stored as objects owned here), the spec
//! built, and the task handed to the submitter, the actor caller or the
//! node (actor creation). The macros reach these through
//! `rayforge::__private`.

use std::sync::Arc;

use crate::codec::{self, Encoded};
use crate::error::{Error, Result};
use crate::generator::{self, ObjectRefGenerator};
use crate::ids::{ActorId, TaskId};
use crate::object_ref::{self, Arg, IntoArg, ObjectRef};
use crate::options::{ActorOptions, BundleTarget, TaskOptions};
use crate::{proto, worker, ActorHandle, Value};

/// An argument ready to send.
pub enum PreparedArg {
    /// Encoded value.
    Value(Encoded),
    /// Reference.
    Ref(ObjectRef<()>),
}

/// Encodes an argument.
pub fn prepare_arg<T: Value>(a: impl IntoArg<T>) -> Result<PreparedArg> {
    match a.into_arg() {
        Arg::Value(v) => Ok(PreparedArg::Value(codec::encode_value(v)?)),
        Arg::Ref(r) => Ok(PreparedArg::Ref(r.cast())),
    }
}

fn prepare_spec(
    cw: &Arc<worker::CoreWorker>,
    args: Vec<Result<PreparedArg>>,
) -> Result<(Vec<proto::TaskArg>, Vec<Arc<object_ref::RefHandle>>)> {
    let mut out = Vec::with_capacity(args.len());
    let mut pins = Vec::new();
    for a in args {
        match a? {
            PreparedArg::Value(enc) => {
                if enc.len() <= worker::INLINE_MAX && enc.refs.is_empty() {
                    out.push(proto::TaskArg {
                        kind: Some(proto::task_arg::Kind::Inline(enc.to_vec())),
                    });
                } else {
                    // Large values (or ones holding references) become
                    // objects of their own, owned here.
                    let h = cw.put_encoded(enc)?;
                    out.push(proto::TaskArg {
                        kind: Some(proto::task_arg::Kind::ByRef(proto::ObjectRefProto {
                            id: h.id.0.to_vec(),
                            owner_addr: h.owner.clone(),
                        })),
                    });
                    pins.push(h);
                }
            }
            PreparedArg::Ref(r) => {
                out.push(proto::TaskArg {
                    kind: Some(proto::task_arg::Kind::ByRef(proto::ObjectRefProto {
                        id: r.handle.id.0.to_vec(),
                        owner_addr: r.handle.owner.clone(),
                    })),
                });
                pins.push(r.handle.clone());
            }
        }
    }
    Ok((out, pins))
}

fn failed_refs<T>(n: u32, cw: Option<&Arc<worker::CoreWorker>>, e: &Error) -> Vec<ObjectRef<T>> {
    let tid = TaskId::new();
    (0..n)
        .map(|i| {
            let id = tid.return_id(i);
            match cw {
                Some(cw) => {
                    let h = cw.own_pending(id);
                    cw.resolve(id, worker::ObjState::Failed(e.clone()), Vec::new());
                    ObjectRef::from_handle(h)
                }
                None => ObjectRef::from_handle(object_ref::RefHandle::new(id, String::new())),
            }
        })
        .collect()
}

/// The spec of a remote function call owned by this process.
fn normal_spec(
    cw: &worker::CoreWorker,
    tid: TaskId,
    name: &'static str,
    opts: &TaskOptions,
    args: Vec<proto::TaskArg>,
    num_returns: u32,
    streaming: bool,
) -> proto::TaskSpec {
    let (placement_group, bundle_index) = bundle_of(&opts.placement_group);
    proto::TaskSpec {
        task_id: tid.0.to_vec(),
        kind: proto::TaskKind::Normal as i32,
        function: name.to_string(),
        args,
        num_returns,
        owner_addr: cw.addr.clone(),
        display_name: name.to_string(),
        streaming,
        placement_group,
        bundle_index,
        env: opts.env.clone().into_iter().collect(),
        ..Default::default()
    }
}

/// The wire form of a placement-group target: the group ("" none) and
/// the bundle (-1 any).
fn bundle_of(t: &Option<BundleTarget>) -> (String, i32) {
    match t {
        Some(t) => (t.group.clone(), t.bundle.map_or(-1, |b| b as i32)),
        None => (String::new(), -1),
    }
}

/// A remote function call's options checked, its resource demand, and its
/// arguments ready to send (with the objects they pin).
#[allow(clippy::type_complexity)]
fn prepare_task(
    cw: &Arc<worker::CoreWorker>,
    opts: &TaskOptions,
    args: Vec<Result<PreparedArg>>,
) -> Result<(
    crate::resources::Resources,
    (Vec<proto::TaskArg>, Vec<Arc<object_ref::RefHandle>>),
)> {
    opts.scheduling_strategy.validate()?;
    let resources = opts.demand()?;
    Ok((resources, prepare_spec(cw, args)?))
}

/// Submits a remote function call; returns its `num_returns` references.
pub fn submit_task<T>(
    name: &'static str,
    opts: &TaskOptions,
    args: Vec<Result<PreparedArg>>,
    num_returns: u32,
) -> Vec<ObjectRef<T>> {
    let cw = match worker::current() {
        Ok(cw) => cw,
        Err(e) => return failed_refs(num_returns, None, &e),
    };
    let (resources, (args, pins)) = match prepare_task(&cw, opts, args) {
        Ok(p) => p,
        Err(e) => return failed_refs(num_returns, Some(&cw), &e),
    };
    let tid = TaskId::new();
    let refs: Vec<ObjectRef<T>> = (0..num_returns)
        .map(|i| ObjectRef::from_handle(cw.own_pending(tid.return_id(i))))
        .collect();
    let spec = normal_spec(&cw, tid, name, opts, args, num_returns, false);
    worker::submitter::TaskSubmitter::submit(
        &cw,
        worker::submitter::PendingTask {
            spec,
            resources,
            retries_left: opts.max_retries.unwrap_or(3),
            retry_exceptions: opts.retry_exceptions,
            strategy: opts.scheduling_strategy.to_proto(),
            pins,
            rebuilding: None,
        },
    );
    refs
}

/// Creates an actor of a registered class.
pub fn create_actor(class: &'static str, opts: &ActorOptions, args: Vec<Result<PreparedArg>>) -> Result<ActorHandle> {
    worker::current()?.block_on(create_actor_async(class, opts, args))?
}

/// Creates an actor of a registered class, from async code.
pub async fn create_actor_async(
    class: &'static str,
    opts: &ActorOptions,
    args: Vec<Result<PreparedArg>>,
) -> Result<ActorHandle> {
    let cw = worker::current()?;
    let resources = opts.demand()?;
    opts.scheduling_strategy.validate()?;
    if let Some(n) = &opts.name {
        if n.is_empty() {
            return Err(Error::InvalidArgument("actor names must not be empty".into()));
        }
    }
    let (args, pins) = prepare_spec(&cw, args)?;
    let (placement_group, bundle_index) = bundle_of(&opts.placement_group);
    let id = ActorId::new();
    // Constructor arguments must outlive restarts.
    cw.pin_actor_args(id, pins);
    let spec = proto::TaskSpec {
        task_id: TaskId::new().0.to_vec(),
        kind: proto::TaskKind::ActorCreation as i32,
        function: class.to_string(),
        args,
        num_returns: 0,
        owner_addr: cw.addr.clone(),
        actor_id: id.0.to_vec(),
        max_concurrency: opts.max_concurrency.unwrap_or(1000),
        display_name: class.to_string(),
        placement_group,
        bundle_index,
        env: opts.env.clone().into_iter().collect(),
        ..Default::default()
    };
    let req = proto::CreateActorRequest {
        creation: Some(spec),
        resources: resources.into_iter().collect(),
        max_restarts: opts.max_restarts,
        name: opts.name.clone().unwrap_or_default(),
        detached: opts.detached,
        owner_id: cw.worker_id,
        max_task_retries: opts.max_task_retries,
        job_id: cw.job_id.clone(),
        strategy: opts.scheduling_strategy.to_proto(),
    };
    let created = match cw.node.clone().create_actor(req).await {
        Err(s) => Err(Error::rpc("creating an actor", s)),
        Ok(r) => match r.into_inner().error {
            Some(e) => Err(Error::from_proto(&e)),
            None => Ok(()),
        },
    };
    if let Err(e) = created {
        cw.release_actor_args(id);
        return Err(e);
    }
    let lifetime = if opts.detached {
        None
    } else {
        Some(ObjectRef::from_handle(cw.actor_lifetime(id)?))
    };
    Ok(ActorHandle {
        id,
        class: class.to_string(),
        max_task_retries: opts.max_task_retries,
        lifetime,
    })
}

/// Submits an actor method call.
pub fn call_actor<T>(
    handle: &ActorHandle,
    method: &'static str,
    args: Vec<Result<PreparedArg>>,
    num_returns: u32,
) -> Vec<ObjectRef<T>> {
    let cw = match worker::current() {
        Ok(cw) => cw,
        Err(e) => return failed_refs(num_returns, None, &e),
    };
    let tid = TaskId::new();
    let refs: Vec<ObjectRef<T>> = (0..num_returns)
        .map(|i| ObjectRef::from_handle(cw.own_pending(tid.return_id(i))))
        .collect();
    if let Err(e) = submit_actor_call(&cw, handle, method, args, tid, num_returns, false) {
        for i in 0..num_returns {
            cw.resolve(tid.return_id(i), worker::ObjState::Failed(e.clone()), Vec::new());
        }
    }
    refs
}

/// Submits a call of a streaming actor method (one returning an
/// iterator): its items arrive one by one as the method produces them.
pub fn call_actor_streaming<T>(
    handle: &ActorHandle,
    method: &'static str,
    args: Vec<Result<PreparedArg>>,
) -> ObjectRefGenerator<T> {
    let cw = match worker::current() {
        Ok(cw) => cw,
        Err(e) => return generator::failed(e),
    };
    let tid = TaskId::new();
    let rx = cw.register_generator(tid);
    if let Err(e) = submit_actor_call(&cw, handle, method, args, tid, 0, true) {
        cw.generator_end(tid, Err(e));
    }
    ObjectRefGenerator::new(Some(rx))
}

/// Builds and queues an actor method call whose return objects (or
/// generator) the caller has set up for `tid`.
fn submit_actor_call(
    cw: &Arc<worker::CoreWorker>,
    handle: &ActorHandle,
    method: &'static str,
    args: Vec<Result<PreparedArg>>,
    tid: TaskId,
    num_returns: u32,
    streaming: bool,
) -> Result<()> {
    let (args, mut pins) = prepare_spec(cw, args)?;
    // The actor lives at least until this call is answered.
    pins.extend(handle.lifetime.as_ref().map(|l| l.handle.clone()));
    let spec = proto::TaskSpec {
        task_id: tid.0.to_vec(),
        kind: proto::TaskKind::ActorMethod as i32,
        function: method.to_string(),
        args,
        num_returns,
        owner_addr: cw.addr.clone(),
        actor_id: handle.id.0.to_vec(),
        display_name: format!("{}.{}", handle.class, method),
        streaming,
        ..Default::default()
    };
    worker::actor_caller::ActorCaller::submit(
        cw,
        handle.id,
        worker::actor_caller::ActorCall {
            spec,
            // Items already handed out cannot be taken back: a streaming
            // call is not resent.
            retries_left: if streaming { 0 } else { handle.max_task_retries },
            pins,
        },
    );
    Ok(())
}

/// Submits a streaming generator task.
pub fn submit_streaming<T>(
    name: &'static str,
    opts: &TaskOptions,
    args: Vec<Result<PreparedArg>>,
) -> ObjectRefGenerator<T> {
    let cw = match worker::current() {
        Ok(cw) => cw,
        Err(e) => return generator::failed(e),
    };
    let (resources, (args, pins)) = match prepare_task(&cw, opts, args) {
        Ok(p) => p,
        Err(e) => return generator::failed(e),
    };
    let tid = TaskId::new();
    let rx = cw.register_generator(tid);
    let spec = normal_spec(&cw, tid, name, opts, args, 0, true);
    // Items already handed out cannot be taken back: no retries.
    worker::submitter::TaskSubmitter::submit(
        &cw,
        worker::submitter::PendingTask {
            spec,
            resources,
            retries_left: 0,
            retry_exceptions: false,
            strategy: opts.scheduling_strategy.to_proto(),
            pins,
            rebuilding: None,
        },
    );
    ObjectRefGenerator::new(Some(rx))
}
