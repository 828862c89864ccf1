//! The crate's error type.

use serde::{Deserialize, Serialize};

/// What can go wrong training or using a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// `libxgboost.so` could not be found or loaded (set it up with
    /// `scripts/xgboost.sh`).
    #[error("libxgboost could not be loaded: {0}")]
    Library(String),
    /// XGBoost refused a call; its message.
    #[error("XGBoost: {0}")]
    XGBoost(String),
    /// A parameter XGBoost does not know or refused; named.
    #[error("parameter `{name}`: {message}")]
    Param {
        /// The parameter.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// A column the run needs is not in the dataset.
    #[error("the {role} column `{column}` is not in the dataset `{dataset}` (its columns: {have})")]
    MissingColumn {
        /// What the column was for (`label`, `feature`, `weight`).
        role: String,
        /// The column asked for.
        column: String,
        /// The dataset.
        dataset: String,
        /// The columns it has.
        have: String,
    },
    /// A column XGBoost cannot take as it is.
    #[error("column `{column}`: {message}")]
    BadColumn {
        /// The column.
        column: String,
        /// Why (its type, its nulls).
        message: String,
    },
    /// Something else given was wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// From the gang (Train): a rank that died, storage, checkpoints.
    #[error(transparent)]
    Train(#[from] rayforge_train::Error),
}

impl From<rayforge_data::Error> for Error {
    fn from(e: rayforge_data::Error) -> Self {
        Error::Train(e.into())
    }
}

impl From<rayforge::checkpoint::CheckpointError> for Error {
    fn from(e: rayforge::checkpoint::CheckpointError) -> Self {
        Error::Train(e.into())
    }
}

impl From<rayforge::Error> for Error {
    fn from(e: rayforge::Error) -> Self {
        Error::Train(e.into())
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::InvalidArgument(format!("arrow: {e}"))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
