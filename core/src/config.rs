//! Configuration of [`crate::init`].

use std::collections::HashMap;
use std::path::PathBuf;

/// How to start or join a cluster. `Config::default()` starts an embedded
/// single-node cluster using all cores.
///
/// ```
/// let cfg = rayforge::Config::default().num_cpus(4.0).resource("TPU", 2.0);
/// assert_eq!(cfg.num_cpus, Some(4.0));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// CPUs this node offers (default: detected cores).
    pub num_cpus: Option<f64>,
    /// GPUs this node offers (default: detected NVIDIA devices).
    pub num_gpus: Option<f64>,
    /// Custom resources.
    pub resources: HashMap<String, f64>,
    /// Object store capacity in bytes (default: 30% of RAM).
    pub object_store_memory: Option<u64>,
    /// Worker processes started up front (default: one per CPU).
    pub prestart_workers: Option<usize>,
    /// Node memory fraction above which the memory monitor kills a task
    /// (default 0.95; 1.0 or more disables it).
    pub memory_usage_threshold: Option<f64>,
    /// Where spilled objects go (default: the system temp dir).
    pub spill_dir: Option<PathBuf>,
    /// Seconds an idle worker above the pre-started count lives (default 10).
    pub idle_worker_timeout_s: Option<f64>,
    /// Extra environment for worker processes.
    pub worker_env: HashMap<String, String>,
    /// Up to how many short tasks a leased worker is sent ahead of their
    /// replies, so that it starts the next as soon as it ends one (default
    /// 16; 1 sends each task after the previous one's reply, as Ray does).
    /// A task pushed behind another is taken back when another worker of
    /// its shape has nothing to run.
    pub max_tasks_in_flight_per_worker: Option<usize>,
    /// A task answered within this many microseconds counts as short: its
    /// worker is then sent more ahead of replies (default 1000).
    pub short_task_us: Option<u64>,
    /// Join a running cluster instead of starting an embedded one:
    /// `"host:port"` of the head, or `"auto"` for the cluster started on this
    /// machine with `rayforge start --head` (or `$RAYFORGE_ADDRESS`).
    pub address: Option<String>,
    /// The cluster's token (default: `$RAYFORGE_TOKEN`, else the one
    /// `rayforge start --head` recorded on this machine).
    pub token: Option<String>,
    /// With `address`: the id of the node (on this machine) to attach the
    /// driver to (default: the head's node when it is on this machine, else
    /// any node here).
    pub node_id: Option<String>,
    /// A second [`crate::init`] in the same process returns `Ok` and keeps
    /// the cluster the first one started or joined (this config is then
    /// ignored, with a log line), as Ray's `ignore_reinit_error`. Off by
    /// default: a second `init` is an error.
    pub ignore_reinit_error: bool,
}

impl Config {
    /// Joins a running cluster (see [`Config::address`](struct.Config.html#structfield.address)).
    ///
    /// ```
    /// let cfg = rayforge::Config::address("auto");
    /// assert_eq!(cfg.address.as_deref(), Some("auto"));
    /// ```
    pub fn address(addr: &str) -> Config {
        Config {
            address: Some(addr.to_string()),
            ..Config::default()
        }
    }

    /// Lets a second `init` in this process return `Ok` (see
    /// [`Config::ignore_reinit_error`](struct.Config.html#structfield.ignore_reinit_error)).
    ///
    /// ```
    /// let cfg = rayforge::Config::default().reinit_ok();
    /// assert!(cfg.ignore_reinit_error);
    /// ```
    pub fn reinit_ok(mut self) -> Self {
        self.ignore_reinit_error = true;
        self
    }

    /// Sets the cluster token.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// Picks the node the driver attaches to (see [`Config::node_id`](struct.Config.html#structfield.node_id)).
    pub fn attach_to(mut self, node_id: &str) -> Self {
        self.node_id = Some(node_id.to_string());
        self
    }

    /// Sets the node's CPU count.
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = Some(n);
        self
    }
    /// Sets the node's GPU count.
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.num_gpus = Some(n);
        self
    }
    /// Adds a custom resource.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.insert(name.to_string(), amount);
        self
    }
    /// Sets the object store capacity in bytes.
    pub fn object_store_memory(mut self, bytes: u64) -> Self {
        self.object_store_memory = Some(bytes);
        self
    }
    /// Sets how many workers start up front.
    pub fn prestart_workers(mut self, n: usize) -> Self {
        self.prestart_workers = Some(n);
        self
    }
    /// Sets the memory monitor's threshold (fraction of node memory).
    pub fn memory_usage_threshold(mut self, f: f64) -> Self {
        self.memory_usage_threshold = Some(f);
        self
    }
    /// Sets the spill directory.
    pub fn spill_dir(mut self, p: impl Into<PathBuf>) -> Self {
        self.spill_dir = Some(p.into());
        self
    }
    /// Sets how many short tasks a worker is sent ahead of their replies
    /// (see [`Config::max_tasks_in_flight_per_worker`](struct.Config.html#structfield.max_tasks_in_flight_per_worker)).
    ///
    /// ```
    /// let cfg = rayforge::Config::default().max_tasks_in_flight_per_worker(1);
    /// assert_eq!(cfg.max_tasks_in_flight_per_worker, Some(1));
    /// ```
    pub fn max_tasks_in_flight_per_worker(mut self, n: usize) -> Self {
        self.max_tasks_in_flight_per_worker = Some(n);
        self
    }
    /// Sets the reply time under which a task counts as short.
    pub fn short_task_us(mut self, us: u64) -> Self {
        self.short_task_us = Some(us);
        self
    }
    /// Adds an environment variable for every worker process.
    pub fn worker_env(mut self, k: &str, v: &str) -> Self {
        self.worker_env.insert(k.into(), v.into());
        self
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::InvalidArgument(m));
        if let Some(n) = self.num_cpus {
            if !(n.is_finite() && n >= 0.0) {
                return bad(format!("Config::num_cpus must be a non-negative number, got {n}"));
            }
        }
        if let Some(n) = self.num_gpus {
            if !(n.is_finite() && n >= 0.0) {
                return bad(format!("Config::num_gpus must be a non-negative number, got {n}"));
            }
        }
        for (k, v) in &self.resources {
            if k.is_empty() || !(v.is_finite() && *v >= 0.0) {
                return bad(format!("custom resource `{k}` = {v} is invalid"));
            }
        }
        if self.object_store_memory == Some(0) {
            return bad("Config::object_store_memory must be above 0".into());
        }
        if self.max_tasks_in_flight_per_worker == Some(0) {
            return bad("Config::max_tasks_in_flight_per_worker must be at least 1".into());
        }
        Ok(())
    }
}
