//! Env runners: actors, each stepping its own vector of environments with
//! the latest policy weights (tch inference on the CPU, no Python). A
//! `sample` call returns a batch through the object store: a rollout for
//! PPO, or transitions for the off-policy algorithms.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::env::{self, Action, BatchEnv, Space};
use crate::filter::{MeanStd, RunnerFilter};
use crate::policy::{self, Policy, PolicyKind, PolicySpec};

/// How a runner is built.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunnerSpec {
    /// The environment (for a registered one, its creator and config).
    pub env: env::EnvSpec,
    /// Environments it steps.
    pub num_envs: usize,
    /// Its seed (environment `i` is reset first with `seed + i`).
    pub seed: u64,
    /// Its network.
    pub policy: PolicySpec,
    /// The discount (for bootstrapping truncated episodes and n-step
    /// returns).
    pub gamma: f64,
    /// Steps summed into one transition (DQN's n-step returns; 1 for
    /// plain transitions).
    pub n_step: usize,
    /// Testing aid: the runner kills its own process once (remembered by
    /// this marker file) in the middle of this sample call (1-based).
    pub crash_at_sample: Option<(u64, String)>,
    /// Normalize observations with running statistics
    /// ([`crate::filter`]; `observation_filter = "MeanStdFilter"`).
    pub obs_filter: bool,
}

/// What a sampling call acts with: the policy's weights and, with an
/// observation filter, the algorithm's statistics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyState {
    /// The network's weights, flattened.
    pub weights: Vec<f32>,
    /// The observation statistics to normalize with.
    pub filter: Option<MeanStd>,
}

/// A batch that carries the observation statistics its runner gathered.
pub trait FilterDelta {
    /// Takes them out of the batch (`None` without a filter).
    fn take_filter_delta(&mut self) -> Option<MeanStd>;
}

/// How to act in a `sample` call.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Explore {
    /// Draw from the policy (PPO, SAC).
    Sample,
    /// The policy's best action (evaluation).
    Greedy,
    /// Epsilon-greedy (DQN).
    Epsilon(f64),
    /// Uniformly random actions (SAC's warm-up).
    Random,
}

/// Episodes that ended during a call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Episodes {
    /// Their returns.
    pub returns: Vec<f64>,
    /// Their lengths.
    pub lengths: Vec<u64>,
}

/// PPO's rollout: `steps` steps of each of `envs` environments, time-major
/// (`[step][env]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rollout {
    /// Steps per environment.
    pub steps: usize,
    /// Environments.
    pub envs: usize,
    /// Observations, flattened.
    pub obs: Vec<f32>,
    /// Actions (an index, or a vector), flattened.
    pub actions: Vec<f32>,
    /// Log-probabilities of the actions when taken.
    pub logp: Vec<f32>,
    /// Value estimates when taken.
    pub values: Vec<f32>,
    /// Rewards (a truncated episode's last one includes the discounted
    /// value of where it was cut).
    pub rewards: Vec<f32>,
    /// Whether the episode ended at the step.
    pub dones: Vec<f32>,
    /// The value of each environment's observation after the last step.
    pub last_values: Vec<f32>,
    /// Those observations, `[envs][obs_dim]` flat (as the policy saw them),
    /// for a learner that values them with its own weights (APPO's
    /// V-trace).
    #[serde(default)]
    pub last_obs: Vec<f32>,
    /// The episodes that ended.
    pub episodes: Episodes,
    /// The raw observations' statistics gathered (with a filter).
    pub filter_delta: Option<MeanStd>,
}

impl FilterDelta for Rollout {
    fn take_filter_delta(&mut self) -> Option<MeanStd> {
        self.filter_delta.take()
    }
}

impl FilterDelta for Transitions {
    fn take_filter_delta(&mut self) -> Option<MeanStd> {
        self.filter_delta.take()
    }
}

impl FilterDelta for Episodes {
    fn take_filter_delta(&mut self) -> Option<MeanStd> {
        None
    }
}

/// Off-policy transitions (`n_step` steps each; `discount` is `gamma^k`
/// for the `k` steps summed).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Transitions {
    /// Observations, flattened.
    pub obs: Vec<f32>,
    /// Actions, flattened.
    pub actions: Vec<f32>,
    /// Discounted reward sums.
    pub rewards: Vec<f32>,
    /// Observations after, flattened.
    pub next_obs: Vec<f32>,
    /// 1 where the episode terminated (no bootstrap).
    pub terminated: Vec<f32>,
    /// The discount to apply to the bootstrap value.
    pub discount: Vec<f32>,
    /// Environment steps taken.
    pub env_steps: u64,
    /// The episodes that ended.
    pub episodes: Episodes,
    /// The raw observations' statistics gathered (with a filter).
    pub filter_delta: Option<MeanStd>,
}

/// One environment step waiting to be folded into n-step transitions.
#[derive(Debug, Clone)]
struct Pending {
    obs: Vec<f32>,
    action: Vec<f32>,
    reward: f64,
}

/// An env runner's process.
#[rayforge::actor]
pub struct EnvRunner {
    spec: RunnerSpec,
    envs: Option<Box<dyn BatchEnv>>,
    obs: Vec<Vec<f32>>,
    policy: Policy,
    rng: StdRng,
    windows: Vec<VecDeque<Pending>>,
    samples: u64,
    /// Why its environments could not be made (reported by every call).
    broken: Option<String>,
    /// Its observation filter, when it normalizes.
    filter: Option<RunnerFilter>,
}

#[rayforge::actor]
impl EnvRunner {
    /// Builds its environments (reset with its seed: environment `i` with
    /// `seed + i`) and its network.
    fn new(spec: RunnerSpec) -> Self {
        tch::set_num_threads(1);
        let (envs, obs, broken) = match spec.env.make_batch(spec.num_envs) {
            Ok(mut e) => match e.reset(Some(spec.seed)) {
                Ok(obs) => (Some(e), obs, None),
                Err(err) => (None, Vec::new(), Some(err.to_string())),
            },
            Err(err) => (None, Vec::new(), Some(err.to_string())),
        };
        let (policy, broken) = match Policy::new(&spec.policy, Device::Cpu) {
            Ok(p) => (p, broken),
            // The learner built the same network first: only a builder that
            // behaves differently here fails, and every call reports it.
            Err(e) => (Policy::builtin(&spec.policy, Device::Cpu), Some(e)),
        };
        let mut filter = spec.obs_filter.then(|| RunnerFilter::new(spec.policy.obs_dim as usize));
        let obs = match &mut filter {
            Some(f) => obs.iter().map(|o| f.observe(o)).collect(),
            None => obs,
        };
        EnvRunner {
            filter,
            rng: StdRng::seed_from_u64(spec.seed ^ 0xA5A5_5A5A),
            windows: vec![VecDeque::new(); spec.num_envs],
            samples: 0,
            broken,
            spec,
            envs,
            obs,
            policy,
        }
    }

    /// PPO: `steps` steps of every environment with `weights`.
    fn rollout(&mut self, state: PolicyState, steps: usize) -> Result<Rollout, String> {
        self.begin(&state)?;
        let n = self.obs.len();
        let mut r = Rollout {
            steps,
            envs: n,
            ..Default::default()
        };
        for s in 0..steps {
            self.maybe_crash(s >= steps / 2);
            let x = self.obs_tensor();
            let (head, values) = tch::no_grad(|| self.policy.pi_and_value(&x));
            let values = policy::rows(&values);
            let actions = self.draw_ppo(&head);
            let logp = tch::no_grad(|| {
                let a = Tensor::from_slice(&actions.concat()).view([n as i64, -1]);
                let a = if matches!(self.spec.policy.action, Space::Discrete(_)) {
                    a.view([-1])
                } else {
                    a
                };
                self.policy.log_prob_entropy(&head, &a).0
            });
            let logp = policy::rows(&logp);
            let before = std::mem::take(&mut self.obs);
            let vs = self.step_all(&actions, &mut r.episodes)?;
            for i in 0..n {
                r.obs.extend(&before[i]);
                r.actions.extend(&actions[i]);
                r.logp.push(logp[i][0]);
                r.values.push(values[i][0]);
                let step = &vs.steps[i];
                let mut reward = step.reward;
                if bootstraps(step) {
                    if let Some(last) = &vs.final_obs[i] {
                        let v = tch::no_grad(|| self.policy.value(&Tensor::from_slice(last).view([1, -1])));
                        reward += self.spec.gamma * v.double_value(&[0]);
                    }
                }
                r.rewards.push(reward as f32);
                r.dones.push((step.terminated || step.truncated) as u8 as f32);
            }
        }
        let v = tch::no_grad(|| self.policy.value(&self.obs_tensor()));
        r.last_values = policy::rows(&v).into_iter().map(|x| x[0]).collect();
        r.last_obs = self.obs.concat();
        r.filter_delta = self.filter.as_mut().map(RunnerFilter::take_delta);
        Ok(r)
    }

    /// The off-policy algorithms: `steps` steps of every environment,
    /// acting as `explore` says, as (n-step) transitions.
    fn transitions(&mut self, state: PolicyState, steps: usize, explore: Explore) -> Result<Transitions, String> {
        self.begin(&state)?;
        let mut t = Transitions::default();
        for s in 0..steps {
            self.maybe_crash(s >= steps / 2);
            let actions = self.act(explore);
            let before = std::mem::take(&mut self.obs);
            let vs = self.step_all(&actions, &mut t.episodes)?;
            for (i, (obs, action)) in before.into_iter().zip(&actions).enumerate() {
                let step = &vs.steps[i];
                t.env_steps += 1;
                self.windows[i].push_back(Pending {
                    obs,
                    action: action.clone(),
                    reward: step.reward,
                });
                let next_obs = vs.final_obs[i].as_ref().unwrap_or(&step.obs);
                let ended = step.terminated || step.truncated;
                // A full window gives its oldest step's n-step transition;
                // an ended episode gives all of its window's.
                while self.windows[i].len() >= self.spec.n_step.max(1) || (ended && !self.windows[i].is_empty()) {
                    let (mut ret, mut disc) = (0.0, 1.0);
                    for p in &self.windows[i] {
                        ret += disc * p.reward;
                        disc *= self.spec.gamma;
                    }
                    let Some(first) = self.windows[i].pop_front() else {
                        break;
                    };
                    t.obs.extend(&first.obs);
                    t.actions.extend(&first.action);
                    t.rewards.push(ret as f32);
                    t.next_obs.extend(next_obs);
                    t.terminated.push(step.terminated as u8 as f32);
                    t.discount.push(disc as f32);
                }
            }
        }
        t.filter_delta = self.filter.as_mut().map(RunnerFilter::take_delta);
        Ok(t)
    }

    /// Plays `episodes` whole episodes greedily with `weights` on fresh
    /// environments (evaluation); their returns and lengths.
    fn evaluate(&mut self, state: PolicyState, episodes: usize, seed: u64) -> Result<Episodes, String> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        self.policy.set_weights(&state.weights)?;
        // Evaluation normalizes with the statistics it was sent and adds
        // nothing to them.
        let normalize = |o: Vec<f32>| match &state.filter {
            Some(f) => f.normalize(&o),
            None => o,
        };
        let mut out = Episodes::default();
        let mut e = self.spec.env.make_batch(1).map_err(|e| e.to_string())?;
        for k in 0..episodes {
            let mut obs: Vec<Vec<f32>> = e
                .reset(Some(seed + k as u64))
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(normalize)
                .collect();
            loop {
                let a = self.act_one(obs.first().map_or(&[][..], |o| o.as_slice()), Explore::Greedy);
                let s = e.step(&[a]).map_err(|e| e.to_string())?;
                if let Some(ep) = s.episodes.first() {
                    out.returns.push(ep.total_reward);
                    out.lengths.push(ep.length);
                    break;
                }
                obs = s.steps.into_iter().map(|s| normalize(s.obs)).collect();
            }
        }
        Ok(out)
    }
}

impl EnvRunner {
    fn begin(&mut self, state: &PolicyState) -> Result<(), String> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        self.samples += 1;
        if let (Some(f), Some(global)) = (&mut self.filter, &state.filter) {
            f.sync(global);
        }
        self.policy.set_weights(&state.weights)
    }

    /// Testing aid: dies once, halfway through the configured call.
    fn maybe_crash(&self, halfway: bool) {
        if let Some((at, marker)) = &self.spec.crash_at_sample {
            if halfway && self.samples == *at && std::fs::metadata(marker).is_err() {
                let _ = std::fs::write(marker, b"crashed once");
                std::process::abort();
            }
        }
    }

    fn obs_tensor(&self) -> Tensor {
        let flat: Vec<f32> = self.obs.concat();
        Tensor::from_slice(&flat).view([self.obs.len() as i64, -1])
    }

    /// Steps every environment (those whose episode ends are reset);
    /// records the ended episodes and the new observations.
    fn step_all(&mut self, actions: &[Vec<f32>], episodes: &mut Episodes) -> Result<env::VectorStep, String> {
        let actions: Vec<Action> = actions.iter().map(|a| to_action(&self.spec.policy.action, a)).collect();
        let envs = self.envs.as_mut().ok_or("the runner has no environments")?;
        let mut vs = envs.step(&actions).map_err(|e| e.to_string())?;
        // What the policy sees: the observations normalized (an ended
        // episode's last one and the next one's first both count).
        if let Some(f) = &mut self.filter {
            for last in vs.final_obs.iter_mut().flatten() {
                *last = f.observe(last);
            }
            for step in &mut vs.steps {
                step.obs = f.observe(&step.obs);
            }
        }
        for ep in &vs.episodes {
            episodes.returns.push(ep.total_reward);
            episodes.lengths.push(ep.length);
        }
        self.obs = vs.steps.iter().map(|s| s.obs.clone()).collect();
        Ok(vs)
    }

    /// PPO's actions drawn from the policy head's output.
    fn draw_ppo(&mut self, head: &Tensor) -> Vec<Vec<f32>> {
        if let Space::Mixed { discrete, low, .. } = &self.spec.policy.action {
            // The choices' categorical draws, then the box's Gaussian ones.
            let logits_len = discrete.iter().sum::<usize>() as i64;
            let probs: Vec<Vec<Vec<f32>>> = policy::split_logits(&head.narrow(-1, 0, logits_len), discrete)
                .iter()
                .map(|l| policy::rows(&l.softmax(-1, Kind::Float)))
                .collect();
            let means = policy::rows(&head.narrow(-1, logits_len, low.len() as i64));
            let std: Vec<f32> = match self.policy.log_std() {
                Some(s) => policy::rows(&s.exp().view([1, -1])).concat(),
                None => vec![1.0; low.len()],
            };
            return means
                .iter()
                .enumerate()
                .map(|(row, m)| {
                    let mut a: Vec<f32> = probs
                        .iter()
                        .map(|p| policy::categorical(&mut self.rng, &p[row]) as f32)
                        .collect();
                    a.extend(
                        m.iter()
                            .zip(&std)
                            .map(|(m, s)| m + s * policy::normal(&mut self.rng) as f32),
                    );
                    a
                })
                .collect();
        }
        if let Space::MultiDiscrete(n) = &self.spec.policy.action {
            // One categorical draw per choice.
            let probs: Vec<Vec<Vec<f32>>> = policy::split_logits(head, n)
                .iter()
                .map(|l| policy::rows(&l.softmax(-1, Kind::Float)))
                .collect();
            return (0..head.size()[0] as usize)
                .map(|row| {
                    probs
                        .iter()
                        .map(|p| policy::categorical(&mut self.rng, &p[row]) as f32)
                        .collect()
                })
                .collect();
        }
        match self.policy.log_std() {
            None => {
                let p = policy::rows(&head.softmax(-1, Kind::Float));
                p.iter()
                    .map(|p| vec![policy::categorical(&mut self.rng, p) as f32])
                    .collect()
            }
            Some(log_std) => {
                let std: Vec<f32> = policy::rows(&log_std.exp().view([1, -1])).concat();
                policy::rows(head)
                    .into_iter()
                    .map(|m| {
                        m.iter()
                            .zip(&std)
                            .map(|(m, s)| m + s * policy::normal(&mut self.rng) as f32)
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// Every environment's action, as `explore` says.
    fn act(&mut self, explore: Explore) -> Vec<Vec<f32>> {
        let obs = self.obs.clone();
        obs.iter().map(|o| self.act_one_vec(o, explore)).collect()
    }

    fn act_one(&mut self, obs: &[f32], explore: Explore) -> Action {
        let v = self.act_one_vec(obs, explore);
        to_action(&self.spec.policy.action, &v)
    }

    /// One action as a vector (an index for a discrete space).
    fn act_one_vec(&mut self, obs: &[f32], explore: Explore) -> Vec<f32> {
        let space = self.spec.policy.action.clone();
        if let Explore::Random = explore {
            return random_action(&space, &mut self.rng);
        }
        let x = Tensor::from_slice(obs).view([1, -1]);
        match (&self.spec.policy.kind, &space) {
            (PolicyKind::QValues { .. }, Space::Discrete(n)) => {
                if let Explore::Epsilon(eps) = explore {
                    if self.rng.random::<f64>() < eps {
                        return vec![self.rng.random_range(0..*n) as f32];
                    }
                }
                let q = tch::no_grad(|| self.policy.q_values(&x));
                vec![q.argmax(-1, false).int64_value(&[0]) as f32]
            }
            (PolicyKind::SquashedGaussian, Space::Box { low, high }) => {
                let (mean, log_std) = tch::no_grad(|| self.policy.gaussian(&x));
                let (mean, std) = (policy::rows(&mean).concat(), policy::rows(&log_std.exp()).concat());
                mean.iter()
                    .zip(&std)
                    .zip(low.iter().zip(high))
                    .map(|((m, s), (l, h))| {
                        let u = match explore {
                            Explore::Greedy => *m as f64,
                            _ => *m as f64 + *s as f64 * policy::normal(&mut self.rng),
                        };
                        // tanh squashes into (-1, 1), scaled to the bounds.
                        let y = u.tanh() as f32;
                        l + (y + 1.0) * 0.5 * (h - l)
                    })
                    .collect()
            }
            (PolicyKind::ActorCritic, _) => {
                let (head, _) = tch::no_grad(|| self.policy.pi_and_value(&x));
                match explore {
                    Explore::Greedy => match &space {
                        Space::Discrete(_) => vec![head.argmax(-1, false).int64_value(&[0]) as f32],
                        Space::Box { .. } => policy::rows(&head).concat(),
                        Space::MultiDiscrete(n) => policy::split_logits(&head, n)
                            .iter()
                            .map(|l| l.argmax(-1, false).int64_value(&[0]) as f32)
                            .collect(),
                        Space::Mixed { discrete, low, .. } => {
                            let logits_len = discrete.iter().sum::<usize>() as i64;
                            let mut a: Vec<f32> = policy::split_logits(&head.narrow(-1, 0, logits_len), discrete)
                                .iter()
                                .map(|l| l.argmax(-1, false).int64_value(&[0]) as f32)
                                .collect();
                            a.extend(policy::rows(&head.narrow(-1, logits_len, low.len() as i64)).concat());
                            a
                        }
                    },
                    _ => self.draw_ppo(&head).concat(),
                }
            }
            _ => random_action(&space, &mut self.rng),
        }
    }
}

/// A uniformly random action of `space` as a vector.
fn random_action(space: &Space, rng: &mut StdRng) -> Vec<f32> {
    match space {
        Space::Discrete(n) => vec![rng.random_range(0..(*n).max(1)) as f32],
        Space::Box { low, high } => low.iter().zip(high).map(|(l, h)| rng.random_range(*l..=*h)).collect(),
        Space::MultiDiscrete(n) => n.iter().map(|n| rng.random_range(0..(*n).max(1)) as f32).collect(),
        Space::Mixed { discrete, low, high } => {
            let mut a: Vec<f32> = discrete
                .iter()
                .map(|n| rng.random_range(0..(*n).max(1)) as f32)
                .collect();
            a.extend(low.iter().zip(high).map(|(l, h)| rng.random_range(*l..=*h)));
            a
        }
    }
}

/// An action vector (as batches carry it) as the environment takes it: an
/// index, indices, or a vector clipped to the box.
fn to_action(space: &Space, a: &[f32]) -> Action {
    match space {
        Space::Discrete(_) => Action::Discrete(a.first().copied().unwrap_or(0.0) as usize),
        Space::Box { low, high } => Action::Continuous(
            a.iter()
                .zip(low.iter().zip(high))
                .map(|(x, (l, h))| x.clamp(*l, *h))
                .collect(),
        ),
        Space::MultiDiscrete(_) => Action::MultiDiscrete(a.iter().map(|x| *x as usize).collect()),
        Space::Mixed { discrete, low, high } => {
            let (d, c) = a.split_at(discrete.len().min(a.len()));
            Action::Mixed {
                discrete: d.iter().map(|x| *x as usize).collect(),
                continuous: c
                    .iter()
                    .zip(low.iter().zip(high))
                    .map(|(x, (l, h))| x.clamp(*l, *h))
                    .collect(),
            }
        }
    }
}

/// Whether a step's reward takes the discounted value of where the episode
/// was cut: only when it was cut short (truncated, at a time limit) and did
/// not also end (terminated) — a step that is both ended for real, and the
/// value after an end is 0 (as Stable-Baselines3).
fn bootstraps(step: &crate::env::Step) -> bool {
    step.truncated && !step.terminated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_truncated_step_that_did_not_terminate_bootstraps() {
        let step = |terminated, truncated| crate::env::Step {
            obs: vec![0.0],
            reward: 1.0,
            terminated,
            truncated,
        };
        assert!(bootstraps(&step(false, true)), "cut short at the time limit");
        assert!(
            !bootstraps(&step(true, true)),
            "ended on the limit's step: no value after"
        );
        assert!(!bootstraps(&step(true, false)));
        assert!(!bootstraps(&step(false, false)));
    }
}
