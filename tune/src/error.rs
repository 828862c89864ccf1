//! The crate's error type.

/// What went wrong in an experiment.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A search space or experiment file that does not parse or does not
    /// make sense: names the field and, for a file, its line.
    #[error("{}{field}: {message}", .line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Config {
        /// The field (`param_space.lr`, `num_samples`, ...).
        field: String,
        /// Its line in the file (1-based), when it came from one.
        line: Option<usize>,
        /// What is wrong with it.
        message: String,
    },
    /// A file of the experiment could not be written or read.
    #[error("{path}: {message}")]
    Io {
        /// The file or directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A trial's checkpoint could not be written or read (the ones already
    /// committed stay intact).
    #[error(transparent)]
    Checkpoint(#[from] rayforge::checkpoint::CheckpointError),
    /// The experiment's journal holds a line that does not parse (a line
    /// cut short by a crash, at its end, is repaired instead).
    #[error("{at}{}: {message}", .line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Journal {
        /// The journal's file or URI.
        at: String,
        /// The line (1-based).
        line: Option<usize>,
        /// What is wrong with it.
        message: String,
    },
    /// Another driver is running the experiment (it holds its lease).
    #[error(
        "experiment `{experiment}` is being run by {holder}; wait for it to end, or resume it once that driver is gone"
    )]
    Locked {
        /// The experiment.
        experiment: String,
        /// Which driver holds it.
        holder: String,
    },
    /// The runtime underneath failed.
    #[error("rayforge: {0}")]
    Runtime(String),
}

impl Error {
    pub(crate) fn config(field: impl Into<String>, line: Option<usize>, message: impl Into<String>) -> Error {
        Error::Config {
            field: field.into(),
            line,
            message: message.into(),
        }
    }
}

impl Error {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, e: impl std::fmt::Display) -> Error {
        Error::Io {
            path: path.as_ref().display().to_string(),
            message: e.to_string(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
