//! Algorithms on the embedded cluster, env runners as real worker
//! processes: PPO learns CartPole (seeded, within budget), a seed repeats
//! its learning curve, a runner killed mid-sampling is replaced and
//! training goes on, checkpoints restore, DQN and SAC learn.

use rayforge_integration_tests::cluster;
use rayforge_rllib::{Algo, AlgoConfig, Algorithm, Error, Stop};

#[test]
fn ppo_learns_cartpole_within_its_budget() {
    cluster();
    let mut a = Algorithm::new(AlgoConfig::preset(Algo::Ppo, "CartPole-v1")).unwrap();
    let last = a
        .run(
            Stop {
                reward: Some(450.0),
                timesteps: Some(100_000),
                iters: None,
            },
            |r| println!("{}", r.line()),
        )
        .unwrap();
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
    let last = a
        .run(
            Stop {
                reward: Some(reward),
                timesteps: Some(timesteps),
                iters: None,
            },
            |r| println!("{}", r.line()),
        )
        .unwrap();
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
