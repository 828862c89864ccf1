//! Utilities users reach for on top of tasks and actors: a
//! multiprocessing-style [`Pool`], an [`ActorPool`] and a distributed
//! [`Queue`].

mod actor_pool;
mod pool;
mod queue;

pub use actor_pool::ActorPool;
pub use pool::Pool;
pub use queue::Queue;
