//! Placement groups: reserve bundles of resources on the cluster's nodes
//! all at once (gang scheduling), then run tasks and actors inside them.
//!
//! ```no_run
//! use std::time::Duration;
//! use rayforge::{placement_group, PlacementStrategy};
//!
//! #[rayforge::remote]
//! fn train_shard(i: usize) -> usize { i }
//!
//! # fn main() -> rayforge::Result<()> {
//! rayforge::init(rayforge::Config::default())?;
//! let cpu = |n: f64| [("CPU".to_string(), n)].into_iter().collect();
//! let pg = placement_group(vec![cpu(1.0), cpu(1.0)], PlacementStrategy::Spread).create()?;
//! assert!(pg.wait(Duration::from_secs(30))?, "{:?}", pg.state()?);
//! let r = train_shard::options().placement_group(&pg, Some(1)).remote(1);
//! assert_eq!(r.get()?, 1);
//! rayforge::remove_placement_group(&pg)?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::options::BundleTarget;
use crate::proto;
use crate::worker;

/// How a group's bundles are spread over nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementStrategy {
    /// As few nodes as possible (one if it fits).
    Pack,
    /// As many nodes as possible, sharing nodes when there are too few.
    Spread,
    /// All bundles on one node, or not at all.
    StrictPack,
    /// Every bundle on a different node, or not at all.
    StrictSpread,
}

impl PlacementStrategy {
    pub(crate) fn to_proto(self) -> proto::PlacementStrategy {
        match self {
            PlacementStrategy::Pack => proto::PlacementStrategy::Pack,
            PlacementStrategy::Spread => proto::PlacementStrategy::Spread,
            PlacementStrategy::StrictPack => proto::PlacementStrategy::StrictPack,
            PlacementStrategy::StrictSpread => proto::PlacementStrategy::StrictSpread,
        }
    }

    pub(crate) fn from_proto(p: proto::PlacementStrategy) -> PlacementStrategy {
        match p {
            proto::PlacementStrategy::Pack => PlacementStrategy::Pack,
            proto::PlacementStrategy::Spread => PlacementStrategy::Spread,
            proto::PlacementStrategy::StrictPack => PlacementStrategy::StrictPack,
            proto::PlacementStrategy::StrictSpread => PlacementStrategy::StrictSpread,
        }
    }
}

/// Where a group stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementGroupState {
    /// Not placed yet: waiting for resources, or infeasible; the reason says.
    Pending(String),
    /// Every bundle is reserved.
    Created,
    /// Removed; its bundles were released.
    Removed,
}

/// A handle to a placement group (cloneable, and can be passed to tasks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementGroup {
    id: String,
    bundles: usize,
}

/// Builds a placement group; see [`placement_group`].
pub struct PlacementGroupBuilder {
    bundles: Vec<BTreeMap<String, f64>>,
    strategy: PlacementStrategy,
    name: Option<String>,
}

/// Starts describing a placement group: one resource map per bundle
/// (e.g. `{"CPU": 1, "GPU": 1}`), and how to spread them.
pub fn placement_group(bundles: Vec<BTreeMap<String, f64>>, strategy: PlacementStrategy) -> PlacementGroupBuilder {
    PlacementGroupBuilder {
        bundles,
        strategy,
        name: None,
    }
}

/// A call about placement groups to this process's node.
enum GroupCall {
    Create(proto::PlacementGroupRecord),
    Get(proto::GetPlacementGroupRequest),
    Remove(proto::GetPlacementGroupRequest),
}

impl GroupCall {
    fn what(&self) -> &'static str {
        match self {
            GroupCall::Create(_) => "creating a placement group",
            GroupCall::Get(_) => "looking up a placement group",
            GroupCall::Remove(_) => "removing a placement group",
        }
    }

    /// Sends the call. The driver of an embedded cluster runs the node in
    /// its own process: the node's handler is called directly there, with
    /// no gRPC round trip (each one is a chain of thread wake-ups), right
    /// here when `inline` (the caller runs under [`blocking`], inside the
    /// runtime), else on the runtime. Elsewhere it goes to the node over
    /// gRPC.
    async fn send(self, inline: bool) -> Result<proto::PlacementGroupRecord> {
        let cw = worker::current()?;
        if let Some(node) = cw.embedded_node().cloned() {
            let call = async move {
                match self {
                    GroupCall::Create(r) => node.create_group(r).await,
                    GroupCall::Get(r) => node.get_group(r).await,
                    GroupCall::Remove(r) => node.remove_group(r).await,
                }
            };
            return if inline {
                call.await
            } else {
                cw.handle
                    .spawn(call)
                    .await
                    .map_err(|e| Error::Internal(format!("a placement group call on the embedded node failed: {e}")))?
            };
        }
        let what = self.what();
        let mut c = cw.node.clone();
        let r = match self {
            GroupCall::Create(r) => c.create_placement_group(r).await,
            GroupCall::Get(r) => c.get_placement_group(r).await,
            GroupCall::Remove(r) => c.remove_placement_group(r).await,
        }
        .map_err(|s| Error::rpc(what, s))?
        .into_inner();
        crate::node::placement::record_of(r)
    }
}

/// Runs one of this module's async calls from synchronous code.
fn blocking<T: Send>(f: impl std::future::Future<Output = Result<T>> + Send) -> Result<T> {
    worker::current()?.block_on(f)?
}

impl PlacementGroupBuilder {
    /// Registers the group under a name (see [`get_placement_group`]).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Asks the cluster to place the group; returns at once (see
    /// [`PlacementGroup::wait`]).
    pub fn create(self) -> Result<PlacementGroup> {
        blocking(self.create_inner(true))
    }

    /// [`PlacementGroupBuilder::create`] from async code.
    pub async fn create_async(self) -> Result<PlacementGroup> {
        self.create_inner(false).await
    }

    async fn create_inner(self, inline: bool) -> Result<PlacementGroup> {
        let id = format!("{:016x}", crate::ids::unique_u64());
        let n = self.bundles.len();
        let rec = proto::PlacementGroupRecord {
            id,
            name: self.name.unwrap_or_default(),
            strategy: self.strategy.to_proto() as i32,
            bundles: self
                .bundles
                .into_iter()
                .map(|b| proto::Bundle {
                    resources: b.into_iter().collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let g = GroupCall::Create(rec).send(inline).await?;
        Ok(PlacementGroup { id: g.id, bundles: n })
    }
}

fn state_of(g: &proto::PlacementGroupRecord) -> PlacementGroupState {
    match g.state() {
        proto::GroupState::Created => PlacementGroupState::Created,
        proto::GroupState::Removed => PlacementGroupState::Removed,
        proto::GroupState::Pending => PlacementGroupState::Pending(g.reason.clone()),
    }
}

impl PlacementGroup {
    /// The group's id (16 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How many bundles it has.
    pub fn bundle_count(&self) -> usize {
        self.bundles
    }

    /// Where a task or actor in bundle `bundle` (or any) of this group runs
    /// (what the `.placement_group(..)` option records).
    pub fn target(&self, bundle: Option<usize>) -> BundleTarget {
        BundleTarget {
            group: self.id.clone(),
            bundles: self.bundles,
            bundle,
        }
    }

    async fn fetch(&self, wait: Duration, inline: bool) -> Result<proto::PlacementGroupRecord> {
        let req = proto::GetPlacementGroupRequest {
            id: self.id.clone(),
            name: String::new(),
            wait_ms: wait.as_millis() as u64,
        };
        GroupCall::Get(req).send(inline).await
    }

    /// Where the group stands now.
    pub fn state(&self) -> Result<PlacementGroupState> {
        blocking(async { Ok(state_of(&self.fetch(Duration::ZERO, true).await?)) })
    }

    /// [`PlacementGroup::state`] from async code.
    pub async fn state_async(&self) -> Result<PlacementGroupState> {
        Ok(state_of(&self.fetch(Duration::ZERO, false).await?))
    }

    /// Waits up to `timeout` for every bundle to be reserved: `Ok(true)`
    /// once created, `Ok(false)` if still pending (see [`Self::state`] for
    /// why), an error if it was removed.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        blocking(self.wait_inner(timeout, true))
    }

    /// [`PlacementGroup::wait`] from async code (Ray's `pg.ready()`).
    pub async fn wait_async(&self, timeout: Duration) -> Result<bool> {
        self.wait_inner(timeout, false).await
    }

    async fn wait_inner(&self, timeout: Duration, inline: bool) -> Result<bool> {
        match state_of(&self.fetch(timeout, inline).await?) {
            PlacementGroupState::Created => Ok(true),
            PlacementGroupState::Pending(_) => Ok(false),
            PlacementGroupState::Removed => Err(Error::InvalidArgument(format!(
                "placement group {} was removed",
                self.id
            ))),
        }
    }

    /// The node (its TCP address; "" in the embedded cluster) holding each
    /// bundle, once created.
    pub fn bundle_nodes(&self) -> Result<Vec<String>> {
        blocking(async {
            Ok(self
                .fetch(Duration::ZERO, true)
                .await?
                .bundles
                .into_iter()
                .map(|b| b.node_addr)
                .collect())
        })
    }
}

/// Removes a group: its bundles are released, the tasks and actors running
/// in them are stopped.
pub fn remove_placement_group(pg: &PlacementGroup) -> Result<()> {
    blocking(remove_group(pg, true))
}

/// [`remove_placement_group`] from async code.
pub async fn remove_placement_group_async(pg: &PlacementGroup) -> Result<()> {
    remove_group(pg, false).await
}

async fn remove_group(pg: &PlacementGroup, inline: bool) -> Result<()> {
    let req = proto::GetPlacementGroupRequest {
        id: pg.id.clone(),
        ..Default::default()
    };
    GroupCall::Remove(req).send(inline).await.map(|_| ())
}

/// Finds a placement group by name.
pub fn get_placement_group(name: &str) -> Result<PlacementGroup> {
    blocking(get_group_named(name, true))
}

/// [`get_placement_group`] from async code.
pub async fn get_placement_group_async(name: &str) -> Result<PlacementGroup> {
    get_group_named(name, false).await
}

async fn get_group_named(name: &str, inline: bool) -> Result<PlacementGroup> {
    let req = proto::GetPlacementGroupRequest {
        name: name.to_string(),
        ..Default::default()
    };
    let g = GroupCall::Get(req).send(inline).await?;
    Ok(PlacementGroup {
        bundles: g.bundles.len(),
        id: g.id,
    })
}
