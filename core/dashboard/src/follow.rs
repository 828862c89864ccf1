//! One poll per followed log, shared by everyone following it: a hundred
//! browser tabs on one job's output cost the head one read every 300 ms,
//! not a hundred.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

/// How often a followed log is read.
pub(crate) const PERIOD: Duration = Duration::from_millis(300);

/// What a poll saw, and whether the thing ended (no poll follows).
#[derive(Debug)]
pub(crate) struct Seen<V> {
    pub(crate) value: V,
    pub(crate) last: bool,
}

type Latest<V> = Option<Arc<Seen<V>>>;

/// The polls running, by what they follow.
pub(crate) struct Polls<K, V> {
    running: Mutex<HashMap<K, watch::Sender<Latest<V>>>>,
}

impl<K, V> Polls<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Send + Sync + 'static,
{
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Polls {
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Follows `key`: joins its poll, or starts one calling `make()`'s
    /// poller every [`PERIOD`] while anyone follows. The receiver sees each
    /// new reading (`None` until the first).
    pub(crate) fn follow<P, F>(self: &Arc<Self>, key: K, make: impl FnOnce() -> P) -> watch::Receiver<Latest<V>>
    where
        P: FnMut() -> F + Send + 'static,
        F: Future<Output = Seen<V>> + Send,
    {
        let mut running = self.running.lock();
        if let Some(tx) = running.get(&key) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        running.insert(key.clone(), tx.clone());
        drop(running);
        let mut poll = make();
        let polls = self.clone();
        tokio::spawn(async move {
            loop {
                let seen = poll().await;
                let last = seen.last;
                tx.send_replace(Some(Arc::new(seen)));
                // Stop when it ended or nobody follows; decided under the
                // lock new followers join under, so none joins a poll
                // that is about to stop.
                {
                    let mut running = polls.running.lock();
                    if last || tx.receiver_count() == 0 {
                        if running.get(&key).is_some_and(|t| t.same_channel(&tx)) {
                            running.remove(&key);
                        }
                        return;
                    }
                }
                tokio::time::sleep(PERIOD).await;
            }
        });
        rx
    }

    /// How many polls run (for tests).
    #[cfg(test)]
    fn running(&self) -> usize {
        self.running.lock().len()
    }
}

/// The recent output of a job, as the shared poll reads it: bytes
/// `[start, end)` of its log (the last [`WINDOW`] bytes at most).
#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    pub(crate) start: u64,
    pub(crate) bytes: Vec<u8>,
    pub(crate) finished: bool,
}

/// Bytes of a job's output the shared poll keeps for its followers.
pub(crate) const WINDOW: usize = 1 << 20;

impl Window {
    /// Where the window ends.
    pub(crate) fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Adds what was read at the window's end, keeping the last [`WINDOW`]
    /// bytes.
    pub(crate) fn push(&mut self, more: &[u8]) {
        self.bytes.extend_from_slice(more);
        if self.bytes.len() > WINDOW {
            let cut = self.bytes.len() - WINDOW;
            self.bytes.drain(..cut);
            self.start += cut as u64;
        }
    }

    /// The bytes from `offset` on, if the window still holds them.
    pub(crate) fn from(&self, offset: u64) -> Option<&[u8]> {
        let at = offset.checked_sub(self.start)?;
        self.bytes.get(at as usize..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn followers_of_one_key_share_one_poll_which_stops_when_they_leave() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let polls: Arc<Polls<String, usize>> = Polls::new();
            let count = Arc::new(AtomicUsize::new(0));
            let make = || {
                let count = count.clone();
                move || {
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    async move { Seen { value: n, last: false } }
                }
            };
            let mut followers: Vec<_> = (0..20).map(|_| polls.follow("job-1".to_string(), make)).collect();
            assert_eq!(polls.running(), 1);
            // Every follower sees five readings...
            for f in &mut followers {
                while f.borrow().as_ref().map_or(0, |s| s.value) < 5 {
                    f.changed().await.unwrap();
                }
            }
            // ...which took a handful of polls, not twenty per reading.
            let polled = count.load(Ordering::SeqCst);
            assert!((5..12).contains(&polled), "{polled} polls");
            drop(followers);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while polls.running() > 0 {
                assert!(std::time::Instant::now() < deadline, "the poll outlived its followers");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let stopped = count.load(Ordering::SeqCst);
            tokio::time::sleep(PERIOD * 3).await;
            assert_eq!(count.load(Ordering::SeqCst), stopped);
        });
    }

    #[test]
    fn a_poll_that_ends_lets_a_new_one_start() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let polls: Arc<Polls<u32, &'static str>> = Polls::new();
            let mut f = polls.follow(1, || {
                || async {
                    Seen {
                        value: "done",
                        last: true,
                    }
                }
            });
            f.changed().await.unwrap();
            assert!(f.borrow().as_ref().is_some_and(|s| s.last && s.value == "done"));
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while polls.running() > 0 {
                assert!(std::time::Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    #[test]
    fn a_window_keeps_the_last_megabyte() {
        let mut w = Window::default();
        w.push(b"hello ");
        w.push(b"world");
        assert_eq!(w.from(6), Some(&b"world"[..]));
        assert_eq!(w.end(), 11);
        w.push(&vec![b'x'; WINDOW]);
        assert_eq!(w.start, 11);
        assert_eq!(w.from(0), None);
        assert_eq!(w.from(w.end()), Some(&b""[..]));
    }
}
