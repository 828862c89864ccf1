//! `rllib` as a user runs it: train with a stop criterion and a config
//! file, evaluate the checkpoint it saved; unknown algorithms,
//! environments and config fields are errors naming them.

use std::process::Command;

fn rllib(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rllib")).args(args).output().unwrap();
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
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    // One line per iteration; 2 runners x 2 envs x 32 steps each.
    let iters: Vec<&str> = out.lines().filter(|l| l.starts_with("iter ")).collect();
    assert_eq!(iters.len(), 3, "{out}");
    assert!(iters[2].contains("steps      384"), "{out}");
    let ckpt = dir.join("checkpoint_000003");
    assert!(out.contains(ckpt.to_str().unwrap()), "{out}");
    let (code, out, err) = rllib(&["evaluate", ckpt.to_str().unwrap(), "--episodes", "3"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with("3 episodes of CartPole-v1: return mean"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_names_are_errors_naming_them() {
    let (code, _, err) = rllib(&["train", "--algo", "a3c", "--env", "CartPole-v1"]);
    assert_eq!(code, 2);
    assert!(err.contains("a3c") && err.contains("ppo, dqn, sac"), "{err}");
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
    let (code, _, err) = rllib(&["evaluate", "/nonexistent/checkpoint_000001"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/checkpoint_000001"), "{err}");
    let (code, _, err) = rllib(&["fly"]);
    assert_eq!(code, 2);
    assert!(err.contains("usage"), "{err}");
    std::fs::remove_file(&bad).unwrap();
}
