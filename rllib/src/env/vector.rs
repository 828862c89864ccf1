//! Batches of environments stepped together: the [`BatchEnv`] interface
//! that env runners drive, and [`VectorEnv`], N environments of one id in
//! this process.
//!
//! A batch resets an environment as soon as its episode ends, in the same
//! step, as Gymnasium's vector environments do with
//! `autoreset_mode=SAME_STEP`: the step's observation is then the new
//! episode's first, and the ended episode's last observation is kept in
//! [`VectorStep::final_obs`] (a truncated episode's value is bootstrapped
//! from it). Ended episodes are reported with their return and length.

use serde::{Deserialize, Serialize};

use super::{make, Action, Env, EnvError, Space, Step};

/// One step of every environment in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorStep {
    /// Per environment: the observation (the next episode's first when
    /// this step ended one), the reward, and whether the episode
    /// terminated or was truncated at this step.
    pub steps: Vec<Step>,
    /// Per environment: the ended episode's last observation when this step
    /// ended it, else `None`.
    pub final_obs: Vec<Option<Vec<f32>>>,
    /// The episodes that ended at this step.
    pub episodes: Vec<Episode>,
}

/// An episode that ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// The environment's index in the batch.
    pub env: usize,
    /// The sum of its rewards.
    pub total_reward: f64,
    /// Its steps.
    pub length: u64,
    /// Whether it terminated (else it was truncated).
    pub terminated: bool,
}

/// N environments stepped together, in this process ([`VectorEnv`]) or in
/// another ([`ProcessEnv`](super::ProcessEnv)).
pub trait BatchEnv: Send {
    /// How many environments.
    fn num_envs(&self) -> usize;

    /// Each environment's observation space.
    fn observation_space(&self) -> Space;

    /// Each environment's action space.
    fn action_space(&self) -> Space;

    /// Starts an episode in every environment; with a seed, environment
    /// `i` is seeded with `seed + i`. Returns the first observations.
    fn reset(&mut self, seed: Option<u64>) -> Result<Vec<Vec<f32>>, EnvError>;

    /// Applies `actions[i]` to environment `i` (one action each), resetting
    /// those whose episode ends.
    fn step(&mut self, actions: &[Action]) -> Result<VectorStep, EnvError>;
}

/// Running returns and lengths of a batch's episodes.
#[derive(Debug, Clone)]
pub(crate) struct EpisodeTracker {
    returns: Vec<f64>,
    lengths: Vec<u64>,
}

impl EpisodeTracker {
    pub(crate) fn new(n: usize) -> EpisodeTracker {
        EpisodeTracker {
            returns: vec![0.0; n],
            lengths: vec![0; n],
        }
    }

    /// Forgets the running episodes (every environment was reset).
    pub(crate) fn reset(&mut self) {
        self.returns.iter_mut().for_each(|r| *r = 0.0);
        self.lengths.iter_mut().for_each(|l| *l = 0);
    }

    /// Adds environment `i`'s step; returns its episode if the step ended
    /// it (and starts the next).
    pub(crate) fn record(&mut self, i: usize, step: &Step) -> Option<Episode> {
        self.returns[i] += step.reward;
        self.lengths[i] += 1;
        (step.terminated || step.truncated).then(|| Episode {
            env: i,
            total_reward: std::mem::take(&mut self.returns[i]),
            length: std::mem::take(&mut self.lengths[i]),
            terminated: step.terminated,
        })
    }
}

/// Checks that the batch got one action per environment, each of the
/// action space's kind and length (a continuous action out of its bounds
/// is the environment's to clip; NaN is refused).
pub(crate) fn check_actions(actions: &[Action], n: usize, space: &Space) -> Result<(), EnvError> {
    if actions.len() != n {
        return Err(EnvError::BatchSize {
            expected: n,
            got: actions.len(),
        });
    }
    for a in actions {
        let ok = match (space, a) {
            (Space::Discrete(n), Action::Discrete(i)) => i < n,
            (Space::Box { low, .. }, Action::Continuous(v)) => v.len() == low.len() && !v.iter().any(|x| x.is_nan()),
            (Space::MultiDiscrete(_), Action::MultiDiscrete(_)) => space.contains(a),
            (Space::Mixed { discrete: n, low, .. }, Action::Mixed { discrete, continuous }) => {
                Space::MultiDiscrete(n.clone()).contains(&Action::MultiDiscrete(discrete.clone()))
                    && continuous.len() == low.len()
                    && !continuous.iter().any(|x| x.is_nan())
            }
            _ => false,
        };
        if !ok {
            return Err(EnvError::BadAction {
                action: a.clone(),
                space: space.clone(),
            });
        }
    }
    Ok(())
}

/// N environments of one id in this process, stepped in turn.
///
/// ```
/// use rayforge_rllib::env::{Action, BatchEnv, VectorEnv};
///
/// let mut envs = VectorEnv::new("CartPole-v1", 4)?;
/// let obs = envs.reset(Some(0))?; // environment i seeded with 0 + i
/// assert_eq!(obs.len(), 4);
/// let mut ended = 0;
/// for _ in 0..100 {
///     let step = envs.step(&vec![Action::Discrete(1); 4])?;
///     ended += step.episodes.len();
/// }
/// // Always pushing right drops the pole within a few dozen steps.
/// assert!(ended >= 4);
/// # Ok::<(), rayforge_rllib::env::EnvError>(())
/// ```
pub struct VectorEnv {
    id: String,
    envs: Vec<Box<dyn Env>>,
    episodes: EpisodeTracker,
    started: bool,
}

impl std::fmt::Debug for VectorEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorEnv")
            .field("id", &self.id)
            .field("num_envs", &self.envs.len())
            .finish()
    }
}

impl VectorEnv {
    /// `n` environments with Gymnasium id `id` (see [`make`]), to be reset.
    pub fn new(id: &str, n: usize) -> Result<VectorEnv, EnvError> {
        let envs = (0..n).map(|_| make(id)).collect::<Result<Vec<_>, _>>()?;
        Ok(VectorEnv::from_envs(id, envs))
    }

    /// A batch of environments built elsewhere (all of one kind, named
    /// `id`: their spaces are taken from the first).
    pub fn from_envs(id: &str, envs: Vec<Box<dyn Env>>) -> VectorEnv {
        VectorEnv {
            id: id.to_string(),
            episodes: EpisodeTracker::new(envs.len()),
            envs,
            started: false,
        }
    }

    /// The environments' id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl BatchEnv for VectorEnv {
    fn num_envs(&self) -> usize {
        self.envs.len()
    }

    fn observation_space(&self) -> Space {
        match self.envs.first() {
            Some(e) => e.observation_space(),
            None => Space::Box {
                low: vec![],
                high: vec![],
            },
        }
    }

    fn action_space(&self) -> Space {
        match self.envs.first() {
            Some(e) => e.action_space(),
            None => Space::Box {
                low: vec![],
                high: vec![],
            },
        }
    }

    fn reset(&mut self, seed: Option<u64>) -> Result<Vec<Vec<f32>>, EnvError> {
        self.started = true;
        self.episodes.reset();
        Ok(self
            .envs
            .iter_mut()
            .enumerate()
            .map(|(i, e)| e.reset(seed.map(|s| s.wrapping_add(i as u64))))
            .collect())
    }

    fn step(&mut self, actions: &[Action]) -> Result<VectorStep, EnvError> {
        // Checked up front so that a bad action leaves no environment
        // stepped and the others not.
        check_actions(actions, self.envs.len(), &self.action_space())?;
        if !self.started {
            return Err(EnvError::NeedsReset("before reset"));
        }
        let n = self.envs.len();
        let mut out = VectorStep {
            steps: Vec::with_capacity(n),
            final_obs: Vec::with_capacity(n),
            episodes: Vec::new(),
        };
        for (i, (env, action)) in self.envs.iter_mut().zip(actions).enumerate() {
            let mut step = env.step(action)?;
            if let Some(episode) = self.episodes.record(i, &step) {
                out.episodes.push(episode);
                let first = env.reset(None);
                out.final_obs.push(Some(std::mem::replace(&mut step.obs, first)));
            } else {
                out.final_obs.push(None);
            }
            out.steps.push(step);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::CartPole;

    #[test]
    fn env_i_is_seeded_with_seed_plus_i() {
        let mut v = VectorEnv::new("CartPole-v1", 3).unwrap();
        let obs = v.reset(Some(10)).unwrap();
        for (i, o) in obs.iter().enumerate() {
            let mut one = CartPole::new();
            assert_eq!(*o, one.reset(Some(10 + i as u64)));
        }
        assert_ne!(obs[0], obs[1]);
        assert_eq!(v.reset(Some(10)).unwrap(), obs);
    }

    #[test]
    fn an_ended_episode_resets_in_the_same_step_and_is_reported() {
        let mut v = VectorEnv::new("CartPole-v1", 2).unwrap();
        v.reset(Some(0)).unwrap();
        // A single env with the same seed, stepped alongside env 0.
        let mut reference = CartPole::new();
        reference.reset(Some(0));
        let mut length = 0;
        loop {
            // Env 1 keeps pushing the other way: it ends at another time.
            let s = v.step(&[Action::Discrete(1), Action::Discrete(0)]).unwrap();
            let r = reference.step(&Action::Discrete(1)).unwrap();
            length += 1;
            assert_eq!((s.steps[0].reward, s.steps[0].terminated), (r.reward, r.terminated));
            if r.terminated {
                // Same-step autoreset: the last observation is set aside and
                // the step's is the next episode's first (env 0's stream
                // continued, as a reset without a seed).
                assert_eq!(s.final_obs[0].as_deref(), Some(&r.obs[..]));
                assert_eq!(s.steps[0].obs, reference.reset(None));
                let e = s.episodes.iter().find(|e| e.env == 0).unwrap();
                assert_eq!((e.total_reward, e.length, e.terminated), (length as f64, length, true));
                break;
            }
            assert_eq!(s.final_obs[0], None);
            assert_eq!(s.steps[0].obs, r.obs);
        }
        // It goes on stepping; episodes keep being reported.
        let mut ended = 0;
        for _ in 0..200 {
            let s = v.step(&[Action::Discrete(1), Action::Discrete(0)]).unwrap();
            for e in &s.episodes {
                assert!(s.final_obs[e.env].is_some() && e.length > 0 && e.total_reward == e.length as f64);
                ended += 1;
            }
        }
        assert!(ended >= 4, "{ended}");
    }

    #[test]
    fn wrong_batches_are_refused_before_any_env_steps() {
        let mut v = VectorEnv::new("CartPole-v1", 2).unwrap();
        assert!(matches!(
            v.step(&[Action::Discrete(0), Action::Discrete(0)]),
            Err(EnvError::NeedsReset(_))
        ));
        let first = v.reset(Some(1)).unwrap();
        assert_eq!(
            v.step(&[Action::Discrete(0)]),
            Err(EnvError::BatchSize { expected: 2, got: 1 })
        );
        assert!(matches!(
            v.step(&[Action::Discrete(0), Action::Discrete(2)]),
            Err(EnvError::BadAction { .. })
        ));
        // Nothing moved: the next good step is the first.
        let mut one = CartPole::new();
        one.reset(Some(1));
        let s = v.step(&[Action::Discrete(0), Action::Discrete(0)]).unwrap();
        assert_eq!(s.steps[0].obs, one.step(&Action::Discrete(0)).unwrap().obs);
        assert_ne!(s.steps[1].obs, first[1]);
        let mut p = VectorEnv::new("Pendulum-v1", 1).unwrap();
        p.reset(Some(0)).unwrap();
        assert!(p.step(&[Action::Continuous(vec![9.0])]).is_ok(), "clipped, not refused");
        assert!(matches!(
            p.step(&[Action::Continuous(vec![0.0, 0.0])]),
            Err(EnvError::BadAction { .. })
        ));
        assert!(matches!(VectorEnv::new("Nope-v0", 1), Err(EnvError::Unknown(_))));
    }
}
