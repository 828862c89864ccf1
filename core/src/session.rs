//! What a node daemon and the worker processes it starts agree on, without
//! either knowing the other's code: the environment a worker is started
//! with, where a session keeps its sockets and shared memory, and how fresh
//! a worker's report of its queued tasks must be.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::ids::ObjectId;

/// Environment variables a worker process is started with.
pub(crate) const ENV_WORKER: &str = "RAYFORGE_WORKER";
pub(crate) const ENV_NODE_ADDR: &str = "RAYFORGE_NODE_ADDR";
pub(crate) const ENV_WORKER_ID: &str = "RAYFORGE_WORKER_ID";
pub(crate) const ENV_SESSION_DIR: &str = "RAYFORGE_SESSION_DIR";
/// The node's TCP address, when it is part of a multi-node cluster.
pub(crate) const ENV_NODE_TCP: &str = "RAYFORGE_NODE_TCP";
pub(crate) const ENV_JOB_ID: &str = "RAYFORGE_JOB_ID";
/// The cluster token (also read by drivers joining a cluster).
pub(crate) const ENV_TOKEN: &str = "RAYFORGE_TOKEN";
/// The interface a worker serves on, so other nodes can reach it.
pub(crate) const ENV_BIND_HOST: &str = "RAYFORGE_BIND_HOST";
/// The host a process tells others to dial instead of the one it bound
/// (a node bound to 0.0.0.0 in a pod advertises the pod's IP); set by
/// `rayforge start --advertise-address` and inherited by its workers.
pub(crate) const ENV_ADVERTISE_HOST: &str = "RAYFORGE_ADVERTISE_HOST";

/// Where a session keeps its sockets and shared memory.
#[derive(Debug, Clone)]
pub(crate) struct SessionPaths {
    pub(crate) dir: PathBuf,
    pub(crate) store: PathBuf,
    pub(crate) spill: PathBuf,
    /// Worker log files (on disk, not in shared memory).
    pub(crate) logs: PathBuf,
    pub(crate) node_sock: PathBuf,
}

impl SessionPaths {
    pub(crate) fn new(cfg: &Config) -> SessionPaths {
        let shm = PathBuf::from("/dev/shm");
        let root = if shm.is_dir() { shm } else { std::env::temp_dir() };
        let tag = format!("rayforge-{}-{}", std::process::id(), &ObjectId::for_put().hex()[..8]);
        let dir = root.join(&tag);
        let spill = cfg
            .spill_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("{tag}-spill"));
        let logs = std::env::temp_dir().join(format!("{tag}-logs"));
        SessionPaths {
            logs,
            store: dir.join("objects"),
            node_sock: dir.join("node.sock"),
            spill,
            dir,
        }
    }

    pub(crate) fn worker_sock(dir: &std::path::Path, worker_id: u64) -> PathBuf {
        dir.join(format!("w{worker_id:016x}.sock"))
    }
}

/// How long a node trusts a process's list of queued tasks (processes
/// report theirs more often than that, also when unchanged).
pub(crate) const QUEUED_FRESH: Duration = Duration::from_secs(5);
