//! The runtime's error type: every failure a user can see, each naming what
//! failed and whether a retry can help.

use crate::proto;

/// Result type of the rayforge API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in rayforge, as seen by a user.
///
/// An error keeps its kind across processes: what a task or actor method
/// returns as a `rayforge::Error` (say, the [`Error::ActorDied`] of an actor
/// it called) reaches its caller as that same variant, with the same
/// [`Error::is_retriable`] answer. A task's own error type arrives as
/// [`Error::TaskFailed`], and the value itself can be had back with
/// [`Error::user_error`] when the type implements `Serialize`.
///
/// It serializes too, so a library's own error type can hold it as its
/// source and still travel between processes.
#[derive(Debug, Clone, thiserror::Error, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// User code panicked or returned an error inside a task or actor method.
    #[error("task `{function}` failed: {message}")]
    TaskFailed {
        /// The remote function or actor method.
        function: String,
        /// The panic message or the error's `Display`, with its location.
        message: String,
        /// The error value itself, when its type implements `Serialize`
        /// (read it with [`Error::user_error`]).
        payload: Option<ErrorPayload>,
    },
    /// The worker process running a task died (killed, crashed, exited).
    #[error("worker running `{function}` died: {cause}")]
    WorkerDied {
        /// The task that was running.
        function: String,
        /// What ended the process.
        cause: String,
    },
    /// The memory monitor killed the worker to keep the node alive.
    #[error("task `{function}` was killed by the memory monitor: {cause}")]
    OutOfMemory {
        /// The task that was killed.
        function: String,
        /// Node memory usage at the time.
        cause: String,
    },
    /// An actor is dead: its process died beyond its restart budget, it was
    /// killed, or its constructor failed.
    #[error("actor `{actor}` died: {cause}")]
    ActorDied {
        /// The actor's class (and name, when it has one).
        actor: String,
        /// Why it died.
        cause: String,
    },
    /// An object can no longer be reached (its owner died, or it was freed).
    #[error("object {id} was lost: {cause}")]
    ObjectLost {
        /// The object id, hex.
        id: String,
        /// Why.
        cause: String,
    },
    /// `get` or `wait` ran out of time.
    #[error("timed out after {0:?} waiting for objects")]
    GetTimeout(std::time::Duration),
    /// The task was cancelled with [`crate::cancel`].
    #[error("task `{0}` was cancelled")]
    Cancelled(String),
    /// No node can ever satisfy the resource request.
    #[error("infeasible resource request for `{function}`: {detail}")]
    Infeasible {
        /// The task or actor.
        function: String,
        /// Requested versus available.
        detail: String,
    },
    /// The object store cannot hold an object even after spilling.
    #[error("object store full: {0}")]
    ObjectStoreFull(String),
    /// A value could not be encoded or decoded.
    #[error("cannot (de)serialize {what}: {message}")]
    Serialization {
        /// What was being converted (a type name or an object id).
        what: String,
        /// The codec's message.
        message: String,
    },
    /// Bad input: options, names, configuration.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A named actor, function or object that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The runtime is not initialized (call `rayforge::init`) or was already.
    #[error("runtime: {0}")]
    Runtime(String),
    /// I/O failure of the runtime itself (sockets, shared memory, spill files).
    #[error("I/O error while {context}: {message}")]
    Io {
        /// What the runtime was doing.
        context: String,
        /// The OS error.
        message: String,
    },
    /// A storage URI (`rayforge::storage`) that is malformed, unreachable,
    /// not writable, not shared by every node, or full: names the file or
    /// prefix and what failed.
    #[error("storage {uri}: {message}")]
    Storage {
        /// The URI of the storage, the file or the prefix concerned.
        uri: String,
        /// What failed and, where it helps, what to do.
        message: String,
        /// Whether trying again may help (a server that did not answer),
        /// as opposed to a bad URI, a missing permission or a full budget.
        retriable: bool,
    },
    /// A bug in rayforge; please report it.
    #[error("internal error (this is a rayforge bug): {0}")]
    Internal(String),
}

/// A user error value carried inside [`Error::TaskFailed`]: its type's name
/// and its encoding. [`Error::user_error`] turns it back into the value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorPayload {
    type_name: String,
    bytes: Vec<u8>,
}

impl ErrorPayload {
    /// Encodes `e` as the payload of a task failure.
    pub fn new<E: serde::Serialize + ?Sized>(e: &E) -> Result<ErrorPayload> {
        Ok(ErrorPayload {
            type_name: std::any::type_name::<E>().to_string(),
            bytes: bincode::serialize(e)?,
        })
    }

    /// The Rust type name of the error value.
    pub fn type_name(&self) -> &str {
        &self.type_name
    }
}

impl Error {
    /// A task's own error value, when this is a [`Error::TaskFailed`] whose
    /// task returned an `Err(E)` of this very type (which must implement
    /// `Serialize` and `Deserialize`). `None` for any other error or type.
    ///
    /// ```no_run
    /// #[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
    /// enum TrainError { Diverged { step: u64 } }
    /// impl std::fmt::Display for TrainError {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{self:?}") }
    /// }
    ///
    /// #[rayforge::remote]
    /// fn train() -> Result<f64, TrainError> { Err(TrainError::Diverged { step: 7 }) }
    ///
    /// # fn main() -> rayforge::Result<()> {
    /// rayforge::init(rayforge::Config::default())?;
    /// let err = train::remote().get().unwrap_err();
    /// assert_eq!(err.user_error::<TrainError>(), Some(TrainError::Diverged { step: 7 }));
    /// # Ok(()) }
    /// ```
    pub fn user_error<E: serde::de::DeserializeOwned>(&self) -> Option<E> {
        match self {
            Error::TaskFailed { payload: Some(p), .. } if p.type_name == std::any::type_name::<E>() => {
                bincode::deserialize(&p.bytes).ok()
            }
            _ => None,
        }
    }

    /// Whether repeating the operation may succeed (a dead worker, a lost
    /// object, a timeout), as opposed to a deterministic failure.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Error::WorkerDied { .. }
                | Error::OutOfMemory { .. }
                | Error::ObjectLost { .. }
                | Error::GetTimeout(_)
                | Error::Io { .. }
                | Error::ObjectStoreFull(_)
                | Error::Storage { retriable: true, .. }
        )
    }

    /// An [`Error::Io`]: `e` happened while doing `context` (say, "writing
    /// checkpoint_000003/model.pt").
    pub fn io(context: impl Into<String>, e: impl std::fmt::Display) -> Error {
        Error::Io {
            context: context.into(),
            message: e.to_string(),
        }
    }

    pub(crate) fn rpc(context: &str, status: tonic::Status) -> Error {
        Error::Io {
            context: context.to_string(),
            message: format!("{}: {}", status.code(), status.message()),
        }
    }

    /// Converts to the wire form (every variant keeps its kind and fields).
    pub(crate) fn to_proto(&self) -> proto::ErrorProto {
        use proto::ErrorKind as K;
        let mut p = proto::ErrorProto {
            retriable: self.is_retriable(),
            ..Default::default()
        };
        let (kind, message, origin) = match self {
            Error::TaskFailed {
                function,
                message,
                payload,
            } => {
                if let Some(pl) = payload {
                    p.payload_type = pl.type_name.clone();
                    p.payload = pl.bytes.clone();
                }
                (K::TaskFailed, message, function)
            }
            Error::WorkerDied { function, cause } => (K::WorkerDied, cause, function),
            Error::OutOfMemory { function, cause } => (K::OutOfMemory, cause, function),
            Error::ActorDied { actor, cause } => (K::ActorDied, cause, actor),
            Error::ObjectLost { id, cause } => (K::ObjectLost, cause, id),
            Error::GetTimeout(d) => {
                p.timeout_us = d.as_micros().min(u64::MAX as u128) as u64;
                (K::GetTimeout, &String::new(), &String::new())
            }
            Error::Cancelled(f) => (K::Cancelled, &String::new(), f),
            Error::Infeasible { function, detail } => (K::Infeasible, detail, function),
            Error::ObjectStoreFull(m) => (K::StoreFull, m, &String::new()),
            Error::Serialization { what, message } => (K::Serialization, message, what),
            Error::InvalidArgument(m) => (K::InvalidArgument, m, &String::new()),
            Error::NotFound(m) => (K::NotFound, m, &String::new()),
            Error::Runtime(m) => (K::Runtime, m, &String::new()),
            Error::Io { context, message } => (K::Io, message, context),
            Error::Storage { uri, message, .. } => (K::Storage, message, uri),
            Error::Internal(m) => (K::Internal, m, &String::new()),
        };
        p.kind = kind as i32;
        p.message = message.clone();
        p.origin = origin.clone();
        p
    }

    /// Converts from the wire form.
    pub(crate) fn from_proto(p: &proto::ErrorProto) -> Error {
        use proto::ErrorKind as K;
        let kind = K::try_from(p.kind).unwrap_or(K::Internal);
        let (m, o) = (p.message.clone(), p.origin.clone());
        match kind {
            K::TaskFailed => Error::TaskFailed {
                function: o,
                message: m,
                payload: (!p.payload_type.is_empty()).then(|| ErrorPayload {
                    type_name: p.payload_type.clone(),
                    bytes: p.payload.clone(),
                }),
            },
            K::WorkerDied => Error::WorkerDied { function: o, cause: m },
            K::OutOfMemory => Error::OutOfMemory { function: o, cause: m },
            K::ActorDied => Error::ActorDied { actor: o, cause: m },
            K::ObjectLost => Error::ObjectLost { id: o, cause: m },
            K::Cancelled => Error::Cancelled(o),
            K::Infeasible => Error::Infeasible { function: o, detail: m },
            K::StoreFull => Error::ObjectStoreFull(m),
            K::InvalidArgument => Error::InvalidArgument(m),
            K::NotFound => Error::NotFound(m),
            K::AlreadyExists => Error::InvalidArgument(m),
            K::GetTimeout => Error::GetTimeout(std::time::Duration::from_micros(p.timeout_us)),
            K::Io => Error::Io { context: o, message: m },
            K::Serialization => Error::Serialization { what: o, message: m },
            K::Runtime => Error::Runtime(m),
            K::Storage => Error::Storage {
                uri: o,
                message: m,
                retriable: p.retriable,
            },
            K::Internal => Error::Internal(m),
        }
    }
}

impl From<bincode::Error> for Error {
    fn from(e: bincode::Error) -> Self {
        Error::Serialization {
            what: "value".into(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One value of every variant (the match makes a new variant fail to
    /// compile here until it is added).
    fn every_variant() -> Vec<Error> {
        let all = vec![
            Error::TaskFailed {
                function: "f".into(),
                message: "boom at x.rs:1".into(),
                payload: None,
            },
            Error::TaskFailed {
                function: "f".into(),
                message: "bad step".into(),
                payload: Some(ErrorPayload::new(&(7u64, "nan".to_string())).unwrap()),
            },
            Error::WorkerDied {
                function: "f".into(),
                cause: "signal 9".into(),
            },
            Error::OutOfMemory {
                function: "f".into(),
                cause: "96%".into(),
            },
            Error::ActorDied {
                actor: "A".into(),
                cause: "killed".into(),
            },
            Error::ObjectLost {
                id: "ab".into(),
                cause: "owner died".into(),
            },
            Error::GetTimeout(std::time::Duration::from_millis(1500)),
            Error::Cancelled("f".into()),
            Error::Infeasible {
                function: "f".into(),
                detail: "CPU 64 > 2".into(),
            },
            Error::ObjectStoreFull("1 GiB > 10 MiB".into()),
            Error::Serialization {
                what: "argument `x`".into(),
                message: "unexpected end".into(),
            },
            Error::InvalidArgument("x".into()),
            Error::NotFound("actor c".into()),
            Error::Runtime("not initialized".into()),
            Error::Io {
                context: "connecting".into(),
                message: "refused".into(),
            },
            Error::Storage {
                uri: "s3://b/run/checkpoint_000001/model.pt".into(),
                message: "connection refused".into(),
                retriable: true,
            },
            Error::Storage {
                uri: "cluster://runs".into(),
                message: "the budget is full".into(),
                retriable: false,
            },
            Error::Internal("bug".into()),
        ];
        for e in &all {
            match e {
                Error::TaskFailed { .. }
                | Error::WorkerDied { .. }
                | Error::OutOfMemory { .. }
                | Error::ActorDied { .. }
                | Error::ObjectLost { .. }
                | Error::GetTimeout(_)
                | Error::Cancelled(_)
                | Error::Infeasible { .. }
                | Error::ObjectStoreFull(_)
                | Error::Serialization { .. }
                | Error::InvalidArgument(_)
                | Error::NotFound(_)
                | Error::Runtime(_)
                | Error::Io { .. }
                | Error::Storage { .. }
                | Error::Internal(_) => {}
            }
        }
        all
    }

    #[test]
    fn wire_round_trip_keeps_every_kind_and_retry_classification() {
        for e in every_variant() {
            let wire = e.to_proto();
            let back = Error::from_proto(&wire);
            assert_eq!(back, e);
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(wire.retriable, e.is_retriable());
            assert_eq!(back.is_retriable(), wire.retriable, "{e}");
        }
        assert!(Error::GetTimeout(std::time::Duration::from_secs(1)).is_retriable());
        assert!(Error::io("x", "y").is_retriable());
        assert!(!Error::TaskFailed {
            function: String::new(),
            message: String::new(),
            payload: None,
        }
        .is_retriable());
    }

    #[test]
    fn a_user_error_comes_back_only_as_its_own_type() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        enum Mine {
            Diverged { step: u64 },
        }
        let e = Error::TaskFailed {
            function: "train".into(),
            message: "diverged".into(),
            payload: Some(ErrorPayload::new(&Mine::Diverged { step: 3 }).unwrap()),
        };
        let back = Error::from_proto(&e.to_proto());
        assert_eq!(back.user_error::<Mine>(), Some(Mine::Diverged { step: 3 }));
        assert_eq!(back.user_error::<String>(), None);
        assert_eq!(Error::NotFound("x".into()).user_error::<Mine>(), None);
    }
}
