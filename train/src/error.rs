//! The crate's error type.

use serde::{Deserialize, Serialize};

/// What went wrong in a training run.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// A collective between the ranks failed: a peer died or hung past the
    /// group's timeout, or the ranks disagreed.
    #[error("collective on rank {rank} failed: {message}")]
    Collective {
        /// The rank that saw it.
        rank: usize,
        /// What happened.
        message: String,
    },
    /// The training function returned an error.
    #[error("the training function failed on rank {rank}: {message}")]
    User {
        /// The rank it failed on.
        rank: usize,
        /// Its error's message.
        message: String,
    },
    /// A rank died or failed, more often than the run's `max_failures`
    /// allows: names the rank, its node and the cause.
    #[error(
        "rank {rank} on node {node} failed: {cause} (the run failed {failures} times, max_failures is {max_failures})"
    )]
    RankFailed {
        /// The rank.
        rank: usize,
        /// Its node's id.
        node: String,
        /// Why (the process was killed, the function failed, ...).
        cause: String,
        /// How many times the run failed.
        failures: u32,
        /// The run's budget.
        max_failures: i32,
    },
    /// A checkpoint could not be written or read: names the path (the
    /// previous checkpoint stays intact).
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint's directory or file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A rank that should compute on a GPU cannot: libtorch sees no CUDA
    /// device, or the CUDA driver or NCCL library cannot be loaded (says
    /// which, and how to set it up).
    #[error("GPU on rank {rank}: {message}")]
    Gpu {
        /// The rank.
        rank: usize,
        /// What is missing.
        message: String,
    },
    /// A bad configuration or argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// libtorch refused an operation (a tensor of the wrong shape or
    /// device, a model file it cannot read).
    #[error("torch: {0}")]
    Torch(String),
    /// A dataset shard failed to produce its rows.
    #[error("data: {0}")]
    Data(#[source] rayforge_data::Error),
    /// The runtime underneath failed.
    #[error("rayforge: {0}")]
    Runtime(#[source] rayforge::Error),
}

impl Error {
    pub(crate) fn collective(rank: usize, message: String) -> Error {
        Error::Collective { rank, message }
    }

    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    pub(crate) fn checkpoint(path: impl AsRef<std::path::Path>, message: impl std::fmt::Display) -> Error {
        Error::Checkpoint {
            path: path.as_ref().display().to_string(),
            message: message.to_string(),
        }
    }
}

impl From<rayforge::checkpoint::CheckpointError> for Error {
    fn from(e: rayforge::checkpoint::CheckpointError) -> Self {
        use rayforge::checkpoint::CheckpointError as C;
        match e {
            C::Io { path, message } => Error::Checkpoint { path, message },
            C::Storage(e) => Error::Runtime(e),
            other => Error::InvalidArgument(other.to_string()),
        }
    }
}

#[cfg(feature = "torch")]
impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(e.to_string())
    }
}

impl From<rayforge_data::Error> for Error {
    fn from(e: rayforge_data::Error) -> Self {
        Error::Data(e)
    }
}

impl From<rayforge::Error> for Error {
    /// A training error raised inside a worker comes back as itself.
    fn from(e: rayforge::Error) -> Self {
        match e.user_error::<Error>() {
            Some(mine) => mine,
            None => Error::Runtime(e),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
