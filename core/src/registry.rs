//! The registry of remote functions and actor classes compiled into the
//! program. `#[rayforge::remote]` and `#[rayforge::actor]` submit entries at
//! link time; a worker process (the same binary) looks them up by name.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use crate::codec::{Encoded, ObjectBytes};
use crate::error::Result;

/// Encoded return values of one call.
pub type Returns = Vec<Encoded>;

/// A boxed future of an async actor method.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A remote function: its name and how to call it with encoded arguments.
pub struct TaskFn {
    /// `module::path::function`.
    pub name: &'static str,
    /// Decodes the arguments, runs the function, encodes the results.
    pub invoke: fn(Vec<ObjectBytes>) -> Result<Returns>,
}
inventory::collect!(TaskFn);

/// A live actor instance inside a worker process.
pub enum ActorInstance {
    /// Methods run one at a time, in order, on the worker's task thread.
    Sync(Box<dyn FnMut(&str, Vec<ObjectBytes>) -> Result<Returns> + Send>),
    /// Methods are futures run concurrently (up to `max_concurrency`).
    Async(Arc<dyn Fn(String, Vec<ObjectBytes>) -> BoxFuture<Result<Returns>> + Send + Sync>),
}

/// An actor class: its name and constructor.
pub struct ActorClass {
    /// `module::path::Type`.
    pub name: &'static str,
    /// Decodes the constructor arguments and builds the instance.
    pub construct: fn(Vec<ObjectBytes>) -> Result<ActorInstance>,
}
inventory::collect!(ActorClass);

fn functions() -> &'static HashMap<&'static str, &'static TaskFn> {
    static M: OnceLock<HashMap<&'static str, &'static TaskFn>> = OnceLock::new();
    M.get_or_init(|| inventory::iter::<TaskFn>.into_iter().map(|f| (f.name, f)).collect())
}

fn classes() -> &'static HashMap<&'static str, &'static ActorClass> {
    static M: OnceLock<HashMap<&'static str, &'static ActorClass>> = OnceLock::new();
    M.get_or_init(|| inventory::iter::<ActorClass>.into_iter().map(|c| (c.name, c)).collect())
}

pub(crate) fn function(name: &str) -> Option<&'static TaskFn> {
    functions().get(name).copied()
}

pub(crate) fn class(name: &str) -> Option<&'static ActorClass> {
    classes().get(name).copied()
}
