//! Options of tasks and actors, set with builder methods on the
//! `function::options()` / `Actor::options()` values the macros generate.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::resources::Resources;

/// Options of a remote function call.
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    /// CPUs the task holds while it runs (default 1).
    pub num_cpus: Option<f64>,
    /// GPUs the task holds; the worker sees them in `CUDA_VISIBLE_DEVICES`.
    pub num_gpus: Option<f64>,
    /// Bytes of memory reserved for the task.
    pub memory: Option<u64>,
    /// Custom resources.
    pub resources: BTreeMap<String, f64>,
    /// How often a task whose worker died is retried (default 3; -1 forever).
    pub max_retries: Option<i32>,
    /// Also retry when the task itself fails (panics or returns `Err`).
    pub retry_exceptions: bool,
    /// Run inside a placement group's bundle.
    pub placement_group: Option<BundleTarget>,
    /// Which node the task may run on.
    pub scheduling_strategy: SchedulingStrategy,
    /// Environment variables set in the worker before the task runs (and
    /// put back as they were after it).
    pub env: BTreeMap<String, String>,
}

/// Which node a task or actor goes to (as Ray's `scheduling_strategy`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SchedulingStrategy {
    /// The submitter's node while it has the resources, else another
    /// node that has them (tasks); the least loaded node (actors).
    #[default]
    Default,
    /// Spread over the nodes that have the resources, round-robin.
    Spread,
    /// On the node with this id ([`crate::node_id`], `rayforge list nodes`).
    /// `soft`: elsewhere when that node is dead or can never fit the
    /// request; otherwise the task or actor fails with
    /// [`Error::Infeasible`].
    NodeAffinity {
        /// The node's id.
        node_id: String,
        /// Whether another node will do when that one cannot.
        soft: bool,
    },
}

impl SchedulingStrategy {
    /// The wire form (`None` for the default).
    pub(crate) fn to_proto(&self) -> Option<crate::proto::SchedulingStrategy> {
        use crate::proto::scheduling_strategy::Kind;
        let kind = match self {
            SchedulingStrategy::Default => return None,
            SchedulingStrategy::Spread => Kind::Spread(true),
            SchedulingStrategy::NodeAffinity { node_id, soft } => Kind::NodeAffinity(crate::proto::NodeAffinity {
                node_id: node_id.clone(),
                soft: *soft,
            }),
        };
        Some(crate::proto::SchedulingStrategy { kind: Some(kind) })
    }

    /// Checks what a user passed.
    pub(crate) fn validate(&self) -> Result<()> {
        match self {
            SchedulingStrategy::NodeAffinity { node_id, .. } if node_id.is_empty() => Err(Error::InvalidArgument(
                "node affinity needs a node id (see rayforge::node_id or `rayforge list nodes`)".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Where in a placement group a task or actor runs.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleTarget {
    /// The group's id.
    pub group: String,
    /// How many bundles it has.
    pub bundles: usize,
    /// One bundle, or any of them.
    pub bundle: Option<usize>,
}

impl BundleTarget {
    /// Renames a demand into the group's resources (see the placement
    /// module), checking the bundle index.
    fn apply(&self, plain: Resources) -> Result<Resources> {
        if let Some(i) = self.bundle {
            if i >= self.bundles {
                return Err(Error::InvalidArgument(format!(
                    "bundle index {i} is out of range: placement group {} has {} bundles",
                    self.group, self.bundles
                )));
            }
        }
        let idx = self.bundle.map(|i| i as u32);
        let mut out: Resources = plain
            .into_iter()
            .map(|(k, v)| (crate::resources::group_resource(&k, &self.group, idx), v))
            .collect();
        // Lands in the bundle even when asking for nothing else.
        out.insert(crate::resources::group_resource("bundle", &self.group, idx), 0.001);
        Ok(out)
    }
}

fn check(what: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} must be a non-negative number, got {v}"
        )))
    }
}

pub(crate) fn demand(
    num_cpus: f64,
    num_gpus: Option<f64>,
    memory: Option<u64>,
    custom: &BTreeMap<String, f64>,
) -> Result<Resources> {
    check("num_cpus", num_cpus)?;
    let mut r = Resources::new();
    if num_cpus > 0.0 {
        r.insert("CPU".into(), num_cpus);
    }
    if let Some(g) = num_gpus {
        check("num_gpus", g)?;
        if g > 0.0 {
            if g > 1.0 && g.fract() != 0.0 {
                return Err(Error::InvalidArgument(format!(
                    "num_gpus above 1 must be a whole number, got {g}"
                )));
            }
            r.insert("GPU".into(), g);
        }
    }
    if let Some(m) = memory {
        r.insert("memory".into(), m as f64);
    }
    for (k, v) in custom {
        check(&format!("resource `{k}`"), *v)?;
        if k.is_empty() {
            return Err(Error::InvalidArgument("custom resource names must not be empty".into()));
        }
        r.insert(k.clone(), *v);
    }
    Ok(r)
}

impl TaskOptions {
    pub(crate) fn demand(&self) -> Result<Resources> {
        let plain = demand(
            self.num_cpus.unwrap_or(1.0),
            self.num_gpus,
            self.memory,
            &self.resources,
        )?;
        match &self.placement_group {
            Some(t) => t.apply(plain),
            None => Ok(plain),
        }
    }
}

/// Options of an actor.
#[derive(Debug, Clone, Default)]
pub struct ActorOptions {
    /// CPUs held for the actor's lifetime (default 0).
    pub num_cpus: Option<f64>,
    /// GPUs held for the actor's lifetime.
    pub num_gpus: Option<f64>,
    /// Bytes of memory reserved.
    pub memory: Option<u64>,
    /// Custom resources.
    pub resources: BTreeMap<String, f64>,
    /// Restarts after its process dies (default 0; -1 forever).
    pub max_restarts: i32,
    /// Retries of a call interrupted by a process death (default 0; -1 forever).
    pub max_task_retries: i32,
    /// A name to find it with [`crate::get_actor`].
    pub name: Option<String>,
    /// Outlives its creator (for named service actors).
    pub detached: bool,
    /// Concurrent calls of an async actor (default 1000).
    pub max_concurrency: Option<u32>,
    /// Run inside a placement group's bundle.
    pub placement_group: Option<BundleTarget>,
    /// Which node the actor is placed on (also when it restarts).
    pub scheduling_strategy: SchedulingStrategy,
    /// Environment variables set in the actor's process before its
    /// constructor runs (e.g. `MASTER_ADDR`, `RANK`, `NCCL_*`).
    pub env: BTreeMap<String, String>,
}

impl ActorOptions {
    pub(crate) fn demand(&self) -> Result<Resources> {
        let plain = demand(
            self.num_cpus.unwrap_or(0.0),
            self.num_gpus,
            self.memory,
            &self.resources,
        )?;
        match &self.placement_group {
            Some(t) => t.apply(plain),
            None => Ok(plain),
        }
    }
}

/// Implements the task option builder methods on a macro-generated options
/// newtype (`struct Options(TaskOptions)`).
#[doc(hidden)]
#[macro_export]
macro_rules! __impl_task_options {
    ($t:ty) => {
        #[allow(dead_code, unreachable_pub)]
        impl $t {
            /// CPUs the task holds while it runs (default 1).
            pub fn num_cpus(mut self, n: f64) -> Self {
                self.0.num_cpus = Some(n);
                self
            }
            /// GPUs the task holds.
            pub fn num_gpus(mut self, n: f64) -> Self {
                self.0.num_gpus = Some(n);
                self
            }
            /// Bytes of memory reserved for the task.
            pub fn memory(mut self, bytes: u64) -> Self {
                self.0.memory = Some(bytes);
                self
            }
            /// Requires a custom resource.
            pub fn resource(mut self, name: &str, amount: f64) -> Self {
                self.0.resources.insert(name.to_string(), amount);
                self
            }
            /// Retries after a worker death (default 3; -1 forever).
            pub fn max_retries(mut self, n: i32) -> Self {
                self.0.max_retries = Some(n);
                self
            }
            /// Also retry when the task fails (panics or returns `Err`).
            pub fn retry_exceptions(mut self, yes: bool) -> Self {
                self.0.retry_exceptions = yes;
                self
            }
            /// Runs inside placement group `pg`: in bundle `bundle`, or any.
            pub fn placement_group(mut self, pg: &$crate::PlacementGroup, bundle: Option<usize>) -> Self {
                self.0.placement_group = Some(pg.target(bundle));
                self
            }
            /// Which node to run on: spread, or a given node.
            pub fn scheduling_strategy(mut self, strategy: $crate::SchedulingStrategy) -> Self {
                self.0.scheduling_strategy = strategy;
                self
            }
            /// Sets an environment variable in the worker while the task
            /// runs (it is put back as it was afterwards).
            pub fn env(mut self, name: &str, value: &str) -> Self {
                self.0.env.insert(name.to_string(), value.to_string());
                self
            }
        }
    };
}

/// Implements the actor option builder methods on a macro-generated options
/// newtype (`struct FooOptions(ActorOptions)`).
#[doc(hidden)]
#[macro_export]
macro_rules! __impl_actor_options {
    ($t:ty) => {
        #[allow(dead_code, unreachable_pub)]
        impl $t {
            /// CPUs held for the actor's lifetime (default 0).
            pub fn num_cpus(mut self, n: f64) -> Self {
                self.0.num_cpus = Some(n);
                self
            }
            /// GPUs held for the actor's lifetime.
            pub fn num_gpus(mut self, n: f64) -> Self {
                self.0.num_gpus = Some(n);
                self
            }
            /// Bytes of memory reserved.
            pub fn memory(mut self, bytes: u64) -> Self {
                self.0.memory = Some(bytes);
                self
            }
            /// Requires a custom resource.
            pub fn resource(mut self, name: &str, amount: f64) -> Self {
                self.0.resources.insert(name.to_string(), amount);
                self
            }
            /// Restarts after the process dies (-1 forever).
            pub fn max_restarts(mut self, n: i32) -> Self {
                self.0.max_restarts = n;
                self
            }
            /// Retries of calls interrupted by a process death (-1 forever).
            pub fn max_task_retries(mut self, n: i32) -> Self {
                self.0.max_task_retries = n;
                self
            }
            /// Registers the actor under a name (see `rayforge::get_actor`).
            pub fn name(mut self, name: &str) -> Self {
                self.0.name = Some(name.to_string());
                self
            }
            /// Lets the actor outlive its creator.
            pub fn detached(mut self) -> Self {
                self.0.detached = true;
                self
            }
            /// Concurrent calls of an async actor.
            pub fn max_concurrency(mut self, n: u32) -> Self {
                self.0.max_concurrency = Some(n);
                self
            }
            /// Runs inside placement group `pg`: in bundle `bundle`, or any.
            pub fn placement_group(mut self, pg: &$crate::PlacementGroup, bundle: Option<usize>) -> Self {
                self.0.placement_group = Some(pg.target(bundle));
                self
            }
            /// Which node to run on: spread, or a given node.
            pub fn scheduling_strategy(mut self, strategy: $crate::SchedulingStrategy) -> Self {
                self.0.scheduling_strategy = strategy;
                self
            }
            /// Sets an environment variable in the actor's process before
            /// its constructor runs (kept for the process's life).
            pub fn env(mut self, name: &str, value: &str) -> Self {
                self.0.env.insert(name.to_string(), value.to_string());
                self
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_validates_and_defaults() {
        let o = TaskOptions::default();
        assert_eq!(o.demand().unwrap().get("CPU"), Some(&1.0));
        let o = TaskOptions {
            num_cpus: Some(-1.0),
            ..Default::default()
        };
        assert!(o.demand().unwrap_err().to_string().contains("num_cpus"));
        let o = TaskOptions {
            num_gpus: Some(1.5),
            ..Default::default()
        };
        assert!(o.demand().is_err());
        let mut o = TaskOptions {
            num_cpus: Some(0.0),
            ..Default::default()
        };
        o.resources.insert("TPU".into(), 2.0);
        let d = o.demand().unwrap();
        assert_eq!(d.get("CPU"), None);
        assert_eq!(d.get("TPU"), Some(&2.0));
        assert!(ActorOptions::default().demand().unwrap().is_empty());
    }
}
