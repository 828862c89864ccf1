//! Environments: the [`Env`] trait (Gymnasium's `reset` / `step`), its
//! spaces, the classic-control environments ported from Gymnasium 1.2 so
//! that they match it step for step, [`make`] to build one by its
//! Gymnasium id, and batches of them stepped together ([`BatchEnv`]):
//! [`VectorEnv`] in this process, [`ProcessEnv`] in a child process (any
//! Gymnasium environment, served by Python).
//!
//! The ports keep Gymnasium's constants, integrators, order of operations
//! and `float32`/`float64` types, its step limits (as `gymnasium.make`'s
//! `TimeLimit`: truncated at the limit even when the last step also
//! terminated) and its reset ranges, drawn from our own seeded
//! [`EnvRng`]. `rllib/tests/it/gymnasium.rs` replays trajectories in both
//! from the same start states (each port's `set_state`) and compares every
//! step. Where Gymnasium would go on after an episode ended, ours refuse
//! ([`EnvError::NeedsReset`]); continuous actions out of bounds are
//! clipped, as Gymnasium does, and only an action of the wrong kind or
//! length (or NaN) is refused.

mod acrobot;
mod cartpole;
mod mountain_car;
mod mountain_car_continuous;
mod numpy;
mod pendulum;
mod remote;
mod vector;

pub use acrobot::Acrobot;
pub use cartpole::CartPole;
pub use mountain_car::MountainCar;
pub use mountain_car_continuous::MountainCarContinuous;
pub use pendulum::Pendulum;
pub use remote::{ProcessEnv, ProcessEnvBuilder, DEFAULT_TIMEOUT, GYM_SERVER_PY};
pub use vector::{BatchEnv, Episode, VectorEnv, VectorStep};

use serde::{Deserialize, Serialize};

/// A space of observations or actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Space {
    /// `n` actions, `0..n`.
    Discrete(usize),
    /// Vectors of floats, each between its bounds (which may be infinite).
    Box {
        /// Lower bounds.
        low: Vec<f32>,
        /// Upper bounds.
        high: Vec<f32>,
    },
}

impl Space {
    /// The length of a vector in it (1 for a discrete space's one index).
    pub fn dim(&self) -> usize {
        match self {
            Space::Discrete(_) => 1,
            Space::Box { low, .. } => low.len(),
        }
    }

    /// Whether `a` is an action of this space.
    pub fn contains(&self, a: &Action) -> bool {
        match (self, a) {
            (Space::Discrete(n), Action::Discrete(i)) => i < n,
            (Space::Box { low, high }, Action::Continuous(v)) => {
                v.len() == low.len() && v.iter().zip(low).zip(high).all(|((x, l), h)| x >= l && x <= h)
            }
            _ => false,
        }
    }
}

/// An action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// An index into a discrete space.
    Discrete(usize),
    /// A vector in a box space.
    Continuous(Vec<f32>),
}

/// What a step returns (Gymnasium's `obs, reward, terminated, truncated`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The observation after the step.
    pub obs: Vec<f32>,
    /// The step's reward.
    pub reward: f64,
    /// The episode ended in a terminal state (no value to bootstrap).
    pub terminated: bool,
    /// The episode was cut short (a time limit): the state was not
    /// terminal.
    pub truncated: bool,
}

/// Why an environment refused a call.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EnvError {
    /// No environment has this id: lists the known ones.
    #[error("unknown environment `{0}` (known: {known})", known = KNOWN.join(", "))]
    Unknown(String),
    /// An action outside the action space.
    #[error("action {action:?} is not in the action space {space:?}")]
    BadAction {
        /// The action.
        action: Action,
        /// The space.
        space: Space,
    },
    /// `step` before `reset`, or after the episode ended.
    #[error("step called {0}: reset first")]
    NeedsReset(&'static str),
    /// A batch of environments got a number of actions other than one
    /// each.
    #[error("{got} actions for {expected} environments: give one action each")]
    BatchSize {
        /// The batch's environments.
        expected: usize,
        /// The actions given.
        got: usize,
    },
    /// An environment in another process failed or broke the protocol.
    #[error("remote environment: {0}")]
    Remote(String),
}

/// An environment, as Gymnasium's `Env`: `reset` starts an episode (seeded
/// or not) and returns its first observation; `step` applies an action.
/// Episodes end by termination or truncation (each environment keeps
/// Gymnasium's step limit); then `reset` again.
pub trait Env: Send {
    /// The observations' space.
    fn observation_space(&self) -> Space;

    /// The actions' space.
    fn action_space(&self) -> Space;

    /// Starts an episode. With a seed, the environment's random state is
    /// seeded first (the same seed gives the same episode start).
    fn reset(&mut self, seed: Option<u64>) -> Vec<f32>;

    /// Applies `action`.
    fn step(&mut self, action: &Action) -> Result<Step, EnvError>;
}

/// The environments [`make`] knows.
pub const KNOWN: &[&str] = &[
    "CartPole-v1",
    "Pendulum-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Acrobot-v1",
];

/// The environment with Gymnasium id `id` (with its step limit, as
/// `gymnasium.make`).
pub fn make(id: &str) -> Result<Box<dyn Env>, EnvError> {
    Ok(match id {
        "CartPole-v1" => Box::new(CartPole::new()),
        "Pendulum-v1" => Box::new(Pendulum::new()),
        "MountainCar-v0" => Box::new(MountainCar::new()),
        "MountainCarContinuous-v0" => Box::new(MountainCarContinuous::new()),
        "Acrobot-v1" => Box::new(Acrobot::new()),
        _ => return Err(EnvError::Unknown(id.to_string())),
    })
}

/// `n` environments of `id` stepped together: [`VectorEnv`] for the
/// environments here, or, for `gym:ID` (any Gymnasium id), a
/// [`ProcessEnv`] running Gymnasium in a Python child (the Python of
/// `RAYFORGE_GYM_PYTHON`, else `python3`).
pub fn make_batch(id: &str, n: usize) -> Result<Box<dyn BatchEnv>, EnvError> {
    match id.strip_prefix("gym:") {
        Some(gym) => {
            let python = std::env::var_os("RAYFORGE_GYM_PYTHON").unwrap_or_else(|| "python3".into());
            Ok(Box::new(ProcessEnv::gymnasium(python, gym, n).spawn()?))
        }
        None => Ok(Box::new(VectorEnv::new(id, n)?)),
    }
}

/// What every environment here keeps besides its physics: its state
/// (none before the first reset), its random stream, and its steps against
/// Gymnasium's step limit.
#[derive(Debug, Clone)]
pub(crate) struct EpisodeState<S> {
    state: Option<S>,
    /// The stream resets draw from.
    pub(crate) rng: EnvRng,
    steps: u32,
    /// Ended: steps are refused until a reset (Gymnasium warns; we refuse).
    done: bool,
    max_steps: u32,
}

impl<S: Clone> EpisodeState<S> {
    /// No episode yet, `max_steps` per episode.
    pub(crate) fn new(max_steps: u32) -> EpisodeState<S> {
        EpisodeState {
            state: None,
            rng: EnvRng::new(entropy_seed()),
            steps: 0,
            done: false,
            max_steps,
        }
    }

    /// A reset's seed, when it has one, restarts the random stream.
    pub(crate) fn reseed(&mut self, seed: Option<u64>) {
        if let Some(s) = seed {
            self.rng = EnvRng::new(s);
        }
    }

    /// A new episode from `state`.
    pub(crate) fn start(&mut self, state: S) {
        self.state = Some(state);
        self.steps = 0;
        self.done = false;
    }

    /// The state as it is, ended or not.
    #[cfg(test)]
    pub(crate) fn state(&self) -> Option<&S> {
        self.state.as_ref()
    }

    /// The state to step from, or why there is none.
    pub(crate) fn current(&self) -> Result<S, EnvError> {
        if self.done {
            return Err(EnvError::NeedsReset("after the episode ended"));
        }
        self.state.clone().ok_or(EnvError::NeedsReset("before reset"))
    }

    /// A step reached `state`: whether the episode is truncated (Gymnasium's
    /// TimeLimit truncates at the limit whether or not the episode also
    /// terminated there).
    pub(crate) fn advance(&mut self, state: S, terminated: bool) -> bool {
        self.state = Some(state);
        self.steps += 1;
        let truncated = self.steps >= self.max_steps;
        self.done = terminated || truncated;
        truncated
    }
}

/// A seeded uniform draw in `[low, high)` from the environment's own
/// random state (a SplitMix64 stream: small, fast and reproducible).
#[derive(Debug, Clone)]
pub struct EnvRng(u64);

impl EnvRng {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> EnvRng {
        EnvRng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A float in `[low, high)`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next_f64()
    }
}

/// The one float of a one-dimensional continuous action (not yet clipped:
/// each environment clips as Gymnasium does); an action of another kind or
/// length, or NaN, is refused with the environment's `space`.
pub(crate) fn one_float(action: &Action, space: impl FnOnce() -> Space) -> Result<f32, EnvError> {
    match action {
        Action::Continuous(v) if v.len() == 1 && !v[0].is_nan() => Ok(v[0]),
        a => Err(EnvError::BadAction {
            action: a.clone(),
            space: space(),
        }),
    }
}

/// A seed drawn from the system, for environments reset without one.
pub(crate) fn entropy_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}
