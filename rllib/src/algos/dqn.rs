//! DQN (Mnih et al., 2015) with the usual improvements: a replay buffer, a
//! target network refreshed every few iterations, double Q-learning
//! (van Hasselt et al., 2016), a dueling head (Wang et al., 2016), n-step
//! returns (summed by the runners), an epsilon schedule, the Huber loss
//! and gradients clipped by norm.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rayforge::checkpoint::{Checkpoint, CheckpointWriter};
use rayforge_train::optim::{Adam, Optimizer};
use tch::{nn, Device, Kind};

use super::{load_optimizer, save_optimizer, scalar, Replay};
use crate::algorithm::{Learner, LearnerStep, Runners};
use crate::config::AlgoConfig;
use crate::error::Result;
use crate::policy::{Policy, PolicySpec};
use crate::runner::Explore;

/// DQN's learner.
pub(crate) struct Dqn {
    config: AlgoConfig,
    online: Policy,
    target: Policy,
    opt: Adam,
    replay: Replay,
    rng: StdRng,
    iterations: u64,
    device: Device,
}

impl Dqn {
    pub(crate) fn new(config: &AlgoConfig, spec: &PolicySpec) -> Result<Dqn> {
        let device = config.torch_device();
        let online = Policy::new(spec, device).map_err(|e| crate::error::Error::config("model", e))?;
        let mut target = Policy::new(spec, device).map_err(|e| crate::error::Error::config("model", e))?;
        target.vs.copy(&online.vs)?;
        let opt = Adam::new(&online.vs, config.lr);
        Ok(Dqn {
            replay: Replay::new(config.buffer_size, spec.obs_dim as usize, 1),
            config: config.clone(),
            online,
            target,
            opt,
            rng: StdRng::seed_from_u64(config.seed ^ 0xD09),
            iterations: 0,
            device,
        })
    }

    /// Epsilon after `env_steps` steps: linear from start to end.
    fn epsilon(&self, env_steps: u64) -> f64 {
        let c = &self.config;
        let f = (env_steps as f64 / c.epsilon_timesteps.max(1) as f64).min(1.0);
        c.epsilon_start + f * (c.epsilon_end - c.epsilon_start)
    }
}

impl Learner for Dqn {
    fn step(&mut self, runners: &mut Runners, env_steps: u64) -> Result<LearnerStep> {
        let eps = self.epsilon(env_steps);
        let (steps, episodes) = self.replay.fill(
            runners,
            self.online.weights(),
            self.config.sample_steps,
            Explore::Epsilon(eps),
        )?;
        self.iterations += 1;
        let mut stats = BTreeMap::from([("epsilon".to_string(), eps)]);
        if env_steps + steps < self.config.learning_starts || self.replay.len() < self.config.batch_size {
            return Ok(LearnerStep {
                env_steps: steps,
                episodes,
                stats,
            });
        }
        if self
            .iterations
            .is_multiple_of(self.config.target_update_interval.max(1))
        {
            self.target.vs.copy(&self.online.vs)?;
        }
        let (mut loss_sum, mut q_sum) = (0.0, 0.0);
        for _ in 0..self.config.train_steps {
            let b = self.replay.sample(self.config.batch_size, &mut self.rng, self.device);
            let target = tch::no_grad(|| {
                let q_next_target = self.target.q_values(&b.next_obs);
                let next = if self.config.double_q {
                    let a = self.online.q_values(&b.next_obs).argmax(-1, true);
                    q_next_target.gather(-1, &a, false).squeeze_dim(-1)
                } else {
                    q_next_target.max_dim(-1, false).0
                };
                &b.rewards + &b.discount * (1.0 - &b.terminated) * next
            });
            let a = b.actions.to_kind(Kind::Int64);
            let q = self.online.q_values(&b.obs).gather(-1, &a, false).squeeze_dim(-1);
            let loss = q.smooth_l1_loss(&target, tch::Reduction::Mean, 1.0);
            self.opt.zero_grad();
            loss.backward();
            self.opt.clip_grad_norm(self.config.max_grad_norm);
            self.opt.step().map_err(|e| crate::error::Error::Torch(e.to_string()))?;
            loss_sum += scalar(&loss);
            q_sum += scalar(&q.mean(Kind::Float));
        }
        let n = self.config.train_steps.max(1) as f64;
        stats.insert("loss".into(), loss_sum / n);
        stats.insert("q_mean".into(), q_sum / n);
        Ok(LearnerStep {
            env_steps: steps,
            episodes,
            stats,
        })
    }

    fn policy_weights(&self) -> Vec<f32> {
        self.online.weights()
    }

    fn var_stores(&mut self) -> Vec<(&'static str, &mut nn::VarStore)> {
        vec![
            ("policy.safetensors", &mut self.online.vs),
            ("target.safetensors", &mut self.target.vs),
        ]
    }

    fn save_state(&self, w: &mut CheckpointWriter, replay: bool) -> Result<()> {
        save_optimizer(&self.opt, w, "optimizer.pt")?;
        w.write(
            "learner.json",
            format!("{{\"iterations\": {}}}", self.iterations).as_bytes(),
        )?;
        if replay {
            self.replay.save(w, "replay.pt")?;
        }
        Ok(())
    }

    fn load_state(&mut self, c: &Checkpoint) -> Result<()> {
        load_optimizer(&mut self.opt, c, "optimizer.pt")?;
        if let Ok(bytes) = c.read("learner.json") {
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| crate::error::Error::config("checkpoint", format!("learner.json: {e}")))?;
            self.iterations = v["iterations"].as_u64().unwrap_or(0);
        }
        if c.file("replay.pt").exists() {
            self.replay.load(c, "replay.pt")?;
        }
        Ok(())
    }
}
