//! Typed references to objects, and how task arguments are passed.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{self, ContainedRef, Value};
use crate::error::Result;
use crate::ids::ObjectId;
use crate::worker;

/// One live handle on an object in this process. The runtime counts these:
/// when the last one anywhere is dropped, the object is freed.
pub(crate) struct RefHandle {
    pub(crate) id: ObjectId,
    pub(crate) owner: String,
}

impl RefHandle {
    pub(crate) fn new(id: ObjectId, owner: String) -> Arc<RefHandle> {
        worker::ref_acquired(&id, &owner);
        Arc::new(RefHandle { id, owner })
    }
}

impl Drop for RefHandle {
    fn drop(&mut self) {
        worker::ref_released(&self.id, &self.owner);
    }
}

/// A typed, cloneable reference to an object that a task will produce or that
/// was `put`. Pass it to other tasks (resolved before they run), `get` it, or
/// `.await` it in async code.
pub struct ObjectRef<T> {
    pub(crate) handle: Arc<RefHandle>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef {
            handle: self.handle.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectRef({})", self.handle.id)
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.handle.id == other.handle.id
    }
}

impl<T> ObjectRef<T> {
    pub(crate) fn from_handle(handle: Arc<RefHandle>) -> Self {
        ObjectRef {
            handle,
            _t: PhantomData,
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.handle.id
    }

    /// The same reference, viewed as another type (checked when decoded).
    pub fn cast<U>(&self) -> ObjectRef<U> {
        ObjectRef {
            handle: self.handle.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Value> ObjectRef<T> {
    /// Blocks until the value is ready and returns it. Large [`crate::Buffer`]s
    /// inside it are read zero-copy from shared memory.
    pub fn get(&self) -> Result<T> {
        worker::get_blocking(std::slice::from_ref(&self.handle), None)?
            .pop()
            .ok_or_else(|| crate::Error::Internal("get returned nothing".into()))
            .and_then(|b| worker::decode_value(&b))
    }

    /// Like [`ObjectRef::get`], failing with [`crate::Error::GetTimeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        worker::get_blocking(std::slice::from_ref(&self.handle), Some(timeout))?
            .pop()
            .ok_or_else(|| crate::Error::Internal("get returned nothing".into()))
            .and_then(|b| worker::decode_value(&b))
    }
}

impl<T: Value> IntoFuture for ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T>> + Send>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let b = worker::get_async(&self.handle).await?;
            worker::decode_value_async(&b).await
        })
    }
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        codec::note_encoded_ref(ContainedRef {
            id: self.handle.id,
            owner_addr: self.handle.owner.clone(),
            handle: Some(self.handle.clone()),
        });
        (self.handle.id.0, &self.handle.owner).serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (id, owner): ([u8; 16], String) = Deserialize::deserialize(d)?;
        let handle = RefHandle::new(ObjectId(id), owner.clone());
        codec::note_decoded_ref(ContainedRef {
            id: ObjectId(id),
            owner_addr: owner,
            handle: None,
        });
        Ok(ObjectRef::from_handle(handle))
    }
}

/// A task argument: a value (sent with the task, or stored when large) or a
/// reference resolved before the task runs.
pub enum Arg<T> {
    /// The value itself.
    Value(T),
    /// A reference to it.
    Ref(ObjectRef<T>),
}

/// Conversion into a task argument: pass either a `T` or an `ObjectRef<T>`.
pub trait IntoArg<T> {
    /// Converts.
    fn into_arg(self) -> Arg<T>;
}

impl<T: Value> IntoArg<T> for T {
    fn into_arg(self) -> Arg<T> {
        Arg::Value(self)
    }
}

impl<T: Value> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Arg<T> {
        Arg::Ref(self)
    }
}

impl<T: Value> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Arg<T> {
        Arg::Ref(self.clone())
    }
}
