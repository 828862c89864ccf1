//! An algorithm's configuration: one flat set of fields (the ones an
//! algorithm does not use are ignored), a tuned preset per algorithm and
//! environment, and a TOML file (`--config FILE`) overriding any of them;
//! an unknown field is an error naming it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    /// Proximal policy optimisation (on-policy; discrete or continuous).
    Ppo,
    /// Asynchronous PPO (Ray's APPO, IMPALA's architecture): the runners
    /// sample while the learner learns, and V-trace corrects for the
    /// batches coming from the weights one update behind.
    Appo,
    /// Deep Q-learning (off-policy; discrete actions).
    Dqn,
    /// Soft actor-critic (off-policy; continuous actions).
    Sac,
}

impl std::str::FromStr for Algo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Algo> {
        match s.to_ascii_lowercase().as_str() {
            "ppo" => Ok(Algo::Ppo),
            "appo" => Ok(Algo::Appo),
            "dqn" => Ok(Algo::Dqn),
            "sac" => Ok(Algo::Sac),
            _ => Err(Error::config(
                "algo",
                format!("unknown algorithm `{s}` (known: ppo, appo, dqn, sac)"),
            )),
        }
    }
}

/// Everything an experiment is run with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlgoConfig {
    /// The algorithm.
    pub algo: Algo,
    /// The environment: a Gymnasium id of one here, `gym:ID`, or a name
    /// given to [`crate::env::register_env`].
    pub env: String,
    /// What a registered environment's creator is given (Ray's
    /// `env_config`; a table in a config file).
    pub env_config: serde_json::Map<String, serde_json::Value>,
    /// Env runner actors (default 2).
    pub num_env_runners: usize,
    /// Environments each runner steps (default 1).
    pub num_envs_per_runner: usize,
    /// The seed: the same seed and number of runners give the same
    /// learning curve.
    pub seed: u64,
    /// The discount.
    pub gamma: f64,
    /// Adam's learning rate.
    pub lr: f64,
    /// Hidden layer widths.
    pub hidden: Vec<i64>,
    /// PPO: a network registered with [`crate::policy::register_model`], in
    /// place of the built-in policy and value MLPs.
    pub model: Option<String>,
    /// What the custom model's builder is given (a table in a config file).
    pub model_config: serde_json::Map<String, serde_json::Value>,
    /// A learner registered with [`crate::register_learner`], in place of
    /// the algorithm's own (`algo` still picks the runners' policy: PPO's
    /// actor-critic, DQN's Q-values or SAC's Gaussian).
    pub learner: Option<String>,
    /// Settings of the custom learner's own, which its builder reads from
    /// the config (a table in a config file).
    pub learner_config: serde_json::Map<String, serde_json::Value>,
    /// Where the learner computes: `auto` (CUDA when there is one), `cpu`
    /// or `cuda`.
    pub device: String,
    /// Evaluate every this many iterations on a separate runner (0: never).
    pub evaluation_interval: u64,
    /// Episodes per evaluation.
    pub evaluation_episodes: usize,
    /// `"MeanStdFilter"`: observations normalized by running statistics
    /// kept across the runners and in checkpoints ([`crate::filter`], Ray's
    /// `observation_filter`); `"NoFilter"` (the default): as the
    /// environment gives them.
    pub observation_filter: String,

    /// PPO: steps of each environment per iteration.
    pub rollout_steps: usize,
    /// PPO: passes over each iteration's batch.
    pub num_epochs: usize,
    /// PPO: rows per gradient step.
    pub minibatch_size: usize,
    /// PPO: the surrogate's clip range.
    pub clip: f64,
    /// PPO: GAE's lambda.
    pub gae_lambda: f64,
    /// PPO: the value loss's weight.
    pub vf_coef: f64,
    /// PPO: the entropy bonus's weight.
    pub ent_coef: f64,
    /// Gradients are clipped to this norm.
    pub max_grad_norm: f64,
    /// PPO: the learning rate and clip range fall linearly to 0 over
    /// `anneal_timesteps`. Every algorithm: the env steps `rllib train`
    /// runs for when no stop criterion is given.
    pub anneal_timesteps: Option<u64>,
    /// PPO: the runners sample the next batch while the learner learns on
    /// this one (asynchronous sampling, as APPO and IMPALA; Ray's
    /// `sample_async`): each batch comes from the weights one update
    /// behind, and sampling and learning overlap.
    pub async_sampling: bool,

    /// Off-policy: steps of each environment per iteration.
    pub sample_steps: usize,
    /// Off-policy: gradient steps per iteration.
    pub train_steps: usize,
    /// Off-policy: the replay buffer's capacity.
    pub buffer_size: usize,
    /// Off-policy: rows per gradient step.
    pub batch_size: usize,
    /// Off-policy: env steps before learning starts (SAC acts at random
    /// until then).
    pub learning_starts: u64,
    /// DQN: the target network is refreshed every this many iterations.
    pub target_update_interval: u64,
    /// DQN: double Q-learning.
    pub double_q: bool,
    /// DQN: a dueling head.
    pub dueling: bool,
    /// DQN: steps per return (n-step).
    pub n_step: usize,
    /// DQN: epsilon at the start.
    pub epsilon_start: f64,
    /// DQN: epsilon at the end of its schedule.
    pub epsilon_end: f64,
    /// DQN: env steps over which epsilon falls linearly.
    pub epsilon_timesteps: u64,
    /// SAC: the target networks' Polyak rate.
    pub tau: f64,
    /// Off-policy (DQN, SAC): checkpoints hold the replay buffer, so a
    /// restart or a PBT exploit goes on with it instead of an empty one
    /// (default on; off keeps checkpoints small). Optimizer state is
    /// always saved.
    pub checkpoint_replay_buffer: bool,

    /// Testing aid: runner `.0` kills its own process once, halfway
    /// through its sample call `.1`; `.2` is a marker file remembering it.
    pub crash_runner: Option<(usize, u64, String)>,
}

impl Default for AlgoConfig {
    fn default() -> Self {
        AlgoConfig {
            algo: Algo::Ppo,
            env: "CartPole-v1".into(),
            env_config: serde_json::Map::new(),
            num_env_runners: 2,
            num_envs_per_runner: 1,
            seed: 0,
            gamma: 0.99,
            lr: 3e-4,
            hidden: vec![64, 64],
            model: None,
            model_config: serde_json::Map::new(),
            learner: None,
            learner_config: serde_json::Map::new(),
            device: "auto".into(),
            evaluation_interval: 0,
            evaluation_episodes: 10,
            observation_filter: "NoFilter".into(),
            rollout_steps: 256,
            num_epochs: 10,
            minibatch_size: 64,
            clip: 0.2,
            gae_lambda: 0.95,
            vf_coef: 0.5,
            ent_coef: 0.0,
            max_grad_norm: 0.5,
            anneal_timesteps: None,
            async_sampling: false,
            sample_steps: 64,
            train_steps: 64,
            buffer_size: 100_000,
            batch_size: 64,
            learning_starts: 1000,
            target_update_interval: 1,
            double_q: true,
            dueling: false,
            n_step: 1,
            epsilon_start: 1.0,
            epsilon_end: 0.05,
            epsilon_timesteps: 10_000,
            tau: 0.005,
            checkpoint_replay_buffer: true,
            crash_runner: None,
        }
    }
}

impl AlgoConfig {
    /// The tuned preset of `algo` on `env` (the defaults where there is
    /// none), after Stable-Baselines3's zoo; `gym:ID` gets the preset of
    /// `ID`.
    pub fn preset(algo: Algo, env: &str) -> AlgoConfig {
        let d = AlgoConfig {
            algo,
            env: env.to_string(),
            ..Default::default()
        };
        // A Gymnasium env run in Python gets the preset of ours.
        let env = env.strip_prefix("gym:").unwrap_or(env);
        match (algo, env) {
            (Algo::Ppo | Algo::Appo, "CartPole-v1") => AlgoConfig {
                num_env_runners: 2,
                num_envs_per_runner: 4,
                rollout_steps: 32,
                num_epochs: 20,
                minibatch_size: 256,
                gamma: 0.98,
                gae_lambda: 0.8,
                lr: 1e-3,
                anneal_timesteps: Some(100_000),
                ..d
            },
            (Algo::Ppo | Algo::Appo, "Acrobot-v1" | "MountainCar-v0") => AlgoConfig {
                num_env_runners: 2,
                num_envs_per_runner: 8,
                rollout_steps: 256,
                num_epochs: 4,
                minibatch_size: 512,
                gamma: 0.99,
                gae_lambda: 0.94,
                ent_coef: 0.0,
                ..d
            },
            (Algo::Ppo | Algo::Appo, "Pendulum-v1") => AlgoConfig {
                num_env_runners: 2,
                num_envs_per_runner: 2,
                rollout_steps: 1024,
                num_epochs: 10,
                minibatch_size: 64,
                gamma: 0.9,
                gae_lambda: 0.95,
                lr: 1e-3,
                ..d
            },
            // Gymnasium's MuJoCo tasks: the zoo's MuJoCo defaults (SB3's PPO
            // defaults on normalized observations; 2048 steps an iteration
            // over two runners), evaluated every iteration.
            (Algo::Ppo | Algo::Appo, "InvertedPendulum-v5" | "InvertedDoublePendulum-v5") => AlgoConfig {
                num_env_runners: 2,
                num_envs_per_runner: 1,
                rollout_steps: 1024,
                observation_filter: "MeanStdFilter".into(),
                evaluation_interval: 1,
                evaluation_episodes: 5,
                anneal_timesteps: Some(1_000_000),
                ..d
            },
            (Algo::Dqn, "CartPole-v1") => AlgoConfig {
                num_env_runners: 2,
                num_envs_per_runner: 1,
                lr: 1e-3,
                batch_size: 64,
                buffer_size: 100_000,
                learning_starts: 1000,
                gamma: 0.99,
                sample_steps: 128,
                train_steps: 64,
                target_update_interval: 1,
                n_step: 3,
                epsilon_start: 1.0,
                epsilon_end: 0.02,
                epsilon_timesteps: 8000,
                hidden: vec![256, 256],
                max_grad_norm: 10.0,
                evaluation_interval: 5,
                evaluation_episodes: 10,
                anneal_timesteps: Some(50_000),
                ..d
            },
            (Algo::Dqn, "Acrobot-v1") | (Algo::Dqn, "MountainCar-v0") => AlgoConfig {
                num_env_runners: 2,
                num_envs_per_runner: 1,
                lr: if env == "Acrobot-v1" { 6.3e-4 } else { 4e-3 },
                batch_size: 128,
                buffer_size: if env == "Acrobot-v1" { 50_000 } else { 10_000 },
                learning_starts: 0,
                gamma: if env == "Acrobot-v1" { 0.99 } else { 0.98 },
                sample_steps: if env == "Acrobot-v1" { 2 } else { 8 },
                train_steps: if env == "Acrobot-v1" { 4 } else { 8 },
                target_update_interval: if env == "Acrobot-v1" { 63 } else { 38 },
                epsilon_start: 1.0,
                epsilon_end: if env == "Acrobot-v1" { 0.1 } else { 0.07 },
                epsilon_timesteps: if env == "Acrobot-v1" { 12_000 } else { 24_000 },
                // 3-step returns carry MountainCar's reward back along the
                // climb: greedy returns of -100.7, -103.6 and -99.8 at 120k
                // steps for seeds 0-2 (1-step: -128.6, -168.5).
                n_step: if env == "MountainCar-v0" { 3 } else { 1 },
                hidden: vec![256, 256],
                max_grad_norm: 10.0,
                // MountainCar: Stable-Baselines3 zoo's budget. Acrobot: twice
                // the zoo's (greedy -68.6 at 200k for seed 0; -84.1 at 100k).
                anneal_timesteps: Some(if env == "Acrobot-v1" { 200_000 } else { 120_000 }),
                ..d
            },
            (Algo::Sac, _) => AlgoConfig {
                num_env_runners: 1,
                num_envs_per_runner: 1,
                lr: 1e-3,
                batch_size: 256,
                buffer_size: 1_000_000,
                learning_starts: 100,
                gamma: 0.99,
                tau: 0.005,
                sample_steps: 64,
                train_steps: 64,
                hidden: vec![256, 256],
                evaluation_interval: 10,
                evaluation_episodes: 5,
                // Pendulum's 20k; the MuJoCo tasks get 200k (the zoo gives
                // them 1e6, hours at SAC's one gradient step per env step on
                // a small machine; InvertedDoublePendulum-v5's evaluation
                // passed 9100 at 9.6k steps, rllib/bench/mujoco).
                anneal_timesteps: Some(if env.starts_with("Inverted") { 200_000 } else { 20_000 }),
                ..d
            },
            _ => d,
        }
    }

    /// `self` with the fields of the TOML `text` set over it.
    pub fn merge_toml(&self, text: &str) -> Result<AlgoConfig> {
        let over: toml::Table =
            toml::from_str(text).map_err(|e| Error::config("config file", e.message().to_string()))?;
        let mut base = toml::Table::try_from(self).map_err(|e| Error::config("config", e.to_string()))?;
        for (k, v) in over {
            base.insert(k, v);
        }
        let merged: AlgoConfig = toml::Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| Error::config("config file", e.message().to_string()))?;
        merged.validate()?;
        Ok(merged)
    }

    /// `self` with the fields of a JSON object set over it (a Tune trial's
    /// parameters).
    pub fn merge_json(&self, over: &serde_json::Map<String, serde_json::Value>) -> Result<AlgoConfig> {
        let mut base = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => return Err(Error::config("config", "does not serialize as an object")),
        };
        for (k, v) in over {
            base.insert(k.clone(), v.clone());
        }
        let merged: AlgoConfig = serde_json::from_value(serde_json::Value::Object(base))
            .map_err(|e| Error::config("param_space", e.to_string()))?;
        merged.validate()?;
        Ok(merged)
    }

    /// Checks that the fields make sense together.
    pub fn validate(&self) -> Result<()> {
        let at_least_one = [
            ("num_env_runners", self.num_env_runners),
            ("num_envs_per_runner", self.num_envs_per_runner),
            ("rollout_steps", self.rollout_steps),
            ("num_epochs", self.num_epochs),
            ("minibatch_size", self.minibatch_size),
            ("sample_steps", self.sample_steps),
            ("batch_size", self.batch_size),
            ("buffer_size", self.buffer_size),
            ("n_step", self.n_step),
            ("evaluation_episodes", self.evaluation_episodes),
        ];
        for (field, v) in at_least_one {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        if !(self.gamma > 0.0 && self.gamma <= 1.0) {
            return Err(Error::config("gamma", format!("must be in (0, 1], got {}", self.gamma)));
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return Err(Error::config("lr", format!("must be above 0, got {}", self.lr)));
        }
        if self.hidden.is_empty() || self.hidden.iter().any(|h| *h < 1) {
            return Err(Error::config("hidden", "needs at least one layer of at least 1 unit"));
        }
        if !["NoFilter", "MeanStdFilter"].contains(&self.observation_filter.as_str()) {
            return Err(Error::config(
                "observation_filter",
                format!("`{}`: NoFilter or MeanStdFilter", self.observation_filter),
            ));
        }
        if !["auto", "cpu", "cuda"].contains(&self.device.as_str()) {
            return Err(Error::config("device", format!("`{}`: auto, cpu or cuda", self.device)));
        }
        Ok(())
    }

    /// The learner's device.
    pub fn torch_device(&self) -> tch::Device {
        match self.device.as_str() {
            "cpu" => tch::Device::Cpu,
            _ => tch::Device::cuda_if_available(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_overrides_the_preset_and_names_bad_fields() {
        let p = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
        let c = p.merge_toml("lr = 0.01\nnum_env_runners = 3\n").unwrap();
        assert_eq!((c.lr, c.num_env_runners, c.num_epochs), (0.01, 3, 20));
        let e = p.merge_toml("learning_rate = 0.01").unwrap_err().to_string();
        assert!(e.contains("learning_rate"), "{e}");
        let e = p.merge_toml("gamma = 2.0").unwrap_err().to_string();
        assert!(e.contains("gamma"), "{e}");
        let e = p.merge_toml("lr = \"fast\"").unwrap_err().to_string();
        assert!(e.contains("config file"), "{e}");
        assert!("bogus".parse::<Algo>().unwrap_err().to_string().contains("bogus"));
    }
}
