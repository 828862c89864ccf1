//! PPO (Schulman et al., 2017) as Stable-Baselines3 and RLlib run it:
//! rollouts from every runner, advantages by GAE, then epochs of shuffled
//! minibatches of the clipped surrogate, the value loss and an entropy
//! bonus, gradients clipped by norm; optionally the learning rate and clip
//! range annealed linearly to zero.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayforge::checkpoint::{Checkpoint, CheckpointWriter};
use rayforge_train::optim::{Adam, Optimizer};
use tch::{nn, Device, Kind, Tensor};

use super::{load_optimizer, save_optimizer, scalar, tensor1, tensor2};
use crate::algorithm::{Learner, LearnerStep, Runners};
use crate::config::AlgoConfig;
use crate::env::Space;
use crate::error::Result;
use crate::policy::{action_dim, Policy, PolicySpec};
use crate::runner::Episodes;

/// PPO's learner.
pub(crate) struct Ppo {
    config: AlgoConfig,
    policy: Policy,
    opt: Adam,
    rng: StdRng,
    device: Device,
}

impl Ppo {
    pub(crate) fn new(config: &AlgoConfig, spec: &PolicySpec) -> Result<Ppo> {
        let device = config.torch_device();
        let policy = Policy::new(spec, device).map_err(|e| crate::error::Error::config("model", e))?;
        let opt = Adam::new(&policy.vs, config.lr).eps(1e-5);
        Ok(Ppo {
            config: config.clone(),
            policy,
            opt,
            rng: StdRng::seed_from_u64(config.seed ^ 0x9909),
            device,
        })
    }
}

/// Advantages and returns by GAE (Schulman et al., 2016) over a
/// time-major `[steps][envs]` rollout ([`crate::runner::Rollout`]'s
/// layout): `dones` ends an episode after its step, `last_values` are the
/// values after the last step, one per environment. For a custom
/// [`crate::Learner`] as for PPO's.
pub fn gae(
    rewards: &[f32],
    values: &[f32],
    dones: &[f32],
    last_values: &[f32],
    envs: usize,
    gamma: f64,
    lambda: f64,
) -> (Vec<f32>, Vec<f32>) {
    let steps = rewards.len() / envs.max(1);
    let mut adv = vec![0f32; rewards.len()];
    for (e, last_value) in last_values.iter().enumerate().take(envs) {
        let mut last = 0.0f64;
        for t in (0..steps).rev() {
            let i = t * envs + e;
            let next_value = if t + 1 == steps { *last_value } else { values[i + envs] } as f64;
            let not_done = 1.0 - dones[i] as f64;
            let delta = rewards[i] as f64 + gamma * next_value * not_done - values[i] as f64;
            last = delta + gamma * lambda * not_done * last;
            adv[i] = last as f32;
        }
    }
    let returns = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, returns)
}

impl Learner for Ppo {
    fn step(&mut self, runners: &mut Runners, env_steps: u64) -> Result<LearnerStep> {
        let c = &self.config;
        let progress = c
            .anneal_timesteps
            .map_or(0.0, |t| (env_steps as f64 / t.max(1) as f64).min(1.0));
        let (lr, clip) = if c.anneal_timesteps.is_some() {
            (c.lr * (1.0 - progress), c.clip * (1.0 - progress))
        } else {
            (c.lr, c.clip)
        };
        self.opt.set_lr(lr);
        let rollouts = runners.rollouts(self.policy.weights(), c.rollout_steps)?;
        let (mut obs, mut actions, mut logp, mut adv, mut ret) = (vec![], vec![], vec![], vec![], vec![]);
        let mut episodes = Episodes::default();
        let mut steps = 0u64;
        for r in &rollouts {
            let (a, rt) = gae(
                &r.rewards,
                &r.values,
                &r.dones,
                &r.last_values,
                r.envs,
                c.gamma,
                c.gae_lambda,
            );
            obs.extend(&r.obs);
            actions.extend(&r.actions);
            logp.extend(&r.logp);
            adv.extend(a);
            ret.extend(rt);
            steps += r.rewards.len() as u64;
            episodes.returns.extend(&r.episodes.returns);
            episodes.lengths.extend(&r.episodes.lengths);
        }
        let n = adv.len();
        let dev = self.device;
        let obs = tensor2(&obs, self.policy.spec.obs_dim, dev);
        let act_cols = match &self.policy.spec.action {
            Space::Discrete(_) => 1,
            Space::MultiDiscrete(n) => n.len() as i64,
            Space::Box { .. } => action_dim(&self.policy.spec.action),
        };
        let actions = tensor2(&actions, act_cols, dev);
        let actions = if act_cols == 1 && matches!(self.policy.spec.action, Space::Discrete(_)) {
            actions.view([-1])
        } else {
            actions
        };
        let (logp_old, adv, ret) = (tensor1(&logp, dev), tensor1(&adv, dev), tensor1(&ret, dev));
        let mut stats: BTreeMap<String, f64> = BTreeMap::new();
        let mut count = 0.0;
        let mut order: Vec<i64> = (0..n as i64).collect();
        for _ in 0..c.num_epochs {
            order.shuffle(&mut self.rng);
            for chunk in order.chunks(c.minibatch_size) {
                let idx = Tensor::from_slice(chunk).to_device(dev);
                let (o, a, lo, ad, rt) = (
                    obs.index_select(0, &idx),
                    actions.index_select(0, &idx),
                    logp_old.index_select(0, &idx),
                    adv.index_select(0, &idx),
                    ret.index_select(0, &idx),
                );
                let ad = if chunk.len() > 1 {
                    (&ad - ad.mean(Kind::Float)) / (ad.std(true) + 1e-8)
                } else {
                    ad
                };
                let (head, v) = self.policy.pi_and_value(&o);
                let (lp, ent) = self.policy.log_prob_entropy(&head, &a);
                let ratio = (&lp - &lo).exp();
                let pg = -(&ratio * &ad)
                    .minimum(&(ratio.clamp(1.0 - clip, 1.0 + clip) * &ad))
                    .mean(Kind::Float);
                let vf = (&rt - &v).square().mean(Kind::Float);
                let ent = ent.mean(Kind::Float);
                let loss = &pg + &vf * c.vf_coef - &ent * c.ent_coef;
                self.opt.zero_grad();
                loss.backward();
                self.opt.clip_grad_norm(c.max_grad_norm);
                self.opt.step().map_err(|e| crate::error::Error::Torch(e.to_string()))?;
                let kl = tch::no_grad(|| ((&ratio - 1.0) - ratio.log()).mean(Kind::Float));
                for (k, t) in [
                    ("policy_loss", &pg),
                    ("vf_loss", &vf),
                    ("entropy", &ent),
                    ("approx_kl", &kl),
                ] {
                    *stats.entry(k.into()).or_insert(0.0) += scalar(t);
                }
                count += 1.0;
            }
        }
        for v in stats.values_mut() {
            *v /= count;
        }
        stats.insert("lr".into(), lr);
        Ok(LearnerStep {
            env_steps: steps,
            episodes,
            stats,
        })
    }

    fn policy_weights(&self) -> Vec<f32> {
        self.policy.weights()
    }

    fn var_stores(&mut self) -> Vec<(&'static str, &mut nn::VarStore)> {
        vec![("policy.safetensors", &mut self.policy.vs)]
    }

    fn save_state(&self, w: &mut CheckpointWriter, _replay: bool) -> Result<()> {
        save_optimizer(&self.opt, w, "optimizer.pt")
    }

    fn load_state(&mut self, c: &Checkpoint) -> Result<()> {
        load_optimizer(&mut self.opt, c, "optimizer.pt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_discounts_within_episodes_and_bootstraps_at_the_end() {
        // One env, three steps; the episode ends after step 1.
        let (adv, ret) = gae(
            &[1.0, 1.0, 1.0],
            &[0.5, 0.5, 0.5],
            &[0.0, 1.0, 0.0],
            &[2.0],
            1,
            0.9,
            1.0,
        );
        // Step 2: 1 + 0.9 * 2 - 0.5 = 2.3. Step 1 ends: 1 - 0.5 = 0.5.
        // Step 0: delta 1 + 0.45 - 0.5 = 0.95, plus 0.9 * 0.5.
        let want = [0.95 + 0.45, 0.5, 2.3];
        for (a, w) in adv.iter().zip(want) {
            assert!((*a as f64 - w).abs() < 1e-6, "{adv:?}");
        }
        assert!((ret[2] - 2.8).abs() < 1e-6);
    }
}
