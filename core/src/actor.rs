//! Actor handles.

use serde::{Deserialize, Serialize};

use crate::ids::ActorId;

/// An untyped handle on an actor; the macros wrap it in a typed handle
/// (`CounterHandle` for `Counter`) whose methods submit calls.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ActorHandle {
    pub(crate) id: ActorId,
    pub(crate) class: String,
    pub(crate) max_task_retries: i32,
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
