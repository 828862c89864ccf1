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

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::ActorId;
use crate::object_ref::ObjectRef;
use crate::{proto, worker};

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

    /// Where the actor is in its life now (see [`ActorState`]).
    pub async fn state_async(&self) -> Result<ActorState> {
        let cw = worker::current()?;
        let info = worker::actor_caller::actor_info(&cw, self.id, false, 0).await?;
        Ok(ActorState::from_info(&info))
    }

    /// Blocking form of [`ActorHandle::state_async`].
    pub fn state(&self) -> Result<ActorState> {
        worker::current()?.block_on(self.state_async())?
    }

    /// Waits until the actor is alive (its constructor has run). Fails with
    /// [`Error::ActorDied`] if it dies first, [`Error::GetTimeout`] after
    /// `timeout`.
    pub async fn wait_until_alive_async(&self, timeout: Duration) -> Result<()> {
        let cw = worker::current()?;
        let wait = worker::actor_caller::actor_info(&cw, self.id, true, 0);
        let info = tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::GetTimeout(timeout))??;
        match ActorState::from_info(&info) {
            ActorState::Dead { cause, .. } => Err(Error::ActorDied {
                actor: info.class_name,
                cause,
            }),
            _ => Ok(()),
        }
    }

    /// Blocking form of [`ActorHandle::wait_until_alive_async`].
    pub fn wait_until_alive(&self, timeout: Duration) -> Result<()> {
        worker::current()?.block_on(self.wait_until_alive_async(timeout))?
    }

    /// Waits until the actor is dead for good (killed, or its restart
    /// budget spent) and returns its final [`ActorState::Dead`]; restarts
    /// along the way are waited through. Fails with [`Error::GetTimeout`]
    /// after `timeout`.
    pub async fn wait_until_dead_async(&self, timeout: Duration) -> Result<ActorState> {
        let cw = worker::current()?;
        let watch = async {
            let mut seen = 0;
            loop {
                // Answers at the next incarnation, or at death.
                let info = worker::actor_caller::actor_info(&cw, self.id, true, seen).await?;
                match ActorState::from_info(&info) {
                    dead @ ActorState::Dead { .. } => return Ok(dead),
                    _ => seen = info.incarnation,
                }
            }
        };
        tokio::time::timeout(timeout, watch)
            .await
            .map_err(|_| Error::GetTimeout(timeout))?
    }

    /// Blocking form of [`ActorHandle::wait_until_dead_async`].
    pub fn wait_until_dead(&self, timeout: Duration) -> Result<ActorState> {
        worker::current()?.block_on(self.wait_until_dead_async(timeout))?
    }
}

/// Where an actor is in its life: created, then alive, restarting after
/// its process died while its restart budget lasts, and dead for good (as
/// Ray's actor states). Read it with [`ActorHandle::state`] (or, on a
/// typed handle, [`ActorHandleType::state`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ActorState {
    /// Created, its constructor not run yet (waiting for resources or a
    /// worker process).
    PendingCreation,
    /// Its constructor has run; calls are served.
    Alive,
    /// Its process died and a new one is being started.
    Restarting {
        /// Restarts so far, this one included.
        num_restarts: u32,
    },
    /// Dead for good; calls fail with [`Error::ActorDied`].
    Dead {
        /// Why: killed, its process died past its restart budget, or its
        /// constructor failed.
        cause: String,
        /// How many times it was restarted.
        num_restarts: u32,
    },
}

impl ActorState {
    fn from_info(info: &proto::GetActorInfoReply) -> ActorState {
        match proto::ActorState::try_from(info.state) {
            Ok(proto::ActorState::PendingCreation) => ActorState::PendingCreation,
            Ok(proto::ActorState::Alive) => ActorState::Alive,
            Ok(proto::ActorState::Restarting) => ActorState::Restarting {
                num_restarts: info.num_restarts,
            },
            Ok(proto::ActorState::Dead) | Err(_) => ActorState::Dead {
                cause: info.death_cause.clone(),
                num_restarts: info.num_restarts,
            },
        }
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

    /// The actor's id.
    fn actor_id(&self) -> ActorId {
        self.raw().id
    }

    /// See [`ActorHandle::state`].
    fn state(&self) -> Result<ActorState> {
        self.raw().state()
    }

    /// See [`ActorHandle::wait_until_alive`].
    fn wait_until_alive(&self, timeout: Duration) -> Result<()> {
        self.raw().wait_until_alive(timeout)
    }

    /// See [`ActorHandle::wait_until_dead`].
    fn wait_until_dead(&self, timeout: Duration) -> Result<ActorState> {
        self.raw().wait_until_dead(timeout)
    }
}
