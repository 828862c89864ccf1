//! Streaming generators: a task that yields values one by one, consumed by
//! the caller as they arrive.
//!
//! The worker stores each item as soon as it is produced and reports it to
//! the caller (the owner) in order; the caller's [`ObjectRefGenerator`]
//! hands out one [`ObjectRef`] per item, then ends (or yields the task's
//! error). Items are objects like any other: large ones sit in shared memory.

use std::marker::PhantomData;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::object_ref::{ObjectRef, RefHandle};

/// What the owner learns about a running generator task.
pub(crate) enum GenEvent {
    Item(Arc<RefHandle>),
    End(Result<()>),
}

/// References to a generator task's items, in the order it yielded them.
/// Iterating blocks until the next item exists; `next_async` awaits it.
pub struct ObjectRefGenerator<T> {
    rx: Mutex<Option<mpsc::UnboundedReceiver<GenEvent>>>,
    _t: PhantomData<fn() -> T>,
}

impl<T> ObjectRefGenerator<T> {
    pub(crate) fn new(rx: Option<mpsc::UnboundedReceiver<GenEvent>>) -> Self {
        ObjectRefGenerator {
            rx: Mutex::new(rx),
            _t: PhantomData,
        }
    }

    fn on_event(&self, ev: Option<GenEvent>) -> Option<Result<ObjectRef<T>>> {
        match ev {
            Some(GenEvent::Item(h)) => Some(Ok(ObjectRef::from_handle(h))),
            Some(GenEvent::End(Ok(()))) | None => {
                self.rx.lock().take();
                None
            }
            Some(GenEvent::End(Err(e))) => {
                self.rx.lock().take();
                Some(Err(e))
            }
        }
    }

    /// Waits for the next item's reference (`None` once the task finished).
    pub async fn next_async(&mut self) -> Option<Result<ObjectRef<T>>> {
        let mut rx = self.rx.lock().take()?;
        let ev = rx.recv().await;
        *self.rx.lock() = Some(rx);
        self.on_event(ev)
    }
}

impl<T> Iterator for ObjectRefGenerator<T> {
    type Item = Result<ObjectRef<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut rx = self.rx.lock().take()?;
        let ev = match crate::worker::current() {
            Ok(cw) => match cw.block_on(async move {
                let ev = rx.recv().await;
                (ev, rx)
            }) {
                Ok((ev, rx)) => {
                    *self.rx.lock() = Some(rx);
                    ev
                }
                Err(e) => Some(GenEvent::End(Err(e))),
            },
            Err(e) => Some(GenEvent::End(Err(e))),
        };
        self.on_event(ev)
    }
}

impl<T> std::fmt::Debug for ObjectRefGenerator<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObjectRefGenerator")
    }
}

/// Fails a generator that never produced anything (e.g. bad arguments).
pub(crate) fn failed<T>(e: Error) -> ObjectRefGenerator<T> {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(GenEvent::End(Err(e)));
    ObjectRefGenerator::new(Some(rx))
}
