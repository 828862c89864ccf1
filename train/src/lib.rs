//! # rayforge-train
//!
//! Data-parallel training on rayforge with tch: a training function runs
//! on each of a gang of worker actors (one per rank, in a placement group);
//! each reads its shard of a rayforge-data dataset as tensor batches, a
//! prepared model keeps the ranks identical (parameters from rank 0,
//! gradients averaged across ranks over TCP between their processes, or
//! through NCCL on GPUs),
//! rank 0's reports are recorded with their checkpoints, and a rank that
//! dies tears the gang down and a new one resumes from the latest
//! checkpoint — as Ray's `TorchTrainer(...).fit()`.
//!
//! ```no_run
//! use rayforge_train::tch::{self, nn, nn::Module, nn::OptimizerConfig};
//! use rayforge_train::{CheckpointWriter, CheckpointWriterExt, RunConfig, ScalingConfig, TrainContext, Trainer};
//!
//! /// Fits `y = 3x` on each rank's shard of the rows, gradients averaged.
//! fn train(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
//!     let vs = nn::VarStore::new(ctx.torch_device());
//!     let model = nn::linear(vs.root(), 1, 1, Default::default());
//!     let mut opt = nn::Sgd::default().build(&vs, 0.1)?;
//!     let mut ddp = ctx.prepare_model(&vs)?;
//!     for _epoch in ctx.iteration()..5 {
//!         for batch in ctx.iter_torch_batches("points", 32)? {
//!             let batch = batch?;
//!             let x = batch["x"].to_kind(tch::Kind::Float).unsqueeze(1);
//!             let loss = (model.forward(&x) - &x * 3.0).square().mean(tch::Kind::Float);
//!             ddp.backward_step(&loss, &mut opt)?;
//!         }
//!         let mut ckpt = CheckpointWriter::new()?;
//!         ckpt.save_varstore("model.safetensors", &vs)?;
//!         ctx.report([("w", model.ws.double_value(&[0, 0]))], Some(ckpt))?;
//!     }
//!     Ok(())
//! }
//!
//! #[rayforge::main]
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     rayforge::init(rayforge::Config::default())?;
//!     let points = rayforge_data::range(1000).map_batches(|b| {
//!         let x = rayforge_data::arrow::compute::cast(b.column(0), &rayforge_data::arrow::datatypes::DataType::Float32)?;
//!         let x = rayforge_data::arrow::compute::kernels::numeric::div(&x, &rayforge_data::arrow::array::Float32Array::new_scalar(1000.0))?;
//!         Ok::<_, rayforge_data::Error>(rayforge_data::arrow::record_batch::RecordBatch::try_from_iter([("x", x)])?)
//!     });
//!     let result = Trainer::new(train)
//!         .scaling(ScalingConfig { num_workers: 2, cpus_per_worker: 0.5, ..Default::default() })
//!         .run_config(RunConfig { name: "linear".into(), ..Default::default() })
//!         .dataset("points", points)
//!         .fit()?
//!         .into_result()?;
//!     println!("w = {}", result.metrics["w"]);
//!     Ok(())
//! }
//! ```
//!
//! What is here: the gang ([`Trainer`], [`ScalingConfig`], [`RunConfig`]),
//! rendezvous through the cluster's key-value store, ring all-reduce /
//! broadcast / all-gather / barrier over TCP on `f32` buffers and tch
//! tensors ([`Group`]), [`DistributedModel`] (from
//! [`TrainContext::prepare_model`]), dataset shards as tensor batches
//! ([`TrainContext::iter_torch_batches`]) and a [`DistributedSampler`] for
//! data in memory, `report` with checkpoints in the project's checkpoint
//! format (safetensors and TorchScript files, committed by rename, the best
//! K kept), restarts from the latest checkpoint within `max_failures`, the
//! metrics history (an Arrow batch and `progress.csv`), resuming a run by
//! name. On GPU ranks (`use_gpu`), tensor collectives and the gradient
//! averaging run through NCCL in GPU memory ([`Group::init_nccl`], from
//! cudarc's bindings; libnccl is loaded only there).

#![warn(missing_docs)]

#[cfg(feature = "torch")]
pub mod amp;
pub mod collective;
mod context;
mod error;
#[cfg(feature = "torch")]
mod nccl;
#[cfg(feature = "torch")]
pub mod optim;
#[cfg(feature = "torch")]
mod overlap;
#[cfg(feature = "torch")]
pub mod rng;
#[cfg(feature = "torch")]
pub mod torch;
mod trainer;
mod worker;

/// The tch this crate is built on (use it for models and tensors, so the
/// versions match).
#[cfg(feature = "torch")]
pub use tch;

pub use collective::{Element, Group, ReduceOp};
pub use context::{Device, Report, TrainContext};
pub use error::{Error, Result};
#[cfg(feature = "torch")]
pub use nccl::NcclInfo;
/// The project's checkpoint format (from the core, shared with Tune, RLlib
/// and Serve).
pub use rayforge::checkpoint;
pub use rayforge::checkpoint::{Checkpoint, CheckpointConfig, CheckpointWriter, Manifest};
#[cfg(feature = "torch")]
pub use torch::{
    batch_to_tensors, CheckpointExt, CheckpointWriterExt, DistributedModel, DistributedSampler, TorchBatches,
};
pub use trainer::{FailureConfig, RunConfig, ScalingConfig, TrainResult, Trainer};
