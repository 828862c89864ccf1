//! # rayforge-train
//!
//! Data-parallel training on rayforge: a training function runs on each of
//! a gang of worker actors (one per rank, in a placement group), the ranks
//! exchange gradients with collectives over TCP between their processes,
//! rank 0's reports are recorded with their checkpoints, and a rank that
//! dies tears the gang down and a new one resumes from the latest
//! checkpoint — as Ray's `TorchTrainer(...).fit()`.
//!
//! ```no_run
//! use rayforge_train::{CheckpointWriter, ReduceOp, RunConfig, ScalingConfig, TrainContext, Trainer};
//!
//! /// Fits y = 3x on each rank's share of the points, averaging gradients.
//! fn train(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
//!     let mut w = match ctx.checkpoint() {
//!         Some(c) => f32::from_le_bytes(c.read("w")?.try_into().unwrap_or([0; 4])),
//!         None => 0.0,
//!     };
//!     for _ in ctx.iteration()..20 {
//!         let xs: Vec<f32> = (0..100).map(|i| (i * ctx.world_size() + ctx.world_rank()) as f32 / 100.0).collect();
//!         let mut grad = [xs.iter().map(|x| 2.0 * (w * x - 3.0 * x) * x).sum::<f32>() / xs.len() as f32];
//!         ctx.all_reduce(&mut grad, ReduceOp::Mean)?;
//!         w -= 0.1 * grad[0];
//!         let mut ckpt = CheckpointWriter::new()?;
//!         ckpt.write("w", &w.to_le_bytes())?;
//!         ctx.report([("w", w as f64)], Some(ckpt))?;
//!     }
//!     Ok(())
//! }
//!
//! #[rayforge::main]
//! fn main() -> rayforge_train::Result<()> {
//!     rayforge::init(rayforge::Config::default())?;
//!     let result = Trainer::new(train)
//!         .scaling(ScalingConfig { num_workers: 2, ..Default::default() })
//!         .run_config(RunConfig { name: "linear".into(), ..Default::default() })
//!         .fit()?
//!         .into_result()?;
//!     println!("w = {}", result.metrics["w"]);
//!     Ok(())
//! }
//! ```
//!
//! What is here: the gang, rendezvous through the cluster's key-value
//! store, ring all-reduce / broadcast / all-gather / barrier on `f32`
//! buffers over TCP, `report` with checkpoints in the project's checkpoint
//! format (committed by rename, the best K kept), restarts from the latest
//! checkpoint within `max_failures`, the metrics history (and
//! `progress.csv`), resuming a run by name.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod collective;
mod context;
mod error;
pub mod torch;
mod trainer;
mod worker;

/// The tch this crate is built on (use it for models and tensors, so the
/// versions match).
pub use tch;

pub use checkpoint::{Checkpoint, CheckpointConfig, CheckpointWriter, Manifest};
pub use collective::{Group, ReduceOp};
pub use context::{Device, Report, TrainContext};
pub use error::{Error, Result};
pub use torch::{batch_to_tensors, DistributedModel, DistributedSampler, TorchBatches};
pub use trainer::{FailureConfig, RunConfig, ScalingConfig, TrainResult, Trainer};
