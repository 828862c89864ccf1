//! Actor handles, and how they decide an actor's lifetime.
//!
//! As in Ray, an actor that is not detached lives as long as a handle on it
//! exists anywhere. Every handle made by `remote()` carries a reference to a
//! small *lifetime object* owned by the creating process; handles passed to
//! other tasks and actors carry it too, so the owner's distributed reference
//! counting (borrowers included) knows when the last handle is gone. Each
//! call pins it until its reply is in, so a call made just before the last
//! handle drops still completes. When the owner frees the lifetime object it
//! kills the actor ([`crate::worker::CoreWorker`] keeps the mapping). Handles
//! from `get_actor` and handles on detached actors carry none.

use serde::{Deserialize, Serialize};

use crate::ids::ActorId;
use crate::object_ref::ObjectRef;

/// An untyped handle on an actor; the macros wrap it in a typed handle
/// (`CounterHandle` for `Counter`) whose methods submit calls.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ActorHandle {
    pub(crate) id: ActorId,
    pub(crate) class: String,
    pub(crate) max_task_retries: i32,
    /// Keeps a non-detached actor alive (see the module docs).
    pub(crate) lifetime: Option<ObjectRef<()>>,
}

impl ActorHandle {
    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.id
    }

    /// The actor's class name.
    pub fn class_name(&self) -> &str {
        &self.class
    }
}

/// Implemented by the typed handles the `#[actor]` macro generates.
pub trait ActorHandleType: Sized {
    /// The registered class name.
    const CLASS: &'static str;
    /// Wraps an untyped handle.
    fn from_raw(raw: ActorHandle) -> Self;
    /// The untyped handle.
    fn raw(&self) -> &ActorHandle;
}
