//! Handwritten digits (8x8 pixels, 1,797 images) and an MLP trained on them
//! with rayforge-train: features made by a rayforge-data `map_batches`, a
//! gang of ranks each reading its shard, gradients averaged across ranks,
//! a checkpoint every epoch with the model's variables and its TorchScript
//! export (what Serve loads).

use std::sync::Arc;

use rayforge_data::arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Int64Array};
use rayforge_data::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use rayforge_data::arrow::record_batch::RecordBatch;
use rayforge_train::tch::{self, nn, nn::Module, nn::OptimizerConfig, Kind, Tensor};
use rayforge_train::{CheckpointExt, CheckpointWriter, CheckpointWriterExt, ReduceOp, TrainContext};
use serde::{Deserialize, Serialize};

/// The data set's CSV file (`p0`..`p63`, `label`), in the project.
pub const CSV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/digits.csv");

/// Pixels per image.
pub const PIXELS: usize = 64;

/// The model file a checkpoint holds: the variables.
pub const VARIABLES: &str = "model.safetensors";

/// The model file a checkpoint holds: TorchScript, `[batch, 64] -> [batch, 10]` logits.
pub const TORCHSCRIPT: &str = "model.pt";

/// Turns a batch of raw rows (`p0`..`p63` in 0..16, `label`) into `x`
/// (64 floats in 0..1 per row, a fixed-size list) and `y` (the digit).
pub fn to_features(b: RecordBatch) -> Result<RecordBatch, rayforge_data::Error> {
    let bad = |m: String| rayforge_data::Error::InvalidArgument(m);
    let mut x = Vec::with_capacity(b.num_rows() * PIXELS);
    let cols: Vec<&Int64Array> = (0..PIXELS)
        .map(|i| {
            b.column_by_name(&format!("p{i}"))
                .and_then(|c| c.as_primitive_opt::<Int64Type>())
                .ok_or_else(|| bad(format!("column p{i}: missing or not integers")))
        })
        .collect::<Result<_, _>>()?;
    for r in 0..b.num_rows() {
        x.extend(cols.iter().map(|c| c.value(r) as f32 / 16.0));
    }
    let y = b
        .column_by_name("label")
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| bad("column label: missing or not integers".into()))?
        .clone();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let x = FixedSizeListArray::try_new(item, PIXELS as i32, Arc::new(Float32Array::from(x)), None)?;
    let schema = Schema::new(vec![
        Field::new("x", x.data_type().clone(), false),
        Field::new("y", DataType::Int64, false),
    ]);
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(x) as ArrayRef, Arc::new(y) as ArrayRef],
    )?)
}

/// The training run's settings (the trainer's config).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Passes over the training shard.
    pub epochs: u64,
    /// Rows per step on each rank.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Units in each hidden layer.
    pub hidden: i64,
    /// Rank 1 kills its own process once at the start of this epoch (a
    /// marker file remembers it did), to show the gang resuming.
    pub kill_at_epoch: Option<u64>,
    /// Where the kill is remembered.
    pub marker: String,
}

/// 64 -> hidden -> hidden -> 10.
pub fn mlp(p: &nn::Path, hidden: i64) -> impl Module {
    nn::seq()
        .add(nn::linear(p / "fc1", PIXELS as i64, hidden, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(p / "fc2", hidden, hidden, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(p / "fc3", hidden, 10, Default::default()))
}

/// One rank's loop: resume from the checkpoint if there is one, then per
/// epoch a pass over this rank's shard of `train` with gradients averaged
/// across ranks, accuracy on the ranks' shards of `valid` summed over
/// ranks, and a report with a checkpoint (variables and TorchScript).
pub fn train(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    let s: Settings = ctx.config()?;
    tch::manual_seed(7);
    let mut vs = nn::VarStore::new(ctx.torch_device());
    let model = mlp(&vs.root(), s.hidden);
    if let Some(c) = ctx.checkpoint() {
        c.load_varstore(VARIABLES, &mut vs)?;
    }
    let mut opt = nn::Adam::default().build(&vs, s.lr)?;
    let mut ddp = ctx.prepare_model(&vs)?;
    for epoch in ctx.iteration()..s.epochs {
        if ctx.world_rank() == 1 && Some(epoch) == s.kill_at_epoch && std::fs::metadata(&s.marker).is_err() {
            let _ = std::fs::write(&s.marker, b"killed once");
            // As a crash would: no unwinding, no clean-up.
            std::process::abort();
        }
        let (mut loss_sum, mut steps) = (0.0, 0.0);
        for batch in ctx.iter_torch_batches("train", s.batch_size)? {
            let batch = batch?;
            let loss = model.forward(&batch["x"]).cross_entropy_for_logits(&batch["y"]);
            ddp.backward_step(&loss, &mut opt)?;
            loss_sum += loss.double_value(&[]);
            steps += 1.0;
        }
        let (mut correct, mut total) = (0.0, 0.0);
        tch::no_grad(|| -> rayforge_train::Result<()> {
            for batch in ctx.iter_torch_batches("valid", 256)? {
                let batch = batch?;
                let pred = model.forward(&batch["x"]).argmax(1, false);
                correct += pred.eq_tensor(&batch["y"]).sum(Kind::Float).double_value(&[]);
                total += batch["y"].size()[0] as f64;
            }
            Ok(())
        })?;
        // Sums over the ranks: every rank saw a different shard.
        let mut sums = Tensor::from_slice(&[loss_sum as f32, steps as f32, correct as f32, total as f32]);
        ctx.group().all_reduce_tensor(&mut sums, ReduceOp::Sum)?;
        let v: Vec<f32> = Vec::try_from(&sums)?;
        let mut ckpt = CheckpointWriter::new()?;
        ckpt.save_varstore(VARIABLES, &vs)?;
        let example = Tensor::zeros([1, PIXELS as i64], (Kind::Float, ctx.torch_device()));
        ckpt.save_torchscript(TORCHSCRIPT, &mut vs, &example, |x| model.forward(x))?;
        ctx.report(
            [
                ("epoch", (epoch + 1) as f64),
                ("train_loss", (v[0] / v[1].max(1.0)) as f64),
                ("val_accuracy", (v[2] / v[3].max(1.0)) as f64),
            ],
            Some(ckpt),
        )?;
    }
    Ok(())
}
