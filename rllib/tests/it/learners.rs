//! A learner of the user's own through the public extension point: an
//! advantage actor-critic written here, registered by name, trained on
//! CartPole by `Algorithm` with its runners, checkpointed and restored.

use std::collections::BTreeMap;

use rayforge_integration_tests::cluster;
use rayforge_rllib::algos::ppo::gae;
use rayforge_rllib::policy::{Policy, PolicySpec};
use rayforge_rllib::tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};
use rayforge_rllib::{register_learner, Algo, AlgoConfig, Algorithm, Learner, LearnerStep, Result, Runners};

/// Advantage actor-critic: full-batch policy-gradient steps on each
/// iteration's rollouts, on PPO's actor-critic network.
struct A2c {
    policy: Policy,
    opt: nn::Optimizer,
    steps: usize,
    epochs: u64,
    gamma: f64,
    updates: u64,
}

impl Learner for A2c {
    fn step(&mut self, runners: &mut Runners, _env_steps: u64) -> Result<LearnerStep> {
        let mut out = LearnerStep::default();
        let (mut obs, mut actions, mut adv, mut ret) = (vec![], vec![], vec![], vec![]);
        let rollouts = runners.rollouts(self.policy.weights(), self.steps)?;
        assert_eq!(rollouts.len(), runners.len(), "one rollout per runner");
        for r in rollouts {
            let (a, rt) = gae(
                &r.rewards,
                &r.values,
                &r.dones,
                &r.last_values,
                r.envs,
                self.gamma,
                0.95,
            );
            obs.extend(r.obs);
            actions.extend(r.actions);
            adv.extend(a);
            ret.extend(rt);
            out.env_steps += r.rewards.len() as u64;
            out.episodes.returns.extend(&r.episodes.returns);
            out.episodes.lengths.extend(&r.episodes.lengths);
        }
        let obs = Tensor::from_slice(&obs).view([-1, self.policy.spec.obs_dim]);
        let actions = Tensor::from_slice(&actions);
        let adv = Tensor::from_slice(&adv);
        let adv = (&adv - adv.mean(Kind::Float)) / (adv.std(true) + 1e-8);
        let ret = Tensor::from_slice(&ret);
        let mut stats = BTreeMap::new();
        for _ in 0..self.epochs {
            let (head, value) = self.policy.pi_and_value(&obs);
            let (logp, entropy) = self.policy.log_prob_entropy(&head, &actions);
            let pg = -(&logp * &adv).mean(Kind::Float);
            let vf = (&ret - &value).square().mean(Kind::Float);
            let loss = &pg + &vf * 0.5 - entropy.mean(Kind::Float) * 0.01;
            self.opt.backward_step_clip_norm(&loss, 0.5);
            stats.insert("pg_loss".to_string(), pg.double_value(&[]));
            stats.insert("vf_loss".to_string(), vf.double_value(&[]));
            self.updates += 1;
        }
        stats.insert("updates".to_string(), self.updates as f64);
        out.stats = stats;
        Ok(out)
    }

    fn policy_weights(&self) -> Vec<f32> {
        self.policy.weights()
    }

    fn var_stores(&mut self) -> Vec<(&'static str, &mut nn::VarStore)> {
        vec![("a2c.safetensors", &mut self.policy.vs)]
    }

    fn save_state(&self, w: &mut rayforge::checkpoint::CheckpointWriter, _replay: bool) -> Result<()> {
        w.write("a2c.json", self.updates.to_string().as_bytes())?;
        Ok(())
    }

    fn load_state(&mut self, c: &rayforge::checkpoint::Checkpoint) -> Result<()> {
        let text = c.read("a2c.json")?;
        self.updates = String::from_utf8_lossy(&text).parse().unwrap_or(0);
        Ok(())
    }
}

fn a2c(c: &AlgoConfig, spec: PolicySpec) -> std::result::Result<Box<dyn Learner>, String> {
    let epochs = match c.learner_config.get("epochs") {
        None => 4,
        Some(v) => v
            .as_u64()
            .filter(|e| *e > 0)
            .ok_or_else(|| format!("learner_config.epochs: a whole number above 0, not {v}"))?,
    };
    let policy = Policy::new(&spec, Device::Cpu)?;
    let opt = nn::Adam::default().build(&policy.vs, c.lr).map_err(|e| e.to_string())?;
    Ok(Box::new(A2c {
        policy,
        opt,
        steps: c.rollout_steps,
        epochs,
        gamma: c.gamma,
        updates: 0,
    }))
}

#[test]
fn a_registered_learner_of_the_users_own_trains_and_checkpoints() {
    cluster();
    register_learner("a2c", a2c).unwrap();
    assert!(register_learner("a2c", a2c).unwrap_err().contains("already registered"));
    let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
    c.learner = Some("a2c".into());
    c.lr = 1e-3;
    c.num_envs_per_runner = 4;
    c.rollout_steps = 128;
    c.learner_config.insert("epochs".into(), 2.into());
    let mut a = Algorithm::new(c.clone()).unwrap();
    let last = crate::train_until(&mut a, 150.0, 150_000);
    // A random policy's return is about 22.
    assert!(last.episode_return_mean >= 150.0, "{}", last.line());
    assert_eq!(
        last.learner["updates"],
        2.0 * last.iteration as f64,
        "two updates an iteration, from the learner's own config"
    );
    assert!(last.learner.contains_key("pg_loss"), "{:?}", last.learner);
    // The checkpoint holds the learner's files; a restore rebuilds it by name.
    let dir = std::env::temp_dir().join(format!("rllib-learner-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let before = a.evaluate(3).unwrap();
    let ckpt = a.save(&dir).unwrap();
    a.stop();
    assert!(ckpt.file("a2c.safetensors").exists());
    let mut b = Algorithm::restore(ckpt.path()).unwrap();
    assert_eq!(b.config().learner.as_deref(), Some("a2c"));
    assert_eq!(b.evaluate(3).unwrap().returns, before.returns);
    let next = b.train().unwrap();
    assert_eq!(next.iteration, last.iteration + 1);
    assert_eq!(
        next.learner["updates"],
        last.learner["updates"] + 2.0,
        "its own state restored"
    );
    b.stop();
    std::fs::remove_dir_all(&dir).unwrap();
    // The builder's error and an unknown name are refused, naming the field.
    c.learner_config.insert("epochs".into(), "many".into());
    let e = Algorithm::new(c.clone()).unwrap_err().to_string();
    assert!(e.contains("learner") && e.contains("learner_config.epochs"), "{e}");
    c.learner = Some("no_such_learner".into());
    let e = Algorithm::new(c).unwrap_err().to_string();
    assert!(e.contains("no_such_learner") && e.contains("a2c"), "{e}");
}

/// Sets the value head to answer `k` in iteration `k` and reports what the
/// runners' rollouts saw: which weights each batch was sampled with.
struct Probe {
    policy: Policy,
    ahead: bool,
    k: u64,
}

impl Learner for Probe {
    fn step(&mut self, runners: &mut Runners, _env_steps: u64) -> Result<LearnerStep> {
        self.k += 1;
        rayforge_rllib::tch::no_grad(|| {
            for (name, mut t) in self.policy.vs.variables() {
                let _ = t.fill_(if name == "vf.l2.bias" { self.k as f64 } else { 0.0 });
            }
        });
        let rollouts = if self.ahead {
            runners.rollouts_ahead(self.policy.weights(), 8)?
        } else {
            runners.rollouts(self.policy.weights(), 8)?
        };
        let values: Vec<f32> = rollouts.iter().flat_map(|r| r.values.clone()).collect();
        let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        Ok(LearnerStep {
            env_steps: values.len() as u64,
            stats: BTreeMap::from([
                ("sampled_with_lo".into(), lo as f64),
                ("sampled_with_hi".into(), hi as f64),
            ]),
            ..LearnerStep::default()
        })
    }

    fn policy_weights(&self) -> Vec<f32> {
        self.policy.weights()
    }

    fn var_stores(&mut self) -> Vec<(&'static str, &mut nn::VarStore)> {
        vec![("probe.safetensors", &mut self.policy.vs)]
    }
}

fn probe(c: &AlgoConfig, spec: PolicySpec) -> std::result::Result<Box<dyn Learner>, String> {
    Ok(Box::new(Probe {
        policy: Policy::new(&spec, Device::Cpu)?,
        ahead: c.learner_config.get("ahead").and_then(|v| v.as_bool()).unwrap_or(false),
        k: 0,
    }))
}

#[test]
fn rollouts_ahead_are_sampled_with_the_weights_one_update_behind() {
    cluster();
    register_learner("probe", probe).unwrap();
    for ahead in [false, true] {
        let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
        c.learner = Some("probe".into());
        c.learner_config.insert("ahead".into(), ahead.into());
        let mut a = Algorithm::new(c).unwrap();
        for k in 1..=4u64 {
            let r = a.train().unwrap();
            // Synchronous batches come from this iteration's
            // weights; ahead, from the last one's (the first is sent at once).
            let want = if ahead { (k - 1).max(1) } else { k } as f64;
            assert_eq!(
                (r.learner["sampled_with_lo"], r.learner["sampled_with_hi"]),
                (want, want),
                "ahead {ahead}, iteration {k}"
            );
        }
        a.stop();
    }
}
