//! One rank of a gang: an actor that joins the ring and runs the user's
//! training function in its process.

use std::time::Duration;

use rayforge::{AnyFnRef, FnRef, Json};
use serde::{Deserialize, Serialize};

use crate::collective::Group;
use crate::context::{Device, Report, TrainContext};
use crate::error::{Error, Result};
use rayforge::checkpoint::Checkpoint;

/// Calls the user's training function (of a type only this trampoline
/// knows) with the rank's context.
pub(crate) type TrainTramp = fn(&mut TrainContext) -> Result<()>;

pub(crate) fn t_train<E: std::fmt::Display + 'static>(ctx: &mut TrainContext) -> Result<()> {
    let f = ctx
        .user
        .typed::<fn(&mut TrainContext) -> std::result::Result<(), E>>()?
        .get()?;
    f(ctx).map_err(|e| {
        // The crate's own errors (a collective that failed, a checkpoint
        // that could not be written) pass through as themselves.
        match (&e as &dyn std::any::Any).downcast_ref::<Error>() {
            Some(mine) => mine.clone(),
            None => Error::User {
                rank: ctx.world_rank,
                message: e.to_string(),
            },
        }
    })
}

/// What one rank runs (crosses to its process).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct RankSpec {
    pub(crate) tramp: FnRef<TrainTramp>,
    pub(crate) user: AnyFnRef,
    /// Names this attempt's ring in the key-value store.
    pub(crate) ring: String,
    /// What the ranks of this attempt prove to each other with (see
    /// `collective`); only the driver and the ranks know it.
    pub(crate) ring_secret: String,
    pub(crate) world_rank: usize,
    pub(crate) world_size: usize,
    pub(crate) local_rank: usize,
    pub(crate) local_size: usize,
    pub(crate) node_rank: usize,
    pub(crate) use_gpu: bool,
    pub(crate) config: Json<serde_json::Value>,
    pub(crate) checkpoint: Option<Checkpoint>,
    pub(crate) reports: rayforge::util::Queue<Report>,
    pub(crate) run_dir: rayforge::checkpoint::CheckpointDir,
    pub(crate) timeout_ms: u64,
    /// This rank's share of each dataset.
    pub(crate) shards: std::collections::BTreeMap<String, rayforge_data::DataIterator>,
    /// Threads libtorch may use (the rank's CPUs).
    pub(crate) threads: usize,
}

/// One rank of a training gang.
#[rayforge::actor]
pub(crate) struct TrainWorker;

#[rayforge::actor]
impl TrainWorker {
    fn new() -> Self {
        TrainWorker
    }

    /// The node this rank runs on.
    fn node(&self) -> std::result::Result<String, Error> {
        Ok(rayforge::node_id()?)
    }

    /// Reads the driver's marker in the run's storage: an error naming
    /// this node when it cannot (a path it does not share).
    fn check_storage(&self, shared: rayforge::storage::SharedCheck) -> std::result::Result<(), Error> {
        Ok(shared.verify()?)
    }

    /// Joins the ring and runs the training function to its end.
    fn run(&mut self, spec: RankSpec) -> std::result::Result<(), Error> {
        let ctx = rayforge::runtime_context()?;
        // As torchrun and Ray Train do: one rank's ops use its own CPUs, not
        // every core of the node.
        #[cfg(feature = "torch")]
        tch::set_num_threads(spec.threads.max(1) as i32);
        #[cfg_attr(not(feature = "torch"), allow(unused_mut))]
        let mut group = Group::join(
            &spec.ring,
            &spec.ring_secret,
            spec.world_rank,
            spec.world_size,
            &ctx.node_ip,
            Duration::from_millis(spec.timeout_ms),
        )?;
        // CUDA_VISIBLE_DEVICES holds this rank's GPU only.
        let device = if spec.use_gpu && !ctx.gpu_ids.is_empty() {
            #[cfg(feature = "torch")]
            group.init_nccl(0)?;
            Device::Cuda(0)
        } else {
            Device::Cpu
        };
        // The checkpoint may have been written on another node: its files
        // come to this one's cache first.
        let checkpoint = spec.checkpoint.map(|c| c.to_local()).transpose()?;
        let iteration = match &checkpoint {
            Some(c) => c.manifest()?.iteration,
            None => 0,
        };
        let mut tc = TrainContext {
            world_rank: spec.world_rank,
            local_rank: spec.local_rank,
            local_size: spec.local_size,
            node_rank: spec.node_rank,
            device,
            group,
            config: spec.config.0,
            checkpoint,
            reports: spec.reports,
            run_dir: spec.run_dir,
            iteration,
            user: spec.user,
            shards: spec.shards,
        };
        let tramp = spec.tramp.get()?;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tramp(&mut tc))) {
            Ok(r) => r,
            Err(p) => Err(Error::User {
                rank: spec.world_rank,
                message: format!(
                    "panicked: {}",
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                ),
            }),
        }
    }
}
