//! RLlib's sampling benchmarks, the rayforge side (`rllib/bench/compare`
//! runs them beside Gymnasium 1.2.2 and RLlib 2.60 and prints the ratios;
//! the time-to-450 runs use the `rllib` binary itself). Every mode prints
//! one JSON line.
//!
//! - `env --envs 8 --steps N`: a [`VectorEnv`] of CartPoles stepped N
//!   times with uniformly random actions (drawn up front, as the Python
//!   side does), in this process: environment steps per second. The anchor
//!   is Gymnasium's `SyncVectorEnv` and its NumPy `CartPoleVectorEnv`
//!   (`gym_envs.py`).
//! - `sample --runners 2 --envs 8 --steps 256 --rounds R --warmup W`: the
//!   env runner actors PPO samples with (`EnvRunner::rollout`: the 64x64
//!   tanh actor-critic on each step, actions drawn, log-probabilities and
//!   values kept), one round = the weights put in the object store once,
//!   one rollout call of `steps` steps per runner, all rollouts fetched by
//!   the driver. No learning. Env steps per second over R rounds after W
//!   warm-up rounds (the runners' start is not timed). The anchor is RLlib's
//!   `synchronous_parallel_sample` over its env runners, the call PPO's
//!   `training_step` makes (`ray_rllib.py sample`).
//! - `train [--algo ppo|appo] --env NAME --iters I --warmup W [--async]`:
//!   PPO (or APPO) with the env's preset (CartPole-v1's: 2 runners of 4
//!   envs, 32 steps each, 20 epochs) trained for W + I iterations, env
//!   steps per second over the last I (sampling and learning), with
//!   `async_sampling` on or off: the gain of sampling while the learner
//!   learns (`rllib/bench/async_sampling`).

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayforge_rllib::env::{Action, BatchEnv, EnvSpec, Space, VectorEnv};
use rayforge_rllib::policy::{Policy, PolicyKind, PolicySpec};
use rayforge_rllib::runner::{EnvRunner, RunnerSpec};
use serde_json::json;

type BoxError = Box<dyn std::error::Error>;

/// `--name VALUE` as a number, or `default`.
fn arg(args: &[String], name: &str, default: usize) -> Result<usize, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a whole number")),
    }
}

/// Steps a vector of CartPoles with random actions.
fn env_bench(args: &[String]) -> Result<serde_json::Value, BoxError> {
    let (n, steps) = (arg(args, "--envs", 8)?, arg(args, "--steps", 100_000)?);
    let mut rng = StdRng::seed_from_u64(0);
    let actions: Vec<Vec<Action>> = (0..steps)
        .map(|_| (0..n).map(|_| Action::Discrete(rng.random_range(0..2))).collect())
        .collect();
    let mut envs = VectorEnv::new("CartPole-v1", n)?;
    envs.reset(Some(0))?;
    let mut episodes = 0usize;
    let start = Instant::now();
    for a in &actions {
        episodes += envs.step(a)?.episodes.len();
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(
        json!({"bench": "env", "impl": "rayforge VectorEnv", "envs": n, "steps": steps,
        "env_steps": steps * n, "episodes": episodes, "wall_s": wall,
        "env_steps_per_s": (steps * n) as f64 / wall}),
    )
}

/// Times rounds of rollout calls on env runner actors.
fn sample_bench(args: &[String]) -> Result<serde_json::Value, BoxError> {
    let runners = arg(args, "--runners", 2)?;
    let envs = arg(args, "--envs", 8)?;
    let steps = arg(args, "--steps", 256)?;
    let rounds = arg(args, "--rounds", 20)?;
    let warmup = arg(args, "--warmup", 2)?;
    rayforge::init(rayforge::Config::default())?;
    let env = EnvSpec::resolve("CartPole-v1", serde_json::Value::Null)?;
    let policy = PolicySpec {
        kind: PolicyKind::ActorCritic,
        obs_dim: 4,
        action: Space::Discrete(2),
        hidden: vec![64, 64],
        model: None,
    };
    tch::manual_seed(0);
    let weights = Policy::new(&policy, tch::Device::Cpu)?.weights();
    let started = Instant::now();
    // As the algorithm starts them: actors that take no CPU of the
    // scheduler's, one process each.
    let handles = (0..runners)
        .map(|i| {
            EnvRunner::options().num_cpus(0.0).remote(RunnerSpec {
                env: env.clone(),
                num_envs: envs,
                seed: 1000 * i as u64,
                policy: policy.clone(),
                gamma: 0.99,
                n_step: 1,
                crash_at_sample: None,
                obs_filter: false,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let round = || -> Result<(usize, usize), BoxError> {
        let w = rayforge::put(rayforge_rllib::runner::PolicyState {
            weights: weights.clone(),
            filter: None,
        })?;
        let pending: Vec<_> = handles.iter().map(|h| h.rollout(&w, steps)).collect();
        let (mut env_steps, mut episodes) = (0, 0);
        for p in pending {
            let r = p.get()?;
            env_steps += r.rewards.len();
            episodes += r.episodes.returns.len();
        }
        Ok((env_steps, episodes))
    };
    for _ in 0..warmup {
        round()?;
    }
    let startup = started.elapsed().as_secs_f64();
    let (mut env_steps, mut episodes) = (0, 0);
    let start = Instant::now();
    for _ in 0..rounds {
        let (s, e) = round()?;
        env_steps += s;
        episodes += e;
    }
    let wall = start.elapsed().as_secs_f64();
    for h in &handles {
        let _ = rayforge::kill(h);
    }
    Ok(
        json!({"bench": "sample", "impl": "rayforge-rllib EnvRunner", "runners": runners,
        "envs_per_runner": envs, "steps_per_call": steps, "rounds": rounds,
        "env_steps": env_steps, "episodes": episodes, "wall_s": wall,
        "startup_and_warmup_s": startup, "env_steps_per_s": env_steps as f64 / wall}),
    )
}

/// PPO's preset trained, synchronous or asynchronous sampling.
fn train_bench(args: &[String]) -> Result<serde_json::Value, BoxError> {
    let (iters, warmup) = (arg(args, "--iters", 100)?, arg(args, "--warmup", 5)?);
    let env = args
        .iter()
        .position(|a| a == "--env")
        .and_then(|i| args.get(i + 1))
        .map_or("CartPole-v1", String::as_str);
    let asynchronous = args.iter().any(|a| a == "--async");
    let algo: rayforge_rllib::Algo = args
        .iter()
        .position(|a| a == "--algo")
        .and_then(|i| args.get(i + 1))
        .map_or("ppo", String::as_str)
        .parse()?;
    rayforge::init(rayforge::Config::default())?;
    let mut c = rayforge_rllib::AlgoConfig::preset(algo, env);
    c.async_sampling = asynchronous;
    let mut a = rayforge_rllib::Algorithm::new(c)?;
    for _ in 0..warmup {
        a.train()?;
    }
    let (steps0, start) = (a.env_steps(), Instant::now());
    let mut last = None;
    for _ in 0..iters {
        last = Some(a.train()?);
    }
    let secs = start.elapsed().as_secs_f64();
    let steps = a.env_steps() - steps0;
    a.stop();
    rayforge::shutdown();
    Ok(json!({
        "impl": "rayforge", "mode": "train", "algo": format!("{algo:?}"), "env": env,
        "async": asynchronous || algo == rayforge_rllib::Algo::Appo, "iters": iters,
        "env_steps": steps, "seconds": secs, "env_steps_per_s": steps as f64 / secs,
        "return_mean": last.map(|r| r.episode_return_mean),
    }))
}

#[rayforge::main]
fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.first().map(String::as_str) {
        Some("env") => env_bench(&args)?,
        Some("sample") => sample_bench(&args)?,
        Some("train") => train_bench(&args)?,
        _ => {
            return Err("usage: rllib-bench env [--envs 8] [--steps N] | \
                        sample [--runners 2] [--envs 8] [--steps 256] [--rounds 20] [--warmup 2] | \
                        train [--algo ppo] [--env CartPole-v1] [--iters 100] [--warmup 5] [--async]"
                .into())
        }
    };
    println!("{out}");
    Ok(())
}
