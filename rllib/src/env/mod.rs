//! Environments: the [`Env`] trait (Gymnasium's `reset` / `step`), its
//! spaces, the classic-control environments ported from Gymnasium 1.2 so
//! that they match it step for step, [`make`] to build one by its
//! Gymnasium id, [`register_env`] for a user's own (as Ray's
//! `tune.register_env`), and batches of them stepped together ([`BatchEnv`]):
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
    /// Several discrete choices made at once, choice `i` in `0..n[i]`
    /// (Gymnasium's `MultiDiscrete`; `MultiBinary(k)` is `[2; k]`, and a
    /// `Tuple` or `Dict` of discrete spaces is the concatenation of theirs).
    MultiDiscrete(Vec<usize>),
    /// Discrete choices and a box at once (a Gymnasium `Tuple` or `Dict`
    /// holding both: its choices as in `MultiDiscrete`, its boxes' values
    /// concatenated, each in Gymnasium's order). Its vectors hold the
    /// choices' indices, then the box's values.
    Mixed {
        /// Choice `i` is in `0..discrete[i]`.
        discrete: Vec<usize>,
        /// The box's lower bounds.
        low: Vec<f32>,
        /// The box's upper bounds.
        high: Vec<f32>,
    },
}

impl Space {
    /// The length of a vector in it (1 for a discrete space's one index).
    pub fn dim(&self) -> usize {
        match self {
            Space::Discrete(_) => 1,
            Space::Box { low, .. } => low.len(),
            Space::MultiDiscrete(n) => n.len(),
            Space::Mixed { discrete, low, .. } => discrete.len() + low.len(),
        }
    }

    /// Whether `a` is an action of this space.
    pub fn contains(&self, a: &Action) -> bool {
        match (self, a) {
            (Space::Discrete(n), Action::Discrete(i)) => i < n,
            (Space::Box { low, high }, Action::Continuous(v)) => {
                v.len() == low.len() && v.iter().zip(low).zip(high).all(|((x, l), h)| x >= l && x <= h)
            }
            (Space::MultiDiscrete(n), Action::MultiDiscrete(v)) => {
                v.len() == n.len() && v.iter().zip(n).all(|(i, n)| i < n)
            }
            (Space::Mixed { discrete: n, low, high }, Action::Mixed { discrete, continuous }) => {
                Space::MultiDiscrete(n.clone()).contains(&Action::MultiDiscrete(discrete.clone()))
                    && Space::Box {
                        low: low.clone(),
                        high: high.clone(),
                    }
                    .contains(&Action::Continuous(continuous.clone()))
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
    /// One index per choice of a multi-discrete space.
    MultiDiscrete(Vec<usize>),
    /// A mixed space's choices and box values.
    Mixed {
        /// One index per discrete choice.
        discrete: Vec<usize>,
        /// The box's values.
        continuous: Vec<f32>,
    },
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
    /// No environment has this id: lists the known ones (registered ones
    /// included).
    #[error("unknown environment `{0}` (known: {known}; or gym:ID for any Gymnasium id)", known = known_envs().join(", "))]
    Unknown(String),
    /// [`register_env`] refused a name.
    #[error("register_env: {0}")]
    Registration(String),
    /// A registered environment's creator failed.
    #[error("environment `{name}`: {message}")]
    Creator {
        /// The registered name.
        name: String,
        /// What its creator said.
        message: String,
    },
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
/// environments here and those registered ([`register_env`], built with a
/// null `env_config`), or, for `gym:ID` (any Gymnasium id), a
/// [`ProcessEnv`] running Gymnasium in a Python child (the Python of
/// `RAYFORGE_GYM_PYTHON`, else `python3`).
pub fn make_batch(id: &str, n: usize) -> Result<Box<dyn BatchEnv>, EnvError> {
    EnvSpec::resolve(id, serde_json::Value::Null)?.make_batch(n)
}

/// Builds a user's environment from its `env_config` (the creator Ray's
/// `tune.register_env(name, creator)` takes). A plain function, so that it
/// travels to the env runners' processes (see [`rayforge::FnRef`]).
pub type EnvCreator = fn(&serde_json::Value) -> Result<Box<dyn Env>, String>;

/// This process's registered environments.
static REGISTRY: crate::registry::Registry<EnvCreator> = crate::registry::Registry::new("env");

/// Registers a user's environment under `name`, as Ray's
/// `tune.register_env`: [`make_batch`], [`crate::AlgoConfig`]'s `env` and
/// `rllib train --env NAME` (in a binary built on [`crate::cli::Cli`])
/// then build it with `creator`, given the config's `env_config`. Runners
/// in other processes get the creator with their spec, so registering in
/// the driver is enough. A name of an environment here, one starting with
/// `gym:`, or one already registered is refused.
///
/// ```
/// use rayforge_rllib::env::{self, BatchEnv, CartPole, Env};
///
/// fn short_cartpole(_: &serde_json::Value) -> Result<Box<dyn Env>, String> {
///     Ok(Box::new(CartPole::new()))
/// }
/// env::register_env("MyCartPole", short_cartpole)?;
/// let batch = env::make_batch("MyCartPole", 2)?;
/// assert_eq!(batch.num_envs(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn register_env(name: &str, creator: EnvCreator) -> Result<(), EnvError> {
    if name.is_empty() || name.starts_with("gym:") || KNOWN.contains(&name) {
        return Err(EnvError::Registration(format!(
            "`{name}` cannot name a registered environment (empty, gym:ID, or one of {})",
            KNOWN.join(", ")
        )));
    }
    REGISTRY.register(name, creator).map_err(EnvError::Registration)
}

/// Publishes this process's registered environments (and custom models,
/// [`crate::policy::register_model`], and learners,
/// [`crate::register_learner`]) to the cluster it joined, so that its
/// other processes of the same binary (Tune's trials, which build their own
/// algorithms) find them by name. [`register_env`] after `rayforge::init`
/// publishes by itself; this is for those registered before.
pub fn publish_registered() -> Result<(), EnvError> {
    REGISTRY.publish_all().map_err(EnvError::Registration)?;
    crate::policy::publish_models().map_err(EnvError::Registration)?;
    crate::algorithm::publish_learners().map_err(EnvError::Registration)
}

/// A registered creator: this process's, else one published to the
/// cluster by another process of the program.
fn registered(name: &str) -> Option<rayforge::FnRef<EnvCreator>> {
    REGISTRY.get(name)
}

/// The environments [`make_batch`] builds: those here, then the registered
/// ones.
pub fn known_envs() -> Vec<String> {
    KNOWN.iter().map(|s| s.to_string()).chain(REGISTRY.names()).collect()
}

/// An environment as a runner builds it: its name, and for a registered
/// one, its creator and `env_config` (resolved in the driver, where it was
/// registered, and sent with the runner's spec).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvSpec {
    /// The name: an id here, `gym:ID`, or a registered name.
    pub id: String,
    /// A registered environment's creator.
    pub creator: Option<rayforge::FnRef<EnvCreator>>,
    /// What the creator is given (as JSON on the wire).
    pub config: rayforge::Json<serde_json::Value>,
}

impl EnvSpec {
    /// `id` as this process knows it: an environment here, `gym:ID`, or a
    /// registered one (its creator given `config`). An unknown id is an
    /// error listing the known ones.
    pub fn resolve(id: &str, config: serde_json::Value) -> Result<EnvSpec, EnvError> {
        let creator = if id.starts_with("gym:") || KNOWN.contains(&id) {
            None
        } else {
            Some(registered(id).ok_or_else(|| EnvError::Unknown(id.to_string()))?)
        };
        Ok(EnvSpec {
            id: id.to_string(),
            creator,
            config: rayforge::Json(config),
        })
    }

    /// `n` of its environments stepped together (see [`make_batch`]).
    pub fn make_batch(&self, n: usize) -> Result<Box<dyn BatchEnv>, EnvError> {
        if let Some(c) = &self.creator {
            let create = c.get().map_err(|e| EnvError::Creator {
                name: self.id.clone(),
                message: e.to_string(),
            })?;
            let envs = (0..n)
                .map(|_| {
                    create(&self.config.0).map_err(|message| EnvError::Creator {
                        name: self.id.clone(),
                        message,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Box::new(VectorEnv::from_envs(&self.id, envs)));
        }
        match self.id.strip_prefix("gym:") {
            Some(gym) => {
                let python = std::env::var_os("RAYFORGE_GYM_PYTHON").unwrap_or_else(|| "python3".into());
                Ok(Box::new(ProcessEnv::gymnasium(python, gym, n).spawn()?))
            }
            None => Ok(Box::new(VectorEnv::new(&self.id, n)?)),
        }
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

#[cfg(test)]
mod registry_tests {
    use super::*;

    /// CartPole, its episodes cut at `max_steps` steps when the config says
    /// (an error for a bad value).
    fn capped(config: &serde_json::Value) -> Result<Box<dyn Env>, String> {
        match config.get("max_steps") {
            Some(v) if v.as_u64().is_none() => Err(format!("max_steps must be a whole number, not {v}")),
            _ => Ok(Box::new(CartPole::new())),
        }
    }

    #[test]
    fn registered_environments_are_built_by_name_with_their_config() {
        register_env("Capped-v0", capped).unwrap();
        assert!(known_envs().contains(&"Capped-v0".to_string()));
        let mut batch = make_batch("Capped-v0", 3).unwrap();
        assert_eq!(batch.num_envs(), 3);
        assert_eq!(batch.reset(Some(0)).unwrap().len(), 3);
        // The creator's own error names the environment.
        let spec = EnvSpec::resolve("Capped-v0", serde_json::json!({ "max_steps": "ten" })).unwrap();
        let e = spec.make_batch(1).err().unwrap().to_string();
        assert!(e.starts_with("environment `Capped-v0`: max_steps must be"), "{e}");
        // Names that are taken or reserved are refused.
        for name in ["Capped-v0", "CartPole-v1", "gym:Hopper-v5", ""] {
            let e = register_env(name, capped).unwrap_err();
            assert!(matches!(e, EnvError::Registration(_)), "{name}: {e}");
        }
        let e = make_batch("Nowhere-v0", 1).err().unwrap().to_string();
        assert!(
            e.contains("unknown environment `Nowhere-v0`") && e.contains("Capped-v0"),
            "{e}"
        );
    }
}
