//! The crate's error type.

/// What went wrong in Serve.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// The runtime underneath failed (an actor died, a call timed out, ...).
    #[error("rayforge: {0}")]
    Runtime(#[source] rayforge::Error),
    /// A deployment's own code returned an error or panicked.
    #[error("deployment `{deployment}` failed: {message}")]
    User {
        /// The deployment that failed.
        deployment: String,
        /// Its message.
        message: String,
    },
    /// A deployment's handler panicked: a bug in its code. Over HTTP the
    /// client gets a 500 that says only an error id; this text goes to the
    /// proxy's log under that id.
    #[error("deployment `{deployment}` panicked while handling a request: {message}")]
    Panicked {
        /// The deployment whose handler panicked.
        deployment: String,
        /// The panic's message.
        message: String,
    },
    /// Every replica is at its limit of ongoing requests and the queue is full:
    /// retry later.
    #[error("deployment `{0}` is overloaded: every replica is busy and its queue is full")]
    Overloaded(String),
    /// A deployment has no running replica (it is starting, its replicas
    /// fail to start, or every replica died): names it and says why.
    #[error("no running replica: {0}")]
    Unavailable(String),
    /// The request was cancelled because its caller abandoned it (the
    /// proxy's request timeout, a client that went away, a handle call's
    /// future dropped): names the deployment.
    #[error("a request to deployment `{0}` was cancelled: its caller abandoned it")]
    Cancelled(String),
    /// No deployment or application of that name.
    #[error("not found: {0}")]
    NotFound(String),
    /// A request body or argument could not be decoded.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A serve config file is malformed: names the file, line and field.
    #[error("{0}")]
    Config(String),
    /// A declared deployment or application is invalid (e.g. min > max replicas).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Reading a file or binding a socket failed.
    #[error("{context}: {message}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        message: String,
    },
}

impl Error {
    /// Whether sending the same request again (to another replica, or later)
    /// can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Error::Runtime(_) | Error::Overloaded(_) | Error::Unavailable(_))
    }

    pub(crate) fn io(context: impl Into<String>, e: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            message: e.to_string(),
        }
    }
}

impl From<rayforge::Error> for Error {
    /// A Serve error that a replica or the controller returned comes back
    /// as itself; any other failure of the runtime is kept as the source.
    fn from(e: rayforge::Error) -> Self {
        match e.user_error::<Error>() {
            Some(mine) => mine,
            None => Error::Runtime(e),
        }
    }
}

impl Error {
    /// A failure of Serve's own machinery (no user code involved), as a
    /// runtime error.
    pub(crate) fn internal(message: impl Into<String>) -> Error {
        Error::Runtime(rayforge::Error::Runtime(message.into()))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
