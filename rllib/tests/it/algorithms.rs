//! Algorithms on the embedded cluster, env runners as real worker
//! processes: PPO learns CartPole (seeded, within budget), a seed repeats
//! its learning curve, a runner killed mid-sampling is replaced and
//! training goes on, checkpoints restore, DQN and SAC learn.

use rayforge_integration_tests::cluster;
use rayforge_rllib::{Algo, AlgoConfig, Algorithm, Error};

#[test]
fn ppo_learns_cartpole_within_its_budget() {
    cluster();
    let mut a = Algorithm::new(AlgoConfig::preset(Algo::Ppo, "CartPole-v1")).unwrap();
    let last = crate::train_until(&mut a, 450.0, 100_000);
    assert!(last.episode_return_mean >= 450.0, "{}", last.line());
    assert!(last.env_steps_lifetime <= 100_000);
    a.stop();
}

/// Trains the preset of `algo` on `env` until its evaluation return
/// reaches `reward` or `timesteps` pass; the last result.
fn learn(algo: Algo, env: &str, reward: f64, timesteps: u64) -> rayforge_rllib::IterationResult {
    cluster();
    let c = AlgoConfig::preset(algo, env);
    assert!(c.evaluation_interval > 0, "the preset evaluates");
    let mut a = Algorithm::new(c).unwrap();
    let last = crate::train_until(&mut a, reward, timesteps);
    a.stop();
    last
}

#[test]
fn dqn_learns_cartpole_within_its_budget() {
    let last = learn(Algo::Dqn, "CartPole-v1", 450.0, 50_000);
    assert!(
        last.evaluation_return_mean.is_some_and(|e| e >= 450.0),
        "{}",
        last.line()
    );
}

#[test]
fn sac_learns_pendulum_within_its_budget() {
    let last = learn(Algo::Sac, "Pendulum-v1", -250.0, 20_000);
    assert!(
        last.evaluation_return_mean.is_some_and(|e| e >= -250.0),
        "{}",
        last.line()
    );
}

#[test]
fn the_same_seed_gives_the_same_learning_curve() {
    // torch's random generator is one per process: another algorithm training
    // beside this one would draw from it too.
    rayforge_integration_tests::own_process!();
    cluster();
    // `noise`: the rest of the process draws from torch's generator
    // between iterations, which must not change the algorithm's draws.
    let curve = |seed: u64, noise: bool| -> Vec<(f64, f64)> {
        let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
        c.seed = seed;
        let mut a = Algorithm::new(c).unwrap();
        let out = (0..6)
            .map(|_| {
                if noise {
                    let _ = tch::Tensor::rand([16], (tch::Kind::Float, tch::Device::Cpu));
                }
                let r = a.train().unwrap();
                (r.episode_return_mean, r.learner["policy_loss"])
            })
            .collect();
        a.stop();
        out
    };
    let (a, b, c) = (curve(7, false), curve(7, true), curve(8, false));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn an_algorithm_leaves_the_process_torch_seed_and_threads_as_they_were() {
    // Reads process-wide torch settings that other algorithms change.
    rayforge_integration_tests::own_process!();
    cluster();
    let draw = || Vec::<f32>::try_from(tch::Tensor::rand([4], (tch::Kind::Float, tch::Device::Cpu))).unwrap();
    tch::set_num_threads(2);
    tch::manual_seed(99);
    let want = draw();
    tch::manual_seed(99);
    let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
    c.seed = 7;
    let mut a = Algorithm::new(c).unwrap();
    a.train().unwrap();
    // Before: the algorithm seeded the process with 7 and left it one thread.
    assert_eq!(draw(), want, "the process's generator went on where it was");
    assert_eq!(tch::get_num_threads(), 2);
    a.stop();
}

#[test]
fn a_runner_killed_mid_sampling_is_replaced_and_training_goes_on() {
    cluster();
    let marker = std::env::temp_dir().join(format!("rllib-crash-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
    c.crash_runner = Some((1, 3, marker.display().to_string()));
    let mut a = Algorithm::new(c).unwrap();
    let results: Vec<_> = (0..5).map(|_| a.train().unwrap()).collect();
    assert!(marker.exists(), "runner 1 crashed in its third sample call");
    // Every iteration sampled its full batch: 2 runners x 4 envs x 32 steps.
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.env_steps_lifetime, 256 * (i as u64 + 1));
    }
    a.stop();
    std::fs::remove_file(&marker).unwrap();
}

#[test]
fn ppo_with_async_sampling_learns_cartpole_through_a_killed_runner() {
    cluster();
    let marker = std::env::temp_dir().join(format!("rllib-crash-async-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
    c.async_sampling = true;
    c.crash_runner = Some((0, 5, marker.display().to_string()));
    let mut a = Algorithm::new(c).unwrap();
    let last = crate::train_until(&mut a, 450.0, 100_000);
    assert!(marker.exists(), "runner 0 crashed in its fifth sample call");
    assert!(last.episode_return_mean >= 450.0, "{}", last.line());
    assert_eq!(last.env_steps_lifetime, 256 * last.iteration, "every batch whole");
    a.stop();
    std::fs::remove_file(&marker).unwrap();
}

#[test]
fn appo_learns_cartpole_within_its_budget() {
    cluster();
    let c = AlgoConfig::preset(Algo::Appo, "CartPole-v1");
    assert_eq!(c.algo, Algo::Appo);
    let mut a = Algorithm::new(c).unwrap();
    let last = crate::train_until(&mut a, 450.0, 100_000);
    assert!(last.episode_return_mean >= 450.0, "{}", last.line());
    a.stop();
    assert_eq!("APPO".parse::<Algo>().unwrap(), Algo::Appo);
}

#[test]
fn a_checkpoint_restores_the_policy_and_counters() {
    cluster();
    let dir = std::env::temp_dir().join(format!("rllib-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut a = Algorithm::new(AlgoConfig::preset(Algo::Ppo, "CartPole-v1")).unwrap();
    for _ in 0..30 {
        a.train().unwrap();
    }
    let before = a.evaluate(5).unwrap();
    let c = a.save(&dir).unwrap();
    assert_eq!(c.manifest().unwrap().iteration, 30);
    a.stop();
    let mut b = Algorithm::restore(c.path()).unwrap();
    // Greedy episodes from the same seeds: the same policy plays the same.
    assert_eq!(b.evaluate(5).unwrap().returns, before.returns);
    assert_eq!(b.train().unwrap().iteration, 31);
    b.stop();
    // A checkpoint from a newer build is refused, naming the version.
    let json = c.file("algorithm.json");
    let text = std::fs::read_to_string(&json)
        .unwrap()
        .replace("\"format_version\": 1", "\"format_version\": 99");
    std::fs::write(&json, text).unwrap();
    let e = Algorithm::restore(c.path()).unwrap_err();
    assert!(e.to_string().contains("format version 99"), "{e}");
    assert!(Algorithm::restore(&dir.join("missing")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A DQN or SAC checkpoint holds the replay buffer and the optimizers'
/// state: the restored algorithm's, saved again, are the same bytes; with
/// `checkpoint_replay_buffer` off the buffer is left out.
#[test]
fn off_policy_checkpoints_keep_the_replay_buffer_and_optimizer_state() {
    cluster();
    let dir = std::env::temp_dir().join(format!("rllib-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (algo, env, optimizers) in [
        (Algo::Dqn, "CartPole-v1", &["optimizer.pt"][..]),
        (
            Algo::Sac,
            "Pendulum-v1",
            &["actor_optimizer.pt", "critic_optimizer.pt", "alpha_optimizer.pt"][..],
        ),
    ] {
        let mut config = AlgoConfig::preset(algo, env);
        config.learning_starts = 0;
        config.num_env_runners = 1;
        let mut a = Algorithm::new(config.clone()).unwrap();
        for _ in 0..3 {
            a.train().unwrap();
        }
        let c = a.save(dir.join(format!("{algo:?}"))).unwrap();
        a.stop();
        let replay = std::fs::read(c.file("replay.pt")).unwrap();
        let mut b = Algorithm::restore(c.path()).unwrap();
        let again = b.save(dir.join(format!("{algo:?}-again"))).unwrap();
        b.stop();
        assert_eq!(
            std::fs::read(again.file("replay.pt")).unwrap(),
            replay,
            "{algo:?}: the buffer came back whole"
        );
        for o in optimizers {
            assert_eq!(
                std::fs::read(again.file(o)).unwrap(),
                std::fs::read(c.file(o)).unwrap(),
                "{algo:?}: {o}"
            );
        }
        config.checkpoint_replay_buffer = false;
        let mut small = Algorithm::new(config).unwrap();
        small.train().unwrap();
        let c = small.save(dir.join(format!("{algo:?}-small"))).unwrap();
        small.stop();
        assert!(!c.file("replay.pt").exists());
        assert!(c.file(optimizers[0]).exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    cluster();
    let e = Algorithm::new(AlgoConfig::preset(Algo::Dqn, "Pendulum-v1")).unwrap_err();
    assert!(matches!(e, Error::Config { .. } | Error::Env(_)), "{e}");
    let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
    c.minibatch_size = 0;
    let e = Algorithm::new(c).unwrap_err().to_string();
    assert!(e.contains("minibatch_size"), "{e}");
    let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
    c.env = "Pong-v5".into();
    let e = Algorithm::new(c).unwrap_err().to_string();
    assert!(e.contains("Pong-v5") && e.contains("CartPole-v1"), "{e}");
}

/// CartPole with its observations moved thousands away from 0: a network
/// fed them raw sees inputs in the thousands.
struct Scaled(Box<dyn rayforge_rllib::env::Env>);

const OFFSET: [f32; 4] = [5000.0, -3000.0, 2000.0, 1000.0];

fn scale(obs: Vec<f32>) -> Vec<f32> {
    obs.iter().zip(OFFSET).map(|(x, o)| x + o).collect()
}

impl rayforge_rllib::env::Env for Scaled {
    fn observation_space(&self) -> rayforge_rllib::env::Space {
        self.0.observation_space()
    }
    fn action_space(&self) -> rayforge_rllib::env::Space {
        self.0.action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> Vec<f32> {
        scale(self.0.reset(seed))
    }
    fn step(
        &mut self,
        action: &rayforge_rllib::env::Action,
    ) -> Result<rayforge_rllib::env::Step, rayforge_rllib::env::EnvError> {
        let mut s = self.0.step(action)?;
        s.obs = scale(s.obs);
        Ok(s)
    }
}

fn scaled_cartpole(_: &serde_json::Value) -> Result<Box<dyn rayforge_rllib::env::Env>, String> {
    Ok(Box::new(Scaled(
        rayforge_rllib::env::make("CartPole-v1").map_err(|e| e.to_string())?,
    )))
}

#[test]
fn a_mean_std_filter_learns_on_badly_scaled_observations_and_lives_in_checkpoints() {
    cluster();
    rayforge_rllib::env::register_env("scaled_cartpole", scaled_cartpole).unwrap();
    let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
    c.env = "scaled_cartpole".into();
    // Fed raw, the network's inputs saturate: it stays near a random
    // policy's return (about 22).
    let mut raw = Algorithm::new(c.clone()).unwrap();
    let last = crate::train_until(&mut raw, 100.0, 20_000);
    assert!(last.episode_return_mean < 100.0, "{}", last.line());
    raw.stop();
    // Normalized, it learns (seeds 0-2 reached 300-400 in 100,000 steps).
    c.observation_filter = "MeanStdFilter".into();
    let mut a = Algorithm::new(c.clone()).unwrap();
    let last = crate::train_until(&mut a, 200.0, 100_000);
    assert!(last.episode_return_mean >= 200.0, "{}", last.line());
    // Every observation the runners saw, counted once: each environment's
    // first, one per step, and an ended episode's last.
    let f = a.observation_filter().expect("a filter").clone();
    let envs = (c.num_env_runners * c.num_envs_per_runner) as u64;
    assert_eq!(f.count as u64, envs + last.env_steps_lifetime + last.episodes_lifetime);
    for (m, o) in f.mean.iter().zip(OFFSET) {
        assert!((m - o as f64).abs() < 1.0, "mean {:?} near {OFFSET:?}", f.mean);
    }
    assert!(f.var().iter().all(|v| *v > 1e-4 && *v < 10.0), "{:?}", f.var());
    // Saved and restored with the policy: the same greedy episodes.
    let dir = std::env::temp_dir().join(format!("rllib-filter-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let before = a.evaluate(3).unwrap();
    let ckpt = a.save(&dir).unwrap();
    a.stop();
    let mut b = Algorithm::restore(ckpt.path()).unwrap();
    assert_eq!(b.observation_filter(), Some(&f));
    assert_eq!(b.evaluate(3).unwrap().returns, before.returns);
    b.stop();
    std::fs::remove_dir_all(&dir).unwrap();
    // An unknown filter is refused, naming the field.
    c.observation_filter = "MeanStd".into();
    let e = Algorithm::new(c).unwrap_err();
    assert!(e.to_string().contains("observation_filter"), "{e}");
}

/// Records what the hooks see, shared with the test.
#[derive(Default)]
struct Seen {
    episodes: Vec<rayforge_rllib::EpisodeEnd>,
    results: Vec<u64>,
    checkpoints: Vec<std::path::PathBuf>,
}

struct Recorder(std::sync::Arc<std::sync::Mutex<Seen>>);

impl rayforge_rllib::Callbacks for Recorder {
    fn on_episode_end(&mut self, e: &rayforge_rllib::EpisodeEnd) {
        self.0.lock().unwrap().episodes.push(e.clone());
    }
    fn on_train_result(&mut self, r: &mut rayforge_rllib::IterationResult) {
        let mut seen = self.0.lock().unwrap();
        seen.results.push(r.iteration);
        let long = seen.episodes.iter().filter(|e| e.length >= 100).count();
        r.custom_metrics
            .insert("long_episodes".into(), long as f64 / seen.episodes.len().max(1) as f64);
    }
    fn on_checkpoint(&mut self, c: &rayforge::checkpoint::Checkpoint) {
        self.0.lock().unwrap().checkpoints.push(c.path().to_path_buf());
    }
}

#[test]
fn callbacks_see_every_episode_each_result_and_each_checkpoint() {
    cluster();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let mut a = Algorithm::new(AlgoConfig::preset(Algo::Ppo, "CartPole-v1")).unwrap();
    a.add_callbacks(Recorder(seen.clone()));
    let mut last = None;
    for _ in 0..40 {
        last = Some(a.train().unwrap());
    }
    let last = last.unwrap();
    let dir = std::env::temp_dir().join(format!("rllib-callbacks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ckpt = a.save(&dir).unwrap();
    a.stop();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.results, (1..=40).collect::<Vec<_>>());
    // Every episode, once, with the returns the result's window averages.
    assert_eq!(seen.episodes.len() as u64, last.episodes_lifetime);
    let recent: Vec<f64> = seen.episodes.iter().rev().take(100).map(|e| e.episode_return).collect();
    let mean = recent.iter().sum::<f64>() / recent.len() as f64;
    assert!(
        (mean - last.episode_return_mean).abs() < 1e-9,
        "{mean} vs {}",
        last.line()
    );
    assert!(seen.episodes.iter().all(|e| (1..=40).contains(&e.iteration)));
    // CartPole's reward is 1 a step: a return is its length.
    assert!(seen.episodes.iter().all(|e| e.episode_return == e.length as f64));
    // The custom metric is reported with the others.
    let long = last
        .metrics()
        .into_iter()
        .find(|(k, _)| k == "long_episodes")
        .map(|x| x.1);
    assert!(long.is_some_and(|v| v > 0.0 && v < 1.0), "{}", last.line());
    assert!(last.line().contains("long_episodes="));
    assert_eq!(seen.checkpoints, vec![ckpt.path().to_path_buf()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two dials to set at once (a multi-discrete action of 3 and 4 choices)
/// to targets shown in the observation; a point for each dial set right,
/// 10 steps an episode. A random policy scores about 5.8, a perfect one 20.
struct Dials {
    rng: u64,
    target: (usize, usize),
    t: usize,
}

/// xorshift: the test environments' targets come from their own seeded
/// generators.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

impl Dials {
    fn draw(&mut self) -> Vec<f32> {
        xorshift(&mut self.rng);
        self.target = ((self.rng % 3) as usize, ((self.rng / 3) % 4) as usize);
        let mut obs = vec![0.0; 7];
        obs[self.target.0] = 1.0;
        obs[3 + self.target.1] = 1.0;
        obs
    }
}

impl rayforge_rllib::env::Env for Dials {
    fn observation_space(&self) -> rayforge_rllib::env::Space {
        rayforge_rllib::env::Space::Box {
            low: vec![0.0; 7],
            high: vec![1.0; 7],
        }
    }
    fn action_space(&self) -> rayforge_rllib::env::Space {
        rayforge_rllib::env::Space::MultiDiscrete(vec![3, 4])
    }
    fn reset(&mut self, seed: Option<u64>) -> Vec<f32> {
        if let Some(s) = seed {
            self.rng = s.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        }
        self.t = 0;
        self.draw()
    }
    fn step(
        &mut self,
        action: &rayforge_rllib::env::Action,
    ) -> Result<rayforge_rllib::env::Step, rayforge_rllib::env::EnvError> {
        let rayforge_rllib::env::Action::MultiDiscrete(a) = action else {
            return Err(rayforge_rllib::env::EnvError::BadAction {
                action: action.clone(),
                space: self.action_space(),
            });
        };
        let reward = (a[0] == self.target.0) as u8 as f64 + (a[1] == self.target.1) as u8 as f64;
        self.t += 1;
        Ok(rayforge_rllib::env::Step {
            obs: self.draw(),
            reward,
            terminated: false,
            truncated: self.t >= 10,
        })
    }
}

fn dials(_: &serde_json::Value) -> Result<Box<dyn rayforge_rllib::env::Env>, String> {
    Ok(Box::new(Dials {
        rng: 1,
        target: (0, 0),
        t: 0,
    }))
}

#[test]
fn ppo_learns_a_multi_discrete_action_and_dqn_refuses_one() {
    cluster();
    rayforge_rllib::env::register_env("dials", dials).unwrap();
    let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
    c.env = "dials".into();
    let mut a = Algorithm::new(c.clone()).unwrap();
    let last = crate::train_until(&mut a, 18.0, 50_000);
    assert!(last.episode_return_mean >= 18.0, "{}", last.line());
    // Greedy: each dial's most likely choice, both right every step.
    let greedy = a.evaluate(3).unwrap();
    assert!(greedy.returns.iter().all(|r| *r >= 19.0), "{greedy:?}");
    a.stop();
    c.algo = Algo::Dqn;
    let e = Algorithm::new(c).unwrap_err();
    assert!(e.to_string().contains("multi-discrete"), "{e}");
}

/// A switch and a knob set at once (a mixed action: a choice of 3 and a
/// value in [-1, 1]) to targets shown in the observation: a point for the
/// right switch and up to one for the knob (1 - its distance to the
/// target), 10 steps an episode. A random policy scores about 8, a perfect
/// one 20.
struct SwitchAndKnob {
    rng: u64,
    target: (usize, f32),
    t: usize,
}

impl SwitchAndKnob {
    fn draw(&mut self) -> Vec<f32> {
        xorshift(&mut self.rng);
        self.target = ((self.rng % 3) as usize, ((self.rng >> 8) % 1001) as f32 / 500.0 - 1.0);
        let mut obs = vec![0.0; 4];
        obs[self.target.0] = 1.0;
        obs[3] = self.target.1;
        obs
    }
}

impl rayforge_rllib::env::Env for SwitchAndKnob {
    fn observation_space(&self) -> rayforge_rllib::env::Space {
        rayforge_rllib::env::Space::Box {
            low: vec![0.0, 0.0, 0.0, -1.0],
            high: vec![1.0; 4],
        }
    }
    fn action_space(&self) -> rayforge_rllib::env::Space {
        rayforge_rllib::env::Space::Mixed {
            discrete: vec![3],
            low: vec![-1.0],
            high: vec![1.0],
        }
    }
    fn reset(&mut self, seed: Option<u64>) -> Vec<f32> {
        if let Some(s) = seed {
            self.rng = s.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        }
        self.t = 0;
        self.draw()
    }
    fn step(
        &mut self,
        action: &rayforge_rllib::env::Action,
    ) -> Result<rayforge_rllib::env::Step, rayforge_rllib::env::EnvError> {
        let rayforge_rllib::env::Action::Mixed { discrete, continuous } = action else {
            return Err(rayforge_rllib::env::EnvError::BadAction {
                action: action.clone(),
                space: self.action_space(),
            });
        };
        let reward = (discrete[0] == self.target.0) as u8 as f64 + 1.0 - (continuous[0] - self.target.1).abs() as f64;
        self.t += 1;
        Ok(rayforge_rllib::env::Step {
            obs: self.draw(),
            reward,
            terminated: false,
            truncated: self.t >= 10,
        })
    }
}

fn switch_and_knob(_: &serde_json::Value) -> Result<Box<dyn rayforge_rllib::env::Env>, String> {
    Ok(Box::new(SwitchAndKnob {
        rng: 1,
        target: (0, 0.0),
        t: 0,
    }))
}

#[test]
fn ppo_learns_a_mixed_discrete_and_continuous_action_and_dqn_and_sac_refuse_one() {
    cluster();
    rayforge_rllib::env::register_env("switch_and_knob", switch_and_knob).unwrap();
    let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
    c.env = "switch_and_knob".into();
    let mut a = Algorithm::new(c.clone()).unwrap();
    let last = crate::train_until(&mut a, 17.0, 150_000);
    assert!(last.episode_return_mean >= 17.0, "{}", last.line());
    // Greedy: the likeliest switch and the knob's mean.
    let greedy = a.evaluate(3).unwrap();
    assert!(greedy.returns.iter().all(|r| *r >= 17.5), "{greedy:?}");
    a.stop();
    for algo in [Algo::Dqn, Algo::Sac] {
        c.algo = algo;
        let e = Algorithm::new(c.clone()).unwrap_err();
        assert!(e.to_string().contains("mixed"), "{e}");
    }
}

/// A user's network: one shared ReLU trunk of `width` units, a policy head
/// and a value head on it.
struct SharedTrunk {
    trunk: rayforge_rllib::tch::nn::Sequential,
    pi: rayforge_rllib::tch::nn::Linear,
    vf: rayforge_rllib::tch::nn::Linear,
}

impl rayforge_rllib::policy::ActorCriticModel for SharedTrunk {
    fn forward(&self, obs: &rayforge_rllib::tch::Tensor) -> (rayforge_rllib::tch::Tensor, rayforge_rllib::tch::Tensor) {
        use rayforge_rllib::tch::nn::Module;
        let h = self.trunk.forward(obs);
        (self.pi.forward(&h), self.vf.forward(&h).squeeze_dim(-1))
    }
}

fn shared_trunk(
    vs: &rayforge_rllib::tch::nn::VarStore,
    shape: rayforge_rllib::policy::ModelShape,
    config: serde_json::Value,
) -> Result<Box<dyn rayforge_rllib::policy::ActorCriticModel>, String> {
    use rayforge_rllib::tch::nn;
    let width = config.get("width").and_then(|w| w.as_i64()).unwrap_or(64);
    if width < 1 {
        return Err(format!("width must be at least 1, got {width}"));
    }
    let p = vs.root() / "shared";
    let trunk = nn::seq()
        .add(nn::linear(&p / "l0", shape.obs_dim, width, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&p / "l1", width, width, Default::default()))
        .add_fn(|x| x.relu());
    Ok(Box::new(SharedTrunk {
        trunk,
        pi: nn::linear(&p / "pi", width, shape.head_dim, Default::default()),
        vf: nn::linear(&p / "vf", width, 1, Default::default()),
    }))
}

#[test]
fn ppo_trains_a_registered_custom_model_and_checkpoints_its_variables() {
    cluster();
    rayforge_rllib::policy::register_model("shared_trunk", shared_trunk).unwrap();
    let mut c = AlgoConfig::preset(Algo::Ppo, "CartPole-v1");
    c.model = Some("shared_trunk".into());
    c.model_config.insert("width".into(), 48.into());
    let mut a = Algorithm::new(c.clone()).unwrap();
    let last = crate::train_until(&mut a, 300.0, 100_000);
    assert!(last.episode_return_mean >= 300.0, "{}", last.line());
    // The checkpoint holds the custom network's variables, at its width.
    let dir = std::env::temp_dir().join(format!("rllib-model-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let before = a.evaluate(3).unwrap();
    let ckpt = a.save(&dir).unwrap();
    a.stop();
    let vars = rayforge_rllib::tch::Tensor::read_safetensors(ckpt.file("policy.safetensors")).unwrap();
    let mut names: Vec<(String, Vec<i64>)> = vars.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    names.sort();
    assert!(names.contains(&("shared.l0.weight".into(), vec![48, 4])), "{names:?}");
    assert!(names.contains(&("shared.pi.weight".into(), vec![2, 48])), "{names:?}");
    assert!(
        !names.iter().any(|(n, _)| n.starts_with("pi.")),
        "no built-in MLP: {names:?}"
    );
    let mut b = Algorithm::restore(ckpt.path()).unwrap();
    assert_eq!(b.evaluate(3).unwrap().returns, before.returns);
    b.stop();
    std::fs::remove_dir_all(&dir).unwrap();
    // The builder's error, an unknown name and another algorithm are refused.
    c.model_config.insert("width".into(), 0.into());
    let e = Algorithm::new(c.clone()).unwrap_err().to_string();
    assert!(e.contains("model") && e.contains("width must be at least 1"), "{e}");
    c.model = Some("no_such_model".into());
    let e = Algorithm::new(c.clone()).unwrap_err().to_string();
    assert!(e.contains("no_such_model") && e.contains("shared_trunk"), "{e}");
    let mut d = AlgoConfig::preset(Algo::Dqn, "CartPole-v1");
    d.model = Some("shared_trunk".into());
    let e = Algorithm::new(d).unwrap_err().to_string();
    assert!(e.contains("PPO"), "{e}");
}

/// What a [`rayforge::tracking::Callback`] saw of a run.
#[derive(Default)]
struct Tracked {
    reports: std::sync::Mutex<Vec<u64>>,
    checkpoints: std::sync::Mutex<Vec<u64>>,
    ended: std::sync::Mutex<Option<rayforge::tracking::RunEnd>>,
}

impl rayforge::tracking::Callback for Tracked {
    fn on_report(
        &self,
        _run: &rayforge::tracking::RunInfo,
        step: u64,
        _m: &std::collections::BTreeMap<String, f64>,
    ) -> rayforge::Result<()> {
        self.reports.lock().unwrap().push(step);
        Ok(())
    }
    fn on_checkpoint(
        &self,
        _run: &rayforge::tracking::RunInfo,
        step: u64,
        _c: &rayforge::checkpoint::Checkpoint,
    ) -> rayforge::Result<()> {
        self.checkpoints.lock().unwrap().push(step);
        Ok(())
    }
    fn on_end(&self, _run: &rayforge::tracking::RunInfo, end: &rayforge::tracking::RunEnd) -> rayforge::Result<()> {
        *self.ended.lock().unwrap() = Some(end.clone());
        Ok(())
    }
}

#[test]
fn a_tracked_run_reaches_its_callbacks_tensorboard_and_the_dashboard() {
    cluster();
    let dir = std::env::temp_dir().join(format!("rllib-tracked-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let seen = std::sync::Arc::new(Tracked::default());
    let mut a = Algorithm::new(AlgoConfig::preset(Algo::Ppo, "CartPole-v1")).unwrap();
    let mut callbacks = rayforge::tracking::Callbacks::new().with_arc(seen.clone());
    // And a real MLflow server, where the test script set one up.
    let mlflow = rayforge_integration_tests::tracking::MlflowServer::start();
    if let Some(m) = &mlflow {
        callbacks = callbacks.with(rayforge::tracking::Mlflow::new(&m.uri));
    }
    a.track(
        "ppo-tracked",
        Some(rayforge::storage::StorageUri::from(&dir).open().unwrap()),
        callbacks,
    );
    let results: Vec<_> = (0..6).map(|_| a.train().unwrap()).collect();
    let ckpt = a.save(&dir).unwrap();
    let steps: Vec<u64> = results.iter().map(|r| r.env_steps_lifetime).collect();
    // Still running: the dashboard has it so.
    let status = |name: &str| -> serde_json::Value {
        let bytes = rayforge::kv::get(rayforge::state::DASHBOARD_NAMESPACE, &format!("rllib/{name}"))
            .unwrap()
            .expect("the run's status for the dashboard");
        serde_json::from_slice(&bytes).unwrap()
    };
    assert_eq!(status("ppo-tracked")["status"], "RUNNING");
    a.stop();
    assert_eq!(*seen.reports.lock().unwrap(), steps);
    assert_eq!(*seen.checkpoints.lock().unwrap(), vec![*steps.last().unwrap()]);
    assert_eq!(*seen.ended.lock().unwrap(), Some(rayforge::tracking::RunEnd::Finished));
    // The dashboard's curve: returns and losses against env steps.
    let s = status("ppo-tracked");
    assert_eq!(s["status"], "FINISHED", "{s}");
    assert_eq!(s["algo"], "Ppo", "{s}");
    let h = &s["history"];
    assert_eq!(
        h["steps"],
        serde_json::json!(steps.iter().map(|x| *x as f64).collect::<Vec<_>>()),
        "{s}"
    );
    let published: Vec<Option<f64>> = serde_json::from_value(h["series"]["episode_return_mean"].clone()).unwrap();
    assert_eq!(published.len(), results.len(), "{s}");
    for (p, r) in published.iter().zip(&results) {
        match p {
            // JSON's text keeps each value to its last digit or so.
            Some(p) => assert!((p - r.episode_return_mean).abs() <= 1e-9 * p.abs(), "{s}"),
            None => assert!(r.episode_return_mean.is_nan(), "{s}"),
        }
    }
    assert!(
        h["series"].as_object().unwrap().keys().any(|k| k.ends_with("loss")),
        "{s}"
    );
    // TensorBoard: every iteration's metrics at its env steps.
    if let Some(tb) = rayforge_integration_tests::tracking::tensorboard_scalars(&dir) {
        let got = rayforge_integration_tests::tracking::scalar_steps(&tb, ".", "env_steps_lifetime");
        let want: Vec<(u64, f64)> = steps.iter().map(|s| (*s, *s as f32 as f64)).collect();
        rayforge_integration_tests::tracking::assert_points(&got, &want, 1e-7, "env_steps_lifetime");
        let got: Vec<u64> = rayforge_integration_tests::tracking::scalar_steps(&tb, ".", "episode_return_mean")
            .into_iter()
            .map(|x| x.0)
            .collect();
        let want: Vec<u64> = results
            .iter()
            .filter(|r| r.episode_return_mean.is_finite())
            .map(|r| r.env_steps_lifetime)
            .collect();
        assert_eq!(got, want);
    }
    if let Some(m) = &mlflow {
        let runs = m.runs("ppo-tracked");
        assert_eq!(runs.len(), 1, "{runs:?}");
        let info = &runs[0]["info"];
        assert_eq!(info["status"], "FINISHED", "{info}");
        assert_eq!(
            rayforge_integration_tests::tracking::MlflowServer::value(&runs[0], "params", "env").as_deref(),
            Some("CartPole-v1"),
            "{}",
            runs[0]
        );
        let id = info["run_id"].as_str().unwrap();
        let want: Vec<(u64, f64)> = steps.iter().map(|s| (*s, *s as f64)).collect();
        rayforge_integration_tests::tracking::assert_points(
            &m.metric_history(id, "env_steps_lifetime"),
            &want,
            1e-12,
            "env_steps_lifetime",
        );
        let files = m.artifacts(id, "checkpoint");
        assert!(files.contains(&"checkpoint/algorithm.json".to_string()), "{files:?}");
    }
    drop(ckpt);
    std::fs::remove_dir_all(&dir).unwrap();
}
