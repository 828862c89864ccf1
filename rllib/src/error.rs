//! The crate's error type.

use crate::env::EnvError;

/// What went wrong in an RL experiment.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad configuration: names the field.
    #[error("config: {field}: {message}")]
    Config {
        /// The field (`algo`, `lr`, `minibatch_size`, ...).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The environment refused.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// An env runner kept failing: names it and why.
    #[error("env runner {runner} failed {attempts} times: {cause}")]
    Runner {
        /// Its index.
        runner: usize,
        /// How many times in a row.
        attempts: u32,
        /// The last failure.
        cause: String,
    },
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] rayforge::checkpoint::CheckpointError),
    /// libtorch refused an operation.
    #[error("torch: {0}")]
    Torch(String),
    /// The runtime underneath failed.
    #[error("rayforge: {0}")]
    Runtime(String),
}

impl Error {
    pub(crate) fn config(field: &str, message: impl Into<String>) -> Error {
        Error::Config {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(e.to_string())
    }
}

impl From<rayforge::Error> for Error {
    fn from(e: rayforge::Error) -> Self {
        Error::Runtime(e.to_string())
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
