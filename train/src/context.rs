//! What a training function sees on its rank: where it stands in the gang,
//! its collectives, the checkpoint to resume from, its config, and
//! [`TrainContext::report`].

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use rayforge::checkpoint::{Checkpoint, CheckpointWriter};

use crate::collective::{Group, ReduceOp};
use crate::error::{Error, Result};

/// What a Train checkpoint's manifest says wrote it.
const WRITTEN_BY: &str = concat!("rayforge-train ", env!("CARGO_PKG_VERSION"));

/// One report of a run: rank 0's metrics at an iteration, and the
/// checkpoint committed with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// 1 for the first report of a run (a resumed run goes on counting).
    pub iteration: u64,
    /// The metrics.
    pub metrics: BTreeMap<String, f64>,
    /// The checkpoint committed with them, if any.
    pub checkpoint: Option<Checkpoint>,
}

/// The device a rank computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Device {
    /// The CPU.
    Cpu,
    /// A CUDA device, by its index among the devices this rank sees.
    Cuda(usize),
}

/// A rank's view of its training run (the argument of the training
/// function).
pub struct TrainContext {
    pub(crate) world_rank: usize,
    pub(crate) local_rank: usize,
    pub(crate) local_size: usize,
    pub(crate) node_rank: usize,
    pub(crate) device: Device,
    pub(crate) group: Group,
    pub(crate) config: serde_json::Value,
    pub(crate) checkpoint: Option<Checkpoint>,
    pub(crate) reports: rayforge::util::Queue<Report>,
    pub(crate) run_dir: rayforge::checkpoint::CheckpointDir,
    pub(crate) iteration: u64,
    pub(crate) user: rayforge::AnyFnRef,
    pub(crate) shards: BTreeMap<String, rayforge_data::DataIterator>,
}

impl std::fmt::Debug for TrainContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainContext")
            .field("world_rank", &self.world_rank)
            .field("world_size", &self.world_size())
            .field("iteration", &self.iteration)
            .finish()
    }
}

impl TrainContext {
    /// This rank, `0..world_size`.
    pub fn world_rank(&self) -> usize {
        self.world_rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// This rank among the ranks of its node.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The number of ranks on this rank's node.
    pub fn local_world_size(&self) -> usize {
        self.local_size
    }

    /// The index of this rank's node among the run's nodes.
    pub fn node_rank(&self) -> usize {
        self.node_rank
    }

    /// Where this rank computes: its GPU when the run uses GPUs.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The run's config (what [`crate::Trainer::config`] was given), as `C`.
    pub fn config<C: DeserializeOwned>(&self) -> Result<C> {
        serde_json::from_value(self.config.clone())
            .map_err(|e| Error::InvalidArgument(format!("the run's config does not fit: {e}")))
    }

    /// The checkpoint to resume from: the run's latest, when it was
    /// restarted after a failure or run again under the same name.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    /// This rank's shard of the dataset given to the trainer as `name`
    /// ([`crate::Trainer::dataset`]): each `iter_batches` on it is one
    /// epoch, and every rank gets the same number of rows. See also
    /// [`TrainContext::iter_torch_batches`].
    pub fn dataset_shard(&self, name: &str) -> Result<rayforge_data::DataIterator> {
        self.shards.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.shards.keys().map(|k| k.as_str()).collect();
            Error::InvalidArgument(format!(
                "no dataset `{name}` was given to the trainer (it has: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }

    /// The number of the last report (0 before the first; a resumed run
    /// starts from its checkpoint's).
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// The collectives among the ranks (all-reduce, broadcast, all-gather,
    /// barrier).
    pub fn group(&mut self) -> &mut Group {
        &mut self.group
    }

    /// Shorthand for `group().all_reduce(buf, op)`.
    pub fn all_reduce<T: crate::collective::Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        self.group.all_reduce(buf, op)
    }

    /// Saves every rank's random state (libtorch's generators) into the
    /// checkpoint being written as the file `name`, so a resumed gang
    /// draws what an unstopped one would: a collective every rank calls
    /// before [`TrainContext::report`] (see
    /// [`crate::rng::RngState::save_gang`]).
    #[cfg(feature = "torch")]
    pub fn save_rng_state(&mut self, w: &mut CheckpointWriter, name: &str) -> Result<()> {
        crate::rng::RngState::save_gang(&mut self.group, w, name)
    }

    /// Restores this rank's random state from the file `name` of the
    /// checkpoint the run resumes from (written by
    /// [`TrainContext::save_rng_state`]); nothing to do on a fresh start.
    /// Call it after building the model (whose initialization draws).
    #[cfg(feature = "torch")]
    pub fn restore_rng_state(&self, name: &str) -> Result<()> {
        match &self.checkpoint {
            Some(c) => crate::rng::RngState::restore_rank(c, name, self.world_rank),
            None => Ok(()),
        }
    }

    /// Reports this iteration's metrics (and a checkpoint): every rank calls
    /// it the same number of times, and it returns once every rank has
    /// (a barrier). Rank 0's metrics are recorded and its checkpoint is
    /// committed into the run's directory in its storage, from whichever
    /// node rank 0 runs on; the other ranks' are dropped.
    pub fn report<K: Into<String>>(
        &mut self,
        metrics: impl IntoIterator<Item = (K, f64)>,
        checkpoint: Option<CheckpointWriter>,
    ) -> Result<()> {
        self.iteration += 1;
        let metrics: BTreeMap<String, f64> = metrics.into_iter().map(|(k, v)| (k.into(), v)).collect();
        self.group.barrier()?;
        if self.world_rank != 0 {
            if let Some(w) = checkpoint {
                let _ = std::fs::remove_dir_all(w.dir());
            }
            return Ok(());
        }
        let committed = match checkpoint {
            Some(w) => Some(self.run_dir.commit(w, self.iteration, &metrics, WRITTEN_BY)?),
            None => None,
        };
        self.reports.put(Report {
            iteration: self.iteration,
            metrics,
            checkpoint: committed,
        })?;
        Ok(())
    }
}
