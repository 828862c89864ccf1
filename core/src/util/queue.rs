//! A distributed FIFO queue held by an actor.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::codec::{self, ObjectBytes};
use crate::object_ref::RefHandle;
use crate::{Error, ObjectRef, Result, Value};

/// One queued item: its encoding, and a reference to every object the item
/// holds. The references travel as real `ObjectRef`s, so the actor that
/// keeps the item is a borrower of each (the owner keeps them alive while
/// they are queued), and the consumer that takes it becomes one before it
/// decodes the item.
#[derive(Serialize, Deserialize)]
pub(crate) struct QueueItem {
    bytes: Vec<u8>,
    refs: Vec<ObjectRef<()>>,
}

/// The actor behind [`Queue`]: encoded items, bounded by `maxsize`.
#[crate::actor]
pub(crate) struct QueueActor {
    items: parking_lot::Mutex<VecDeque<QueueItem>>,
    maxsize: usize,
    changed: Notify,
}

#[crate::actor]
impl QueueActor {
    fn new(maxsize: usize) -> Self {
        QueueActor {
            items: parking_lot::Mutex::new(VecDeque::new()),
            maxsize,
            changed: Notify::new(),
        }
    }

    /// Appends an item, waiting up to `timeout_ms` for room (0: fail at once
    /// when full). Returns whether it was added.
    async fn put(&self, item: QueueItem, timeout_ms: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let notified = self.changed.notified();
            {
                let mut q = self.items.lock();
                if self.maxsize == 0 || q.len() < self.maxsize {
                    q.push_back(item);
                    self.changed.notify_waiters();
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Takes the oldest item, waiting up to `timeout_ms` for one.
    async fn get(&self, timeout_ms: u64) -> Option<QueueItem> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let notified = self.changed.notified();
            if let Some(v) = self.items.lock().pop_front() {
                self.changed.notify_waiters();
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Number of items.
    async fn size(&self) -> usize {
        self.items.lock().len()
    }
}

/// A FIFO queue shared by the driver, tasks and actors (pass it as an
/// argument), like Ray's `ray.util.queue.Queue`.
///
/// ```no_run
/// let q = rayforge::util::Queue::<String>::new(0)?; // 0: unbounded
/// q.put("hello".to_string())?;
/// assert_eq!(q.get()?, "hello");
/// # Ok::<(), rayforge::Error>(())
/// ```
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Queue<T> {
    actor: QueueActorHandle,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            actor: self.actor.clone(),
            _t: PhantomData,
        }
    }
}

/// How long the blocking calls wait by default.
const FOREVER_MS: u64 = 365 * 24 * 3600 * 1000;

impl<T: Value> Queue<T> {
    /// A new queue holding at most `maxsize` items (0: unbounded).
    pub fn new(maxsize: usize) -> Result<Queue<T>> {
        Ok(Queue {
            actor: QueueActor::options().max_concurrency(10_000).remote(maxsize)?,
            _t: PhantomData,
        })
    }

    /// Appends an item, blocking while the queue is full.
    pub fn put(&self, item: T) -> Result<()> {
        self.put_timeout(item, Duration::from_millis(FOREVER_MS))
    }

    /// Appends an item, failing with [`Error::GetTimeout`] if the queue stays
    /// full for `timeout`.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<()> {
        let enc = codec::encode_value(item)?;
        let refs = enc
            .refs
            .iter()
            .map(|r| ObjectRef::from_handle(RefHandle::new(r.id, r.owner_addr.clone())))
            .collect();
        let item = QueueItem {
            bytes: enc.to_vec(),
            refs,
        };
        if self.actor.put(item, timeout.as_millis() as u64).get()? {
            Ok(())
        } else {
            Err(Error::GetTimeout(timeout))
        }
    }

    /// Takes the oldest item, blocking until there is one.
    pub fn get(&self) -> Result<T> {
        self.get_timeout(Duration::from_millis(FOREVER_MS))
    }

    /// Takes the oldest item, failing with [`Error::GetTimeout`] if none
    /// arrives within `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        match self.actor.get(timeout.as_millis() as u64).get()? {
            // `item.refs` keeps every contained object alive until the
            // decoded value holds references of its own.
            Some(item) => crate::worker::decode_value(&ObjectBytes::from_vec(item.bytes)),
            None => Err(Error::GetTimeout(timeout)),
        }
    }

    /// Number of items now.
    pub fn size(&self) -> Result<usize> {
        self.actor.size().get()
    }

    /// Whether the queue is empty now.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.size()? == 0)
    }
}
