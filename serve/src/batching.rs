//! Dynamic request batching, as Ray Serve's `@serve.batch`: callers hand
//! one item each; items arriving within `batch_wait_timeout` of the first
//! (up to `max_batch_size`) are processed by one call of the batch function,
//! and each caller gets its own result back.
//!
//! No background task: the first caller of a batch leads it. It waits until
//! the batch is full or the timeout passes, takes the items, and runs the
//! batch function (its own closure, which may borrow the deployment), while
//! the next arrivals already gather the next batch under a new leader.

use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::error::{Error, Result};

struct Pending<I, O> {
    items: Vec<(I, oneshot::Sender<Result<O>>)>,
    leading: bool,
    first_at: Option<tokio::time::Instant>,
}

/// Gathers concurrent calls into batches.
///
/// ```
/// use std::time::Duration;
/// use rayforge_serve::Batcher;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let b = Batcher::new(8, Duration::from_millis(5));
/// let double = |xs: Vec<i64>| async move { Ok(xs.iter().map(|x| x * 2).collect()) };
/// let (x, y) = tokio::join!(b.call(1, double), b.call(2, double));
/// assert_eq!((x.unwrap(), y.unwrap()), (2, 4));
/// # });
/// ```
pub struct Batcher<I, O> {
    max_batch_size: usize,
    wait: Duration,
    pending: Mutex<Pending<I, O>>,
    full: Notify,
    lead: Notify,
    sizes: Mutex<Vec<usize>>,
}

impl<I: Send, O: Send> Batcher<I, O> {
    /// Batches of at most `max_batch_size` items, gathered for at most `wait`.
    pub fn new(max_batch_size: usize, wait: Duration) -> Self {
        Batcher {
            max_batch_size: max_batch_size.max(1),
            wait,
            pending: Mutex::new(Pending {
                items: Vec::new(),
                leading: false,
                first_at: None,
            }),
            full: Notify::new(),
            lead: Notify::new(),
            sizes: Mutex::new(Vec::new()),
        }
    }

    /// Adds `item` to the next batch; returns its result. `f` must return
    /// one output per input, in order.
    pub async fn call<F, Fut>(&self, item: I, f: F) -> Result<O>
    where
        F: Fn(Vec<I>) -> Fut,
        Fut: Future<Output = Result<Vec<O>>>,
    {
        let (tx, mut rx) = oneshot::channel();
        {
            let mut p = self.pending.lock();
            if p.items.is_empty() {
                p.first_at = Some(tokio::time::Instant::now());
            }
            p.items.push((item, tx));
            if p.items.len() >= self.max_batch_size {
                self.full.notify_one();
            }
        }
        loop {
            // Armed before looking, so a leader finishing in between still wakes us.
            let notified = self.lead.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let lead_now = {
                let mut p = self.pending.lock();
                if !p.leading && !p.items.is_empty() {
                    p.leading = true;
                    true
                } else {
                    false
                }
            };
            if lead_now {
                self.lead_batch(&f).await;
                if let Ok(r) = rx.try_recv() {
                    return r;
                }
                continue;
            }
            tokio::select! {
                r = &mut rx => return r.unwrap_or_else(|_| Err(Error::internal("a batch was dropped"))),
                _ = notified => {}
            }
        }
    }

    /// The sizes of the batches run so far (for tests and tuning), then clears them.
    pub fn take_batch_sizes(&self) -> Vec<usize> {
        std::mem::take(&mut self.sizes.lock())
    }

    async fn lead_batch<F, Fut>(&self, f: &F)
    where
        F: Fn(Vec<I>) -> Fut,
        Fut: Future<Output = Result<Vec<O>>>,
    {
        let deadline = self.pending.lock().first_at.unwrap_or_else(tokio::time::Instant::now) + self.wait;
        loop {
            let notified = self.full.notified();
            if self.pending.lock().items.len() >= self.max_batch_size {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let batch: Vec<(I, oneshot::Sender<Result<O>>)> = {
            let mut p = self.pending.lock();
            let n = p.items.len().min(self.max_batch_size);
            let batch: Vec<_> = p.items.drain(..n).collect();
            p.first_at = (!p.items.is_empty()).then(tokio::time::Instant::now);
            p.leading = false;
            batch
        };
        // Someone else may lead what is left while this batch runs.
        self.lead.notify_waiters();
        if batch.is_empty() {
            return;
        }
        self.sizes.lock().push(batch.len());
        let (items, txs): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
        let n = items.len();
        match f(items).await {
            Ok(outs) if outs.len() == n => {
                for (tx, o) in txs.into_iter().zip(outs) {
                    let _ = tx.send(Ok(o));
                }
            }
            Ok(outs) => {
                let e = Error::User {
                    deployment: String::new(),
                    message: format!("the batch function returned {} results for {n} inputs", outs.len()),
                };
                for tx in txs {
                    let _ = tx.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for tx in txs {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_batches_and_each_gets_its_answer() {
        let b = Arc::new(Batcher::new(8, Duration::from_millis(50)));
        let mut tasks = Vec::new();
        for i in 0..20i64 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                b.call(
                    i,
                    |xs: Vec<i64>| async move { Ok(xs.into_iter().map(|x| x * 10).collect()) },
                )
                .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), i as i64 * 10);
        }
        let sizes = b.take_batch_sizes();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&s| s <= 8), "{sizes:?}");
        assert!(sizes.len() < 20, "calls were not batched: {sizes:?}");
    }

    #[tokio::test]
    async fn a_wrong_number_of_results_fails_every_caller_of_the_batch() {
        let b = Batcher::new(4, Duration::from_millis(1));
        let r = b.call(1, |_xs: Vec<i64>| async move { Ok(Vec::<i64>::new()) }).await;
        assert!(matches!(r, Err(Error::User { ref message, .. }) if message.contains("0 results for 1")));
    }
}
