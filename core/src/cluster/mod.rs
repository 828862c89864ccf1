//! Multi-node clusters: the head (control service plus a node), node daemons
//! joining it, and drivers joining with [`crate::Config::address`]. The `rayforge`
//! command line (`start`, `stop`, `status`, `list`) is built on these.
//!
//! ```no_run
//! // What `rayforge start --head --num-cpus 2` does, in-process:
//! let opts = rayforge::cluster::StartOptions { head: true, num_cpus: Some(2.0), ..Default::default() };
//! rayforge::cluster::run_daemon(&opts, |ready| println!("{}", ready.address)).unwrap();
//! ```

mod admin;
mod daemon;
mod driver;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use admin::{ActorStatus, ClusterEvent, HeadClient, JobStatus, NodeStatus, PlacementGroupStatus};
pub use daemon::{run_daemon, stop_all};
pub(crate) use driver::{join_as_driver, DriverJob};

/// Default port of the head's control service (Ray's too).
pub const DEFAULT_PORT: u16 = 6379;

/// Options of `rayforge start`.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Start a head (control service and a node) rather than join one.
    pub head: bool,
    /// The head to join (`host:port`), for a non-head node.
    pub address: Option<String>,
    /// Port of the head's control service (default 6379).
    pub port: Option<u16>,
    /// Port of this node's service (default: any free port).
    pub node_port: Option<u16>,
    /// Interface to listen on (default 127.0.0.1: loopback only).
    pub bind: Option<String>,
    /// CPUs this node offers (default: detected cores).
    pub num_cpus: Option<f64>,
    /// GPUs this node offers (default: detected devices).
    pub num_gpus: Option<f64>,
    /// Custom resources.
    pub resources: HashMap<String, f64>,
    /// Object store capacity in bytes.
    pub object_store_memory: Option<u64>,
    /// Node memory use (a fraction) above which the memory monitor kills
    /// the newest retriable task (default 0.95; 1 turns it off).
    pub memory_usage_threshold: Option<f64>,
    /// The cluster token (head: default `$RAYFORGE_TOKEN`, then the one its
    /// state directory kept, else a new one; node: default `$RAYFORGE_TOKEN`,
    /// then this machine's cluster file).
    pub token: Option<String>,
    /// A read-only token for the HTTP ports (dashboard, `/metrics`):
    /// default `$RAYFORGE_VIEWER_TOKEN`, else none. Never accepted between
    /// nodes.
    pub viewer_token: Option<String>,
    /// Milliseconds without heartbeats before the head declares a node dead
    /// (default 10000).
    pub heartbeat_timeout_ms: Option<u64>,
    /// Where the head keeps its persisted state (default: a directory per
    /// port under the system temp dir).
    pub state_dir: Option<PathBuf>,
    /// Bytes the head's file store (`cluster://` storage: checkpoints,
    /// trial files, results) may hold under its state directory (default
    /// [`crate::storage::DEFAULT_BUDGET`]); writes past it fail, naming the
    /// budget.
    pub storage_budget: Option<u64>,
    /// Bytes of job binaries, working-directory packages and job logs the
    /// head keeps (default [`crate::jobs::DEFAULT_ARTIFACT_BUDGET`]): past
    /// it, the oldest that no running job needs are removed.
    pub artifact_budget: Option<u64>,
    /// TLS on every port of this node (see [`crate::tls`]): its
    /// certificate, key and the authority its clients trust.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Port of the head's HTTP jobs API (default 8265; 0: any free port).
    pub jobs_port: Option<u16>,
    /// Port of this node's `/metrics`, `/healthz` and `/readyz` (default:
    /// any free port; the head serves them on its jobs port as well).
    pub metrics_port: Option<u16>,
    /// The host others should dial for this node's services, when it is
    /// not the one bound (a node bound to 0.0.0.0 in a pod: the pod's IP).
    pub advertise_address: Option<String>,
    /// Routes added to the head's HTTP port (the dashboard's pages).
    pub http_routes: Option<crate::http::HttpRoutes>,
    /// The head runs an autoscaler for this cluster config (node types,
    /// limits, provider), launching and removing nodes with demand.
    pub autoscaler: Option<crate::autoscaler::config::ClusterConfig>,
    /// The file [`StartOptions::autoscaler`] came from: changes to it are
    /// applied while the head runs.
    pub autoscaler_path: Option<PathBuf>,
}

/// What a started daemon reports once it serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    /// The head's control-service address (`host:port`).
    pub address: String,
    /// The cluster token.
    pub token: String,
    /// This node's service address.
    pub node_address: String,
    /// This node's id.
    pub node_id: String,
    /// The head's HTTP jobs API (`http://host:port`; empty on other nodes).
    #[serde(default)]
    pub jobs_address: String,
    /// This node's metrics and health endpoints (`http://host:port`).
    #[serde(default)]
    pub metrics_address: String,
}

/// Where `rayforge start --head` records the local cluster (address and
/// token) for `Config::address("auto")` and the CLI.
pub fn cluster_file() -> PathBuf {
    if let Ok(p) = std::env::var("RAYFORGE_CLUSTER_FILE") {
        return PathBuf::from(p);
    }
    std::env::temp_dir().join("rayforge").join("cluster.json")
}

/// Directory where daemons record their pids for `rayforge stop`.
pub fn daemons_dir() -> PathBuf {
    std::env::temp_dir().join("rayforge").join("daemons")
}

/// The address and token of the cluster recorded on this machine. The
/// default file is only believed in this user's own directory (see
/// [`crate::util::private_dir`]), and only if this user wrote it: a file
/// planted by another user would send drivers, their programs and the
/// token to another head.
pub fn local_cluster() -> Result<Ready> {
    let path = cluster_file();
    if std::env::var_os("RAYFORGE_CLUSTER_FILE").is_none() {
        crate::util::rayforge_tmp()?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me || !meta.file_type().is_file() {
            return Err(Error::InvalidArgument(format!(
                "refusing {}: not a file this user (uid {me}) wrote (owner uid {}); remove it",
                path.display(),
                meta.uid()
            )));
        }
    }
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Error::NotFound(format!(
            "no cluster is running on this machine ({} is missing): start one with `rayforge start --head` \
             or pass an address",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Runtime(format!("{} is malformed: {e}", path.display())))
}

/// Resolves a head address and token from what the user gave.
fn resolve(address: &str, token: Option<&str>) -> Result<(String, Option<String>)> {
    let env_token = std::env::var("RAYFORGE_TOKEN").ok().filter(|t| !t.is_empty());
    let addr = if address == "auto" {
        match std::env::var("RAYFORGE_ADDRESS")
            .ok()
            .filter(|a| !a.is_empty() && a != "auto")
        {
            Some(a) => a,
            None => local_cluster()?.address,
        }
    } else {
        address.to_string()
    };
    if addr.is_empty() || !addr.contains(':') || addr.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "cluster address `{addr}` is not of the form host:port"
        )));
    }
    let token = token
        .map(str::to_string)
        .or(env_token)
        .or_else(|| local_cluster().ok().filter(|c| c.address == addr).map(|c| c.token));
    Ok((addr, token))
}

/// Awaits a call to the head, turning silence and refusals into clear errors.
async fn ask_head<T>(
    addr: &str,
    f: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
) -> Result<T> {
    ask(&format!("the head at {addr}"), Duration::from_secs(15), f).await
}

/// Awaits a call to `whom` ("the head at ADDR") for at most `limit`,
/// turning silence and refusals into clear errors.
async fn ask<T>(
    whom: &str,
    limit: Duration,
    f: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
) -> Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| Error::Io {
            context: format!("cannot reach {whom}"),
            message: format!("no answer within {} s", limit.as_secs()),
        })?
        .map_err(|s| refused_or_unreachable(whom, s))
}

fn head_error(addr: &str, s: tonic::Status) -> Error {
    refused_or_unreachable(&format!("the head at {addr}"), s)
}

fn refused_or_unreachable(whom: &str, s: tonic::Status) -> Error {
    if s.code() == tonic::Code::Unauthenticated {
        return Error::InvalidArgument(format!("{whom} refused the call: {}", s.message()));
    }
    Error::Io {
        context: format!("cannot reach {whom}"),
        message: format!("{}: {}", s.code(), s.message()),
    }
}
