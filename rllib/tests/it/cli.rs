//! `rllib` as a user runs it: train with a stop criterion and a config
//! file, evaluate the checkpoint it saved (on a local path, and in a
//! multi-node cluster's store from another driver); unknown algorithms,
//! environments and config fields are errors naming them.

use std::process::Command;

use rayforge_integration_tests::LocalCluster;

fn rllib(args: &[&str]) -> (i32, String, String) {
    run(env!("CARGO_BIN_EXE_rllib"), args)
}

/// `rllib-examples`: the command line with a registered environment.
fn examples(args: &[&str]) -> (i32, String, String) {
    run(env!("CARGO_BIN_EXE_rllib-examples"), args)
}

/// Runs `bin` with `args`: exit code, stdout, stderr.
fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn train_then_evaluate_the_saved_checkpoint() {
    let dir = std::env::temp_dir().join(format!("rllib-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ppo.toml");
    std::fs::write(&config, "num_envs_per_runner = 2\nlr = 0.002\n").unwrap();
    let (code, out, err) = rllib(&[
        "train",
        "--algo",
        "ppo",
        "--env",
        "CartPole-v1",
        "--stop-iters",
        "3",
        "--stop-reward",
        "1000",
        "--config",
        config.to_str().unwrap(),
        "--checkpoint-dir",
        dir.to_str().unwrap(),
        "--checkpoint-every",
        "2",
        // A tracking server that is down: a warning, not a failed run.
        "--mlflow",
        &format!("http://127.0.0.1:{}", closed_port()),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("MLflow at http://127.0.0.1:"), "{err}");
    // TensorBoard's reader sees every iteration beside the checkpoints.
    if let Some(tb) = rayforge_integration_tests::tracking::tensorboard_scalars(&dir) {
        let steps: Vec<u64> = rayforge_integration_tests::tracking::scalar_steps(&tb, ".", "env_steps_lifetime")
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(steps, vec![128, 256, 384], "{tb}");
    }
    // Every second iteration, and at the end.
    let kept: Vec<u64> = rayforge::checkpoint::list(&dir)
        .iter()
        .map(|c| c.manifest().unwrap().iteration)
        .collect();
    assert_eq!(kept, vec![2, 3], "{out}");
    // One line per iteration; 2 runners x 2 envs x 32 steps each.
    let iters: Vec<&str> = out.lines().filter(|l| l.starts_with("iter ")).collect();
    assert_eq!(iters.len(), 3, "{out}");
    assert!(iters[2].contains("steps      384"), "{out}");
    let ckpt = dir.join("checkpoint_000003");
    assert!(out.contains(ckpt.to_str().unwrap()), "{out}");
    let (code, out, err) = rllib(&["evaluate", ckpt.to_str().unwrap(), "--episodes", "3"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "restored {}: Ppo on CartPole-v1, iteration 3, 384 env steps",
            ckpt.display()
        ),
        "{out}"
    );
    assert!(lines[1].starts_with("3 episodes of CartPole-v1: return mean"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn train_checkpoints_to_the_clusters_store_and_evaluate_restores_from_it() {
    rayforge_integration_tests::own_process!();
    // A head, which holds the store, and a node with a disk of its own
    // for the env runners.
    let mut cluster = LocalCluster::start(&["--num-cpus", "0"], 10_000);
    cluster.add_private_disk_node(&["--num-cpus", "1"]);
    let work = cluster.base_dir().join("drivers");
    std::fs::create_dir_all(&work).unwrap();
    let config = work.join("ppo.toml");
    std::fs::write(&config, "num_envs_per_runner = 2\nlr = 0.002\n").unwrap();
    // Each driver has a storage cache of its own, as on another machine:
    // what evaluate reads comes from the head's store.
    let driver = |cache: &str, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rllib"))
            .args(args)
            .env("RAYFORGE_ADDRESS", &cluster.address)
            .env("RAYFORGE_TOKEN", &cluster.token)
            .env("RAYFORGE_STORAGE_CACHE", work.join(cache))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = driver(
        "cache-train",
        &[
            "train",
            "--algo",
            "ppo",
            "--env",
            "CartPole-v1",
            "--stop-iters",
            "3",
            "--stop-reward",
            "1000",
            "--config",
            config.to_str().unwrap(),
            "--checkpoint-dir",
            "cluster://runs/ppo",
            "--checkpoint-every",
            "2",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("checkpoints to cluster://runs/ppo every 2 iterations"),
        "{out}"
    );
    assert!(
        out.contains("\ncheckpoint cluster://runs/ppo/checkpoint_000002\n"),
        "{out}"
    );
    assert!(out.contains("checkpoint cluster://runs/ppo/checkpoint_000003"), "{out}");
    // In the head's store, under its state directory.
    let mut held: Vec<String> = std::fs::read_dir(cluster.state_dir.join("storage/runs/ppo"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint_"))
        .collect();
    held.sort();
    assert_eq!(held, ["checkpoint_000002", "checkpoint_000003"]);
    // The periodic checkpoint, not the last one: its own counters.
    let (code, out, err) = driver(
        "cache-evaluate",
        &["evaluate", "cluster://runs/ppo/checkpoint_000002", "--episodes", "2"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "restored cluster://runs/ppo/checkpoint_000002: Ppo on CartPole-v1, iteration 2, 256 env steps",
        "{out}"
    );
    assert!(lines[1].starts_with("2 episodes of CartPole-v1: return mean"), "{out}");
}

#[test]
fn unknown_names_are_errors_naming_them() {
    let (code, _, err) = rllib(&["train", "--algo", "a3c", "--env", "CartPole-v1"]);
    assert_eq!(code, 2);
    assert!(err.contains("a3c") && err.contains("ppo, appo, dqn, sac"), "{err}");
    let (code, _, err) = rllib(&["train", "--algo", "ppo", "--env", "Pong-v5"]);
    assert_eq!(code, 2);
    assert!(err.contains("Pong-v5"), "{err}");
    let bad = std::env::temp_dir().join(format!("rllib-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "learning_rate = 0.1\n").unwrap();
    let (code, _, err) = rllib(&[
        "train",
        "--algo",
        "ppo",
        "--env",
        "CartPole-v1",
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("learning_rate"), "{err}");
    let (code, _, err) = rllib(&["train", "--algo", "ppo", "--env", "CartPole-v1", "--stop-iter", "3"]);
    assert_eq!(code, 2);
    assert!(err.contains("--stop-iter"), "{err}");
    // A storage that cannot work is refused before training, naming it.
    let (code, out, err) = rllib(&[
        "train",
        "--algo",
        "ppo",
        "--env",
        "CartPole-v1",
        "--checkpoint-dir",
        "ftp://host/runs",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("ftp://host/runs") && !out.contains("iter "), "{err}");
    let (code, out, err) = rllib(&[
        "train",
        "--algo",
        "ppo",
        "--env",
        "CartPole-v1",
        "--mlflow",
        "localhost:5000",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--mlflow") && err.contains("localhost:5000") && !out.contains("iter "),
        "{err}"
    );
    let (code, _, err) = rllib(&["evaluate", "/nonexistent/checkpoint_000001"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/checkpoint_000001"), "{err}");
    let (code, _, err) = rllib(&["fly"]);
    assert_eq!(code, 2);
    assert!(err.contains("usage"), "{err}");
    // Asking for help is not a checkpoint path or an error.
    for args in [&["evaluate", "--help"][..], &["train", "-h"][..], &["--help"][..]] {
        let (code, out, _) = rllib(args);
        assert_eq!(code, 0, "{args:?}");
        assert!(out.contains("rllib evaluate CHECKPOINT"), "{args:?}: {out}");
    }
    std::fs::remove_file(&bad).unwrap();
}

#[test]
fn tune_runs_trials_of_an_algorithm_from_a_search_toml() {
    let dir = std::env::temp_dir().join(format!("rllib-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tune_ppo.toml"))
        .unwrap()
        .replace("training_iteration = 60", "training_iteration = 4")
        .replace("max_t = 60", "max_t = 4")
        .replace("grace_period = 20", "grace_period = 2")
        .replace("checkpoint_every = 20", "checkpoint_every = 2");
    let file = dir.join("search.toml");
    std::fs::write(
        &file,
        format!("storage_path = {:?}\n{example}", dir.display().to_string()),
    )
    .unwrap();
    let (code, out, err) = rllib(&["tune", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("best trial "), "{out}");
    for t in ["trial_00000", "trial_00001"] {
        let trial = dir.join("ppo_cartpole").join(t);
        let results = std::fs::read_to_string(trial.join("result.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = results.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(!lines.is_empty() && lines.len() <= 4, "{results}");
        assert!(lines.iter().all(|l| l["env_steps_lifetime"].as_f64().unwrap() > 0.0));
        // Checkpoints every 2 iterations, in the shared format.
        let c = rayforge::checkpoint::latest(&trial).unwrap();
        assert!(c.file("algorithm.json").exists() && c.file("policy.safetensors").exists());
    }
    // A trial's parameter that is no config field fails that trial, naming it.
    std::fs::write(
        &file,
        format!(
            "storage_path = {:?}\n{}",
            dir.display().to_string(),
            example
                .replace("name = \"ppo_cartpole\"", "name = \"bad\"")
                .replace("checkpoint_every = 2", "learning_rate = 0.1")
        ),
    )
    .unwrap();
    let (code, _, err) = rllib(&["tune", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("learning_rate"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_registered_environment_trains_evaluates_and_tunes_from_the_users_binary() {
    let dir = std::env::temp_dir().join(format!("rllib-custom-env-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A corridor of 4 cells: 3 steps right is the best return, 0.8.
    let config = dir.join("corridor.toml");
    std::fs::write(&config, "seed = 0\n\n[env_config]\ncorridor_length = 4\n").unwrap();
    let ckpt_dir = dir.join("ckpt");
    let (code, out, err) = examples(&[
        "train",
        "--algo",
        "ppo",
        "--env",
        "corridor",
        "--config",
        config.to_str().unwrap(),
        "--stop-reward",
        "0.6",
        "--stop-timesteps",
        "60000",
        "--checkpoint-dir",
        ckpt_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let done = out.lines().find(|l| l.starts_with("done in ")).expect("a summary line");
    let ret: f64 = done
        .split("return ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{done}"));
    assert!(ret >= 0.6, "PPO learns to walk the corridor: {out}");
    // The runners (other processes) built the registered environment with
    // the config's env_config: episodes of a 4-cell corridor.
    let ckpt = rayforge::checkpoint::latest(&ckpt_dir).unwrap();
    let (code, out, err) = examples(&["evaluate", ckpt.path().to_str().unwrap(), "--episodes", "3"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("Ppo on corridor"), "{out}");
    assert!(
        out.contains("3 episodes of corridor: return mean 0.80") && out.contains("length mean 3.0"),
        "the greedy policy walks straight to the end: {out}"
    );
    // The creator's own error, and an unknown name listing the registered one.
    std::fs::write(&config, "[env_config]\ncorridor_length = 1\n").unwrap();
    let (code, _, err) = examples(&[
        "train",
        "--algo",
        "ppo",
        "--env",
        "corridor",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("environment `corridor`") && err.contains("corridor_length must be"),
        "{err}"
    );
    let (code, _, err) = examples(&["train", "--algo", "ppo", "--env", "coridor"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown environment `coridor`") && err.contains("corridor"),
        "{err}"
    );
    // Tune's trials run in other processes: they find it too.
    let file = dir.join("search.toml");
    std::fs::write(
        &file,
        format!(
            "storage_path = {:?}\nname = \"corridor\"\nmetric = \"episode_return_mean\"\nmode = \"max\"\n\n\
             [trainable]\nname = \"rllib\"\n\n[resources_per_trial]\ncpu = 0.5\n\n[stop]\ntraining_iteration = 2\n\n\
             [param_space]\nalgo = \"ppo\"\nenv = \"corridor\"\n",
            dir.display().to_string()
        ),
    )
    .unwrap();
    let (code, out, err) = examples(&["tune", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    let results = std::fs::read_to_string(dir.join("corridor/trial_00000/result.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 2, "{results}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
