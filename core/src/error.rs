//! The runtime's error type: every failure a user can see, each naming what
//! failed and whether a retry can help.

use crate::proto;

/// Result type of the rayforge API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in rayforge, as seen by a user.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum Error {
    /// User code panicked or returned an error inside a task or actor method.
    #[error("task `{function}` failed: {message}")]
    TaskFailed {
        /// The remote function or actor method.
        function: String,
        /// The panic message or the error's `Display`, with its location.
        message: String,
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
    /// A bug in rayforge; please report it.
    #[error("internal error (this is a rayforge bug): {0}")]
    Internal(String),
}

impl Error {
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
        )
    }

    pub(crate) fn io(context: impl Into<String>, e: impl std::fmt::Display) -> Error {
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

    /// Converts to the wire form.
    pub(crate) fn to_proto(&self) -> proto::ErrorProto {
        use proto::ErrorKind as K;
        let (kind, message, origin) = match self {
            Error::TaskFailed { function, message } => (K::TaskFailed, message.clone(), function.clone()),
            Error::WorkerDied { function, cause } => (K::WorkerDied, cause.clone(), function.clone()),
            Error::OutOfMemory { function, cause } => (K::OutOfMemory, cause.clone(), function.clone()),
            Error::ActorDied { actor, cause } => (K::ActorDied, cause.clone(), actor.clone()),
            Error::ObjectLost { id, cause } => (K::ObjectLost, cause.clone(), id.clone()),
            Error::GetTimeout(d) => (K::Internal, format!("timeout {d:?}"), String::new()),
            Error::Cancelled(f) => (K::Cancelled, String::new(), f.clone()),
            Error::Infeasible { function, detail } => (K::Infeasible, detail.clone(), function.clone()),
            Error::ObjectStoreFull(m) => (K::StoreFull, m.clone(), String::new()),
            Error::Serialization { what, message } => (
                K::InvalidArgument,
                format!("cannot (de)serialize {what}: {message}"),
                String::new(),
            ),
            Error::InvalidArgument(m) => (K::InvalidArgument, m.clone(), String::new()),
            Error::NotFound(m) => (K::NotFound, m.clone(), String::new()),
            Error::Runtime(m) | Error::Internal(m) => (K::Internal, m.clone(), String::new()),
            Error::Io { context, message } => (
                K::Internal,
                format!("I/O error while {context}: {message}"),
                String::new(),
            ),
        };
        proto::ErrorProto {
            kind: kind as i32,
            message,
            origin,
            retriable: self.is_retriable(),
        }
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
            K::Internal => Error::Runtime(m),
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

    #[test]
    fn wire_round_trip_keeps_kind_and_retry_classification() {
        let errors = [
            Error::TaskFailed {
                function: "f".into(),
                message: "boom at x.rs:1".into(),
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
            Error::Cancelled("f".into()),
            Error::Infeasible {
                function: "f".into(),
                detail: "CPU 64 > 2".into(),
            },
            Error::ObjectStoreFull("1 GiB > 10 MiB".into()),
            Error::InvalidArgument("x".into()),
            Error::NotFound("actor c".into()),
        ];
        for e in errors {
            let back = Error::from_proto(&e.to_proto());
            assert_eq!(back, e);
            assert_eq!(e.to_proto().retriable, e.is_retriable());
        }
        assert!(Error::WorkerDied {
            function: String::new(),
            cause: String::new()
        }
        .is_retriable());
        assert!(!Error::TaskFailed {
            function: String::new(),
            message: String::new()
        }
        .is_retriable());
    }
}
