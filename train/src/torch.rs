//! tch on a training gang: collectives on tensors, [`DistributedModel`]
//! (parameters broadcast from rank 0, gradients averaged across ranks in
//! buckets after backward, as PyTorch's DDP), a dataset shard's rows as
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

/// Runs `f` over the tensor's values as `f32` in host memory, then writes
/// them back into the tensor.
fn with_host_f32<T>(t: &mut Tensor, f: impl FnOnce(&mut [f32]) -> Result<T>) -> Result<T> {
    let n = t.numel();
    if t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() {
        if n == 0 {
            return f(&mut []);
        }
        // SAFETY: a contiguous CPU tensor of kind Float holds `numel` f32
        // values from `data_ptr` (which accounts for its storage offset),
        // and we hold the tensor mutably for the slice's lifetime.
        let buf = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) };
        return f(buf);
    }
    let mut host = t
        .f_to_device(tch::Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?;
    if host.data_ptr() == t.data_ptr() {
        // Still the same storage (a CPU float view): copy before writing.
        host = host.f_detach_copy()?;
    }
    let out = with_host_f32(&mut host, f)?;
    tch::no_grad(|| t.f_copy_(&host))?;
    Ok(out)
}

impl Group {
    /// Reduces a tensor over every rank in place (every rank passes one of
    /// the same number of elements): through NCCL in the tensor's own kind
    /// for a tensor on the group's GPU (integers are averaged in `f32`),
    /// else in `f32` around the TCP ring.
    pub fn all_reduce_tensor(&mut self, t: &mut Tensor, op: ReduceOp) -> Result<()> {
        if let Some(nccl) = self.nccl_for(t) {
            return nccl.all_reduce(t, op);
        }
        with_host_f32(t, |buf| self.all_reduce(buf, op))
    }

    /// Every rank's tensor takes rank `root`'s values (through NCCL for a
    /// tensor on the group's GPU).
    pub fn broadcast_tensor(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        if let Some(nccl) = self.nccl_for(t) {
            return nccl.broadcast(t, root);
        }
        with_host_f32(t, |buf| self.broadcast(buf, root))
    }

    /// Every rank's tensor (all of one shape), in rank order, each of `t`'s
    /// shape, kind and device (through NCCL for a tensor on the group's
    /// GPU).
    pub fn all_gather_tensor(&mut self, t: &Tensor) -> Result<Vec<Tensor>> {
        if let Some(nccl) = self.nccl_for(t) {
            return nccl.all_gather(t);
        }
        let mut mine = t.shallow_clone();
        let local: Vec<f32> = with_host_f32(&mut mine, |buf| Ok(buf.to_vec()))?;
        let all = self.all_gather(&local)?;
        let shape = t.size();
        let per = local.len().max(1);
        (0..self.world_size())
            .map(|r| {
                let chunk = if local.is_empty() {
                    &[][..]
                } else {
                    &all[r * per..(r + 1) * per]
                };
                Ok(Tensor::from_slice(chunk)
                    .f_reshape(&shape)?
                    .f_to_kind(t.kind())?
                    .f_to_device(t.device())?)
            })
            .collect()
    }

    /// The NCCL communicator that takes `t`, if the group has one on `t`'s
    /// device.
    fn nccl_for(&self, t: &Tensor) -> Option<std::sync::Arc<crate::nccl::Nccl>> {
        self.nccl.as_ref().filter(|n| n.takes(t)).cloned()
    }
}

/// A model prepared for data-parallel training: every rank starts from
/// rank 0's parameters, and [`DistributedModel::sync_gradients`] averages
/// the gradients across ranks (in buckets, in a fixed order) so every rank
/// takes the same step. From [`TrainContext::prepare_model`].
#[derive(Debug)]
pub struct DistributedModel {
    group: Group,
    /// The trainable parameters, by name.
    params: Vec<Tensor>,
    /// Index ranges of `params`, each about `bucket_bytes`.
    buckets: Vec<std::ops::Range<usize>>,
}

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
        let params: Vec<Tensor> = named
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(_, t)| t)
            .collect();
        let mut buckets = Vec::new();
        let (mut start, mut bytes) = (0, 0usize);
        for (i, p) in params.iter().enumerate() {
            bytes += p.numel() * 4;
            if bytes >= bucket_bytes.max(1) {
                buckets.push(start..i + 1);
                (start, bytes) = (i + 1, 0);
            }
        }
        if start < params.len() {
            buckets.push(start..params.len());
        }
        Ok(DistributedModel { group, params, buckets })
    }

    /// The number of gradient buckets.
    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Averages every trainable parameter's gradient across the ranks (call
    /// after `backward`, before the optimizer's step). A parameter without
    /// a gradient on this rank counts as zeros.
    pub fn sync_gradients(&mut self) -> Result<()> {
        if self.group.world_size() == 1 {
            return Ok(());
        }
        for range in self.buckets.clone() {
            let params = &self.params[range];
            let grads: Vec<Tensor> = params
                .iter()
                .map(|p| {
                    let g = p.grad();
                    if g.defined() {
                        g.reshape(-1)
                    } else {
                        Tensor::zeros([p.numel() as i64], (p.kind(), p.device()))
                    }
                })
                .collect();
            let mut flat = Tensor::f_cat(&grads, 0)?.f_to_kind(Kind::Float)?.f_contiguous()?;
            self.group.all_reduce_tensor(&mut flat, ReduceOp::Mean)?;
            let mut at = 0i64;
            for p in params {
                let n = p.numel() as i64;
                let mut g = p.grad();
                if g.defined() {
                    let part = flat.f_narrow(0, at, n)?.f_view_as(&g)?;
                    tch::no_grad(|| g.f_copy_(&part))?;
                }
                at += n;
            }
        }
        Ok(())
    }

    /// One training step: zero the gradients, backward from `loss`,
    /// average the gradients across ranks, step the optimizer (tch's
    /// `nn::Optimizer`, or [`crate::optim::Adam`], whose state checkpoints
    /// hold).
    pub fn backward_step(&mut self, loss: &Tensor, opt: &mut impl crate::optim::Optimizer) -> Result<()> {
        opt.zero_grad();
        loss.f_backward()?;
        self.sync_gradients()?;
        opt.step()
    }
}

impl TrainContext {
    /// The tch device this rank computes on.
    pub fn torch_device(&self) -> tch::Device {
        self.device.to_tch()
    }

    /// Prepares a model for data-parallel training: broadcasts its
    /// parameters (and buffers) from rank 0, and returns what averages its
    /// gradients across ranks after each backward (buckets of 25 MB).
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
/// by a seed and the epoch when asked, the same permutation on every rank.
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
    /// Rank `rank` of `world`'s share of `len` items, in order.
    pub fn new(len: usize, world: usize, rank: usize) -> DistributedSampler {
        DistributedSampler {
            len,
            world: world.max(1),
            rank,
            shuffle: None,
            drop_last: false,
            epoch: 0,
        }
    }

    /// Shuffles every epoch with `seed` (combined with the epoch number).
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle = Some(seed);
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
        let a = DistributedSampler::new(10, 3, 0).indices();
        let b = DistributedSampler::new(10, 3, 1).indices();
        let c = DistributedSampler::new(10, 3, 2).indices();
        assert_eq!(
            (a.clone(), b, c),
            (vec![0, 3, 6, 9], vec![1, 4, 7, 0], vec![2, 5, 8, 1])
        );
        assert_eq!(
            DistributedSampler::new(10, 3, 2).drop_last(true).indices(),
            vec![2, 5, 8]
        );
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
