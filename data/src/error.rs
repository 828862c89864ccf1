//! Typed errors of the data library. An error raised inside a task crosses
//! the process boundary unchanged: the core carries it as the task's error
//! value, and [`From<rayforge::Error>`] recovers it on the other side.

use serde::{Deserialize, Serialize};

/// What went wrong while building or running a dataset.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// A path given to a reader matched no file.
    #[error("no such file or directory: {0}")]
    NotFound(String),
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's reason.
        message: String,
    },
    /// A row of a CSV or JSON file could not be parsed.
    #[error("{file}:{line}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line number of the bad row.
        line: u64,
        /// What was wrong with it.
        message: String,
    },
    /// Two inputs that must share a schema do not.
    #[error("schema mismatch in {what}: expected {expected}, found {found}")]
    SchemaMismatch {
        /// The file or operation where the difference was found.
        what: String,
        /// The schema seen first.
        expected: String,
        /// The differing schema.
        found: String,
    },
    /// A column named by the caller does not exist.
    #[error("no column `{column}` (columns: {available})")]
    NoSuchColumn {
        /// The name asked for.
        column: String,
        /// The columns there are.
        available: String,
    },
    /// A bad argument to a dataset call.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An Arrow computation failed.
    #[error("arrow: {0}")]
    Arrow(String),
    /// The Parquet reader or writer failed.
    #[error("parquet: {0}")]
    Parquet(String),
    /// A SQL query failed to plan or run.
    #[error("sql: {0}")]
    Sql(String),
    /// A user function returned an error.
    #[error("{0}")]
    User(String),
    /// A write to a local path (or a `file://` URI) reached a node that
    /// does not see the directory the driver writes to, or a read task
    /// found no file where the driver listed one: the path is not shared
    /// by every node of the cluster, and the node's part would have landed
    /// on its own disk, where no reader finds it (or the read would have
    /// found another disk's files).
    #[error(
        "node {node} cannot see {path}, {what}: the path is not shared by every node of the cluster{hint}. Mount \
         the same volume at that path on every node, or use cluster:// (the head's store) or s3://"
    )]
    PathNotShared {
        /// The id of the node that cannot see the path.
        node: String,
        /// The directory written to or the file read, as the driver
        /// resolved it.
        path: String,
        /// What the path is to the job ("the directory this write goes
        /// to", "a file the driver listed for this read").
        what: String,
        /// More on the cause, where there is more to say (empty or
        /// starting with a space).
        hint: String,
        /// What the node's check of the driver's marker found, or the
        /// error opening the file.
        #[source]
        source: Box<rayforge::Error>,
    },
    /// The runtime failed (a task or worker died, an object was lost, ...).
    #[error("{0}")]
    Runtime(#[source] rayforge::Error),
}

/// Result alias of the data library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Arrow(e.to_string())
    }
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Error::Parquet(e.to_string())
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::Sql(e.to_string())
    }
}

impl From<rayforge::Error> for Error {
    /// A data error raised inside a task comes back as itself; any other
    /// failure of the runtime is kept as the source.
    fn from(e: rayforge::Error) -> Self {
        match e.user_error::<Error>() {
            Some(mine) => mine,
            None => Error::Runtime(e),
        }
    }
}

impl From<String> for Error {
    fn from(e: String) -> Self {
        Error::User(e)
    }
}

impl From<&str> for Error {
    fn from(e: &str) -> Self {
        Error::User(e.to_string())
    }
}

impl Error {
    /// A failure of the library's own machinery, as a runtime error.
    pub(crate) fn internal(message: impl Into<String>) -> Error {
        Error::Runtime(rayforge::Error::Internal(message.into()))
    }

    pub(crate) fn io(path: impl std::fmt::Display, e: std::io::Error) -> Error {
        Error::Io {
            path: path.to_string(),
            message: e.to_string(),
        }
    }
}
