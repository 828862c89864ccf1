//! # rayforge-rllib
//!
//! Reinforcement learning on rayforge, as Ray's RLlib: environments in
//! Rust that match Gymnasium's classic control step for step, env runners
//! as actors stepping vectors of environments with the current policy,
//! and PPO, APPO, DQN and SAC with tch learners.
//!
//! ```
//! use rayforge_rllib::env::{self, Action, Env};
//!
//! let mut cartpole = env::make("CartPole-v1")?;
//! let obs = cartpole.reset(Some(0));
//! assert_eq!(obs.len(), 4);
//! let step = cartpole.step(&Action::Discrete(1))?;
//! assert_eq!(step.reward, 1.0);
//! # Ok::<(), rayforge_rllib::env::EnvError>(())
//! ```

#![warn(missing_docs)]

mod algorithm;
pub mod algos;
pub mod cli;
pub mod config;
pub mod env;
mod error;
pub mod filter;
pub mod policy;
mod registry;
pub mod runner;

pub use algorithm::{
    register_learner, Algorithm, Callbacks, EpisodeEnd, IterationResult, Learner, LearnerBuilder, LearnerStep, Runners,
    Stop, CHECKPOINT_VERSION, DEFAULT_TIMESTEPS,
};
pub use config::{Algo, AlgoConfig};
pub use error::{Error, Result};
/// The tch this crate builds its networks with (for custom models).
pub use tch;
