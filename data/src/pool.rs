//! `map_batches` on a pool of actors: each actor builds its state (a model,
//! say) once and then processes many blocks. The pool starts at its minimum
//! size and adds an actor whenever every actor already has its fill of
//! blocks queued and more input is waiting, up to its maximum.

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

/// Builds an actor's state from the user's `init` function.
pub(crate) type InitTramp = fn(&AnyFnRef) -> Result<Box<dyn Any + Send>>;
/// Calls the user's method on the actor's state.
pub(crate) type CallTramp = fn(&mut ActorState, RecordBatch) -> Result<RecordBatch>;

/// An actor's state (of a type only the trampolines know) and the user
/// function that processes batches with it.
pub(crate) struct ActorState {
    state: Box<dyn Any + Send>,
    call_user: AnyFnRef,
}

pub(crate) fn t_init<S: Send + 'static>(user: &AnyFnRef) -> Result<Box<dyn Any + Send>> {
    let f = user.typed::<fn() -> S>()?.get()?;
    Ok(Box::new(f()))
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
            Ok(ActorState {
                state: init(&spec.init_user)?,
                call_user: spec.call_user,
            })
        })();
        BatchActor { state, spec }
    }

    fn process(&mut self, input: Block) -> std::result::Result<Block, Error> {
        let state = self.state.as_mut().map_err(|e| e.clone())?;
        let call = self.spec.call_tramp.get()?;
        let out = crate::ops::in_batches(input.into_batch(), self.spec.batch_size, |part| call(state, part))?;
        Ok(Block::new(out))
    }
}

/// Blocks queued on one actor before the pool grows.
const PER_ACTOR: usize = 2;

/// The operator: sends upstream blocks to the least busy actor, in order.
pub(crate) struct ActorPoolOp {
    upstream: BlockIter,
    upstream_done: bool,
    spec: PoolSpec,
    size: PoolSize,
    actors: Vec<(BatchActorHandle, usize)>,
    pending: VecDeque<(usize, ObjectRef<Block>, std::time::Instant)>,
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

    fn add_actor(&mut self) -> Result<()> {
        let h = BatchActor::options()
            .num_cpus(self.size.num_cpus)
            .num_gpus(self.size.num_gpus)
            .remote(self.spec.clone())?;
        self.actors.push((h, 0));
        self.stats.actors.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn fill(&mut self) -> Result<()> {
        while !self.upstream_done {
            let (idx, busy) = self
                .actors
                .iter()
                .enumerate()
                .map(|(i, (_, n))| (i, *n))
                .min_by_key(|(_, n)| *n)
                .unwrap_or((0, usize::MAX));
            let idx = if busy >= PER_ACTOR {
                if self.actors.len() >= self.size.max.max(1) {
                    return Ok(());
                }
                self.add_actor()?;
                self.actors.len() - 1
            } else {
                idx
            };
            match self.upstream.next() {
                None => self.upstream_done = true,
                Some(Err(e)) => return Err(e),
                Some(Ok(br)) => {
                    let out = self.actors[idx].0.process(br.block);
                    self.actors[idx].1 += 1;
                    self.stats.running.fetch_add(1, Ordering::Relaxed);
                    self.pending.push_back((idx, out, std::time::Instant::now()));
                }
            }
        }
        Ok(())
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
        let (idx, out, start) = self.pending.pop_front()?;
        self.actors[idx].1 -= 1;
        self.stats.running.fetch_sub(1, Ordering::Relaxed);
        let r = out.get().map_err(Error::from).map(|b| {
            let meta = BlockMeta::of(&b, start.elapsed().as_secs_f64());
            self.stats.record(&meta);
            BlockRef { block: out, meta }
        });
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

impl Drop for ActorPoolOp {
    fn drop(&mut self) {
        for (h, _) in &self.actors {
            let _ = rayforge::kill(h);
        }
    }
}
