//! An experiment in progress: the env runners (restarted when one dies),
//! the algorithm's learner, iterations with their metrics, evaluation on a
//! runner of its own, and checkpoints in the project's format.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use rayforge::checkpoint::{Checkpoint, CheckpointWriter};
use rayforge::tracking::{Curve, RunEnd, RunInfo, RunKind};
use serde::{Deserialize, Serialize};

use crate::algos::{dqn::Dqn, ppo::Ppo, sac::Sac};
use crate::config::{Algo, AlgoConfig};
use crate::env::{self, Space};
use crate::error::{Error, Result};
use crate::filter::MeanStd;
use crate::policy::{PolicyKind, PolicySpec};
use crate::runner::{
    EnvRunner, EnvRunnerHandle, Episodes, Explore, FilterDelta, PolicyState, Rollout, RunnerSpec, Transitions,
};

/// The checkpoint format version this crate writes (and the newest it
/// reads), in `algorithm.json`.
pub const CHECKPOINT_VERSION: u32 = 1;
const WRITTEN_BY: &str = concat!("rayforge-rllib ", env!("CARGO_PKG_VERSION"));
/// The observation statistics in a checkpoint (with a filter).
const FILTER_FILE: &str = "obs_filter.json";

/// One iteration's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationResult {
    /// The iteration (1, 2, ...).
    pub iteration: u64,
    /// Env steps sampled since the start.
    pub env_steps_lifetime: u64,
    /// Env steps per second in this iteration (sampling and learning).
    pub env_steps_per_s: f64,
    /// Mean return of the last 100 episodes (NaN before the first ends).
    pub episode_return_mean: f64,
    /// Their lowest return.
    pub episode_return_min: f64,
    /// Their highest return.
    pub episode_return_max: f64,
    /// Their mean length.
    pub episode_len_mean: f64,
    /// Episodes finished since the start.
    pub episodes_lifetime: u64,
    /// The learner's losses and statistics.
    pub learner: BTreeMap<String, f64>,
    /// The mean return of the evaluation episodes, when evaluated.
    pub evaluation_return_mean: Option<f64>,
    /// Metrics [`Callbacks::on_train_result`] added (reported to Tune and
    /// printed with the others).
    #[serde(default)]
    pub custom_metrics: BTreeMap<String, f64>,
}

/// An episode that ended in a training runner, as [`Callbacks::on_episode_end`]
/// sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeEnd {
    /// The training iteration it ended in.
    pub iteration: u64,
    /// Its return (the sum of its rewards).
    pub episode_return: f64,
    /// Its length in steps.
    pub length: u64,
}

/// Hooks into an algorithm's training, called on the driver after each
/// iteration's sampling (Ray's `RLlibCallback`: `on_episode_end`,
/// `on_train_result`, `on_checkpoint_loaded`'s counterpart on save). Every
/// method does nothing by default; [`Algorithm::add_callbacks`] adds one.
///
/// ```
/// use rayforge_rllib::{Callbacks, EpisodeEnd, IterationResult};
///
/// /// Counts the episodes that reach the goal (return above 0).
/// #[derive(Default)]
/// struct Successes(u64, u64);
///
/// impl Callbacks for Successes {
///     fn on_episode_end(&mut self, e: &EpisodeEnd) {
///         self.0 += 1;
///         self.1 += (e.episode_return > 0.0) as u64;
///     }
///     fn on_train_result(&mut self, r: &mut IterationResult) {
///         r.custom_metrics.insert("success_rate".into(), self.1 as f64 / self.0.max(1) as f64);
///     }
/// }
/// ```
pub trait Callbacks: Send {
    /// An episode ended in a training runner (each, in the order the
    /// runners returned them).
    fn on_episode_end(&mut self, _episode: &EpisodeEnd) {}

    /// An iteration's result, before [`Algorithm::train`] returns it:
    /// metrics added to `custom_metrics` are reported with the others.
    fn on_train_result(&mut self, _result: &mut IterationResult) {}

    /// [`Algorithm::save`] committed a checkpoint.
    fn on_checkpoint(&mut self, _checkpoint: &Checkpoint) {}
}

impl IterationResult {
    /// The metrics as name and value pairs (for Tune); those without a
    /// value yet (NaN before the first episode ends) are left out.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut m = vec![
            ("env_steps_lifetime".to_string(), self.env_steps_lifetime as f64),
            ("env_steps_per_s".to_string(), self.env_steps_per_s),
            ("episode_return_mean".to_string(), self.episode_return_mean),
            ("episode_return_min".to_string(), self.episode_return_min),
            ("episode_return_max".to_string(), self.episode_return_max),
            ("episode_len_mean".to_string(), self.episode_len_mean),
        ];
        m.extend(self.learner.iter().map(|(k, v)| (k.clone(), *v)));
        m.extend(self.custom_metrics.iter().map(|(k, v)| (k.clone(), *v)));
        if let Some(e) = self.evaluation_return_mean {
            m.push(("evaluation_return_mean".into(), e));
        }
        m.retain(|(_, v)| v.is_finite());
        m
    }

    /// The progress line printed per iteration.
    pub fn line(&self) -> String {
        let learner: Vec<String> = self
            .learner
            .iter()
            .chain(&self.custom_metrics)
            .map(|(k, v)| format!("{k}={v:.4}"))
            .collect();
        format!(
            "iter {:>4} | steps {:>8} | return {:>8.2} (min {:.1}, max {:.1}) | len {:>6.1} | {:>7.0} steps/s | {}{}",
            self.iteration,
            self.env_steps_lifetime,
            self.episode_return_mean,
            self.episode_return_min,
            self.episode_return_max,
            self.episode_len_mean,
            self.env_steps_per_s,
            learner.join(" "),
            self.evaluation_return_mean
                .map(|e| format!(" | eval {e:.2}"))
                .unwrap_or_default()
        )
    }
}

/// When a run stops: the first criterion reached. The reward is the
/// evaluation return on iterations that evaluate, when evaluation is on,
/// else the training episodes' mean return.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stop {
    /// A mean episode return at least this high.
    pub reward: Option<f64>,
    /// This many env steps.
    pub timesteps: Option<u64>,
    /// This many iterations.
    pub iters: Option<u64>,
}

/// The env steps a run stops at when nothing else bounds it (no
/// `timesteps` nor `iters`) and its config names no `anneal_timesteps`.
pub const DEFAULT_TIMESTEPS: u64 = 100_000;

impl Stop {
    /// This stop, bounded: without a `timesteps` or `iters` limit (a reward
    /// alone may never be reached) it also stops after
    /// `config.anneal_timesteps` env steps — where the learning rate has
    /// annealed to its end — or [`DEFAULT_TIMESTEPS`].
    pub fn bounded(mut self, config: &AlgoConfig) -> Stop {
        if self.timesteps.is_none() && self.iters.is_none() {
            self.timesteps = Some(config.anneal_timesteps.unwrap_or(DEFAULT_TIMESTEPS));
        }
        self
    }

    /// Whether `r` meets a criterion (`evaluating`: the run evaluates, so
    /// only evaluation returns count for the reward).
    pub fn reached(&self, r: &IterationResult, evaluating: bool) -> bool {
        let reward = match r.evaluation_return_mean {
            Some(e) => e,
            None if evaluating => f64::NEG_INFINITY,
            None => r.episode_return_mean,
        };
        self.reward.is_some_and(|x| reward >= x)
            || self.timesteps.is_some_and(|x| r.env_steps_lifetime >= x)
            || self.iters.is_some_and(|x| r.iteration >= x)
    }
}

/// An algorithm's env runner actors, as its [`Learner`] samples through
/// them: each call goes to every runner at once with the learner's
/// weights, and a runner that dies is replaced and asked again (up to 3
/// times in one call). With `observation_filter = "MeanStdFilter"` the
/// runners normalize observations and their statistics are merged here.
pub struct Runners {
    handles: Vec<EnvRunnerHandle>,
    specs: Vec<RunnerSpec>,
    /// The observation statistics every runner's share is merged into
    /// (with `observation_filter = "MeanStdFilter"`).
    filter: Option<MeanStd>,
    /// Rollouts already under way ([`Runners::rollouts_ahead`]): their
    /// steps per environment and the calls.
    ahead: Option<(usize, Launched<Rollout>)>,
}

/// Calls sent to every runner, not yet collected.
struct Launched<T> {
    /// The weights (and statistics) they were sent with, for a retry.
    state: rayforge::ObjectRef<PolicyState>,
    pending: Vec<rayforge::ObjectRef<T>>,
}

/// Times a runner is restarted within one sampling call before the
/// iteration fails.
const RUNNER_RETRIES: u32 = 3;

impl Runners {
    fn start(specs: Vec<RunnerSpec>, filter: Option<MeanStd>) -> Result<Runners> {
        let handles = specs.iter().map(Runners::spawn).collect::<Result<Vec<_>>>()?;
        Ok(Runners {
            handles,
            specs,
            filter,
            ahead: None,
        })
    }

    fn spawn(spec: &RunnerSpec) -> Result<EnvRunnerHandle> {
        Ok(EnvRunner::options().num_cpus(0.0).remote(spec.clone())?)
    }

    /// Calls every runner with `call`, the weights (and observation
    /// statistics) put in the object store once; a runner that died is
    /// replaced and asked again. The statistics each runner gathered are
    /// merged into the algorithm's.
    fn each<T: rayforge::Value + FilterDelta + 'static>(
        &mut self,
        weights: Vec<f32>,
        call: impl Fn(&EnvRunnerHandle, rayforge::ObjectRef<PolicyState>) -> rayforge::ObjectRef<T>,
    ) -> Result<Vec<T>> {
        let launched = self.launch(weights, &call)?;
        self.collect(launched, &call)
    }

    /// Sends `call` to every runner with the weights (and statistics).
    fn launch<T: rayforge::Value + 'static>(
        &self,
        weights: Vec<f32>,
        call: impl Fn(&EnvRunnerHandle, rayforge::ObjectRef<PolicyState>) -> rayforge::ObjectRef<T>,
    ) -> Result<Launched<T>> {
        let state = rayforge::put(PolicyState {
            weights,
            filter: self.filter.clone(),
        })?;
        let pending = self.handles.iter().map(|h| call(h, state.clone())).collect();
        Ok(Launched { state, pending })
    }

    /// Waits for the launched calls, replacing a runner that died and
    /// asking the new one again; merges the statistics they gathered.
    fn collect<T: rayforge::Value + FilterDelta + 'static>(
        &mut self,
        launched: Launched<T>,
        call: impl Fn(&EnvRunnerHandle, rayforge::ObjectRef<PolicyState>) -> rayforge::ObjectRef<T>,
    ) -> Result<Vec<T>> {
        let Launched { state: w, mut pending } = launched;
        let mut out: Vec<Option<T>> = (0..pending.len()).map(|_| None).collect();
        for i in 0..pending.len() {
            let mut attempts = 0;
            loop {
                match pending[i].get() {
                    Ok(v) => {
                        out[i] = Some(v);
                        break;
                    }
                    // The environment or the runner's code refused: not
                    // something a restart mends.
                    Err(e) if e.user_error::<String>().is_some() => {
                        return Err(Error::Runner {
                            runner: i,
                            attempts: 1,
                            cause: e.user_error::<String>().unwrap_or_default(),
                        })
                    }
                    Err(e) => {
                        attempts += 1;
                        tracing::warn!(runner = i, attempts, "env runner failed: {e}; starting a new one");
                        if attempts > RUNNER_RETRIES {
                            return Err(Error::Runner {
                                runner: i,
                                attempts,
                                cause: e.to_string(),
                            });
                        }
                        let _ = rayforge::kill(&self.handles[i]);
                        self.handles[i] = Runners::spawn(&self.specs[i])?;
                        pending[i] = call(&self.handles[i], w.clone());
                    }
                }
            }
        }
        let mut out: Vec<T> = out.into_iter().flatten().collect();
        if let Some(global) = &mut self.filter {
            for delta in out.iter_mut().filter_map(FilterDelta::take_filter_delta) {
                global.merge(&delta);
            }
        }
        Ok(out)
    }

    /// The number of runners (each gives one result per call).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are no runners (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// On-policy rollouts of `steps` steps per environment, one per
    /// runner, sampled with `weights` (an actor-critic's: actions, their
    /// log-probabilities and the values, for PPO and its kin).
    pub fn rollouts(&mut self, weights: Vec<f32>, steps: usize) -> Result<Vec<Rollout>> {
        self.each(weights, |h, w| h.rollout(w, steps))
    }

    /// On-policy rollouts as [`Runners::rollouts`], sampled while the
    /// learner learns (asynchronous sampling, as APPO and IMPALA do): gives
    /// the rollouts the previous call set going (on the first call, ones
    /// sent now), then sets the next going with `weights` before
    /// returning. Each batch was sampled with the weights of the call
    /// before, one update behind the learner's; a rollout's log-probabilities
    /// are its behavior policy's, for the importance ratio.
    pub fn rollouts_ahead(&mut self, weights: Vec<f32>, steps: usize) -> Result<Vec<Rollout>> {
        let call = |h: &EnvRunnerHandle, w| h.rollout(w, steps);
        let launched = match self.ahead.take() {
            Some((s, l)) if s == steps => l,
            _ => self.launch(weights.clone(), call)?,
        };
        let out = self.collect(launched, call)?;
        self.ahead = Some((steps, self.launch(weights, call)?));
        Ok(out)
    }

    /// Off-policy transitions: `steps` steps per runner with `weights`
    /// (Q-values or a squashed Gaussian), exploring as `explore` says.
    pub fn transitions(&mut self, weights: Vec<f32>, steps: usize, explore: Explore) -> Result<Vec<Transitions>> {
        self.each(weights, |h, w| h.transitions(w, steps, explore))
    }

    /// Greedy evaluation episodes on the first runner.
    fn evaluate(&mut self, weights: Vec<f32>, episodes: usize, seed: u64) -> Result<Episodes> {
        let h = self
            .handles
            .first()
            .ok_or_else(|| Error::config("num_env_runners", "no runner"))?;
        let state = PolicyState {
            weights,
            filter: self.filter.clone(),
        };
        h.evaluate(state, episodes, seed).get().map_err(|e| Error::Runner {
            runner: 0,
            attempts: 1,
            cause: e.user_error::<String>().unwrap_or_else(|| e.to_string()),
        })
    }

    fn stop(&self) {
        for h in &self.handles {
            let _ = rayforge::kill(h);
        }
    }
}

/// What a learner's iteration gives back: the env steps it sampled, the
/// episodes that ended in them, and its losses and statistics (reported
/// as [`IterationResult::learner`]).
#[derive(Debug, Clone, Default)]
pub struct LearnerStep {
    /// Env steps sampled in this iteration.
    pub env_steps: u64,
    /// The episodes that ended in them.
    pub episodes: Episodes,
    /// Losses and statistics, by name.
    pub stats: BTreeMap<String, f64>,
}

/// An algorithm's learner: what samples through the [`Runners`] and
/// updates the networks each iteration (Ray's `Learner` with its
/// algorithm's `training_step`). PPO (and APPO), DQN and SAC are learners; a user's
/// own is registered with [`register_learner`] and picked by
/// [`AlgoConfig::learner`], and [`Algorithm`] gives it everything else —
/// the runners (restarted when one dies) and their observation filter,
/// iterations and their metrics, evaluation, callbacks, checkpoints, Tune.
///
/// The runners act with the network [`crate::policy::Policy::new`] builds
/// from the [`PolicySpec`] the builder is given (an actor-critic for
/// [`Algo::Ppo`] and [`Algo::Appo`], Q-values for [`Algo::Dqn`], a squashed Gaussian for
/// [`Algo::Sac`]), so a learner trains that network and hands its flat
/// weights ([`crate::policy::Policy::weights`]) to the runners.
///
/// ```no_run
/// use std::collections::BTreeMap;
/// use rayforge_rllib::policy::{Policy, PolicySpec};
/// use rayforge_rllib::tch::{nn, nn::OptimizerConfig, Device};
/// use rayforge_rllib::{register_learner, AlgoConfig, Learner, LearnerStep, Result, Runners};
///
/// /// Vanilla policy gradient on PPO's actor-critic network.
/// struct Reinforce { policy: Policy, opt: nn::Optimizer, steps: usize }
///
/// impl Learner for Reinforce {
///     fn step(&mut self, runners: &mut Runners, _env_steps: u64) -> Result<LearnerStep> {
///         let mut out = LearnerStep::default();
///         for r in runners.rollouts(self.policy.weights(), self.steps)? {
///             // ... returns from r.rewards and r.dones, a loss from
///             // self.policy.pi_and_value and log_prob_entropy, a step ...
///             out.env_steps += r.rewards.len() as u64;
///             out.episodes.returns.extend(&r.episodes.returns);
///             out.episodes.lengths.extend(&r.episodes.lengths);
///         }
///         Ok(out)
///     }
///     fn policy_weights(&self) -> Vec<f32> { self.policy.weights() }
///     fn var_stores(&mut self) -> Vec<(&'static str, &mut nn::VarStore)> {
///         vec![("policy.safetensors", &mut self.policy.vs)]
///     }
/// }
///
/// fn reinforce(c: &AlgoConfig, spec: PolicySpec) -> std::result::Result<Box<dyn Learner>, String> {
///     let policy = Policy::new(&spec, Device::Cpu)?;
///     let opt = nn::Adam::default().build(&policy.vs, c.lr).map_err(|e| e.to_string())?;
///     Ok(Box::new(Reinforce { policy, opt, steps: c.rollout_steps }))
/// }
///
/// register_learner("reinforce", reinforce)?;
/// let config = AlgoConfig { learner: Some("reinforce".into()), ..AlgoConfig::default() };
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Learner {
    /// One iteration: samples through the runners and learns. `env_steps`
    /// is the env steps sampled before it (for annealing schedules).
    fn step(&mut self, runners: &mut Runners, env_steps: u64) -> Result<LearnerStep>;

    /// The runners' network's weights, flat (as
    /// [`crate::policy::Policy::weights`]).
    fn policy_weights(&self) -> Vec<f32>;

    /// Its networks' variables, by file name in checkpoints (saved and
    /// restored by the algorithm).
    fn var_stores(&mut self) -> Vec<(&'static str, &mut tch::nn::VarStore)>;

    /// Writes what a resume needs beyond the networks: its optimizers'
    /// moments and step counts, its counters, and its replay buffer when
    /// it has one and `replay`. Nothing by default.
    fn save_state(&self, _w: &mut CheckpointWriter, _replay: bool) -> Result<()> {
        Ok(())
    }

    /// Restores what [`Learner::save_state`] wrote (a file the checkpoint
    /// lacks — an older checkpoint, a buffer left out — leaves that part
    /// fresh). Nothing by default.
    fn load_state(&mut self, _c: &Checkpoint) -> Result<()> {
        Ok(())
    }
}

/// What builds a user's learner from the algorithm's config and the
/// runners' policy (see [`Learner`]); an error names what was wrong. A
/// plain function, so that it travels to the processes of Tune's trials
/// (every process runs the driver's binary).
pub type LearnerBuilder = fn(&AlgoConfig, PolicySpec) -> std::result::Result<Box<dyn Learner>, String>;

static LEARNERS: crate::registry::Registry<LearnerBuilder> = crate::registry::Registry::new("learner");

/// Registers a learner under `name`, for [`AlgoConfig::learner`] (`learner
/// = "name"` in a config file): in this process, and in the cluster it
/// has joined, as [`crate::env::register_env`] does. A name already taken
/// is refused.
pub fn register_learner(name: &str, builder: LearnerBuilder) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("a learner's name cannot be empty".into());
    }
    LEARNERS.register(name, builder)
}

/// Publishes the learners registered before `rayforge::init` (see
/// [`crate::env::publish_registered`]).
pub(crate) fn publish_learners() -> std::result::Result<(), String> {
    LEARNERS.publish_all()
}

/// The learner `name` registered (here or by another process of the
/// program), built.
fn custom_learner(name: &str, config: &AlgoConfig, spec: &PolicySpec) -> Result<Box<dyn Learner>> {
    let builder = LEARNERS.get(name).ok_or_else(|| {
        let known = LEARNERS.names();
        Error::config(
            "learner",
            format!(
                "no learner registered as `{name}` (registered: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        )
    })?;
    let build = builder
        .get()
        .map_err(|e| Error::config("learner", format!("`{name}`: {e}")))?;
    build(config, spec.clone()).map_err(|e| Error::config("learner", format!("`{name}`: {e}")))
}

/// An algorithm on its env runners: [`Algorithm::train`] runs one
/// iteration.
pub struct Algorithm {
    config: AlgoConfig,
    runners: Runners,
    eval_runner: Option<Runners>,
    learner: Box<dyn Learner>,
    iteration: u64,
    env_steps: u64,
    episodes: u64,
    window: VecDeque<(f64, u64)>,
    torch: TorchScope,
    callbacks: Vec<Box<dyn Callbacks>>,
    tracked: Option<Tracked>,
}

/// A run [`Algorithm::track`] tracks.
struct Tracked {
    run: RunInfo,
    callbacks: rayforge::tracking::Callbacks,
    curve: Curve,
    /// The latest iteration's metrics.
    last: BTreeMap<String, f64>,
    published: Option<Instant>,
}

/// How often a tracked run's status is published at most (and at its end).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// The torch state an algorithm works under in the driver — its own
/// random generator (seeded with its config's seed) and one intra-op
/// thread — swapped in around its work and out after, so that building or
/// training an algorithm leaves the process's own torch seed and thread
/// count as they were.
struct TorchScope {
    rng: rayforge_train::rng::RngState,
}

/// What [`TorchScope::enter`] swapped out.
struct Outer {
    rng: rayforge_train::rng::RngState,
    threads: i32,
}

fn rng_error(e: rayforge_train::Error) -> Error {
    Error::Torch(format!("swapping the random state: {e}"))
}

impl TorchScope {
    /// A scope whose generator starts from `seed`.
    fn seeded(seed: u64) -> Result<TorchScope> {
        let outer = rayforge_train::rng::RngState::capture().map_err(rng_error)?;
        tch::manual_seed(seed as i64);
        let rng = rayforge_train::rng::RngState::capture().map_err(rng_error);
        outer.restore().map_err(rng_error)?;
        Ok(TorchScope { rng: rng? })
    }

    fn enter(&self) -> Result<Outer> {
        let outer = Outer {
            rng: rayforge_train::rng::RngState::capture().map_err(rng_error)?,
            threads: tch::get_num_threads(),
        };
        self.rng.restore().map_err(rng_error)?;
        tch::set_num_threads(1);
        Ok(outer)
    }

    fn exit(&mut self, outer: Outer) -> Result<()> {
        let mine = rayforge_train::rng::RngState::capture().map_err(rng_error);
        tch::set_num_threads(outer.threads);
        outer.rng.restore().map_err(rng_error)?;
        self.rng = mine?;
        Ok(())
    }

    /// Runs `f` in the scope.
    fn run<T>(&mut self, f: impl FnOnce() -> T) -> Result<T> {
        let outer = self.enter()?;
        let out = f();
        self.exit(outer)?;
        Ok(out)
    }
}

/// An algorithm dropped without [`Algorithm::stop`] ends its tracked run.
impl Drop for Algorithm {
    fn drop(&mut self) {
        if self.tracked.is_some() {
            self.end_tracking("FINISHED", RunEnd::Finished);
        }
    }
}

impl std::fmt::Debug for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Algorithm")
            .field("config", &self.config)
            .field("iteration", &self.iteration)
            .finish()
    }
}

/// What `algorithm.json` in a checkpoint holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    format_version: u32,
    config: AlgoConfig,
    iteration: u64,
    env_steps: u64,
    episodes: u64,
}

impl Algorithm {
    /// Starts the runners (actors on the cluster `rayforge::init` joined)
    /// and the learner.
    pub fn new(config: AlgoConfig) -> Result<Algorithm> {
        config.validate()?;
        // A registered environment is resolved here, where it was
        // registered: its creator goes to the runners with their spec.
        let env_spec = env::EnvSpec::resolve(&config.env, serde_json::Value::Object(config.env_config.clone()))?;
        let probe = env_spec.make_batch(1)?;
        let action = probe.action_space();
        let obs_dim = probe.observation_space().dim() as i64;
        drop(probe);
        let kind = match (config.algo, &action) {
            (Algo::Ppo | Algo::Appo, _) => PolicyKind::ActorCritic,
            (Algo::Dqn, Space::Discrete(_)) => PolicyKind::QValues {
                dueling: config.dueling,
            },
            (Algo::Sac, Space::Box { .. }) => PolicyKind::SquashedGaussian,
            (Algo::Dqn | Algo::Sac, Space::Mixed { .. }) => {
                return Err(Error::config(
                    "algo",
                    format!(
                        "{:?} needs one kind of action; {} takes discrete and continuous ones at once (mixed: try ppo)",
                        config.algo, config.env
                    ),
                ))
            }
            (Algo::Dqn, Space::MultiDiscrete(_)) => {
                return Err(Error::config(
                    "algo",
                    format!(
                        "DQN needs one discrete action; {} takes several at once (multi-discrete: try ppo)",
                        config.env
                    ),
                ))
            }
            (Algo::Dqn, _) => {
                return Err(Error::config(
                    "algo",
                    format!(
                        "DQN needs discrete actions; {} has continuous ones (try sac)",
                        config.env
                    ),
                ))
            }
            (Algo::Sac, _) => {
                return Err(Error::config(
                    "algo",
                    format!(
                        "SAC needs continuous actions; {} has discrete ones (try dqn or ppo)",
                        config.env
                    ),
                ))
            }
        };
        let model = match (&config.model, config.algo) {
            (None, _) => None,
            (Some(name), Algo::Ppo | Algo::Appo) => Some(
                crate::policy::resolve_model(name, serde_json::Value::Object(config.model_config.clone()))
                    .map_err(|e| Error::config("model", e))?,
            ),
            (Some(_), algo) => {
                return Err(Error::config(
                    "model",
                    format!("custom models are PPO's; {algo:?} builds its own networks"),
                ))
            }
        };
        let policy = PolicySpec {
            kind,
            obs_dim,
            action,
            hidden: config.hidden.clone(),
            model,
        };
        let mut torch = TorchScope::seeded(config.seed)?;
        let spec = |i: usize, seed: u64| RunnerSpec {
            env: env_spec.clone(),
            num_envs: config.num_envs_per_runner,
            seed,
            policy: policy.clone(),
            gamma: config.gamma,
            n_step: if config.algo == Algo::Dqn { config.n_step } else { 1 },
            crash_at_sample: config
                .crash_runner
                .as_ref()
                .filter(|c| c.0 == i)
                .map(|c| (c.1, c.2.clone())),
            obs_filter: config.observation_filter == "MeanStdFilter",
        };
        let filter = (config.observation_filter == "MeanStdFilter").then(|| MeanStd::new(obs_dim as usize));
        let specs = (0..config.num_env_runners)
            .map(|i| spec(i, config.seed.wrapping_mul(1_000_003).wrapping_add(1000 * i as u64)))
            .collect();
        let runners = Runners::start(specs, filter.clone())?;
        let eval_runner = if config.evaluation_interval > 0 {
            let mut s = spec(usize::MAX, config.seed ^ 0xE7A1);
            s.num_envs = 1;
            Some(Runners::start(vec![s], filter)?)
        } else {
            None
        };
        let learner: Box<dyn Learner> = torch.run(|| -> Result<Box<dyn Learner>> {
            Ok(match (&config.learner, config.algo) {
                (Some(name), _) => custom_learner(name, &config, &policy)?,
                (None, Algo::Ppo | Algo::Appo) => Box::new(Ppo::new(&config, &policy)?),
                (None, Algo::Dqn) => Box::new(Dqn::new(&config, &policy)?),
                (None, Algo::Sac) => Box::new(Sac::new(&config, &policy)?),
            })
        })??;
        Ok(Algorithm {
            config,
            runners,
            eval_runner,
            learner,
            iteration: 0,
            env_steps: 0,
            episodes: 0,
            window: VecDeque::new(),
            torch,
            callbacks: Vec::new(),
            tracked: None,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &AlgoConfig {
        &self.config
    }

    /// Training iterations done (a restored algorithm counts on from its
    /// checkpoint's).
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// Environment steps sampled in training over its lifetime (restored
    /// with its checkpoint).
    pub fn env_steps(&self) -> u64 {
        self.env_steps
    }

    /// One iteration: sample through the runners, learn, report. Its
    /// torch work runs under the algorithm's own random generator and one
    /// thread; the process's are as they were when it returns.
    pub fn train(&mut self) -> Result<IterationResult> {
        let outer = self.torch.enter()?;
        let r = self.train_scoped();
        self.torch.exit(outer)?;
        let (mut r, episodes) = match r {
            Ok(r) => r,
            Err(e) => {
                self.end_tracking("FAILED", RunEnd::Failed(e.to_string()));
                return Err(e);
            }
        };
        for cb in &mut self.callbacks {
            for (ret, len) in episodes.returns.iter().zip(&episodes.lengths) {
                cb.on_episode_end(&EpisodeEnd {
                    iteration: r.iteration,
                    episode_return: *ret,
                    length: *len,
                });
            }
            cb.on_train_result(&mut r);
        }
        if let Some(t) = &mut self.tracked {
            let metrics: BTreeMap<String, f64> = r.metrics().into_iter().collect();
            t.curve.push(r.env_steps_lifetime as f64, &metrics);
            t.callbacks.report(&t.run, r.env_steps_lifetime, &metrics);
            t.last = metrics;
            if t.published.is_none_or(|p| p.elapsed() >= PUBLISH_EVERY) {
                self.publish("RUNNING", "");
            }
        }
        Ok(r)
    }

    /// Tracks this algorithm's training as run `name`: each iteration's
    /// metrics go to `callbacks` ([`rayforge::tracking`]: MLflow, a user's
    /// own — plus a TensorBoard event file in `dir` when given) at its
    /// lifetime env steps, each [`Algorithm::save`] as a checkpoint, and
    /// [`Algorithm::stop`] (or a failed iteration) ends the run; the run is
    /// published for the dashboard's RLlib page (its returns and losses
    /// against env steps). `rllib train` tracks each run this way.
    pub fn track(
        &mut self,
        name: &str,
        dir: Option<rayforge::storage::Storage>,
        callbacks: rayforge::tracking::Callbacks,
    ) {
        let mut callbacks = callbacks;
        let mut run =
            RunInfo::new(RunKind::Rllib, name, name).params(serde_json::to_value(&self.config).unwrap_or_default());
        if let Some(dir) = dir {
            callbacks.push(std::sync::Arc::new(rayforge::tracking::TensorBoard::new()));
            run = run.storage(dir);
        }
        callbacks.start(&run);
        self.tracked = Some(Tracked {
            run,
            callbacks,
            curve: Curve::default(),
            last: BTreeMap::new(),
            published: None,
        });
        self.publish("RUNNING", "");
    }

    /// Publishes the tracked run's status for the dashboard (a failure to
    /// is logged, never fatal).
    fn publish(&mut self, state: &str, error: &str) {
        let Some(t) = &mut self.tracked else { return };
        t.published = Some(Instant::now());
        let status = serde_json::json!({
            "status": state,
            "algo": format!("{:?}", self.config.algo),
            "env": self.config.env,
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "error": error,
            "path": t.run.storage.as_ref().map(|s| s.uri().to_string()),
            "metrics": t.last,
            "history": t.curve.to_json(),
        });
        if let Err(e) = rayforge::state::publish("rllib", &t.run.experiment, &status) {
            tracing::debug!("publishing the run for the dashboard: {e}");
        }
    }

    /// Ends the tracked run (once).
    fn end_tracking(&mut self, state: &str, end: RunEnd) {
        let message = match &end {
            RunEnd::Failed(e) => e.clone(),
            _ => String::new(),
        };
        self.publish(state, &message);
        if let Some(t) = self.tracked.take() {
            t.callbacks.end(&t.run, &end);
        }
    }

    /// Adds hooks called on every iteration from now on, after those added
    /// before (see [`Callbacks`]).
    pub fn add_callbacks(&mut self, callbacks: impl Callbacks + 'static) {
        self.callbacks.push(Box::new(callbacks));
    }

    fn train_scoped(&mut self) -> Result<(IterationResult, Episodes)> {
        let start = Instant::now();
        let LearnerStep {
            env_steps: steps,
            episodes,
            stats: learner,
        } = self.learner.step(&mut self.runners, self.env_steps)?;
        self.iteration += 1;
        self.env_steps += steps;
        self.episodes += episodes.returns.len() as u64;
        for (r, l) in episodes.returns.iter().zip(&episodes.lengths) {
            self.window.push_back((*r, *l));
            while self.window.len() > 100 {
                self.window.pop_front();
            }
        }
        let evaluation_return_mean = match &mut self.eval_runner {
            Some(e) if self.iteration.is_multiple_of(self.config.evaluation_interval) => {
                e.filter = self.runners.filter.clone();
                let ep = e.evaluate(
                    self.learner.policy_weights(),
                    self.config.evaluation_episodes,
                    self.config.seed ^ 0xE7A1,
                )?;
                Some(ep.returns.iter().sum::<f64>() / ep.returns.len().max(1) as f64)
            }
            _ => None,
        };
        let n = self.window.len() as f64;
        let returns = self.window.iter().map(|x| x.0);
        let result = IterationResult {
            iteration: self.iteration,
            env_steps_lifetime: self.env_steps,
            env_steps_per_s: steps as f64 / start.elapsed().as_secs_f64().max(1e-9),
            episode_return_mean: if n > 0.0 {
                returns.clone().sum::<f64>() / n
            } else {
                f64::NAN
            },
            episode_return_min: returns.clone().fold(f64::NAN, f64::min),
            episode_return_max: returns.fold(f64::NAN, f64::max),
            episode_len_mean: if n > 0.0 {
                self.window.iter().map(|x| x.1 as f64).sum::<f64>() / n
            } else {
                f64::NAN
            },
            episodes_lifetime: self.episodes,
            learner,
            evaluation_return_mean,
            custom_metrics: BTreeMap::new(),
        };
        Ok((result, episodes))
    }

    /// Trains until `stop`, calling `on_iteration` with each result; the
    /// last result. A stop with only a reward is [`Stop::bounded`]: it
    /// also ends at the config's budget of env steps.
    pub fn run(&mut self, stop: Stop, mut on_iteration: impl FnMut(&IterationResult)) -> Result<IterationResult> {
        if stop == Stop::default() {
            return Err(Error::config(
                "stop",
                "give at least one of stop reward, timesteps or iterations",
            ));
        }
        let stop = stop.bounded(&self.config);
        loop {
            let r = self.train()?;
            on_iteration(&r);
            if stop.reached(&r, self.config.evaluation_interval > 0) {
                return Ok(r);
            }
        }
    }

    /// Greedy episodes with the current policy on fresh environments.
    pub fn evaluate(&mut self, episodes: usize) -> Result<Episodes> {
        let w = self.learner.policy_weights();
        let seed = self.config.seed ^ 0xE7A1;
        match &mut self.eval_runner {
            Some(e) => {
                e.filter = self.runners.filter.clone();
                e.evaluate(w, episodes, seed)
            }
            None => self.runners.evaluate(w, episodes, seed),
        }
    }

    /// The running statistics observations are normalized with (with
    /// `observation_filter = "MeanStdFilter"`): every observation the
    /// training runners have seen, saved in checkpoints.
    pub fn observation_filter(&self) -> Option<&MeanStd> {
        self.runners.filter.as_ref()
    }

    /// Saves the networks and the algorithm's state as a checkpoint in
    /// `dir` (`checkpoint_NNNNNN`, NNNNNN the iteration): a path or a
    /// storage URI (`cluster://...`, `s3://...`; see [`rayforge::storage`]).
    pub fn save(&mut self, dir: impl Into<rayforge::storage::StorageUri>) -> Result<Checkpoint> {
        let dir = rayforge::checkpoint::CheckpointDir::new(dir.into().open()?);
        let w = self.checkpoint_writer()?;
        let metrics = BTreeMap::from([("env_steps_lifetime".to_string(), self.env_steps as f64)]);
        let c = dir.commit(w, self.iteration, &metrics, WRITTEN_BY)?;
        for cb in &mut self.callbacks {
            cb.on_checkpoint(&c);
        }
        if let Some(t) = &self.tracked {
            t.callbacks.checkpoint(&t.run, self.env_steps, &c);
        }
        Ok(c)
    }

    /// The checkpoint's files written into a scratch directory, not yet
    /// committed (for Tune, which commits it with a result).
    pub fn checkpoint_writer(&mut self) -> Result<CheckpointWriter> {
        let mut w = CheckpointWriter::new()?;
        for (name, vs) in self.learner.var_stores() {
            let p = w.file_path(name)?;
            vs.save(&p)?;
        }
        self.learner.save_state(&mut w, self.config.checkpoint_replay_buffer)?;
        if let Some(f) = &self.runners.filter {
            let json = serde_json::to_vec(f).map_err(|e| Error::Runtime(e.to_string()))?;
            w.write(FILTER_FILE, &json)?;
        }
        let saved = Saved {
            format_version: CHECKPOINT_VERSION,
            config: self.config.clone(),
            iteration: self.iteration,
            env_steps: self.env_steps,
            episodes: self.episodes,
        };
        let json = serde_json::to_vec_pretty(&saved).map_err(|e| Error::Runtime(e.to_string()))?;
        w.write("algorithm.json", &json)?;
        Ok(w)
    }

    /// An algorithm rebuilt from a checkpoint (its config, networks and
    /// counters), with fresh runners: `path` is a local path or a storage
    /// URI ([`Checkpoint::load`]).
    pub fn restore(path: &Path) -> Result<Algorithm> {
        Algorithm::restore_with(path, None)
    }

    /// [`Algorithm::restore`] with another config (PBT's explored
    /// parameters); its networks must have the checkpoint's shapes.
    pub fn restore_with(path: &Path, config: Option<AlgoConfig>) -> Result<Algorithm> {
        let c = Checkpoint::load(&path.to_string_lossy())?;
        let bytes = c.read("algorithm.json")?;
        let saved: Saved = serde_json::from_slice(&bytes)
            .map_err(|e| Error::config("checkpoint", format!("{}: algorithm.json: {e}", path.display())))?;
        if saved.format_version > CHECKPOINT_VERSION {
            return Err(Error::config(
                "checkpoint",
                format!(
                    "format version {} is newer than this build reads ({CHECKPOINT_VERSION})",
                    saved.format_version
                ),
            ));
        }
        let mut a = Algorithm::new(config.unwrap_or(saved.config))?;
        for (name, vs) in a.learner.var_stores() {
            vs.load(c.file(name))
                .map_err(|e| Error::config("checkpoint", format!("{}: {name}: {e}", path.display())))?;
        }
        a.learner.load_state(&c)?;
        // A checkpoint without statistics (saved without a filter) leaves
        // them fresh.
        if let (Some(dim), Ok(bytes)) = (a.runners.filter.as_ref().map(|f| f.mean.len()), c.read(FILTER_FILE)) {
            let bad = |m: String| Error::config("checkpoint", format!("{}: {FILTER_FILE}: {m}", path.display()));
            let f: MeanStd = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
            if f.mean.len() != dim || f.m2.len() != dim {
                return Err(bad(format!(
                    "statistics of {} dimensions, observations have {dim}",
                    f.mean.len()
                )));
            }
            a.runners.filter = Some(f);
        }
        a.iteration = saved.iteration;
        a.env_steps = saved.env_steps;
        a.episodes = saved.episodes;
        Ok(a)
    }

    /// Ends the runners (and a tracked run, as finished).
    pub fn stop(mut self) {
        self.end_tracking("FINISHED", RunEnd::Finished);
        self.runners.stop();
        if let Some(e) = &self.eval_runner {
            e.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_with_only_a_reward_is_bounded_by_the_budget() {
        let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
        c.anneal_timesteps = Some(5000);
        let only_reward = Stop {
            reward: Some(500.0),
            ..Stop::default()
        };
        assert_eq!(only_reward.bounded(&c).timesteps, Some(5000));
        c.anneal_timesteps = None;
        assert_eq!(only_reward.bounded(&c).timesteps, Some(DEFAULT_TIMESTEPS));
        let iters = Stop {
            reward: Some(500.0),
            iters: Some(3),
            ..Stop::default()
        };
        assert_eq!(iters.bounded(&c), iters, "already bounded");
    }
}
