//! The registry of remote functions and actor classes compiled into the
//! program. `#[rayforge::remote]` and `#[rayforge::actor]` register entries
//! from a constructor that runs before `main` (an `.init_array` entry); a
//! worker process (the same binary) looks them up by name.
//!
//! Registrations sit in a prioritized `.init_array.00200` section, which the
//! linker orders before plain `.init_array` entries: they have all run before
//! the worker hook (a plain constructor) takes the process over.
//!
//! The generated submitting code references the constructor, so the linker
//! keeps it even when the function lives in a library crate whose object
//! file is otherwise only reached through generic code.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::codec::{Encoded, ObjectBytes};
use crate::error::Result;

/// Encoded return values of one call.
pub type Returns = Vec<Encoded>;

/// A boxed future of an async actor method.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Runs a generator task: decodes the arguments and hands each produced
/// value, encoded, to the callback as soon as it exists.
pub type StreamFn = fn(Vec<ObjectBytes>, &mut dyn FnMut(Encoded) -> Result<()>) -> Result<()>;

/// A remote function: its name and how to call it with encoded arguments.
pub struct TaskFn {
    /// `module::path::function`.
    pub name: &'static str,
    /// Decodes the arguments, runs the function, encodes the results.
    pub invoke: fn(Vec<ObjectBytes>) -> Result<Returns>,
    /// For streaming generators: runs the function item by item.
    pub stream: Option<StreamFn>,
}

/// Calls a method of a sync actor: method name, encoded arguments.
pub type SyncMethod = Box<dyn FnMut(&str, Vec<ObjectBytes>) -> Result<Returns> + Send>;

/// Calls a method of an async actor, returning its future.
pub type AsyncMethod = Arc<dyn Fn(String, Vec<ObjectBytes>) -> BoxFuture<Result<Returns>> + Send + Sync>;

/// A live actor instance inside a worker process.
pub enum ActorInstance {
    /// Methods run one at a time, in order, on the worker's task thread.
    Sync(SyncMethod),
    /// Methods are futures run concurrently (up to `max_concurrency`).
    Async(AsyncMethod),
}

/// An actor class: its name and constructor.
pub struct ActorClass {
    /// `module::path::Type`.
    pub name: &'static str,
    /// Decodes the constructor arguments and builds the instance.
    pub construct: fn(Vec<ObjectBytes>) -> Result<ActorInstance>,
}

static FUNCTIONS: Mutex<Option<HashMap<&'static str, &'static TaskFn>>> = Mutex::new(None);
static CLASSES: Mutex<Option<HashMap<&'static str, &'static ActorClass>>> = Mutex::new(None);

/// Registers a remote function (called before `main` by generated code).
pub fn register_task(f: &'static TaskFn) {
    FUNCTIONS.lock().get_or_insert_with(HashMap::new).insert(f.name, f);
}

/// Registers an actor class (called before `main` by generated code).
pub fn register_class(c: &'static ActorClass) {
    CLASSES.lock().get_or_insert_with(HashMap::new).insert(c.name, c);
}

pub(crate) fn function(name: &str) -> Option<&'static TaskFn> {
    FUNCTIONS.lock().as_ref().and_then(|m| m.get(name).copied())
}

pub(crate) fn class(name: &str) -> Option<&'static ActorClass> {
    CLASSES.lock().as_ref().and_then(|m| m.get(name).copied())
}
