//! Submitted jobs: the head's HTTP jobs API (on the port the dashboard
//! uses, 8265 by default), the supervisor that runs each submission's
//! entrypoint on the head, the working-directory packages a runtime env
//! ships to every node, and [`JobClient`], the API's client (what
//! `rayforge job ...` uses).
//!
//! ```no_run
//! use rayforge::jobs::{JobClient, RuntimeEnv};
//! let jobs = JobClient::connect("auto", None)?;
//! let id = jobs.submit("./my_pipeline --epochs 3", &RuntimeEnv::default())?;
//! println!("{:?}", jobs.status(&id)?);
//! # Ok::<(), rayforge::Error>(())
//! ```
//!
//! The API (every call needs `Authorization: Bearer <cluster token>`):
//! `POST /api/jobs/` (a [`JobSubmission`]), `GET /api/jobs/`,
//! `GET /api/jobs/{id}`, `GET /api/jobs/{id}/logs?offset=N`,
//! `POST /api/jobs/{id}/stop`, `PUT /api/packages/{sha256}` (a packed
//! working directory), `GET /api/packages/{sha256}`.

mod client;
mod janitor;
mod package;
mod server;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::proto;

pub use client::JobClient;
pub use janitor::DEFAULT_ARTIFACT_BUDGET;
pub(crate) use package::{pack_dir, package_dir, package_hash, unpack};
pub(crate) use server::{serve, HeadPort};

/// Default port of the jobs API (Ray's dashboard port).
pub const DEFAULT_JOBS_PORT: u16 = 8265;
/// Set in a submitted entrypoint's environment: its driver takes over the
/// submission's job record.
pub(crate) const ENV_SUBMISSION_ID: &str = "RAYFORGE_SUBMISSION_ID";
/// Largest working directory a runtime env may ship.
pub const MAX_PACKAGE_BYTES: usize = 100 << 20;
const PACKAGE_SCHEME: &str = "package://";
/// Most log bytes one `logs` call returns.
const LOG_CHUNK: u64 = 4 << 20;

/// What a job's processes get on every node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeEnv {
    /// Environment variables of the entrypoint and every worker.
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// A local directory (on the submitting machine) shipped to every node
    /// and used as the working directory; over the API,
    /// `package://<sha256>` of an uploaded package.
    #[serde(default)]
    pub working_dir: Option<String>,
}

impl RuntimeEnv {
    /// Reads a runtime env file: JSON like
    /// `{"env_vars": {"MODE": "fast"}, "working_dir": "./data"}`; a relative
    /// working dir is relative to the file.
    pub fn from_file(path: &Path) -> Result<RuntimeEnv> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidArgument(format!("cannot read the runtime env file {}: {e}", path.display())))?;
        let mut env: RuntimeEnv = serde_json::from_str(&text).map_err(|e| {
            Error::InvalidArgument(format!(
                "the runtime env file {} is malformed ({e}); expected {{\"env_vars\": {{\"NAME\": \"value\"}}, \
                 \"working_dir\": \"path\"}}",
                path.display()
            ))
        })?;
        if let Some(dir) = &env.working_dir {
            let p = Path::new(dir);
            if p.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                env.working_dir = Some(base.join(p).to_string_lossy().into_owned());
            }
        }
        Ok(env)
    }
}

/// The body of `POST /api/jobs/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSubmission {
    /// A shell command run on the head (`sh -c`).
    pub entrypoint: String,
    /// Environment and working directory.
    #[serde(default)]
    pub runtime_env: RuntimeEnv,
}

/// A job as the jobs API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDetails {
    /// The job's id.
    pub job_id: String,
    /// RUNNING, SUCCEEDED, FAILED or STOPPED.
    pub state: String,
    /// What runs (a command line).
    pub entrypoint: String,
    /// Why it ended the way it did.
    pub message: String,
    /// Submitted through the jobs API (otherwise a driver that joined).
    pub submitted: bool,
    /// Milliseconds since the epoch.
    pub start_ms: u64,
    /// Milliseconds since the epoch (0 while running).
    pub end_ms: u64,
}

impl From<proto::JobInfo> for JobDetails {
    fn from(j: proto::JobInfo) -> JobDetails {
        JobDetails {
            job_id: j.job_id,
            state: j.state,
            entrypoint: j.entrypoint,
            message: j.message,
            submitted: j.submitted,
            start_ms: j.start_ms,
            end_ms: j.end_ms,
        }
    }
}

/// A piece of a job's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogChunk {
    /// The output from the requested offset (lossy UTF-8).
    pub logs: String,
    /// Where the next call should start.
    pub next_offset: u64,
    /// The job ended and this chunk reaches the end of its output.
    pub finished: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_env_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("rayforge-renv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, r#"{"env_vars": {"MODE": "fast"}, "working_dir": "data"}"#).unwrap();
        let env = RuntimeEnv::from_file(&good).unwrap();
        assert_eq!(env.env_vars["MODE"], "fast");
        assert_eq!(env.working_dir.as_deref(), Some(dir.join("data").to_str().unwrap()));
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"env": {"MODE": "fast"}}"#).unwrap();
        let err = RuntimeEnv::from_file(&bad).unwrap_err();
        assert!(
            err.to_string().contains("malformed") && err.to_string().contains("env"),
            "{err}"
        );
        let err = RuntimeEnv::from_file(&dir.join("missing.json")).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
