//! `map_batches` on a pool of actors: each actor builds its state (a model,
//! say) once and then processes many blocks. The pool starts at its minimum
//! size and adds an actor whenever every actor already has its fill of
//! blocks queued and more input is waiting, up to its maximum — one new
//! actor at a time, and only while the pool leaves a CPU of the cluster to
//! the tasks still making its input (actors holding every CPU would starve
//! them). Blocks go only to actors that are running, so an actor that cannot
//! start holds none. Output blocks stay in the object store (the driver
//! reads only their sizes), and a block whose actor died is processed again
//! by the actor started in its place.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::RecordBatch;
use rayforge::ObjectRef;
use serde::{Deserialize, Serialize};

use crate::block::{Block, BlockMeta};
use crate::error::{Error, Result};
use crate::exec::{BlockIter, BlockRef, Ctx, OpStats};
use rayforge::{AnyFnRef, FnRef};

/// Builds an actor's state from the user's `init` function and its
/// argument (JSON; empty when `init` takes none).
pub(crate) type InitTramp = fn(&AnyFnRef, Vec<u8>) -> Result<Box<dyn Any + Send>>;
/// Calls the user's method on the actor's state.
pub(crate) type CallTramp = fn(&mut ActorState, RecordBatch) -> Result<RecordBatch>;

/// An actor's state (of a type only the trampolines know) and the user
/// function that processes batches with it.
pub(crate) struct ActorState {
    state: Box<dyn Any + Send>,
    call_user: AnyFnRef,
}

pub(crate) fn t_init<S: Send + 'static>(user: &AnyFnRef, _: Vec<u8>) -> Result<Box<dyn Any + Send>> {
    let f = user.typed::<fn() -> S>()?.get()?;
    Ok(Box::new(f()))
}

pub(crate) fn t_init_with<S: Send + 'static, A: serde::de::DeserializeOwned + 'static, E: Into<Error> + 'static>(
    user: &AnyFnRef,
    arg: Vec<u8>,
) -> Result<Box<dyn Any + Send>> {
    let f = user.typed::<fn(A) -> std::result::Result<S, E>>()?.get()?;
    let arg: A = serde_json::from_slice(&arg)
        .map_err(|e| Error::InvalidArgument(format!("the actors' init argument does not decode: {e}")))?;
    Ok(Box::new(f(arg).map_err(Into::into)?))
}

pub(crate) fn t_call<S: 'static, E: Into<Error> + 'static>(a: &mut ActorState, b: RecordBatch) -> Result<RecordBatch> {
    let f = a
        .call_user
        .typed::<fn(&mut S, RecordBatch) -> std::result::Result<RecordBatch, E>>()?
        .get()?;
    let s = a
        .state
        .downcast_mut::<S>()
        .ok_or_else(|| Error::internal("actor state of an unexpected type"))?;
    f(s, b).map_err(Into::into)
}

/// What an actor of the pool runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PoolSpec {
    pub(crate) init_tramp: FnRef<InitTramp>,
    pub(crate) init_user: AnyFnRef,
    /// `init`'s argument as JSON (empty for an `init` without one), or why
    /// it could not be encoded (each actor then fails with it).
    pub(crate) init_arg: std::result::Result<Vec<u8>, String>,
    pub(crate) call_tramp: FnRef<CallTramp>,
    pub(crate) call_user: AnyFnRef,
    pub(crate) batch_size: Option<usize>,
}

/// Sizing and resources of an actor pool.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PoolSize {
    pub(crate) min: usize,
    pub(crate) max: usize,
    pub(crate) num_cpus: f64,
    pub(crate) num_gpus: f64,
}

/// One actor of a `map_batches` pool.
#[rayforge::actor]
pub(crate) struct BatchActor {
    state: std::result::Result<ActorState, Error>,
    spec: PoolSpec,
}

#[rayforge::actor]
impl BatchActor {
    fn new(spec: PoolSpec) -> Self {
        let state = (|| -> Result<ActorState> {
            let init = spec.init_tramp.get()?;
            let arg = spec.init_arg.clone().map_err(Error::InvalidArgument)?;
            Ok(ActorState {
                state: init(&spec.init_user, arg)?,
                call_user: spec.call_user,
            })
        })();
        BatchActor { state, spec }
    }

    /// Answers once the actor is built (its constructor ran).
    fn ready(&self) {}

    /// The block processed, and its size (what the driver reads).
    #[rayforge::method(num_returns = 2)]
    fn process(&mut self, input: Block) -> std::result::Result<(Block, BlockMeta), Error> {
        let start = std::time::Instant::now();
        let state = self.state.as_mut().map_err(|e| e.clone())?;
        let call = self.spec.call_tramp.get()?;
        let out = Block::new(crate::ops::in_batches(
            input.into_batch(),
            self.spec.batch_size,
            |part| call(state, part),
        )?);
        let meta = BlockMeta::of(&out, start.elapsed().as_secs_f64());
        Ok((out, meta))
    }
}

/// Blocks queued on one actor before the pool grows.
const PER_ACTOR: usize = 2;

/// Times one block is processed again after its actor died.
const MAX_BLOCK_RETRIES: u32 = 3;

/// One actor of the pool: its handle, the blocks queued on it, whether it
/// answered `ready`, and which actor of its slot it is (a replaced one's
/// successor has the next number).
struct Slot {
    handle: BatchActorHandle,
    queued: usize,
    ready: ObjectRef<()>,
    started: bool,
    generation: u64,
}

/// A block sent to an actor: its input (kept to send again if the actor
/// dies), where it went, and its outputs.
struct InFlight {
    input: ObjectRef<Block>,
    slot: usize,
    generation: u64,
    out: ObjectRef<Block>,
    meta: ObjectRef<BlockMeta>,
    retries: u32,
}

/// The operator: sends upstream blocks to the least busy actor, in order.
pub(crate) struct ActorPoolOp {
    upstream: BlockIter,
    upstream_done: bool,
    spec: PoolSpec,
    size: PoolSize,
    actors: Vec<Slot>,
    pending: VecDeque<InFlight>,
    stats: Arc<OpStats>,
    failed: bool,
}

impl ActorPoolOp {
    pub(crate) fn new(ctx: &Ctx, upstream: BlockIter, spec: PoolSpec, size: PoolSize) -> Result<ActorPoolOp> {
        let mut op = ActorPoolOp {
            upstream,
            upstream_done: false,
            spec,
            size,
            actors: Vec::new(),
            pending: VecDeque::new(),
            stats: ctx.stats.op("MapBatches(actors)".into()),
            failed: false,
        };
        for _ in 0..op.size.min.max(1) {
            op.add_actor()?;
        }
        Ok(op)
    }

    fn start_actor(&self) -> Result<(BatchActorHandle, ObjectRef<()>)> {
        let h = BatchActor::options()
            .num_cpus(self.size.num_cpus)
            .num_gpus(self.size.num_gpus)
            .remote(self.spec.clone())?;
        let ready = h.ready();
        Ok((h, ready))
    }

    fn add_actor(&mut self) -> Result<()> {
        let (handle, ready) = self.start_actor()?;
        self.actors.push(Slot {
            handle,
            queued: 0,
            ready,
            started: false,
            generation: 0,
        });
        self.stats.actors.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Marks the actors that answered `ready`; with none running yet,
    /// waits for the first (there is nothing else to do).
    fn check_started(&mut self) -> Result<()> {
        for a in self.actors.iter_mut().filter(|a| !a.started) {
            a.started = rayforge::wait(std::slice::from_ref(&a.ready), 1, Some(std::time::Duration::ZERO))
                .map(|(ready, _)| !ready.is_empty())
                .unwrap_or(false);
        }
        if !self.actors.iter().any(|a| a.started) {
            let refs: Vec<ObjectRef<()>> = self.actors.iter().map(|a| a.ready.clone()).collect();
            let (ready, _) = rayforge::wait(&refs, 1, None)?;
            for r in ready {
                r.get()?;
                if let Some(a) = self.actors.iter_mut().find(|a| a.ready == r) {
                    a.started = true;
                }
            }
        }
        Ok(())
    }

    /// Whether to add an actor: none is still starting, and the pool with
    /// one more leaves the cluster a CPU for the tasks still making its
    /// input (and fits its GPUs).
    fn room_to_grow(&self) -> bool {
        if self.actors.len() >= self.size.max.max(1) || self.actors.iter().any(|a| !a.started) {
            return false;
        }
        let Ok(r) = rayforge::cluster_resources() else {
            return false;
        };
        let total = |k: &str| r.total.get(k).copied().unwrap_or(0.0);
        let n = (self.actors.len() + 1) as f64;
        let reserve = if self.upstream_done { 0.0 } else { 1.0 };
        total("CPU") - n * self.size.num_cpus >= reserve && total("GPU") >= n * self.size.num_gpus
    }

    fn fill(&mut self) -> Result<()> {
        if self.upstream_done {
            return Ok(());
        }
        self.check_started()?;
        while !self.upstream_done {
            let (idx, busy) = self
                .actors
                .iter()
                .enumerate()
                .filter(|(_, a)| a.started)
                .map(|(i, a)| (i, a.queued))
                .min_by_key(|(_, n)| *n)
                .unwrap_or((0, usize::MAX));
            if busy >= PER_ACTOR {
                // Every running actor has its fill: a new one gets blocks
                // once it runs (a later call sees it started).
                if self.room_to_grow() {
                    self.add_actor()?;
                }
                return Ok(());
            }
            match self.upstream.next() {
                None => self.upstream_done = true,
                Some(Err(e)) => return Err(e),
                Some(Ok(br)) => {
                    let f = self.send(idx, br.block, 0);
                    self.stats.running.fetch_add(1, Ordering::Relaxed);
                    self.pending.push_back(f);
                }
            }
        }
        Ok(())
    }

    /// Sends `input` to the actor in slot `idx`.
    fn send(&mut self, idx: usize, input: ObjectRef<Block>, retries: u32) -> InFlight {
        let a = &mut self.actors[idx];
        let (out, meta) = a.handle.process(&input);
        a.queued += 1;
        InFlight {
            input,
            slot: idx,
            generation: a.generation,
            out,
            meta,
            retries,
        }
    }

    /// The block `f` made, sent again (to the actor started in place of
    /// the dead one) while its actor dies, up to [`MAX_BLOCK_RETRIES`].
    fn finish(&mut self, mut f: InFlight) -> Result<BlockRef> {
        loop {
            self.actors[f.slot].queued -= 1;
            match f.meta.get() {
                Ok(meta) => return Ok(BlockRef { block: f.out, meta }),
                Err(e @ rayforge::Error::ActorDied { .. }) if f.retries < MAX_BLOCK_RETRIES => {
                    let slot = &self.actors[f.slot];
                    if slot.generation == f.generation {
                        tracing::warn!(
                            "an actor of the map_batches pool died ({e}); starting another and sending its blocks again"
                        );
                        let (handle, ready) = self.start_actor()?;
                        let slot = &mut self.actors[f.slot];
                        slot.handle = handle;
                        slot.ready = ready;
                        slot.generation += 1;
                    }
                    f = self.send(f.slot, f.input.clone(), f.retries + 1);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Iterator for ActorPoolOp {
    type Item = Result<BlockRef>;

    fn next(&mut self) -> Option<Result<BlockRef>> {
        if self.failed {
            return None;
        }
        if let Err(e) = self.fill() {
            self.failed = true;
            return Some(Err(e));
        }
        let f = self.pending.pop_front()?;
        self.stats.running.fetch_sub(1, Ordering::Relaxed);
        let r = self.finish(f);
        match &r {
            Ok(b) => self.stats.record(&b.meta),
            Err(_) => self.failed = true,
        }
        Some(r)
    }
}

impl Drop for ActorPoolOp {
    fn drop(&mut self) {
        for a in &self.actors {
            let _ = rayforge::kill(&a.handle);
        }
    }
}
