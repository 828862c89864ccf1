//! `streaming_split`: one running dataset feeding several consumers (the
//! workers of a training job, say), each through its own [`DataIterator`].
//!
//! A thread of the process that called `streaming_split` runs the plan and
//! hands each finished block to the consumer that has received the fewest
//! rows. Blocks travel through a small coordinator actor holding one bounded
//! queue per consumer, so a slow consumer holds the pipeline back instead of
//! letting blocks pile up (backpressure), and the runtime's reference
//! counting keeps every queued block alive until its consumer has it.
//!
//! A split serves epochs: iterating a [`DataIterator`] again asks for the
//! next epoch, and once every consumer has asked, the plan runs again (as
//! Ray's `streaming_split` iterators do, one pass per epoch). The
//! coordinator waits for that request until [`DataIterator::close`] or the
//! driver's shutdown.

use std::collections::VecDeque;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::block::{Block, BlockMeta};
use crate::error::{Error, Result};
use crate::exec::{BlockIter, BlockRef, Ctx};

/// Blocks queued per consumer.
const QUEUED: usize = 2;

/// One message to a consumer.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) enum SplitMsg {
    Block(rayforge::ObjectRef<Block>, BlockMeta),
    Failed(Error),
    End,
}

/// One bounded queue per consumer, each message tagged with its epoch: a
/// consumer that left an epoch early never gets that epoch's leftovers in
/// the next.
#[rayforge::actor]
pub(crate) struct SplitQueues {
    queues: Mutex<Vec<VecDeque<(u64, SplitMsg)>>>,
    /// The highest epoch (0-based) each consumer has asked for.
    wanted: Mutex<Vec<u64>>,
    closed: AtomicBool,
    changed: Notify,
}

#[rayforge::actor]
impl SplitQueues {
    fn new(n: usize) -> Self {
        SplitQueues {
            queues: Mutex::new(vec![VecDeque::new(); n]),
            wanted: Mutex::new(vec![0; n]),
            closed: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// Consumer `i` asks for epoch `epoch`.
    fn want(&self, i: usize, epoch: u64) {
        if let Some(w) = self.wanted.lock().get_mut(i) {
            *w = (*w).max(epoch);
        }
        self.changed.notify_waiters();
    }

    /// Waits until every consumer has asked for `epoch`: `false` once the
    /// split is closed.
    async fn await_epoch(&self, epoch: u64) -> bool {
        loop {
            let notified = self.changed.notified();
            if self.closed.load(Ordering::SeqCst) {
                return false;
            }
            if self.wanted.lock().iter().all(|w| *w >= epoch) {
                return true;
            }
            notified.await;
        }
    }

    /// Ends the split: no further epoch runs, and a pending one stops.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Queues a message of epoch `epoch` for consumer `i`, waiting while
    /// its queue is full (end and failure messages never wait). A consumer
    /// that has moved on to a later epoch does not get it.
    async fn put(&self, i: usize, epoch: u64, msg: SplitMsg) -> bool {
        loop {
            let notified = self.changed.notified();
            {
                if self.wanted.lock().get(i).is_some_and(|w| *w > epoch) {
                    return true;
                }
                let mut q = self.queues.lock();
                let Some(q) = q.get_mut(i) else { return false };
                if self.closed.load(Ordering::SeqCst) {
                    return false;
                }
                if q.len() < QUEUED || !matches!(msg, SplitMsg::Block(..)) {
                    q.push_back((epoch, msg));
                    self.changed.notify_waiters();
                    return true;
                }
            }
            notified.await;
        }
    }

    /// The next message of epoch `epoch` for consumer `i`, waiting for
    /// one (messages of earlier epochs are dropped).
    async fn get(&self, i: usize, epoch: u64) -> SplitMsg {
        loop {
            let notified = self.changed.notified();
            {
                let mut q = self.queues.lock();
                let Some(q) = q.get_mut(i) else {
                    return SplitMsg::Failed(Error::InvalidArgument(format!("no consumer {i}")));
                };
                let mut popped = false;
                while let Some((e, m)) = q.pop_front() {
                    popped = true;
                    if e >= epoch {
                        self.changed.notify_waiters();
                        return m;
                    }
                }
                if popped {
                    // Room for the producer, still busy with the old epoch.
                    self.changed.notify_waiters();
                }
            }
            notified.await;
        }
    }
}

/// One consumer's share of a [`streaming_split`](crate::Dataset::streaming_split).
/// Send it to the task or actor that consumes it (it serializes). Each
/// [`iter_batches`](DataIterator::iter_batches) is one epoch: the first
/// gets the first pass over the data, the next waits until every consumer
/// has started its next epoch too, and gets the next pass.
#[derive(Clone, Serialize, Deserialize)]
pub struct DataIterator {
    queues: SplitQueuesHandle,
    index: usize,
    /// Epochs this consumer has started (shared by its clones in a process).
    #[serde(skip)]
    epochs: Arc<AtomicU64>,
}

impl DataIterator {
    /// This consumer's number (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// This consumer's rows in batches of `batch_size` (blocks as they come
    /// when `None`).
    pub fn iter_batches(&self, batch_size: Option<usize>) -> crate::BatchIter {
        let me = self.clone();
        let epoch = self.epochs.fetch_add(1, Ordering::SeqCst);
        let mut asked = epoch == 0;
        let mut done = false;
        let blocks: BlockIter = Box::new(std::iter::from_fn(move || {
            if done {
                return None;
            }
            if !asked {
                asked = true;
                if let Err(e) = me.queues.want(me.index, epoch).get() {
                    done = true;
                    return Some(Err(e.into()));
                }
            }
            let msg = me.queues.get(me.index, epoch).get();
            match msg {
                Ok(SplitMsg::Block(block, meta)) => Some(Ok(BlockRef { block, meta })),
                Ok(SplitMsg::End) => {
                    done = true;
                    None
                }
                Ok(SplitMsg::Failed(e)) => {
                    done = true;
                    Some(Err(e))
                }
                Err(e) => {
                    done = true;
                    Some(Err(e.into()))
                }
            }
        }));
        crate::BatchIter::new(blocks, batch_size, None)
    }

    /// Ends the whole split (every consumer's): no further epoch runs. The
    /// coordinator otherwise waits for the next epoch until the driver
    /// shuts down.
    pub fn close(&self) -> Result<()> {
        self.queues.close().get()?;
        Ok(())
    }
}

/// Starts the coordinator thread; returns the consumers' iterators.
pub(crate) fn start(
    blocks: impl Fn(&Ctx) -> Result<BlockIter> + Send + 'static,
    n: usize,
    equal: bool,
) -> Result<Vec<DataIterator>> {
    let queues = SplitQueues::options().max_concurrency(10_000).num_cpus(0.0).remote(n)?;
    let its = (0..n)
        .map(|index| DataIterator {
            queues: queues.clone(),
            index,
            epochs: Arc::new(AtomicU64::new(0)),
        })
        .collect();
    let q = queues.clone();
    std::thread::Builder::new()
        .name("rayforge-data-split".into())
        .spawn(move || {
            for epoch in 0u64.. {
                let send = |i: usize, m: SplitMsg| q.put(i, epoch, m).get().map(|_| ()).map_err(Error::from);
                if epoch > 0 && !q.await_epoch(epoch).get().unwrap_or(false) {
                    break;
                }
                let ctx = Ctx::new();
                let r = blocks(&ctx).and_then(|it| distribute(it, n, equal, &send));
                for i in 0..n {
                    let m = match &r {
                        Ok(()) => SplitMsg::End,
                        Err(e) => SplitMsg::Failed(e.clone()),
                    };
                    let _ = send(i, m);
                }
            }
            // The actor ends with this thread's handle once every consumer
            // has dropped its iterator.
            drop(q);
        })
        .map_err(|e| Error::internal(format!("starting the split thread: {e}")))?;
    Ok(its)
}

fn distribute(it: BlockIter, n: usize, equal: bool, send: &dyn Fn(usize, SplitMsg) -> Result<()>) -> Result<()> {
    let mut sent = vec![0u64; n];
    if !equal {
        for b in it {
            let b = b?;
            if b.meta.rows == 0 {
                continue;
            }
            let i = (0..n).min_by_key(|i| sent[*i]).unwrap_or(0);
            sent[i] += b.meta.rows;
            send(i, SplitMsg::Block(b.block, b.meta))?;
        }
        return Ok(());
    }
    // Equal: after each block, bring every consumer up to seen / n rows,
    // cutting blocks where needed; fewer than n rows may be left at the end.
    let mut held: VecDeque<(BlockRef, u64)> = VecDeque::new(); // (block, rows already handed out)
    let mut seen = 0u64;
    for b in it {
        let b = b?;
        if b.meta.rows == 0 {
            continue;
        }
        seen += b.meta.rows;
        held.push_back((b, 0));
        let target = seen / n as u64;
        for (i, got) in sent.iter_mut().enumerate() {
            while *got < target {
                let Some((front, used)) = held.front_mut() else { break };
                let want = target - *got;
                let avail = front.meta.rows - *used;
                let take = want.min(avail);
                let piece = if *used == 0 && take == front.meta.rows {
                    front.clone()
                } else {
                    slice(front, *used, take)?
                };
                *used += take;
                *got += take;
                if *used == front.meta.rows {
                    held.pop_front();
                }
                send(i, SplitMsg::Block(piece.block, piece.meta))?;
            }
        }
    }
    Ok(())
}

fn slice(b: &BlockRef, offset: u64, len: u64) -> Result<BlockRef> {
    // A zero-copy cut: it takes no CPU, so consumers that hold every CPU
    // (a training gang) still get their rows.
    let (block, meta) = crate::ops::concat_pieces::options().num_cpus(0.0).remote(vec![(
        b.block.clone(),
        offset as usize,
        len as usize,
    )]);
    Ok(BlockRef {
        block,
        meta: meta.get()?,
    })
}
