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
/// HEAD --block` with the type's resources, each on its own ports, under
/// an optional wrapper command (one giving the node a private disk, say).
/// They die with the head's process (they are its children), and each
/// writes its log to `DIR/ID.log`; a ledger of what runs is kept in
/// `DIR/ledger.json`.
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
        cmd.args(["start", "--address", &self.head_addr, "--block"])
            .args(start_args(resources, true)?)
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
        if let Err(e) = write_ledger_file(&self.dir.join("ledger.json"), &list) {
            tracing::warn!("the local provider's ledger: {e}");
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

/// What the SSH provider needs to start a node on a host.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// The cluster's name.
    pub cluster: String,
    /// The head's control-service address (`host:port`).
    pub head_addr: String,
    /// The cluster token.
    pub token: String,
    /// Hosts nodes may be started on (one node per host).
    pub hosts: Vec<String>,
    /// How to log in.
    pub login: super::hosts::SshLogin,
    /// The cluster's directory on each host.
    pub remote_dir: String,
    /// The rayforge binary copied to each host.
    pub exe: PathBuf,
    /// Files copied to each host: remote path -> local path.
    pub file_mounts: BTreeMap<String, PathBuf>,
    /// Commands run on each host before its node starts.
    pub setup_commands: Vec<String>,
}

/// One node the SSH provider started (or is starting).
#[derive(Debug, Clone)]
struct SshNode {
    node_type: String,
    host: String,
    /// 0 while it starts.
    pid: u32,
    created_ms: u64,
    /// When its process was last seen running.
    checked_ms: u64,
    /// Why its start failed, or why it is gone.
    failed: Option<String>,
    /// Terminated while it was starting: stopped once started.
    cancelled: bool,
}

/// Node daemons on hosts reached over SSH: each start copies the rayforge
/// binary (when the host's differs) and the file mounts, runs the setup
/// commands and starts `rayforge start --address <head> --block` in the
/// background there, its files under the cluster's directory (logs, the
/// daemon's temporary files); terminating stops it (SIGTERM, then SIGKILL
/// after 20 s) and removes that directory. Starts run on threads of their
/// own (a copy takes seconds): the node is listed as launching meanwhile.
/// The ledger is written to `<dir>/ledger.json` on the head.
pub struct SshProvider {
    inner: std::sync::Arc<SshInner>,
}

struct SshInner {
    s: SshSettings,
    dir: PathBuf,
    next: AtomicU64,
    exe_sha: String,
    nodes: Mutex<BTreeMap<String, SshNode>>,
}

/// How often a node's process is looked for on its host.
const SSH_CHECK_MS: u64 = 5_000;

impl SshProvider {
    /// A provider with `s`, its ledger in `dir`; it takes over the nodes
    /// the ledger lists (a head restarted on the same state).
    pub fn new(s: SshSettings, dir: PathBuf) -> Result<SshProvider> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let exe_sha = crate::gcs::file_sha256(&s.exe)?;
        let mut nodes = BTreeMap::new();
        let mut next = 1;
        if let Ok(text) = std::fs::read_to_string(dir.join("ledger.json")) {
            let listed: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
            for n in listed {
                let (Some(id), Some(t), Some(host), Some(pid)) = (
                    n["id"].as_str(),
                    n["node_type"].as_str(),
                    n["host"].as_str(),
                    n["pid"].as_u64(),
                ) else {
                    continue;
                };
                if let Some(k) = id.rsplit('-').next().and_then(|k| k.parse::<u64>().ok()) {
                    next = next.max(k + 1);
                }
                nodes.insert(
                    id.to_string(),
                    SshNode {
                        node_type: t.to_string(),
                        host: host.to_string(),
                        pid: pid as u32,
                        created_ms: n["created_ms"].as_u64().unwrap_or(0),
                        checked_ms: 0,
                        failed: (pid == 0).then(|| "its start was cut short by a head restart".to_string()),
                        cancelled: false,
                    },
                );
            }
        }
        Ok(SshProvider {
            inner: std::sync::Arc::new(SshInner {
                s,
                dir,
                next: AtomicU64::new(next),
                exe_sha,
                nodes: Mutex::new(nodes),
            }),
        })
    }
}

impl SshInner {
    fn host(&self, addr: &str) -> super::hosts::Host {
        super::hosts::Host::Ssh {
            addr: addr.to_string(),
            login: self.s.login.clone(),
        }
    }

    fn write_ledger(&self, nodes: &BTreeMap<String, SshNode>) {
        let list: Vec<serde_json::Value> = nodes
            .iter()
            .map(|(id, n)| {
                serde_json::json!({
                    "id": id,
                    "node_type": n.node_type,
                    "host": n.host,
                    "pid": n.pid,
                    "created_ms": n.created_ms,
                    "remote_dir": self.s.remote_dir,
                })
            })
            .collect();
        if let Err(e) = write_ledger_file(&self.dir.join("ledger.json"), &list) {
            tracing::warn!("the SSH provider's ledger: {e}");
        }
    }

    /// Stops process `pid` on `addr` (none when 0) and removes the
    /// cluster's directory there.
    fn stop_and_clean(&self, addr: &str, pid: u32) -> Result<()> {
        let host = self.host(addr);
        let dir = remote_dir_on(&host, &self.s.remote_dir)?;
        host.run(&stop_and_clean_script(pid, &dir)).map(|_| ())
    }

    /// Prepares `addr` and starts a node of `node_type` there; returns its pid.
    fn start_on(&self, addr: &str, id: &str, node_type: &str, resources: &Resources) -> Result<u32> {
        use super::hosts::sh_quote;
        let host = self.host(addr);
        let dir = &remote_dir_on(&host, &self.s.remote_dir)?;
        let q = sh_quote(dir);
        prepare_host(
            &host,
            dir,
            &self.s.exe,
            &self.exe_sha,
            &self.s.file_mounts,
            &self.s.setup_commands,
            &mut |step| tracing::debug!(host = addr, "{step}"),
        )?;
        host.run_with_input(&format!("umask 077 && cat > {q}/token"), self.s.token.as_bytes())?;
        let resources: Vec<String> = start_args(resources, true)?.iter().map(|a| sh_quote(a)).collect();
        // `$!` is the daemon's pid: the background subshell execs setsid
        // (not a group leader there, so it does not fork), which execs it.
        let script = format!(
            "cd {q} && (export RAYFORGE_TOKEN=\"$(cat token)\" TMPDIR={q}/tmp {pid_env}={id} {type_env}={t} \
             NO_COLOR=1; exec setsid bin/rayforge start --address {head} \
             --bind 0.0.0.0 --advertise-address {addr} {resources} --block > node.log 2>&1 < /dev/null) & echo $!",
            pid_env = PROVIDER_ID_ENV,
            id = sh_quote(id),
            type_env = NODE_TYPE_ENV,
            t = sh_quote(node_type),
            head = sh_quote(&self.s.head_addr),
            addr = sh_quote(addr),
            resources = resources.join(" "),
        );
        let out = host.run(&script)?;
        out.trim()
            .parse::<u32>()
            .map_err(|_| Error::Runtime(format!("on {addr}: starting the node printed {out:?}, not its pid")))
    }

    /// The start of node `id` on `addr`, on its own thread.
    fn start(self: std::sync::Arc<Self>, addr: String, id: String, node_type: String, resources: Resources) {
        let r = self.start_on(&addr, &id, &node_type, &resources);
        let mut nodes = self.nodes.lock();
        let cancelled = nodes.get(&id).is_none_or(|n| n.cancelled);
        match r {
            Ok(pid) if cancelled => {
                nodes.remove(&id);
                self.write_ledger(&nodes);
                drop(nodes);
                if let Err(e) = self.stop_and_clean(&addr, pid) {
                    tracing::warn!(id = %id, "stopping a node terminated while it started: {e}");
                }
            }
            Ok(pid) => {
                if let Some(n) = nodes.get_mut(&id) {
                    n.pid = pid;
                    n.checked_ms = crate::clock::now_ms();
                }
                self.write_ledger(&nodes);
                tracing::info!(id = %id, host = %addr, pid, "node started over SSH");
            }
            Err(e) => {
                tracing::warn!(id = %id, host = %addr, "starting a node failed: {e}");
                if cancelled {
                    nodes.remove(&id);
                } else if let Some(n) = nodes.get_mut(&id) {
                    n.failed = Some(format!("starting it on {addr} failed: {e}"));
                }
                self.write_ledger(&nodes);
                drop(nodes);
                let _ = self.stop_and_clean(&addr, 0);
            }
        }
    }
}

/// `rayforge start` arguments offering `resources` (`--num-cpus`,
/// `--num-gpus`, custom ones as `--resources` JSON). A node type offers 0
/// of what it does not name (`absent_is_zero`); the head, given
/// resources, is left to detect the ones it does not name.
pub(crate) fn start_args(resources: &Resources, absent_is_zero: bool) -> Result<Vec<String>> {
    let mut args = Vec::new();
    for (key, flag) in [("CPU", "--num-cpus"), ("GPU", "--num-gpus")] {
        match resources.get(key) {
            Some(v) => args.extend([flag.to_string(), v.to_string()]),
            None if absent_is_zero => args.extend([flag.to_string(), "0".to_string()]),
            None => {}
        }
    }
    let custom: BTreeMap<&String, &f64> = resources
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "CPU" | "GPU"))
        .collect();
    if !custom.is_empty() {
        let json = serde_json::to_string(&custom).map_err(|e| Error::Internal(e.to_string()))?;
        args.extend(["--resources".to_string(), json]);
    }
    Ok(args)
}

/// Writes a ledger (JSON) to `path` whole: a temporary file renamed over
/// it, so a reader never sees half of one.
pub(crate) fn write_ledger_file(path: &std::path::Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| Error::Internal(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Where file mount `remote` goes in the cluster's directory `dir`.
pub(crate) fn mount_target(dir: &str, remote: &str) -> String {
    if remote.starts_with('/') {
        remote.to_string()
    } else {
        format!("{dir}/{remote}")
    }
}

/// Readies the cluster's directory `dir` on `host` for a daemon: the
/// rayforge binary `exe` at `dir/bin/rayforge` (copied only when the
/// host's differs, by sha256), the file mounts, then the setup commands
/// run in `dir`; `log` hears each step.
pub(crate) fn prepare_host(
    host: &super::hosts::Host,
    dir: &str,
    exe: &std::path::Path,
    exe_sha: &str,
    file_mounts: &BTreeMap<String, PathBuf>,
    setup_commands: &[String],
    log: &mut dyn FnMut(String),
) -> Result<()> {
    use super::hosts::sh_quote;
    let q = sh_quote(dir);
    host.run(&format!("mkdir -p {q}/bin {q}/tmp && chmod 700 {q}"))?;
    let have = host.run(&format!("cat {q}/bin/rayforge.sha256 2>/dev/null || true"))?;
    if have.trim() != exe_sha {
        log(format!("copying {} to {}:{dir}/bin", exe.display(), host.name()));
        host.copy_to(exe, &format!("{dir}/bin/rayforge"))?;
        host.run_with_input(
            &format!("chmod 755 {q}/bin/rayforge && cat > {q}/bin/rayforge.sha256"),
            exe_sha.as_bytes(),
        )?;
    }
    for (remote, local) in file_mounts {
        let to = mount_target(dir, remote);
        log(format!("file mount {} -> {}:{to}", local.display(), host.name()));
        host.run(&format!("mkdir -p \"$(dirname {})\"", sh_quote(&to)))?;
        host.copy_to(local, &to)?;
    }
    for cmd in setup_commands {
        log(format!("setup: {cmd}"));
        host.run(&format!("cd {q} && {cmd}"))
            .map_err(|e| Error::Runtime(format!("setup command `{cmd}`: {e}")))?;
    }
    Ok(())
}

/// The script that stops process `pid`: SIGTERM, SIGKILL after 20 s.
pub(crate) fn stop_script(pid: u32) -> String {
    format!(
        "kill -TERM {pid} 2>/dev/null; i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt 100 ]; do sleep 0.2; \
         i=$((i+1)); done; kill -KILL {pid} 2>/dev/null; true"
    )
}

/// `dir` on `host` as an absolute path (a relative one is under the
/// login's home there).
pub(crate) fn remote_dir_on(host: &super::hosts::Host, dir: &str) -> Result<String> {
    if dir.starts_with('/') {
        return Ok(dir.to_string());
    }
    let home = host.run("printf %s \"$HOME\"")?;
    if !home.starts_with('/') {
        return Err(Error::Runtime(format!(
            "on {}: $HOME is {home:?}, so {dir:?} has no place; give provider.remote_dir as an absolute path",
            host.name()
        )));
    }
    Ok(format!("{}/{dir}", home.trim_end_matches('/')))
}

/// The script that stops process `pid` (see [`stop_script`]; no process
/// when 0) and removes the cluster's directory `dir`.
pub(crate) fn stop_and_clean_script(pid: u32, dir: &str) -> String {
    let rm = format!("rm -rf {}", super::hosts::sh_quote(dir));
    if pid == 0 {
        return rm;
    }
    format!("{}; {rm}", stop_script(pid))
}

impl NodeProvider for SshProvider {
    fn create(&self, node_type: &str, cfg: &NodeTypeConfig, count: u32) -> Result<Vec<String>> {
        let inner = &self.inner;
        let mut ids = Vec::new();
        for _ in 0..count {
            let mut nodes = inner.nodes.lock();
            let free = inner
                .s
                .hosts
                .iter()
                .find(|h| !nodes.values().any(|n| &n.host == *h))
                .cloned();
            let Some(addr) = free else {
                return Err(Error::Runtime(format!(
                    "every host in worker_ips runs a node already ({} hosts)",
                    inner.s.hosts.len()
                )));
            };
            let id = format!(
                "{}-{node_type}-{}",
                inner.s.cluster,
                inner.next.fetch_add(1, Ordering::Relaxed)
            );
            let now = crate::clock::now_ms();
            // In the ledger before anything happens on the host, so `down`
            // cleans a start cut short.
            nodes.insert(
                id.clone(),
                SshNode {
                    node_type: node_type.to_string(),
                    host: addr.clone(),
                    pid: 0,
                    created_ms: now,
                    checked_ms: now,
                    failed: None,
                    cancelled: false,
                },
            );
            inner.write_ledger(&nodes);
            drop(nodes);
            let (me, node_id, t, res) = (inner.clone(), id.clone(), node_type.to_string(), cfg.resources.clone());
            std::thread::Builder::new()
                .name(format!("ssh-start-{id}"))
                .spawn(move || me.start(addr, node_id, t, res))
                .map_err(|e| Error::io("starting a thread for a node's start", e))?;
            ids.push(id);
        }
        Ok(ids)
    }

    fn terminate(&self, id: &str) -> Result<()> {
        let inner = &self.inner;
        let node = {
            let mut nodes = inner.nodes.lock();
            let n = nodes
                .get_mut(id)
                .ok_or_else(|| Error::InvalidArgument(format!("no node {id} in this cluster")))?;
            if n.pid == 0 && n.failed.is_none() {
                // Still starting: its start thread stops it once started.
                n.cancelled = true;
                return Ok(());
            }
            let n = nodes.remove(id).unwrap_or_else(|| unreachable!("looked up above"));
            inner.write_ledger(&nodes);
            n
        };
        inner.stop_and_clean(&node.host, node.pid)?;
        tracing::info!(id, host = %node.host, "node terminated over SSH");
        Ok(())
    }

    fn list(&self) -> Result<Vec<ProviderNode>> {
        let inner = &self.inner;
        let now = crate::clock::now_ms();
        let due: Vec<(String, String, u32)> = inner
            .nodes
            .lock()
            .iter()
            .filter(|(_, n)| n.pid > 0 && n.failed.is_none() && now.saturating_sub(n.checked_ms) >= SSH_CHECK_MS)
            .map(|(id, n)| (id.clone(), n.host.clone(), n.pid))
            .collect();
        for (id, host, pid) in due {
            match inner
                .host(&host)
                .run(&format!("kill -0 {pid} 2>/dev/null && echo alive || echo gone"))
            {
                Ok(out) => {
                    let mut nodes = inner.nodes.lock();
                    if let Some(n) = nodes.get_mut(&id) {
                        n.checked_ms = now;
                        if out.trim() == "gone" {
                            n.failed = Some(format!("its process on {host} is gone"));
                        }
                    }
                }
                // An unreachable host is not a dead node (yet).
                Err(e) => tracing::warn!(id = %id, "cannot check the node on {host}: {e}"),
            }
        }
        let mut nodes = inner.nodes.lock();
        let out: Vec<ProviderNode> = nodes
            .iter()
            .filter(|(_, n)| !n.cancelled)
            .map(|(id, n)| ProviderNode {
                id: id.clone(),
                node_type: n.node_type.clone(),
                created_ms: n.created_ms,
                exited: n.failed.clone(),
            })
            .collect();
        let gone: Vec<(String, SshNode)> = nodes
            .iter()
            .filter(|(_, n)| n.failed.is_some())
            .map(|(id, n)| (id.clone(), n.clone()))
            .collect();
        if !gone.is_empty() {
            for (id, _) in &gone {
                nodes.remove(id);
            }
            inner.write_ledger(&nodes);
            drop(nodes);
            // Their hosts are free again: their files go.
            for (_, n) in gone {
                let _ = inner.stop_and_clean(&n.host, 0);
            }
        }
        Ok(out)
    }
}
