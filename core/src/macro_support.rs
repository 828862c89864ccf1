//! Support code for the macros (`rayforge::__private`): what the code they
//! generate calls to decode arguments, encode returns and errors, register
//! functions and classes, and submit calls. Not a public API; the
//! submission itself lives in the worker (`worker::submit`).

pub use serde;
pub use tokio;

use crate::codec::{self, Value};
use crate::error::{Error, Result};
use crate::{session, worker, ObjectRef};

pub use crate::codec::{encode, Encoded, ObjectBytes};
pub use crate::registry::{
    register_class, register_task, ActorClass, ActorInstance, AsyncMethod, BoxFuture, Returns, StreamFn, SyncMethod,
    TaskFn,
};
pub use crate::worker::submit::{
    call_actor, call_actor_streaming, create_actor, create_actor_async, prepare_arg, submit_streaming, submit_task,
    PreparedArg,
};

/// Keeps a registration constructor linked (see the crate's `registry`
/// module).
#[inline]
pub fn keep<T>(x: &T) {
    std::hint::black_box(x);
}

/// Decodes the next argument.
pub fn arg<T: Value>(it: &mut std::vec::IntoIter<ObjectBytes>, name: &str) -> Result<T> {
    let b = it
        .next()
        .ok_or_else(|| Error::InvalidArgument(format!("missing argument `{name}`")))?;
    worker::decode_value(&b).map_err(|e| match e {
        Error::Serialization { message, .. } => Error::Serialization {
            what: format!("argument `{name}`"),
            message,
        },
        other => other,
    })
}

/// Encodes one return value.
pub fn ret<T: Value>(v: T) -> Result<Returns> {
    Ok(vec![codec::encode_value(v)?])
}

/// A task's `Err` value on its way to becoming the [`Error`] its
/// caller sees. The macros call `(&&&UserErr(&e)).task_error()`, and
/// method lookup picks the first of three traits that applies: a
/// `rayforge::Error` keeps its kind ([`KeepsItsKind`]); a type that
/// serializes becomes `TaskFailed` carrying the value ([`CarriesItsValue`]);
/// any other `Display` type becomes `TaskFailed` with its message
/// ([`CarriesItsMessage`]). This resolves at the call site, where the
/// user's concrete error type is known.
pub struct UserErr<'a, E>(pub &'a E);

/// See [`UserErr`]: a `rayforge::Error` passes through as itself.
pub trait KeepsItsKind {
    /// The error the caller sees.
    fn task_error(&self) -> Error;
}

impl KeepsItsKind for &&UserErr<'_, Error> {
    fn task_error(&self) -> Error {
        self.0.clone()
    }
}

/// See [`UserErr`]: an error type that serializes travels as a payload.
pub trait CarriesItsValue {
    /// The error the caller sees.
    fn task_error(&self) -> Error;
}

impl<E: serde::Serialize + std::fmt::Display> CarriesItsValue for &UserErr<'_, E> {
    fn task_error(&self) -> Error {
        Error::TaskFailed {
            function: String::new(),
            message: self.0.to_string(),
            // An error value that fails to encode still fails the task
            // with its message.
            payload: crate::error::ErrorPayload::new(self.0).ok(),
        }
    }
}

/// See [`UserErr`]: any other error travels as its message.
pub trait CarriesItsMessage {
    /// The error the caller sees.
    fn task_error(&self) -> Error;
}

impl<E: std::fmt::Display> CarriesItsMessage for UserErr<'_, E> {
    fn task_error(&self) -> Error {
        Error::TaskFailed {
            function: String::new(),
            message: self.0.to_string(),
            payload: None,
        }
    }
}

/// Encodes one of several return values.
pub fn ret_part<T: Value>(out: &mut Returns, v: T) -> Result<()> {
    out.push(codec::encode_value(v)?);
    Ok(())
}

/// Runs a streaming function body, encoding and emitting each item.
pub fn emit_all<T: Value>(
    items: impl IntoIterator<Item = T>,
    emit: &mut dyn FnMut(Encoded) -> Result<()>,
) -> Result<()> {
    for item in items {
        emit(codec::encode_value(item)?)?;
    }
    Ok(())
}

/// Runs a streaming actor method's body: each item goes to the caller as
/// it is produced.
pub fn emit_each<T: Value>(items: impl IntoIterator<Item = T>) -> Result<Returns> {
    for item in items {
        crate::context::emit(codec::encode_value(item)?)?;
    }
    Ok(Vec::new())
}

/// The `invoke` of a streaming function called as a plain task.
pub fn not_plain(_: Vec<ObjectBytes>) -> Result<Returns> {
    Err(Error::InvalidArgument(
        "a streaming generator must be called through its generator API".into(),
    ))
}

/// Takes the single reference of a one-return call.
pub fn single<T>(mut v: Vec<ObjectRef<T>>) -> ObjectRef<T> {
    // Exactly one reference is made for num_returns = 1.
    v.pop().expect("one return reference")
}

/// Runs the worker loop when this process was started as a worker.
pub fn worker_entry_if_worker() {
    if std::env::var_os(session::ENV_WORKER).is_some() {
        worker::executor::run_worker_process();
    }
}
