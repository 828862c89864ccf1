//! How nodes come and go: a [`NodeProvider`] creates nodes of a type,
//! terminates them and lists the ones it made, each tagged with the
//! provider's id (which the node reports to the head when it registers, so
//! the autoscaler can tell a launching node from a joined one). Cloud and
//! Kubernetes providers implement the same three calls; [`LocalProvider`]
//! starts node daemons as processes on the head's machine, as Ray's fake
//! multi-node provider does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::resources::Resources;

use super::config::NodeTypeConfig;
use super::{NODE_TYPE_ENV, PROVIDER_ID_ENV};

/// A node a provider created, as it lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderNode {
    /// The provider's id of the node.
    pub id: String,
    /// Its node type.
    pub node_type: String,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// `Some(why)` once it is gone without being asked to (its process
    /// exited, its machine vanished); listed once so, then forgotten.
    pub exited: Option<String>,
}

/// Creates, terminates and lists a cluster's nodes.
pub trait NodeProvider: Send + Sync {
    /// Creates `count` nodes of `node_type` offering `cfg.resources`;
    /// returns their ids.
    fn create(&self, node_type: &str, cfg: &NodeTypeConfig, count: u32) -> Result<Vec<String>>;
    /// Stops node `id` (cleanly when it can) and forgets it.
    fn terminate(&self, id: &str) -> Result<()>;
    /// The nodes this provider made that are still there (and those that
    /// went away by themselves since the last call, marked `exited`).
    fn list(&self) -> Result<Vec<ProviderNode>>;
}

/// One node daemon the local provider started.
struct LocalNode {
    node_type: String,
    created_ms: u64,
    child: tokio::process::Child,
}

/// Node daemons as processes on this machine: `rayforge start --address
/// <head> --block` with the type's resources, each on its own ports, under
/// an optional wrapper command (one giving the node a private disk, say).
/// They die with the head's process (they are its children), and each
/// writes its log to `<dir>/<id>.log`; a ledger of what runs is kept in
/// `<dir>/ledger.json`.
pub struct LocalProvider {
    cluster: String,
    head_addr: String,
    token: String,
    exe: PathBuf,
    wrapper: Vec<String>,
    dir: PathBuf,
    next: AtomicU64,
    nodes: Mutex<BTreeMap<String, LocalNode>>,
    runtime: tokio::runtime::Handle,
}

impl LocalProvider {
    /// A provider for cluster `cluster` whose nodes join `head_addr` with
    /// `token`, starting `exe` (the rayforge binary) under `wrapper`, with
    /// its logs and ledger in `dir`. Must be called within a Tokio runtime
    /// (the one that reaps the node processes).
    pub fn new(
        cluster: &str,
        head_addr: &str,
        token: &str,
        exe: PathBuf,
        wrapper: Vec<String>,
        dir: PathBuf,
    ) -> Result<LocalProvider> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::Internal(format!("the local provider needs a Tokio runtime: {e}")))?;
        Ok(LocalProvider {
            cluster: cluster.to_string(),
            head_addr: head_addr.to_string(),
            token: token.to_string(),
            exe,
            wrapper,
            dir,
            next: AtomicU64::new(1),
            nodes: Mutex::new(BTreeMap::new()),
            runtime,
        })
    }

    fn start_one(&self, node_type: &str, resources: &Resources) -> Result<(String, LocalNode)> {
        let id = format!(
            "{}-{node_type}-{}",
            self.cluster,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let (program, pre) = match self.wrapper.split_first() {
            Some((p, rest)) => (PathBuf::from(p), rest.to_vec()),
            None => (self.exe.clone(), Vec::new()),
        };
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&pre);
        if !self.wrapper.is_empty() {
            cmd.arg(&self.exe);
        }
        let amount = |k: &str| resources.get(k).copied().unwrap_or(0.0);
        let custom: BTreeMap<&String, &f64> = resources
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "CPU" | "GPU"))
            .collect();
        let custom = serde_json::to_string(&custom).map_err(|e| Error::Internal(e.to_string()))?;
        cmd.args(["start", "--address", &self.head_addr, "--block"])
            .args(["--num-cpus", &amount("CPU").to_string()])
            .args(["--num-gpus", &amount("GPU").to_string()])
            .args(["--resources", &custom])
            .env("RAYFORGE_TOKEN", &self.token)
            .env(PROVIDER_ID_ENV, &id)
            .env(NODE_TYPE_ENV, node_type)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false);
        let log_path = self.dir.join(format!("{id}.log"));
        let log =
            std::fs::File::create(&log_path).map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        cmd.stdout(log).stderr(log2);
        // SAFETY: prctl is async-signal-safe; the node stops (cleanly, on
        // SIGTERM) when the head's process ends.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let _entered = self.runtime.enter();
        let child = crate::node::spawner::spawn(cmd)
            .map_err(|e| Error::io(format!("starting a {node_type} node ({})", program.display()), e))?;
        tracing::info!(id = %id, node_type, pid = child.id().unwrap_or(0), log = %log_path.display(), "node started");
        Ok((
            id,
            LocalNode {
                node_type: node_type.to_string(),
                created_ms: crate::clock::now_ms(),
                child,
            },
        ))
    }

    /// Writes what runs to the ledger (best effort: it is for people and
    /// `down`, not for the provider itself).
    fn write_ledger(&self, nodes: &BTreeMap<String, LocalNode>) {
        let list: Vec<serde_json::Value> = nodes
            .iter()
            .map(|(id, n)| {
                serde_json::json!({
                    "id": id,
                    "node_type": n.node_type,
                    "pid": n.child.id(),
                    "created_ms": n.created_ms,
                })
            })
            .collect();
        let path = self.dir.join("ledger.json");
        let tmp = self.dir.join("ledger.json.tmp");
        let text = serde_json::to_vec_pretty(&list).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
            tracing::warn!("writing the local provider's ledger {}: {e}", path.display());
        }
    }
}

impl NodeProvider for LocalProvider {
    fn create(&self, node_type: &str, cfg: &NodeTypeConfig, count: u32) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut nodes = self.nodes.lock();
        let mut result = Ok(());
        for _ in 0..count {
            match self.start_one(node_type, &cfg.resources) {
                Ok((id, node)) => {
                    nodes.insert(id.clone(), node);
                    ids.push(id);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // What did start is in the ledger (and listed) either way.
        self.write_ledger(&nodes);
        result.map(|()| ids)
    }

    fn terminate(&self, id: &str) -> Result<()> {
        let Some(mut node) = self.nodes.lock().remove(id) else {
            return Err(Error::InvalidArgument(format!("no node {id} in this cluster")));
        };
        self.write_ledger(&self.nodes.lock());
        if let Some(pid) = node.child.id() {
            // SAFETY: plain kill(2) of our own child, which is not reaped
            // yet (its pid cannot have been reused).
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        // Reaped in the background; killed if it does not stop in time.
        self.runtime.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(20), node.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = node.child.kill().await;
                }
            }
        });
        tracing::info!(id, "node terminated");
        Ok(())
    }

    fn list(&self) -> Result<Vec<ProviderNode>> {
        let mut nodes = self.nodes.lock();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, n) in nodes.iter_mut() {
            let exited = match n.child.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "its process exited ({status}); see {}",
                    self.dir.join(format!("{id}.log")).display()
                )),
                Ok(None) => None,
                Err(e) => Some(format!("its process cannot be waited for: {e}")),
            };
            if exited.is_some() {
                gone.push(id.clone());
            }
            out.push(ProviderNode {
                id: id.clone(),
                node_type: n.node_type.clone(),
                created_ms: n.created_ms,
                exited,
            });
        }
        if !gone.is_empty() {
            for id in &gone {
                nodes.remove(id);
            }
            self.write_ledger(&nodes);
        }
        Ok(out)
    }
}
