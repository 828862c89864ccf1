//! SAC (Haarnoja et al., 2018) for continuous actions: a tanh-squashed
//! Gaussian actor, twin Q critics with Polyak-averaged targets, and the
//! entropy temperature tuned to a target entropy of `-dim(actions)`.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rayforge::checkpoint::{Checkpoint, CheckpointWriter};
use rayforge_train::optim::{Adam, Optimizer};
use tch::nn::Module;
use tch::{nn, Device, Kind, Tensor};

use super::{load_optimizer, save_optimizer, scalar, Replay};
use crate::algorithm::{Learner, LearnerStep, Runners};
use crate::config::AlgoConfig;
use crate::env::Space;
use crate::error::{Error, Result};
use crate::policy::{action_dim, mlp, Policy, PolicySpec};
use crate::runner::Explore;

/// Twin critics `Q(s, a)`.
struct Critics {
    vs: nn::VarStore,
    q1: nn::Sequential,
    q2: nn::Sequential,
}

impl Critics {
    fn new(obs: i64, act: i64, hidden: &[i64], device: Device) -> Critics {
        let vs = nn::VarStore::new(device);
        let dims: Vec<i64> = std::iter::once(obs + act)
            .chain(hidden.iter().copied())
            .chain([1])
            .collect();
        let q1 = mlp(&(vs.root() / "q1"), &dims, true, None);
        let q2 = mlp(&(vs.root() / "q2"), &dims, true, None);
        Critics { vs, q1, q2 }
    }

    fn q(&self, obs: &Tensor, act: &Tensor) -> (Tensor, Tensor) {
        let x = Tensor::cat(&[obs, act], -1);
        (self.q1.forward(&x).squeeze_dim(-1), self.q2.forward(&x).squeeze_dim(-1))
    }
}

/// SAC's learner.
pub(crate) struct Sac {
    config: AlgoConfig,
    actor: Policy,
    critics: Critics,
    targets: Critics,
    alpha_vs: nn::VarStore,
    log_alpha: Tensor,
    actor_opt: Adam,
    critic_opt: Adam,
    alpha_opt: Adam,
    replay: Replay,
    rng: StdRng,
    device: Device,
    /// Actions are `low + (tanh(u) + 1) / 2 * (high - low)`.
    scale: Tensor,
    offset: Tensor,
}

impl Sac {
    pub(crate) fn new(config: &AlgoConfig, spec: &PolicySpec) -> Result<Sac> {
        let device = config.torch_device();
        let Space::Box { low, high } = &spec.action else {
            return Err(Error::config("algo", "SAC needs continuous actions"));
        };
        let a = action_dim(&spec.action);
        let actor = Policy::new(spec, device).map_err(|e| crate::error::Error::config("model", e))?;
        let critics = Critics::new(spec.obs_dim, a, &config.hidden, device);
        let mut targets = Critics::new(spec.obs_dim, a, &config.hidden, device);
        targets.vs.copy(&critics.vs)?;
        let alpha_vs = nn::VarStore::new(device);
        let log_alpha = alpha_vs.root().var("log_alpha", &[1], nn::Init::Const(0.0));
        let half: Vec<f32> = low.iter().zip(high).map(|(l, h)| (h - l) / 2.0).collect();
        let mid: Vec<f32> = low.iter().zip(high).map(|(l, h)| (h + l) / 2.0).collect();
        Ok(Sac {
            actor_opt: Adam::new(&actor.vs, config.lr),
            critic_opt: Adam::new(&critics.vs, config.lr),
            alpha_opt: Adam::new(&alpha_vs, config.lr),
            replay: Replay::new(config.buffer_size, spec.obs_dim as usize, a as usize),
            rng: StdRng::seed_from_u64(config.seed ^ 0x5AC),
            scale: Tensor::from_slice(&half).to_device(device),
            offset: Tensor::from_slice(&mid).to_device(device),
            config: config.clone(),
            actor,
            critics,
            targets,
            alpha_vs,
            log_alpha,
            device,
        })
    }

    /// A reparameterised action for `obs` (scaled to the bounds) and its
    /// log-probability.
    fn sample_action(&self, obs: &Tensor) -> (Tensor, Tensor) {
        let (mean, log_std) = self.actor.gaussian(obs);
        let std = log_std.exp();
        let u = &mean + &std * mean.randn_like();
        let y = u.tanh();
        let normal_logp = (-((&u - &mean) / &std).square() / 2.0 - &log_std - 0.5 * (2.0 * std::f64::consts::PI).ln())
            .sum_dim_intlist(-1, false, Kind::Float);
        // The change of variables through tanh and the scaling.
        let correction = ((-y.square() + 1.0) * &self.scale + 1e-6)
            .log()
            .sum_dim_intlist(-1, false, Kind::Float);
        (&y * &self.scale + &self.offset, normal_logp - correction)
    }
}

impl Learner for Sac {
    fn step(&mut self, runners: &mut Runners, env_steps: u64) -> Result<LearnerStep> {
        let c = self.config.clone();
        let explore = if env_steps < c.learning_starts {
            Explore::Random
        } else {
            Explore::Sample
        };
        let (steps, episodes) = self
            .replay
            .fill(runners, self.actor.weights(), c.sample_steps, explore)?;
        let mut stats = BTreeMap::new();
        if env_steps + steps < c.learning_starts || self.replay.len() < c.batch_size {
            return Ok(LearnerStep {
                env_steps: steps,
                episodes,
                stats,
            });
        }
        let target_entropy = -(self.scale.size()[0] as f64);
        let (mut lq, mut lpi, mut la) = (0.0, 0.0, 0.0);
        // As many gradient steps as env steps sampled, as SAC's one update
        // per step.
        let updates = (steps as usize)
            .min(c.train_steps.max(1) * c.num_env_runners.max(1))
            .max(1);
        for _ in 0..updates {
            let b = self.replay.sample(c.batch_size, &mut self.rng, self.device);
            let alpha = self.log_alpha.exp().detach();
            let target = tch::no_grad(|| {
                let (a2, logp2) = self.sample_action(&b.next_obs);
                let (t1, t2) = self.targets.q(&b.next_obs, &a2);
                let v = t1.minimum(&t2) - &alpha * logp2;
                &b.rewards + &b.discount * (1.0 - &b.terminated) * v
            });
            let (q1, q2) = self.critics.q(&b.obs, &b.actions);
            let critic_loss =
                (&q1 - &target).square().mean(Kind::Float) * 0.5 + (&q2 - &target).square().mean(Kind::Float) * 0.5;
            self.critic_opt.zero_grad();
            critic_loss.backward();
            self.critic_opt.step().map_err(|e| Error::Torch(e.to_string()))?;

            let (a, logp) = self.sample_action(&b.obs);
            let (p1, p2) = self.critics.q(&b.obs, &a);
            let actor_loss = (&alpha * &logp - p1.minimum(&p2)).mean(Kind::Float);
            self.actor_opt.zero_grad();
            actor_loss.backward();
            self.actor_opt.step().map_err(|e| Error::Torch(e.to_string()))?;
            // The critics' gradients from the actor's loss are dropped.
            self.critic_opt.zero_grad();

            let alpha_loss = -(&self.log_alpha * (logp.detach() + target_entropy)).mean(Kind::Float);
            self.alpha_opt.zero_grad();
            alpha_loss.backward();
            self.alpha_opt.step().map_err(|e| Error::Torch(e.to_string()))?;

            tch::no_grad(|| {
                let src = self.critics.vs.variables();
                for (name, mut t) in self.targets.vs.variables() {
                    if let Some(s) = src.get(&name) {
                        t.copy_(&(&t * (1.0 - c.tau) + s * c.tau));
                    }
                }
            });
            lq += scalar(&critic_loss);
            lpi += scalar(&actor_loss);
            la += scalar(&alpha_loss);
        }
        let n = updates as f64;
        stats.insert("critic_loss".into(), lq / n);
        stats.insert("actor_loss".into(), lpi / n);
        stats.insert("alpha_loss".into(), la / n);
        stats.insert("alpha".into(), scalar(&self.log_alpha.exp().squeeze()));
        Ok(LearnerStep {
            env_steps: steps,
            episodes,
            stats,
        })
    }

    fn policy_weights(&self) -> Vec<f32> {
        self.actor.weights()
    }

    fn var_stores(&mut self) -> Vec<(&'static str, &mut nn::VarStore)> {
        vec![
            ("policy.safetensors", &mut self.actor.vs),
            ("critics.safetensors", &mut self.critics.vs),
            ("targets.safetensors", &mut self.targets.vs),
            ("alpha.safetensors", &mut self.alpha_vs),
        ]
    }

    fn save_state(&self, w: &mut CheckpointWriter, replay: bool) -> Result<()> {
        save_optimizer(&self.actor_opt, w, "actor_optimizer.pt")?;
        save_optimizer(&self.critic_opt, w, "critic_optimizer.pt")?;
        save_optimizer(&self.alpha_opt, w, "alpha_optimizer.pt")?;
        if replay {
            self.replay.save(w, "replay.pt")?;
        }
        Ok(())
    }

    fn load_state(&mut self, c: &Checkpoint) -> Result<()> {
        load_optimizer(&mut self.actor_opt, c, "actor_optimizer.pt")?;
        load_optimizer(&mut self.critic_opt, c, "critic_optimizer.pt")?;
        load_optimizer(&mut self.alpha_opt, c, "alpha_optimizer.pt")?;
        if c.file("replay.pt").exists() {
            self.replay.load(c, "replay.pt")?;
        }
        Ok(())
    }
}
