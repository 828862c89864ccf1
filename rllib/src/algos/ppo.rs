//! PPO (Schulman et al., 2017) as Stable-Baselines3 and RLlib run it:
//! rollouts from every runner, advantages by GAE, then epochs of shuffled
//! minibatches of the clipped surrogate, the value loss and an entropy
//! bonus, gradients clipped by norm; optionally the learning rate and clip
//! range annealed linearly to zero.
//!
//! APPO (Ray's; Espeholt et al., 2018 for V-trace) is the same learner on
//! batches sampled while it learns ([`crate::Runners::rollouts_ahead`]),
//! with V-trace's targets and advantages, from the current network's
//! values and the importance ratios to the policy that sampled, in place
//! of GAE's.

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
use crate::policy::{Policy, PolicySpec};
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

impl Ppo {
    /// A batch's flat actions as `log_prob_entropy` takes them: an index
    /// per row for a discrete space, a row per action otherwise.
    fn actions_tensor(&self, actions: &[f32]) -> Tensor {
        let space = &self.policy.spec.action;
        let a = tensor2(actions, space.dim() as i64, self.device);
        if matches!(space, Space::Discrete(_)) {
            a.view([-1])
        } else {
            a
        }
    }

    /// APPO: V-trace's advantages and value targets for a rollout, from
    /// this learner's network as it is now.
    fn vtrace_targets(&self, r: &crate::runner::Rollout) -> Result<(Vec<f32>, Vec<f32>)> {
        let dev = self.device;
        let obs_dim = self.policy.spec.obs_dim;
        let (values, logp, bootstrap) = tch::no_grad(|| {
            let (head, v) = self.policy.pi_and_value(&tensor2(&r.obs, obs_dim, dev));
            let (lp, _) = self.policy.log_prob_entropy(&head, &self.actions_tensor(&r.actions));
            let boot = self.policy.value(&tensor2(&r.last_obs, obs_dim, dev));
            (v, lp, boot)
        });
        let flat = |t: Tensor| -> Result<Vec<f32>> {
            Ok(Vec::<f32>::try_from(
                t.reshape([-1]).to_kind(Kind::Float).to_device(Device::Cpu),
            )?)
        };
        let (values, logp, bootstrap) = (flat(values)?, flat(logp)?, flat(bootstrap)?);
        let log_rhos: Vec<f32> = logp.iter().zip(&r.logp).map(|(cur, old)| cur - old).collect();
        let (vs, adv) = vtrace(
            &r.rewards,
            &r.dones,
            &values,
            &bootstrap,
            &log_rhos,
            r.envs,
            self.config.gamma,
        );
        Ok((adv, vs))
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

/// V-trace's value targets and policy-gradient advantages (Espeholt et
/// al., 2018) over a time-major `[steps][envs]` rollout, with the
/// truncation levels ρ̄ = c̄ = 1 (Ray's defaults): `values` and
/// `bootstrap` (after the last step, one per environment) from the
/// learner's current network, `log_rhos` the log importance ratios of the
/// current policy to the one that sampled. `dones` ends an episode after
/// its step.
pub fn vtrace(
    rewards: &[f32],
    dones: &[f32],
    values: &[f32],
    bootstrap: &[f32],
    log_rhos: &[f32],
    envs: usize,
    gamma: f64,
) -> (Vec<f32>, Vec<f32>) {
    let steps = rewards.len() / envs.max(1);
    let (mut vs, mut adv) = (vec![0f32; rewards.len()], vec![0f32; rewards.len()]);
    for (e, boot) in bootstrap.iter().enumerate().take(envs) {
        for t in (0..steps).rev() {
            let i = t * envs + e;
            let not_done = 1.0 - dones[i] as f64;
            let (v_next, vs_next) = if t + 1 == steps {
                (*boot as f64, *boot as f64)
            } else {
                (values[i + envs] as f64, vs[i + envs] as f64)
            };
            let ratio = (log_rhos[i] as f64).exp();
            let (rho, c) = (ratio.min(1.0), ratio.min(1.0));
            let v = values[i] as f64;
            let r = rewards[i] as f64;
            let delta = rho * (r + gamma * not_done * v_next - v);
            vs[i] = (v + delta + gamma * not_done * c * (vs_next - v_next)) as f32;
            adv[i] = (rho * (r + gamma * not_done * vs_next - v)) as f32;
        }
    }
    (vs, adv)
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
        let appo = c.algo == crate::config::Algo::Appo;
        let rollouts = if c.async_sampling || appo {
            runners.rollouts_ahead(self.policy.weights(), c.rollout_steps)?
        } else {
            runners.rollouts(self.policy.weights(), c.rollout_steps)?
        };
        let (mut obs, mut actions, mut logp, mut adv, mut ret) = (vec![], vec![], vec![], vec![], vec![]);
        let mut episodes = Episodes::default();
        let mut steps = 0u64;
        for r in &rollouts {
            let (a, rt) = if appo {
                self.vtrace_targets(r)?
            } else {
                gae(
                    &r.rewards,
                    &r.values,
                    &r.dones,
                    &r.last_values,
                    r.envs,
                    c.gamma,
                    c.gae_lambda,
                )
            };
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
        let actions = self.actions_tensor(&actions);
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

    #[test]
    fn vtrace_on_policy_is_gae_with_lambda_one_and_ratios_are_truncated() {
        // Two envs, three steps; env 0's episode ends after step 1.
        let rewards = [1.0, 0.5, 1.0, 0.0, 1.0, 2.0];
        let dones = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        let values = [0.5, 0.2, 0.4, 0.1, 0.3, 0.6];
        let boot = [2.0, -1.0];
        let (vs, adv) = vtrace(&rewards, &dones, &values, &boot, &[0.0; 6], 2, 0.9);
        let (gae_adv, gae_ret) = gae(&rewards, &values, &dones, &boot, 2, 0.9, 1.0);
        for i in 0..6 {
            assert!((vs[i] - gae_ret[i]).abs() < 1e-6, "{vs:?} vs {gae_ret:?}");
            assert!((adv[i] - gae_adv[i]).abs() < 1e-6, "{adv:?} vs {gae_adv:?}");
        }
        // One step: a ratio above 1 is truncated to 1 (delta = 1 + 1.8 - 0.5
        // = 2.3, the target 0.5 + 2.3); below 1, it scales both.
        let (vs, adv) = vtrace(&[1.0], &[0.0], &[0.5], &[2.0], &[3.0f32], 1, 0.9);
        assert!(
            (vs[0] - 2.8).abs() < 1e-6 && (adv[0] - 2.3).abs() < 1e-6,
            "{vs:?} {adv:?}"
        );
        let (vs, adv) = vtrace(&[1.0], &[0.0], &[0.5], &[2.0], &[0.5f32.ln()], 1, 0.9);
        // delta = 0.5 * (1 + 1.8 - 0.5) = 1.15.
        assert!(
            (vs[0] - 1.65).abs() < 1e-6 && (adv[0] - 1.15).abs() < 1e-6,
            "{vs:?} {adv:?}"
        );
    }
}
