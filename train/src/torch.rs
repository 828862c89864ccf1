//! tch on a training gang: collectives on tensors, [`DistributedModel`]
//! (parameters broadcast from rank 0, gradients averaged across ranks in
//! buckets, each reduced while backward still runs, as PyTorch's DDP), a dataset shard's rows as
//! batches of tensors, a distributed sampler for data already in memory,
//! and models in checkpoints (safetensors and TorchScript).
//!
//! A tensor on the device of the group's NCCL communicator (a GPU rank's,
//! see [`Group::init_nccl`]) is reduced by NCCL in GPU memory, in its own
//! kind. Every other tensor goes around the TCP ring as `f32` in host
//! memory: a contiguous CPU float tensor in place, anything else (another
//! kind, a CUDA tensor of a group without NCCL) through an `f32` copy
//! written back afterwards.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, ListArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type, UInt8Type};
use arrow::record_batch::RecordBatch;
use tch::{nn, Kind, Tensor};

use crate::collective::{Group, ReduceOp};
use crate::context::{Device, TrainContext};
use crate::error::{Error, Result};
use rayforge::checkpoint::{Checkpoint, CheckpointWriter};

/// DDP's default: gradients are averaged in buckets of about 25 MB.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

impl Device {
    /// The tch device.
    pub fn to_tch(self) -> tch::Device {
        match self {
            Device::Cpu => tch::Device::Cpu,
            Device::Cuda(i) => tch::Device::Cuda(i),
        }
    }
}

/// Runs `f` over the tensor's values as `T` (of libtorch kind `kind`) in
/// host memory, then writes them back into the tensor.
fn with_host<T, R>(t: &mut Tensor, kind: Kind, f: impl FnOnce(&mut [T]) -> Result<R>) -> Result<R>
where
    T: crate::collective::Element,
{
    let n = t.numel();
    if t.device() == tch::Device::Cpu && t.kind() == kind && t.is_contiguous() {
        if n == 0 {
            return f(&mut []);
        }
        // SAFETY: callers pass the `kind` whose elements are `T` (see
        // `host_kind`); a contiguous CPU tensor of that kind holds `numel`
        // values of `T` from `data_ptr` (which accounts for its storage
        // offset), and we hold the tensor mutably for the slice's lifetime.
        let buf = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, n) };
        return f(buf);
    }
    let mut host = t.f_to_device(tch::Device::Cpu)?.f_to_kind(kind)?.f_contiguous()?;
    if host.data_ptr() == t.data_ptr() {
        // Still the same storage (a CPU view): copy before writing.
        host = host.f_detach_copy()?;
    }
    let out = with_host(&mut host, kind, f)?;
    tch::no_grad(|| t.f_copy_(&host))?;
    Ok(out)
}

/// How a tensor's values travel the TCP ring: in its own precision.
#[derive(Clone, Copy)]
enum HostKind {
    /// `f32` (Float, and Half and BFloat16 widened).
    F32,
    /// `f64` (Double).
    F64,
    /// `i64` (every integer kind and Bool): sums stay exact.
    I64,
}

fn host_kind(k: Kind) -> HostKind {
    match k {
        Kind::Double => HostKind::F64,
        Kind::Uint8 | Kind::Int8 | Kind::Int16 | Kind::Int | Kind::Int64 | Kind::Bool => HostKind::I64,
        _ => HostKind::F32,
    }
}

/// Runs one collective on `t`'s values in host memory, in the precision
/// of [`host_kind`]: `$f` is called as a generic closure would be, on a
/// slice of `f32`, `f64` or `i64`.
macro_rules! on_host {
    ($t:expr, |$buf:ident| $body:expr) => {
        match host_kind($t.kind()) {
            HostKind::F32 => with_host::<f32, _>($t, Kind::Float, |$buf| $body),
            HostKind::F64 => with_host::<f64, _>($t, Kind::Double, |$buf| $body),
            HostKind::I64 => with_host::<i64, _>($t, Kind::Int64, |$buf| $body),
        }
    };
}

impl Group {
    /// Reduces a tensor over every rank in place (every rank passes one of
    /// the same kind and number of elements): through NCCL in the tensor's
    /// own kind for a tensor on the group's GPU, else around the TCP ring
    /// in its own precision (`f64` for Double, `i64` for integers, which
    /// sum exactly; `f32` for the others). An integer
    /// [`ReduceOp::Mean`] rounds toward zero.
    pub fn all_reduce_tensor(&mut self, t: &mut Tensor, op: ReduceOp) -> Result<()> {
        if let Some(nccl) = self.nccl_for(t) {
            return nccl.all_reduce(t, op);
        }
        on_host!(t, |buf| self.all_reduce(buf, op))
    }

    /// Every rank's tensor takes rank `root`'s values (through NCCL for a
    /// tensor on the group's GPU).
    pub fn broadcast_tensor(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        if let Some(nccl) = self.nccl_for(t) {
            return nccl.broadcast(t, root);
        }
        on_host!(t, |buf| self.broadcast(buf, root))
    }

    /// Every rank's tensor (all of one shape), in rank order, each of `t`'s
    /// shape, kind and device (through NCCL for a tensor on the group's
    /// GPU).
    pub fn all_gather_tensor(&mut self, t: &Tensor) -> Result<Vec<Tensor>> {
        if let Some(nccl) = self.nccl_for(t) {
            return nccl.all_gather(t);
        }
        let mut mine = t.shallow_clone();
        let world = self.world_size();
        // Each rank's values as a flat host tensor.
        let flat: Vec<Tensor> = on_host!(&mut mine, |buf| {
            let all = self.all_gather(&buf[..])?;
            let per = buf.len();
            Ok((0..world)
                .map(|r| Tensor::from_slice(&all[r * per..(r + 1) * per]))
                .collect())
        })?;
        let shape = t.size();
        flat.into_iter()
            .map(|f| Ok(f.f_reshape(&shape)?.f_to_kind(t.kind())?.f_to_device(t.device())?))
            .collect()
    }

    /// The NCCL communicator that takes `t`, if the group has one on `t`'s
    /// device.
    fn nccl_for(&self, t: &Tensor) -> Option<std::sync::Arc<crate::nccl::Nccl>> {
        self.nccl.as_ref().filter(|n| n.takes(t)).cloned()
    }
}

/// A model prepared for data-parallel training: every rank starts from
/// rank 0's parameters, and [`DistributedModel::backward`] averages the
/// gradients across ranks (in buckets, in a fixed order) so every rank
/// takes the same step. On the CPU each bucket's all-reduce starts as soon
/// as backward has its last gradient, while backward goes on with the
/// earlier layers, as PyTorch's DDP overlaps them. From
/// [`TrainContext::prepare_model`].
#[derive(Debug)]
pub struct DistributedModel {
    group: Group,
    /// The trainable parameters in buckets, the last created first (the
    /// order backward reaches them in a model built from input to output):
    /// the first bucket about 1 MB (DDP's first bucket, so the reduction
    /// starts early), the others about `bucket_bytes`.
    buckets: Vec<Bucket>,
    /// The hooks that tell when a bucket is complete; `None` where the
    /// reduction runs after backward (one rank, or parameters on a GPU).
    readiness: Option<std::sync::Arc<crate::overlap::Readiness>>,
    /// Whether `backward` overlaps the reduction (with `readiness`).
    overlap: bool,
    /// Buckets the last `backward` handed to the all-reduce before its
    /// backward pass returned.
    overlapped: usize,
}

/// DDP's first bucket: about 1 MB, so the first all-reduce starts early.
const FIRST_BUCKET_BYTES: usize = 1 << 20;

impl DistributedModel {
    fn new(group: Group, vs: &nn::VarStore, bucket_bytes: usize) -> Result<DistributedModel> {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut group = group;
        // Parameters and buffers alike start from rank 0's values.
        for (name, t) in named.iter_mut() {
            group.broadcast_tensor(t, 0).map_err(|e| match e {
                Error::Collective { rank, message } => Error::Collective {
                    rank,
                    message: format!("broadcasting parameter `{name}`: {message}"),
                },
                e => e,
            })?;
        }
        // The same program makes the same variables in the same order on
        // every rank, so the buckets match across ranks.
        let mut params: Vec<Tensor> = vs
            .trainable_variables()
            .into_iter()
            .filter(|t| t.requires_grad())
            .collect();
        params.reverse();
        let mut buckets = Vec::new();
        let (mut start, mut bytes) = (0, 0usize);
        for (i, p) in params.iter().enumerate() {
            bytes += p.numel() * 4;
            let cap = if buckets.is_empty() {
                FIRST_BUCKET_BYTES.min(bucket_bytes)
            } else {
                bucket_bytes
            };
            if bytes >= cap.max(1) {
                buckets.push(start..i + 1);
                (start, bytes) = (i + 1, 0);
            }
        }
        if start < params.len() {
            buckets.push(start..params.len());
        }
        let on_cpu = params.iter().all(|p| p.device() == tch::Device::Cpu);
        let readiness = if group.world_size() > 1 && on_cpu && !params.is_empty() {
            Some(crate::overlap::Readiness::install(&params, &buckets)?)
        } else {
            None
        };
        let buckets = buckets
            .into_iter()
            .map(|range| Bucket::new(&params[range]))
            .collect::<Result<_>>()?;
        Ok(DistributedModel {
            group,
            buckets,
            readiness,
            overlap: true,
            overlapped: 0,
        })
    }

    /// The number of gradient buckets.
    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Whether [`DistributedModel::backward`] all-reduces each bucket while
    /// backward still runs (the default on the CPU with more than one
    /// rank; GPU ranks reduce through NCCL after backward), or after it.
    pub fn overlaps(&self) -> bool {
        self.overlap && self.readiness.is_some()
    }

    /// Turns the overlap of the all-reduce with backward on (the default)
    /// or off (every bucket reduced after backward, as before: the same
    /// result, for comparing their speed).
    pub fn set_overlap(&mut self, on: bool) {
        self.overlap = on;
    }

    /// How many buckets the last [`DistributedModel::backward`] handed to
    /// the all-reduce while its backward pass was still running (0 when it
    /// does not overlap; the buckets holding a parameter this rank's batch
    /// did not use wait for the end).
    pub fn overlapped_buckets(&self) -> usize {
        self.overlapped
    }

    /// Averages every trainable parameter's gradient across the ranks (call
    /// after `backward`, before the optimizer's step), as DDP does after
    /// its backward. A parameter that got no gradient on this rank (a
    /// branch of the model this rank's batch did not take) counts as zeros
    /// in the average, and gets the average as its gradient when another
    /// rank's has one, so every rank takes the same step (DDP's
    /// `find_unused_parameters`); one no rank used keeps no gradient. Each
    /// bucket carries one extra value per parameter saying which ranks
    /// used it, so this costs no extra collective.
    pub fn sync_gradients(&mut self) -> Result<()> {
        if self.group.world_size() == 1 {
            return Ok(());
        }
        for bucket in &mut self.buckets {
            bucket.reduce(&mut self.group)?;
        }
        Ok(())
    }

    /// Backward from `loss`, with the gradients averaged across ranks as
    /// [`DistributedModel::sync_gradients`] does: what `loss.backward()`
    /// does on a DDP model. Gradients add to those already there (zero
    /// them with the optimizer first). When it [overlaps](Self::overlaps),
    /// a thread all-reduces the buckets in their fixed order, each as soon
    /// as backward has accumulated all its gradients; the buckets with a
    /// parameter this rank did not use follow when backward returns.
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        self.overlapped = 0;
        let readiness = match &self.readiness {
            Some(r) if self.overlap => std::sync::Arc::clone(r),
            _ => {
                loss.f_backward()?;
                return self.sync_gradients();
            }
        };
        let ready = readiness.start();
        let (group, buckets) = (&mut self.group, &mut self.buckets);
        let (backward, overlapped, reduced) = std::thread::scope(|s| {
            let reducer = s.spawn(move || -> Result<()> {
                let mut complete = vec![false; buckets.len()];
                for (b, bucket) in buckets.iter_mut().enumerate() {
                    while !complete[b] {
                        match ready.recv() {
                            Ok(k) => complete[k] = true,
                            // Backward failed: its error is the caller's.
                            Err(_) => return Ok(()),
                        }
                    }
                    bucket.reduce(group)?;
                }
                Ok(())
            });
            let backward = loss.f_backward();
            let overlapped = readiness.finish(backward.is_ok());
            let reduced = reducer
                .join()
                .unwrap_or_else(|_| Err(Error::Torch("the gradient all-reduce thread panicked".into())));
            (backward, overlapped, reduced)
        });
        backward?;
        reduced?;
        self.overlapped = overlapped;
        Ok(())
    }

    /// Backward from `loss` without averaging across the ranks: gradient
    /// accumulation (DDP's `no_sync`). Accumulate over several
    /// micro-batches this way, then call [`DistributedModel::backward`]
    /// on the last: one all-reduce for them all. Scale each loss by the
    /// number of micro-batches for a mean over them.
    pub fn backward_no_sync(&mut self, loss: &Tensor) -> Result<()> {
        Ok(loss.f_backward()?)
    }

    /// One training step: zero the gradients, backward from `loss`,
    /// average the gradients across ranks, step the optimizer (tch's
    /// `nn::Optimizer`, or [`crate::optim::Adam`], whose state checkpoints
    /// hold). The same as `opt.zero_grad()`, [`DistributedModel::backward`]
    /// and `opt.step()`: call those three for more control, as in
    ///
    /// ```no_run
    /// # fn f(model: &mut rayforge_train::DistributedModel, opt: &mut rayforge_train::optim::Adam,
    /// #      micro: Vec<rayforge_train::tch::Tensor>) -> rayforge_train::Result<()> {
    /// use rayforge_train::optim::Optimizer;
    /// opt.zero_grad();
    /// let k = micro.len() as f64;
    /// for (i, loss) in micro.iter().enumerate() {
    ///     if i + 1 < micro.len() {
    ///         model.backward_no_sync(&(loss / k))?; // accumulate, no communication
    ///     } else {
    ///         model.backward(&(loss / k))?; // the last one averages across ranks
    ///     }
    /// }
    /// opt.clip_grad_norm(1.0); // the same gradients on every rank: the same clipping
    /// opt.step()?;
    /// # Ok(()) }
    /// ```
    pub fn backward_step(&mut self, loss: &Tensor, opt: &mut impl crate::optim::Optimizer) -> Result<()> {
        opt.zero_grad();
        self.backward(loss)?;
        opt.step()
    }
}

/// Parameters whose gradients are averaged by one all-reduce.
#[derive(Debug)]
struct Bucket {
    params: Vec<Tensor>,
    /// The gradients, flat, then a use flag per parameter: what goes
    /// around the ring, kept from step to step.
    flat: Tensor,
}

impl Bucket {
    fn new(params: &[Tensor]) -> Result<Bucket> {
        let total: usize = params.iter().map(|p| p.numel()).sum();
        let device = params.first().map(|p| p.device()).unwrap_or(tch::Device::Cpu);
        Ok(Bucket {
            params: params.iter().map(Tensor::shallow_clone).collect(),
            flat: Tensor::f_zeros([(total + params.len()) as i64], (Kind::Float, device))?,
        })
    }

    /// Averages the bucket's gradients across the ranks: see
    /// [`DistributedModel::sync_gradients`].
    fn reduce(&mut self, group: &mut Group) -> Result<()> {
        let total: i64 = self.params.iter().map(|p| p.numel() as i64).sum();
        let mut used = Vec::with_capacity(self.params.len());
        let mut at = 0i64;
        for p in &self.params {
            let n = p.numel() as i64;
            let mut part = self.flat.f_narrow(0, at, n)?;
            let g = p.grad();
            if g.defined() {
                part.f_copy_(&g.f_reshape(-1)?)?;
            } else {
                let _ = part.f_zero_()?;
            }
            used.push(f32::from(u8::from(g.defined())));
            at += n;
        }
        let device = self.flat.device();
        self.flat
            .f_narrow(0, total, used.len() as i64)?
            .f_copy_(&Tensor::from_slice(&used).f_to_device(device)?)?;
        group.all_reduce_tensor(&mut self.flat, ReduceOp::Sum)?;
        let users = self
            .flat
            .f_narrow(0, total, used.len() as i64)?
            .f_to_device(tch::Device::Cpu)?;
        let users = Vec::<f32>::try_from(&users)?;
        let mut mean = self.flat.f_narrow(0, 0, total)?;
        let _ = mean.f_div_scalar_(group.world_size() as f64)?;
        let mut at = 0i64;
        for (p, users) in self.params.iter().zip(users) {
            let n = p.numel() as i64;
            if users > 0.0 {
                let part = mean.f_narrow(0, at, n)?.f_view(p.size().as_slice())?;
                let mut g = p.grad();
                if !g.defined() {
                    // Unused here, used elsewhere: give it a gradient
                    // (zeros, through autograd, which owns `grad`). Only
                    // after this rank's backward: such a bucket is not
                    // complete before.
                    p.f_mul_scalar(0.0)?.f_sum(Kind::Float)?.f_backward()?;
                    g = p.grad();
                }
                tch::no_grad(|| g.f_copy_(&part))?;
            }
            at += n;
        }
        Ok(())
    }
}

impl TrainContext {
    /// The tch device this rank computes on.
    pub fn torch_device(&self) -> tch::Device {
        self.device.to_tch()
    }

    /// Prepares a model for data-parallel training: broadcasts its
    /// parameters (and buffers) from rank 0, and returns what averages its
    /// gradients across ranks in each backward (buckets of 25 MB after a
    /// first of 1 MB, as DDP's, reduced while backward runs).
    pub fn prepare_model(&mut self, vs: &nn::VarStore) -> Result<DistributedModel> {
        self.prepare_model_with_buckets(vs, DEFAULT_BUCKET_BYTES)
    }

    /// [`TrainContext::prepare_model`] with gradient buckets of about
    /// `bucket_bytes`.
    pub fn prepare_model_with_buckets(&mut self, vs: &nn::VarStore, bucket_bytes: usize) -> Result<DistributedModel> {
        DistributedModel::new(self.group.try_clone()?, vs, bucket_bytes)
    }

    /// A sampler over `len` items already in memory, giving this rank its
    /// share (see [`DistributedSampler`]).
    pub fn sampler(&self, len: usize) -> DistributedSampler {
        DistributedSampler::new(len, self.world_size(), self.world_rank)
    }

    /// This rank's shard of the dataset given to the trainer as `name`, as
    /// batches of tensors on this rank's device: one pass per call (an
    /// epoch), every rank getting the same number of rows.
    pub fn iter_torch_batches(&self, name: &str, batch_size: usize) -> Result<TorchBatches> {
        let shard = self.dataset_shard(name)?;
        if batch_size == 0 {
            return Err(Error::InvalidArgument(
                "iter_torch_batches: batch_size must be at least 1".into(),
            ));
        }
        Ok(TorchBatches {
            inner: shard.iter_batches(Some(batch_size)),
            device: self.torch_device(),
        })
    }
}

/// Batches of a dataset shard as tensors, one per column (from
/// [`TrainContext::iter_torch_batches`]).
pub struct TorchBatches {
    inner: rayforge_data::BatchIter,
    device: tch::Device,
}

impl std::fmt::Debug for TorchBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchBatches").field("device", &self.device).finish()
    }
}

impl Iterator for TorchBatches {
    type Item = Result<BTreeMap<String, Tensor>>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.inner.next()?;
        Some(b.map_err(Error::from).and_then(|b| batch_to_tensors(&b, self.device)))
    }
}

/// A record batch as tensors, one per column, on `device`: numeric columns
/// become 1-D tensors of the matching kind (Float32 → Float, Float64 →
/// Double, Int64 → Int64, Int32 → Int, UInt8 → Uint8, Boolean → Bool);
/// fixed-size lists and equal-length lists of numbers become 2-D. A null
/// value or another type is an error naming the column.
pub fn batch_to_tensors(b: &RecordBatch, device: tch::Device) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (field, col) in b.schema().fields().iter().zip(b.columns()) {
        let t = column_to_tensor(field.name(), col)?;
        out.insert(field.name().clone(), t.f_to_device(device)?);
    }
    Ok(out)
}

fn column_to_tensor(name: &str, col: &ArrayRef) -> Result<Tensor> {
    if col.null_count() > 0 {
        return Err(Error::InvalidArgument(format!(
            "column `{name}` has {} null values; tensors cannot hold them",
            col.null_count()
        )));
    }
    let flat = |a: &dyn Array| -> Result<Tensor> {
        Ok(match a.data_type() {
            DataType::Float32 => Tensor::from_slice(a.as_primitive::<Float32Type>().values()),
            DataType::Float64 => Tensor::from_slice(a.as_primitive::<Float64Type>().values()),
            DataType::Int64 => Tensor::from_slice(a.as_primitive::<Int64Type>().values()),
            DataType::Int32 => Tensor::from_slice(a.as_primitive::<Int32Type>().values()),
            DataType::UInt8 => Tensor::from_slice(a.as_primitive::<UInt8Type>().values()),
            DataType::Boolean => {
                let v: Vec<bool> = a.as_boolean().iter().map(|x| x.unwrap_or(false)).collect();
                Tensor::from_slice(&v)
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "column `{name}` is {other}: only numbers, booleans and lists of numbers become tensors"
                )))
            }
        })
    };
    match col.data_type() {
        DataType::FixedSizeList(_, k) => {
            let l: &FixedSizeListArray = col.as_fixed_size_list();
            let values = l.values().slice(l.offset() * *k as usize, l.len() * *k as usize);
            Ok(flat(values.as_ref())?.f_reshape([l.len() as i64, *k as i64])?)
        }
        DataType::List(_) => {
            let l: &ListArray = col.as_list();
            let offsets = l.value_offsets();
            let width = if l.is_empty() { 0 } else { offsets[1] - offsets[0] };
            if offsets.windows(2).any(|w| w[1] - w[0] != width) {
                return Err(Error::InvalidArgument(format!(
                    "column `{name}` holds lists of different lengths; a tensor needs one width"
                )));
            }
            let first = offsets.first().copied().unwrap_or(0) as usize;
            let values = l.values().slice(first, l.len() * width as usize);
            Ok(flat(values.as_ref())?.f_reshape([l.len() as i64, width as i64])?)
        }
        _ => flat(col.as_ref()),
    }
}

/// Gives each rank its share of `len` items in memory, as PyTorch's
/// `DistributedSampler`: every rank gets the same number of indices
/// (`ceil(len / world)`, the list padded by wrapping around; or
/// `floor(len / world)` with [`DistributedSampler::drop_last`]), shuffled
/// by a seed (0 unless [`DistributedSampler::shuffle`] gives another) and
/// the epoch, the same permutation on every rank. As PyTorch's, it
/// shuffles by default: [`DistributedSampler::sequential`] keeps the
/// items in order. Call [`DistributedSampler::set_epoch`] each epoch for a
/// new order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributedSampler {
    len: usize,
    world: usize,
    rank: usize,
    shuffle: Option<u64>,
    drop_last: bool,
    epoch: u64,
}

impl DistributedSampler {
    /// Rank `rank` of `world`'s share of `len` items, shuffled with seed 0.
    pub fn new(len: usize, world: usize, rank: usize) -> DistributedSampler {
        DistributedSampler {
            len,
            world: world.max(1),
            rank,
            shuffle: Some(0),
            drop_last: false,
            epoch: 0,
        }
    }

    /// Shuffles every epoch with `seed` (combined with the epoch number).
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle = Some(seed);
        self
    }

    /// Keeps the items in order (PyTorch's `shuffle=False`).
    pub fn sequential(mut self) -> Self {
        self.shuffle = None;
        self
    }

    /// Drops the tail that does not divide evenly instead of padding.
    pub fn drop_last(mut self, drop: bool) -> Self {
        self.drop_last = drop;
        self
    }

    /// Sets the epoch (a new permutation each epoch when shuffling).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// How many indices each rank gets.
    pub fn num_samples(&self) -> usize {
        if self.drop_last {
            self.len / self.world
        } else {
            self.len.div_ceil(self.world)
        }
    }

    /// This rank's indices for the current epoch.
    pub fn indices(&self) -> Vec<usize> {
        if self.len == 0 {
            return Vec::new();
        }
        let mut all: Vec<usize> = (0..self.len).collect();
        if let Some(seed) = self.shuffle {
            let mut state = seed ^ self.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for i in (1..all.len()).rev() {
                let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
                all.swap(i, j);
            }
        }
        let total = self.num_samples() * self.world;
        let mut k = 0;
        while all.len() < total {
            all.push(all[k]);
            k += 1;
        }
        all.truncate(total);
        all.into_iter().skip(self.rank).step_by(self.world).collect()
    }

    /// This rank's indices for the current epoch in batches of `batch_size`
    /// (the last may be shorter), as Int64 tensors ready for `index_select`.
    pub fn batches(&self, batch_size: usize) -> Vec<Tensor> {
        let idx: Vec<i64> = self.indices().into_iter().map(|i| i as i64).collect();
        idx.chunks(batch_size.max(1)).map(Tensor::from_slice).collect()
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writing tch models and tensors into a [`CheckpointWriter`] (the
/// project's checkpoint format lives in the core, which knows no tch).
pub trait CheckpointWriterExt {
    /// Saves a model's variables as the file `name` (safetensors when it
    /// ends in `.safetensors`, libtorch's format otherwise).
    fn save_varstore(&mut self, name: &str, vs: &nn::VarStore) -> Result<()>;

    /// Saves named tensors as the file `name` (safetensors when it ends in
    /// `.safetensors`, libtorch's format otherwise).
    fn save_tensors(&mut self, name: &str, tensors: &[(&str, &Tensor)]) -> Result<()>;

    /// Traces `forward` on `example` and saves the result as a TorchScript
    /// module in the file `name` (what Serve's TorchScript deployments and
    /// `tch::CModule::load` read). `vs` holds the model's variables: they
    /// are frozen while tracing (the module keeps their values as
    /// constants) and unfrozen after.
    fn save_torchscript(
        &mut self,
        name: &str,
        vs: &mut nn::VarStore,
        example: &Tensor,
        forward: impl FnMut(&Tensor) -> Tensor,
    ) -> Result<()>;
}

impl CheckpointWriterExt for CheckpointWriter {
    fn save_varstore(&mut self, name: &str, vs: &nn::VarStore) -> Result<()> {
        let p = self.file_path(name)?;
        vs.save(&p).map_err(|e| Error::checkpoint(&p, e))
    }

    fn save_tensors(&mut self, name: &str, tensors: &[(&str, &Tensor)]) -> Result<()> {
        let p = self.file_path(name)?;
        let r = if name.ends_with(".safetensors") {
            Tensor::write_safetensors(tensors, &p)
        } else {
            Tensor::save_multi(tensors, &p)
        };
        r.map_err(|e| Error::checkpoint(&p, e))
    }

    fn save_torchscript(
        &mut self,
        name: &str,
        vs: &mut nn::VarStore,
        example: &Tensor,
        mut forward: impl FnMut(&Tensor) -> Tensor,
    ) -> Result<()> {
        let p = self.file_path(name)?;
        vs.freeze();
        let module = tch::no_grad(|| {
            tch::CModule::create_by_tracing(
                "Model",
                "forward",
                std::slice::from_ref(example),
                &mut |xs: &[Tensor]| vec![forward(&xs[0])],
            )
        });
        // Saved while frozen: the module's constants are the variables
        // themselves, and a constant that requires grad cannot be loaded.
        let saved = module
            .map_err(|e| Error::checkpoint(&p, format!("tracing the model: {e}")))
            .and_then(|m| m.save(&p).map_err(|e| Error::checkpoint(&p, e)));
        vs.unfreeze();
        saved
    }
}

/// Reading tch models and tensors from a [`Checkpoint`].
pub trait CheckpointExt {
    /// Loads the variables saved as `name` into `vs` (matched by name).
    fn load_varstore(&self, name: &str, vs: &mut nn::VarStore) -> Result<()>;

    /// The named tensors saved as `name`.
    fn load_tensors(&self, name: &str) -> Result<Vec<(String, Tensor)>>;

    /// The TorchScript module saved as `name`.
    fn load_torchscript(&self, name: &str) -> Result<tch::CModule>;
}

impl CheckpointExt for Checkpoint {
    fn load_varstore(&self, name: &str, vs: &mut nn::VarStore) -> Result<()> {
        let p = self.file(name);
        vs.load(&p).map_err(|e| Error::checkpoint(&p, e))
    }

    fn load_tensors(&self, name: &str) -> Result<Vec<(String, Tensor)>> {
        let p = self.file(name);
        let r = if name.ends_with(".safetensors") {
            Tensor::read_safetensors(&p)
        } else {
            Tensor::load_multi(&p)
        };
        r.map_err(|e| Error::checkpoint(&p, e))
    }

    fn load_torchscript(&self, name: &str) -> Result<tch::CModule> {
        let p = self.file(name);
        tch::CModule::load(&p).map_err(|e| Error::checkpoint(&p, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float32Array, Int64Array, ListArray, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn the_sampler_splits_pads_and_shuffles_like_pytorchs() {
        let a = DistributedSampler::new(10, 3, 0).sequential().indices();
        let b = DistributedSampler::new(10, 3, 1).sequential().indices();
        let c = DistributedSampler::new(10, 3, 2).sequential().indices();
        assert_eq!(
            (a.clone(), b, c),
            (vec![0, 3, 6, 9], vec![1, 4, 7, 0], vec![2, 5, 8, 1])
        );
        assert_eq!(
            DistributedSampler::new(10, 3, 2).sequential().drop_last(true).indices(),
            vec![2, 5, 8]
        );
        // Shuffled by default, as PyTorch's: still a split of every item.
        let mut by_default: Vec<usize> = (0..2)
            .flat_map(|r| DistributedSampler::new(8, 2, r).indices())
            .collect();
        assert_ne!(by_default, vec![0, 2, 4, 6, 1, 3, 5, 7], "shuffled");
        by_default.sort();
        assert_eq!(by_default, (0..8).collect::<Vec<_>>());
        // Shuffled: each epoch a permutation, the ranks disjoint and complete.
        let mut seen = Vec::new();
        for r in 0..2 {
            let mut s = DistributedSampler::new(8, 2, r).shuffle(7);
            s.set_epoch(3);
            seen.extend(s.indices());
        }
        let shuffled = seen.clone();
        seen.sort();
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
        assert_ne!(shuffled, vec![0, 2, 4, 6, 1, 3, 5, 7]);
        let mut s = DistributedSampler::new(8, 2, 0).shuffle(7);
        let e0 = s.indices();
        s.set_epoch(1);
        assert_ne!(e0, s.indices(), "a new order each epoch");
        assert_eq!(s.batches(3).iter().map(|t| t.numel()).collect::<Vec<_>>(), vec![3, 1]);
        assert!(DistributedSampler::new(0, 2, 1).indices().is_empty());
    }

    #[test]
    fn record_batches_become_tensors_by_column() {
        let list = ListArray::from_iter_primitive::<Float32Type, _, _>(vec![
            Some(vec![Some(1.0), Some(2.0)]),
            Some(vec![Some(3.0), Some(4.0)]),
        ]);
        let schema = Schema::new(vec![
            Field::new("x", list.data_type().clone(), true),
            Field::new("y", DataType::Int64, false),
            Field::new("w", DataType::Float32, false),
        ]);
        let b = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(list),
                Arc::new(Int64Array::from(vec![7, 8])),
                Arc::new(Float32Array::from(vec![0.5, 0.25])),
            ],
        )
        .unwrap();
        let t = batch_to_tensors(&b, tch::Device::Cpu).unwrap();
        assert_eq!(t["x"].size(), vec![2, 2]);
        assert_eq!(
            Vec::<f32>::try_from(t["x"].reshape(-1)).unwrap(),
            vec![1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(t["y"].kind(), Kind::Int64);
        assert_eq!(Vec::<i64>::try_from(&t["y"]).unwrap(), vec![7, 8]);
        assert_eq!(Vec::<f32>::try_from(&t["w"]).unwrap(), vec![0.5, 0.25]);
        // A slice of a batch converts its own rows.
        let t = batch_to_tensors(&b.slice(1, 1), tch::Device::Cpu).unwrap();
        assert_eq!(Vec::<f32>::try_from(t["x"].reshape(-1)).unwrap(), vec![3.0, 4.0]);

        let text = RecordBatch::try_from_iter([("name", Arc::new(StringArray::from(vec!["a"])) as ArrayRef)]).unwrap();
        let e = batch_to_tensors(&text, tch::Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("`name`") && e.contains("Utf8"), "{e}");
        let ragged = ListArray::from_iter_primitive::<Float32Type, _, _>(vec![Some(vec![Some(1.0)]), Some(vec![])]);
        let ragged = RecordBatch::try_from_iter([("r", Arc::new(ragged) as ArrayRef)]).unwrap();
        let e = batch_to_tensors(&ragged, tch::Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("different lengths"), "{e}");
        let nulls =
            RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef)]).unwrap();
        assert!(batch_to_tensors(&nulls, tch::Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("null"));
    }

    /// Runs `f` on each rank of a loopback ring of `n`, each in a thread.
    fn on_ranks<T: Send>(n: usize, f: impl Fn(Group) -> T + Sync) -> Vec<T> {
        let groups = crate::collective::test_ring(n, std::time::Duration::from_secs(60));
        std::thread::scope(|s| {
            let hs: Vec<_> = groups.into_iter().map(|g| s.spawn(|| f(g))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn values(vs: &nn::VarStore) -> Vec<(String, Vec<f32>)> {
        let mut v: Vec<(String, Vec<f32>)> = vs
            .variables()
            .into_iter()
            .map(|(k, t)| (k, Vec::<f32>::try_from(t.reshape(-1)).unwrap()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn parameters_unused_on_some_ranks_still_take_the_same_step_everywhere() {
        use tch::nn::OptimizerConfig;
        let out = on_ranks(2, |g| {
            tch::manual_seed(g.rank() as i64); // different inits: the broadcast evens them
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let a = nn::linear(vs.root() / "a", 2, 1, Default::default());
            let b = nn::linear(vs.root() / "b", 2, 1, Default::default());
            let _never = nn::linear(vs.root() / "never", 2, 1, Default::default());
            let rank = g.rank();
            let mut model = DistributedModel::new(g, &vs, 8).unwrap();
            let mut opt = nn::Sgd::default().build(&vs, 0.5).unwrap();
            let x = Tensor::from_slice(&[1.0f32 + rank as f32, -2.0]).reshape([1, 2]);
            // Rank 1's batch takes only branch `a`.
            let loss = if rank == 0 {
                (x.apply(&a) + x.apply(&b)).square().sum(Kind::Float)
            } else {
                x.apply(&a).square().sum(Kind::Float)
            };
            model.backward_step(&loss, &mut opt).unwrap();
            let never = vs.variables()["never.weight"].grad().defined();
            assert!(
                model.overlapped_buckets() < model.num_buckets(),
                "the buckets of unused parameters wait for the end of backward"
            );
            (values(&vs), never)
        });
        assert_eq!(
            out[0].0, out[1].0,
            "every rank holds the same parameters after the step"
        );
        assert!(!out[0].1 && !out[1].1, "a parameter no rank used keeps no gradient");
    }

    /// Every trainable parameter's gradient, by name.
    fn grads(vs: &nn::VarStore) -> Vec<(String, Vec<f32>)> {
        let mut v: Vec<(String, Vec<f32>)> = vs
            .trainable_variables()
            .iter()
            .zip(0..)
            .map(|(t, i)| (format!("{i}"), Vec::<f32>::try_from(t.grad().reshape(-1)).unwrap()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn buckets_reduced_during_backward_give_the_gradients_of_a_reduction_after_it() {
        let out = on_ranks(2, |g| {
            let rank = g.rank();
            tch::manual_seed(7);
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let net = nn::seq()
                .add(nn::linear(vs.root() / "l1", 8, 32, Default::default()))
                .add_fn(|x| x.tanh())
                .add(nn::linear(vs.root() / "l2", 32, 32, Default::default()))
                .add_fn(|x| x.tanh())
                .add(nn::linear(vs.root() / "l3", 32, 3, Default::default()));
            // About one layer's weight per bucket.
            let mut model = DistributedModel::new(g, &vs, 1024).unwrap();
            assert!(model.overlaps(), "on by default on the CPU");
            assert!(model.num_buckets() >= 3, "{}", model.num_buckets());
            tch::manual_seed(100 + rank as i64); // each rank its own batch
            let x = Tensor::randn([16, 8], (Kind::Float, tch::Device::Cpu));
            let loss = |m: &dyn nn::Module| m.forward(&x).square().mean(Kind::Float);
            let zero = |vs: &nn::VarStore| {
                for t in vs.trainable_variables() {
                    let mut g = t.grad();
                    if g.defined() {
                        let _ = g.zero_();
                    }
                }
            };
            let mut runs = Vec::new();
            for overlap in [true, false, true] {
                zero(&vs);
                model.set_overlap(overlap);
                model.backward(&loss(&net)).unwrap();
                runs.push((grads(&vs), model.overlapped_buckets()));
            }
            // A backward that fails (a loss with no graph) fails before any
            // collective on every rank, and the next one works.
            let e = model.backward(&Tensor::from(1.0f32)).unwrap_err();
            assert!(matches!(e, Error::Torch(_)), "{e}");
            zero(&vs);
            model.backward(&loss(&net)).unwrap();
            runs.push((grads(&vs), model.overlapped_buckets()));
            (runs, model.num_buckets())
        });
        for (runs, buckets) in &out {
            assert_eq!(runs[0].1, *buckets, "every bucket handed over during backward");
            assert_eq!(runs[1].1, 0, "no overlap when switched off");
            for r in &runs[1..] {
                assert_eq!(r.0, runs[0].0, "the same gradients, bit for bit");
            }
        }
        assert_eq!(out[0].0[0].0, out[1].0[0].0, "the same average on both ranks");
    }

    #[test]
    fn accumulated_micro_batches_sync_once_and_match_one_large_batch() {
        let init = [0.3f32, -0.7];
        let batch = |i: usize| {
            let x = Tensor::from_slice(&[i as f32 + 1.0, 2.0 - i as f32]).reshape([1, 2]);
            let t = Tensor::from_slice(&[i as f32 * 0.5]).reshape([1, 1]);
            (x, t)
        };
        let model_of = |vs: &nn::VarStore| {
            let mut lin = nn::linear(
                vs.root() / "l",
                2,
                1,
                nn::LinearConfig {
                    bias: false,
                    ..Default::default()
                },
            );
            tch::no_grad(|| lin.ws.copy_(&Tensor::from_slice(&init).reshape([1, 2])));
            lin
        };
        let loss_of = |lin: &nn::Linear, i: usize| {
            let (x, t) = batch(i);
            (x.apply(lin) - t).square().sum(Kind::Float)
        };
        // One process over the four micro-batches: the mean of their losses.
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let lin = model_of(&vs);
        let total = (0..4).map(|i| loss_of(&lin, i)).reduce(|a, b| a + b).unwrap() / 4.0;
        total.backward();
        let want = Vec::<f32>::try_from(lin.ws.grad().reshape(-1)).unwrap();

        let out = on_ranks(2, |g| {
            let probe = g.try_clone().unwrap();
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let lin = model_of(&vs);
            let rank = g.rank();
            let mut model = DistributedModel::new(g, &vs, DEFAULT_BUCKET_BYTES).unwrap();
            let before = probe.calls();
            model.backward_no_sync(&(loss_of(&lin, 2 * rank) / 2.0)).unwrap();
            let after_accumulating = probe.calls();
            model.backward(&(loss_of(&lin, 2 * rank + 1) / 2.0)).unwrap();
            let grad = Vec::<f32>::try_from(lin.ws.grad().reshape(-1)).unwrap();
            (grad, after_accumulating - before, probe.calls() - after_accumulating)
        });
        for (grad, during, after) in out {
            assert_eq!(during, 0, "no collective while accumulating");
            assert_eq!(after, 1, "one all-reduce for the bucket");
            for (a, b) in grad.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{grad:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn integer_and_double_tensors_reduce_exactly_across_ranks() {
        let big = (1i64 << 40) + 3;
        let out = on_ranks(2, |mut g| {
            let r = g.rank() as i64;
            let mut ints = Tensor::from_slice(&[big + r, 5]);
            g.all_reduce_tensor(&mut ints, ReduceOp::Sum).unwrap();
            let mut doubles = Tensor::from_slice(&[1e17f64 + 8.0 * r as f64]);
            g.all_reduce_tensor(&mut doubles, ReduceOp::Sum).unwrap();
            let mut int32 = Tensor::from_slice(&[7i32 + r as i32]);
            g.broadcast_tensor(&mut int32, 1).unwrap();
            let gathered = g.all_gather_tensor(&Tensor::from_slice(&[big * (r + 1)])).unwrap();
            (
                Vec::<i64>::try_from(&ints).unwrap(),
                Vec::<f64>::try_from(&doubles).unwrap(),
                (int32.kind(), Vec::<i32>::try_from(&int32).unwrap()),
                gathered
                    .iter()
                    .map(|t| Vec::<i64>::try_from(t).unwrap())
                    .collect::<Vec<_>>(),
            )
        });
        for (ints, doubles, int32, gathered) in out {
            assert_eq!(ints, vec![2 * big + 1, 10]);
            assert_eq!(doubles, vec![2e17 + 8.0]);
            assert_eq!(int32, (Kind::Int, vec![8]));
            assert_eq!(gathered, vec![vec![big], vec![2 * big]]);
        }
    }

    #[test]
    fn tensors_of_any_layout_go_through_the_collectives() {
        // A group of one: the values pass through unchanged, whatever the
        // tensor's kind or layout.
        let mut g = Group::join("t", "", 0, 1, "127.0.0.1", std::time::Duration::from_secs(1)).unwrap();
        let mut t = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0])
            .reshape([2, 2])
            .transpose(0, 1);
        g.all_reduce_tensor(&mut t, ReduceOp::Mean).unwrap();
        assert_eq!(Vec::<f64>::try_from(t.reshape(-1)).unwrap(), vec![1.0, 3.0, 2.0, 4.0]);
        let parts = g.all_gather_tensor(&Tensor::from_slice(&[5i64, 6])).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].kind(), Kind::Int64);
        assert_eq!(Vec::<i64>::try_from(&parts[0]).unwrap(), vec![5, 6]);
    }

    #[test]
    fn models_round_trip_through_checkpoints_as_variables_and_torchscript() {
        let mut vs = nn::VarStore::new(tch::Device::Cpu);
        let lin = nn::linear(vs.root() / "l", 3, 2, Default::default());
        let mut w = CheckpointWriter::new().unwrap();
        w.save_varstore("model.safetensors", &vs).unwrap();
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).reshape([1, 3]);
        w.save_torchscript("model.pt", &mut vs, &x, |x| x.apply(&lin)).unwrap();
        assert!(
            vs.trainable_variables().iter().all(|t| t.requires_grad()),
            "unfrozen after"
        );
        let dir = std::env::temp_dir().join(format!("train-torch-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = w.commit(&dir, 1, &BTreeMap::new(), "test").unwrap();

        let mut vs2 = nn::VarStore::new(tch::Device::Cpu);
        let lin2 = nn::linear(vs2.root() / "l", 3, 2, Default::default());
        c.load_varstore("model.safetensors", &mut vs2).unwrap();
        let want = x.apply(&lin);
        assert!(x.apply(&lin2).allclose(&want, 1e-6, 1e-6, false));
        let ts = c.load_torchscript("model.pt").unwrap();
        assert!(ts.forward_ts(&[&x]).unwrap().allclose(&want, 1e-6, 1e-6, false));
        assert!(matches!(
            c.load_torchscript("missing.pt"),
            Err(Error::Checkpoint { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
