//! `cluster.yaml`: the node types the autoscaler may launch, its limits,
//! and the provider that creates nodes, as Ray's cluster config names
//! them. The whole file is checked before anything starts: unknown fields,
//! wrong types, `min_workers` above `max_workers` and impossible amounts
//! are errors naming the field.
//!
//! ```yaml
//! cluster_name: demo
//! max_workers: 4
//! upscaling_speed: 1.0
//! idle_timeout_s: 60
//! provider:
//!   type: local
//! available_node_types:
//!   cpu2:
//!     resources: {CPU: 2}
//!     min_workers: 0
//!     max_workers: 4
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::resources::Resources;

/// One node type: what each of its nodes offers and how many may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTypeConfig {
    /// What a node of this type offers (`CPU`, `GPU`, `memory` in bytes,
    /// custom names).
    pub resources: Resources,
    /// Nodes of this type kept running even when idle.
    #[serde(default)]
    pub min_workers: u32,
    /// The most nodes of this type at once.
    pub max_workers: u32,
}

/// What the autoscaler's policy needs: node types and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalerConfig {
    /// Node types by name.
    pub node_types: BTreeMap<String, NodeTypeConfig>,
    /// The most worker nodes of all types at once (the head not counted).
    pub max_workers: u32,
    /// How fast the cluster grows for queued tasks: at most
    /// `max(5, upscaling_speed x running workers)` nodes launching at once.
    pub upscaling_speed: f64,
    /// Seconds a node stays idle before it is removed.
    pub idle_timeout_s: f64,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            node_types: BTreeMap::new(),
            max_workers: 8,
            upscaling_speed: 1.0,
            idle_timeout_s: 300.0,
        }
    }
}

/// How nodes are created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum ProviderConfig {
    /// Node daemons started as processes on the head's machine, each with
    /// its own ports (as Ray's fake multi-node provider).
    Local {
        /// A command each node daemon is started under (its arguments
        /// follow), e.g. one giving it a private disk; none by default.
        #[serde(default)]
        wrapper: Vec<String>,
    },
    /// Hosts reached over SSH: the head on `head_ip`, worker nodes on
    /// `worker_ips` (one node per host). The launcher copies the rayforge
    /// binary to each host and starts the daemon there.
    Ssh {
        /// The head's host (the address other hosts and clients dial).
        head_ip: String,
        /// Hosts worker nodes may be started on.
        #[serde(default)]
        worker_ips: Vec<String>,
        /// The user to log in as.
        ssh_user: String,
        /// The private key to log in with (copied to the head, which
        /// starts worker nodes with it).
        ssh_private_key: std::path::PathBuf,
        /// The SSH port of every host.
        #[serde(default = "default_ssh_port")]
        ssh_port: u16,
        /// Where the cluster's files live on each host (the binary, logs,
        /// the head's state); relative paths are under the user's home.
        #[serde(default)]
        remote_dir: Option<String>,
    },
}

fn default_ssh_port() -> u16 {
    22
}

/// The head node's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// What the head offers (its machine's CPUs and memory when absent);
    /// `{CPU: 0}` keeps work off the head.
    #[serde(default)]
    pub resources: Option<Resources>,
    /// The head's control-service port.
    #[serde(default = "default_head_port")]
    pub port: u16,
    /// The head's HTTP port (jobs API and dashboard; 0: any free port).
    #[serde(default = "default_jobs_port")]
    pub jobs_port: u16,
}

fn default_head_port() -> u16 {
    crate::cluster::DEFAULT_PORT
}
fn default_jobs_port() -> u16 {
    crate::jobs::DEFAULT_JOBS_PORT
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            resources: None,
            port: default_head_port(),
            jobs_port: default_jobs_port(),
        }
    }
}

fn default_max_workers() -> u32 {
    AutoscalerConfig::default().max_workers
}
fn default_upscaling_speed() -> f64 {
    AutoscalerConfig::default().upscaling_speed
}
fn default_idle_timeout_s() -> f64 {
    AutoscalerConfig::default().idle_timeout_s
}

/// A whole `cluster.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name: it tags every node the cluster creates.
    pub cluster_name: String,
    /// The most worker nodes at once.
    #[serde(default = "default_max_workers")]
    pub max_workers: u32,
    /// See [`AutoscalerConfig::upscaling_speed`].
    #[serde(default = "default_upscaling_speed")]
    pub upscaling_speed: f64,
    /// See [`AutoscalerConfig::idle_timeout_s`].
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: f64,
    /// How nodes are created.
    pub provider: ProviderConfig,
    /// The head's settings.
    #[serde(default)]
    pub head: HeadConfig,
    /// The node types workers are made of.
    pub available_node_types: BTreeMap<String, NodeTypeConfig>,
    /// Files copied to every node's host before its daemon starts: remote
    /// path (relative: under the cluster's directory there) -> local path
    /// on the machine running `rayforge up`.
    #[serde(default)]
    pub file_mounts: BTreeMap<String, std::path::PathBuf>,
    /// Shell commands run on every node's host, in the cluster's
    /// directory, before its daemon starts; a failing one fails the node's
    /// start, naming it.
    #[serde(default)]
    pub setup_commands: Vec<String>,
}

impl ClusterConfig {
    /// Parses and checks YAML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ClusterConfig> {
        let c: ClusterConfig =
            serde_yaml::from_str(text).map_err(|e| Error::InvalidArgument(format!("{origin}: {e}")))?;
        c.validate()
            .map_err(|e| Error::InvalidArgument(format!("{origin}: {e}")))?;
        Ok(c)
    }

    /// Reads, parses and checks a `cluster.yaml`.
    pub fn load(path: &Path) -> Result<ClusterConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidArgument(format!("reading cluster config {}: {e}", path.display())))?;
        ClusterConfig::parse(&text, &path.display().to_string())
    }

    /// What the autoscaler's policy needs of it.
    pub fn autoscaler(&self) -> AutoscalerConfig {
        AutoscalerConfig {
            node_types: self.available_node_types.clone(),
            max_workers: self.max_workers,
            upscaling_speed: self.upscaling_speed,
            idle_timeout_s: self.idle_timeout_s,
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let name_ok = |s: &str| {
            !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name_ok(&self.cluster_name) {
            return Err(format!(
                "cluster_name {:?} must be 1 to 63 letters, digits, '-' or '_'",
                self.cluster_name
            ));
        }
        if !(self.upscaling_speed.is_finite() && self.upscaling_speed > 0.0) {
            return Err(format!(
                "upscaling_speed {} must be a positive number",
                self.upscaling_speed
            ));
        }
        if !(self.idle_timeout_s.is_finite() && self.idle_timeout_s >= 0.0) {
            return Err(format!(
                "idle_timeout_s {} must be 0 or more seconds",
                self.idle_timeout_s
            ));
        }
        if let ProviderConfig::Ssh {
            head_ip,
            worker_ips,
            ssh_user,
            ..
        } = &self.provider
        {
            if head_ip.trim().is_empty() {
                return Err("provider.head_ip is empty".into());
            }
            if ssh_user.trim().is_empty() {
                return Err("provider.ssh_user is empty".into());
            }
            if let Some(dup) = worker_ips
                .iter()
                .enumerate()
                .find(|(i, ip)| worker_ips[..*i].contains(ip) || *ip == head_ip)
            {
                return Err(format!("provider.worker_ips lists {} twice (or the head's)", dup.1));
            }
        }
        for remote in self.file_mounts.keys() {
            if remote.trim().is_empty() || remote.split('/').any(|p| p == "..") {
                return Err(format!(
                    "file_mounts: remote path {remote:?} must be a path without '..'"
                ));
            }
        }
        if self.available_node_types.is_empty() {
            return Err("available_node_types is empty: name at least one node type".into());
        }
        check_resources("head.resources", self.head.resources.iter().flatten())?;
        let mut min_sum = 0u64;
        for (name, t) in &self.available_node_types {
            if !name_ok(name) {
                return Err(format!(
                    "node type name {name:?} must be 1 to 63 letters, digits, '-' or '_'"
                ));
            }
            let at = format!("available_node_types.{name}");
            if t.min_workers > t.max_workers {
                return Err(format!(
                    "{at}: min_workers {} is above max_workers {}",
                    t.min_workers, t.max_workers
                ));
            }
            check_resources(&format!("{at}.resources"), t.resources.iter())?;
            if t.resources.values().all(|v| *v <= 0.0) {
                return Err(format!("{at}.resources offers nothing"));
            }
            min_sum += u64::from(t.min_workers);
        }
        if min_sum > u64::from(self.max_workers) {
            return Err(format!(
                "the node types' min_workers add up to {min_sum}, above max_workers {}",
                self.max_workers
            ));
        }
        Ok(())
    }
}

fn check_resources<'a>(at: &str, r: impl Iterator<Item = (&'a String, &'a f64)>) -> std::result::Result<(), String> {
    for (k, v) in r {
        if k.is_empty() || crate::resources::group_of(k).is_some() {
            return Err(format!("{at}: {k:?} is not a resource name"));
        }
        if !(v.is_finite() && *v >= 0.0) {
            return Err(format!("{at}.{k} = {v} must be a finite amount of 0 or more"));
        }
        if k == "GPU" && v.fract() != 0.0 {
            return Err(format!("{at}.GPU = {v} must be a whole number"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
cluster_name: demo
max_workers: 4
idle_timeout_s: 30
provider:
  type: local
head:
  resources: {CPU: 0}
available_node_types:
  cpu2:
    resources: {CPU: 2, memory: 4.0e9}
    max_workers: 4
  gpu:
    resources: {CPU: 8, GPU: 1}
    min_workers: 1
    max_workers: 1
";

    #[test]
    fn a_good_file_parses_with_defaults() {
        let c = ClusterConfig::parse(GOOD, "cluster.yaml").unwrap();
        assert_eq!(c.provider, ProviderConfig::Local { wrapper: vec![] });
        let a = c.autoscaler();
        assert_eq!(a.max_workers, 4);
        assert_eq!(a.upscaling_speed, 1.0);
        assert_eq!(a.idle_timeout_s, 30.0);
        assert_eq!(a.node_types["cpu2"].min_workers, 0);
        assert_eq!(a.node_types["cpu2"].resources["memory"], 4.0e9);
        assert_eq!(a.node_types["gpu"].min_workers, 1);
        assert_eq!(c.head.resources.unwrap()["CPU"], 0.0);
    }

    fn err(text: &str) -> String {
        match ClusterConfig::parse(text, "c.yaml") {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn mistakes_are_named() {
        let unknown = err(&GOOD.replace("idle_timeout_s", "idle_timeout_minutes"));
        assert!(
            unknown.starts_with("c.yaml: ") && unknown.contains("idle_timeout_minutes"),
            "{unknown}"
        );
        let typed = err(&GOOD.replace("max_workers: 4\nidle", "max_workers: four\nidle"));
        assert!(typed.contains("max_workers"), "{typed}");
        let min = err(&GOOD.replace(
            "min_workers: 1\n    max_workers: 1",
            "min_workers: 2\n    max_workers: 1",
        ));
        assert!(
            min.contains("available_node_types.gpu: min_workers 2 is above max_workers 1"),
            "{min}"
        );
        let provider = err(&GOOD.replace("type: local", "type: aws"));
        assert!(provider.contains("aws"), "{provider}");
        let negative = err(&GOOD.replace("{CPU: 2, memory: 4.0e9}", "{CPU: -2}"));
        assert!(
            negative.contains("available_node_types.cpu2.resources.CPU = -2"),
            "{negative}"
        );
        let sum = err(&GOOD.replace("max_workers: 4\nidle", "max_workers: 0\nidle"));
        assert!(sum.contains("min_workers add up to 1, above max_workers 0"), "{sum}");
        let speed = err(&GOOD.replace("idle_timeout_s: 30", "upscaling_speed: 0"));
        assert!(speed.contains("upscaling_speed"), "{speed}");
        let missing = err(&GOOD.replace("cluster_name: demo\n", ""));
        assert!(missing.contains("cluster_name"), "{missing}");
        let name = err(&GOOD.replace("cluster_name: demo", "cluster_name: 'a b'"));
        assert!(name.contains("cluster_name \"a b\""), "{name}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let m = match ClusterConfig::load(Path::new("/nonexistent/cluster.yaml")) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(m.contains("/nonexistent/cluster.yaml"), "{m}");
    }
}
