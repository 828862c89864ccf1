//! The `rllib` command line, as a library: the `rllib` binary is
//! `Cli::new("rllib").main()`, and a user's own binary registers its
//! environments first, so that `train --env NAME`, `evaluate` and `tune`
//! (whose trials run in other processes) build them:
//!
//! ```no_run
//! use rayforge_rllib::cli::Cli;
//! use rayforge_rllib::env::{CartPole, Env};
//!
//! fn my_env(_config: &serde_json::Value) -> Result<Box<dyn Env>, String> {
//!     Ok(Box::new(CartPole::new()))
//! }
//!
//! #[rayforge::main]
//! fn main() -> std::process::ExitCode {
//!     Cli::new("my-rllib").register_env("MyEnv", my_env).main()
//! }
//! ```
//!
//! `train --algo ppo --env CartPole-v1` trains an algorithm on an
//! environment (an embedded cluster, or the one `RAYFORGE_ADDRESS` names),
//! a progress line per iteration, and a checkpoint every
//! `--checkpoint-every` iterations and at the end, to a path or a storage
//! URI (`cluster://`, `s3://`); `evaluate CHECKPOINT` says what it restored
//! (algorithm, environment, iteration, env steps) and plays greedy episodes
//! with its policy; `tune SEARCH.TOML` runs a search whose `[trainable]`
//! is `name = "rllib"`.

use std::process::ExitCode;

use rayforge::storage::StorageUri;

use crate::env::EnvCreator;
use crate::{Algo, AlgoConfig, Algorithm, Stop};

const USAGE: &str = "usage:
  {name} train --algo ppo|appo|dqn|sac --env NAME [--num-env-runners N] [--num-envs-per-runner M]
              [--stop-reward R] [--stop-timesteps T] [--stop-iters I] [--seed S]
              [--config FILE] [--checkpoint-dir DIR|URI] [--checkpoint-every N] [--mlflow URI]
  {name} evaluate CHECKPOINT [--episodes N]          (a checkpoint's path or storage URI)
  {name} tune SEARCH.TOML [--resume]      (a search.toml with [trainable] name = \"rllib\")

Environments: {envs}
(in Rust; registered ones included), or gym:ID for any Gymnasium id run in a Python child ($RAYFORGE_GYM_PYTHON).
The first stop criterion reached stops training; without --stop-timesteps or --stop-iters,
the preset's timesteps bound every run (a reward alone may never be reached). With
evaluation on (evaluation_interval), --stop-reward is checked against the evaluation return.
Checkpoints go to --checkpoint-dir (a path, cluster://prefix or s3://bucket/prefix; default
~/rayforge_results/ALGO_ENV, or cluster://rayforge_results/ALGO_ENV on a multi-node cluster)
every --checkpoint-every iterations (default 10; 0: only at the end) and when training ends,
with a TensorBoard event file of every iteration's metrics; the dashboard's RLlib page draws the run;
--mlflow http://host:port logs it to an MLflow tracking server too.
A tuned preset per algorithm and environment; --config FILE (TOML) overrides its fields.";

/// `--name VALUE` pairs after the command.
fn flags(args: &[String]) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(name) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument `{a}`"));
        };
        let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        out.push((name.to_string(), v.clone()));
    }
    Ok(out)
}

fn parse<T: std::str::FromStr>(name: &str, v: &str) -> std::result::Result<T, String> {
    v.parse().map_err(|_| format!("--{name}: `{v}` is not a valid value"))
}

fn train(args: &[String]) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let flags = flags(args)?;
    let get = |k: &str| flags.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let known = [
        "algo",
        "env",
        "num-env-runners",
        "num-envs-per-runner",
        "stop-reward",
        "stop-timesteps",
        "stop-iters",
        "seed",
        "config",
        "checkpoint-dir",
        "checkpoint-every",
        "mlflow",
    ];
    if let Some((bad, _)) = flags.iter().find(|(n, _)| !known.contains(&n.as_str())) {
        return Err(format!("unknown option --{bad}").into());
    }
    let algo: Algo = get("algo").ok_or("--algo is required")?.parse()?;
    let mlflow = get("mlflow")
        .map(rayforge::tracking::Mlflow::try_new)
        .transpose()
        .map_err(|e| format!("--mlflow: {e}"))?;
    let env = get("env").ok_or("--env is required")?;
    // An unknown name fails here, listing the known ones.
    crate::env::EnvSpec::resolve(env, serde_json::Value::Null)?;
    let mut config = AlgoConfig::preset(algo, env);
    if let Some(path) = get("config") {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        config = config.merge_toml(&text).map_err(|e| format!("{path}: {e}"))?;
    }
    if let Some(v) = get("num-env-runners") {
        config.num_env_runners = parse("num-env-runners", v)?;
    }
    if let Some(v) = get("num-envs-per-runner") {
        config.num_envs_per_runner = parse("num-envs-per-runner", v)?;
    }
    if let Some(v) = get("seed") {
        config.seed = parse("seed", v)?;
    }
    config.validate()?;
    let mut stop = Stop {
        reward: get("stop-reward").map(|v| parse("stop-reward", v)).transpose()?,
        timesteps: get("stop-timesteps").map(|v| parse("stop-timesteps", v)).transpose()?,
        iters: get("stop-iters").map(|v| parse("stop-iters", v)).transpose()?,
    };
    // Every run has a finite budget: a reward alone may never be reached
    // (and past the annealing the learning rate is 0).
    if stop.timesteps.is_none() && stop.iters.is_none() {
        stop = stop.bounded(&config);
        println!(
            "stopping after {} env steps at most (the preset's budget; --stop-timesteps or --stop-iters to change)",
            stop.timesteps.unwrap_or_default()
        );
    }
    let every: u64 = get("checkpoint-every")
        .map(|v| parse("checkpoint-every", v))
        .transpose()?
        .unwrap_or(10);
    rayforge::init(rayforge::Config::default())?;
    // The default storage depends on the cluster joined, so it is resolved
    // after init; a storage that cannot be written fails before training.
    let dir = match get("checkpoint-dir") {
        Some(d) => StorageUri::from(d),
        None => StorageUri::default().join(&format!("{}_{}", format!("{algo:?}").to_lowercase(), env)),
    };
    let storage = dir.open()?;
    storage.check_writable()?;
    println!(
        "training {algo:?} on {env}: {} runners x {} envs, seed {}; checkpoints to {} every {}",
        config.num_env_runners,
        config.num_envs_per_runner,
        config.seed,
        storage.uri(),
        if every == 0 {
            "run (at the end)".to_string()
        } else {
            format!("{every} iterations")
        }
    );
    let start = std::time::Instant::now();
    let evaluating = config.evaluation_interval > 0;
    let mut a = Algorithm::new(config)?;
    // The dashboard's RLlib page, a TensorBoard event file beside the
    // checkpoints, and MLflow when asked.
    let mut callbacks = rayforge::tracking::Callbacks::new();
    if let Some(m) = mlflow {
        callbacks = callbacks.with(m);
    }
    let name = storage
        .uri()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("rllib")
        .to_string();
    a.track(&name, Some(storage.clone()), callbacks);
    let last = loop {
        let r = a.train()?;
        println!("{}", r.line());
        if stop.reached(&r, evaluating) {
            break r;
        }
        if every > 0 && r.iteration % every == 0 {
            let c = a.save(storage.uri())?;
            println!("checkpoint {}", c.location());
        }
    };
    let ckpt = a.save(storage.uri())?;
    println!(
        "done in {:.1} s: return {:.2} after {} env steps; checkpoint {}",
        start.elapsed().as_secs_f64(),
        last.episode_return_mean,
        last.env_steps_lifetime,
        ckpt.location()
    );
    a.stop();
    Ok(())
}

fn evaluate(args: &[String]) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (path, rest) = args.split_first().ok_or("evaluate needs a checkpoint")?;
    let flags = flags(rest)?;
    let mut episodes = 10usize;
    for (k, v) in &flags {
        match k.as_str() {
            "episodes" => episodes = parse("episodes", v)?,
            _ => return Err(format!("unknown option --{k}").into()),
        }
    }
    rayforge::init(rayforge::Config::default())?;
    let mut a = Algorithm::restore(std::path::Path::new(path.as_str()))?;
    println!(
        "restored {path}: {:?} on {}, iteration {}, {} env steps",
        a.config().algo,
        a.config().env,
        a.iteration(),
        a.env_steps()
    );
    let ep = a.evaluate(episodes)?;
    let n = ep.returns.len().max(1) as f64;
    println!(
        "{} episodes of {}: return mean {:.2} (min {:.2}, max {:.2}), length mean {:.1}",
        ep.returns.len(),
        a.config().env,
        ep.returns.iter().sum::<f64>() / n,
        ep.returns.iter().cloned().fold(f64::INFINITY, f64::min),
        ep.returns.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        ep.lengths.iter().sum::<u64>() as f64 / n
    );
    a.stop();
    Ok(())
}

/// A Tune trial running an algorithm: its parameters are config fields
/// (over the preset of its `algo` and `env`), plus `checkpoint_every`
/// (iterations, default 1). It reports every iteration until Tune stops
/// it, and goes on from its checkpoint when restarted (or exploited).
fn tune_trial(ctx: &mut rayforge_tune::TrialContext) -> std::result::Result<(), String> {
    let mut params = ctx.config().clone();
    let every = params
        .remove("checkpoint_every")
        .map(|v| v.as_u64().ok_or("checkpoint_every must be a whole number"))
        .transpose()?
        .unwrap_or(1)
        .max(1);
    let name = |k: &str| params.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let algo: Algo = name("algo")
        .ok_or("the trial needs `algo`")?
        .parse()
        .map_err(|e: crate::Error| e.to_string())?;
    let env = name("env").ok_or("the trial needs `env`")?;
    let over: serde_json::Map<String, serde_json::Value> = params.into_iter().collect();
    let config = AlgoConfig::preset(algo, &env)
        .merge_json(&over)
        .map_err(|e| e.to_string())?;
    let mut a = match ctx.checkpoint() {
        Some(c) => Algorithm::restore_with(c.path(), Some(config)),
        None => Algorithm::new(config),
    }
    .map_err(|e| e.to_string())?;
    loop {
        let r = a.train().map_err(|e| e.to_string())?;
        if r.iteration % every == 0 {
            let w = a.checkpoint_writer().map_err(|e| e.to_string())?;
            ctx.report_checkpoint(r.metrics(), w).map_err(|e| e.to_string())?;
        } else {
            ctx.report(r.metrics()).map_err(|e| e.to_string())?;
        }
    }
}

/// The command line of a binary: `rllib`'s, with the environments this
/// binary registers.
pub struct Cli {
    name: String,
    envs: Vec<(String, EnvCreator)>,
}

impl Cli {
    /// The command line of the binary `name` (in its usage text).
    pub fn new(name: &str) -> Cli {
        Cli {
            name: name.to_string(),
            envs: Vec::new(),
        }
    }

    /// Registers an environment under `name` for every command (see
    /// [`crate::env::register_env`]; its `env_config` is the config file's
    /// `env_config` table).
    pub fn register_env(mut self, name: &str, creator: EnvCreator) -> Cli {
        self.envs.push((name.to_string(), creator));
        self
    }

    /// The usage text.
    pub fn usage(&self) -> String {
        USAGE
            .replace("{name}", &self.name)
            .replace("{envs}", &crate::env::known_envs().join(", "))
    }

    /// Runs the command line of this process.
    pub fn main(self) -> ExitCode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        self.run(&args)
    }

    /// Runs `args` (without the program's name): `train`, `evaluate` or
    /// `tune`. Exit code 2 and the error on stderr when it fails.
    pub fn run(self, args: &[String]) -> ExitCode {
        for (name, creator) in &self.envs {
            if let Err(e) = crate::env::register_env(name, *creator) {
                eprintln!("{}: {e}", self.name);
                return ExitCode::from(2);
            }
        }
        if args.iter().any(|a| a == "--help" || a == "-h") {
            println!("{}", self.usage());
            return ExitCode::SUCCESS;
        }
        let r = match args.split_first() {
            Some((cmd, rest)) if cmd == "train" => train(rest),
            Some((cmd, rest)) if cmd == "evaluate" => evaluate(rest),
            Some((cmd, _)) if cmd == "tune" => {
                // Trials run in other processes: the registered
                // environments reach them through the cluster (the init
                // here is the one Tune's command line then keeps).
                let started = rayforge::init(rayforge::Config::default())
                    .map_err(|e| e.to_string())
                    .and_then(|()| crate::env::publish_registered().map_err(|e| e.to_string()));
                if let Err(e) = started {
                    eprintln!("{}: {e}", self.name);
                    return ExitCode::from(2);
                }
                let mut tune_args = args.to_vec();
                tune_args[0] = "run".into();
                return rayforge_tune::cli::Cli::new(&format!("{} tune", self.name))
                    .register("rllib", tune_trial)
                    .run(&tune_args);
            }
            _ => {
                eprintln!("{}", self.usage());
                return ExitCode::from(2);
            }
        };
        match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{}: {e}", self.name);
                ExitCode::from(2)
            }
        }
    }
}
