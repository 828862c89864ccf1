//! A user's own environment on rayforge-rllib, as Ray's `custom_gym_env`
//! example: a corridor the agent walks to its end. The binary is `rllib`'s
//! command line with the environment registered, so every command takes it:
//!
//!   cargo run -p rayforge-rllib --bin rllib-examples -- train --algo ppo --env corridor --stop-reward 0.5
//!
//! `--config FILE` with an `[env_config]` table sets `corridor_length`.

use rayforge_rllib::cli::Cli;
use rayforge_rllib::env::{Action, Env, EnvError, Space, Step};

/// Start at 0, move left (action 0) or right (action 1); reaching
/// `length - 1` ends the episode with reward 1, every other step costs 0.1;
/// 50 steps truncate it.
struct Corridor {
    length: usize,
    pos: usize,
    steps: usize,
    done: bool,
}

const MAX_STEPS: usize = 50;

fn corridor(config: &serde_json::Value) -> Result<Box<dyn Env>, String> {
    let length = match config.get("corridor_length") {
        None => 5,
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 2)
            .ok_or_else(|| format!("corridor_length must be a whole number of at least 2, not {v}"))?
            as usize,
    };
    Ok(Box::new(Corridor {
        length,
        pos: 0,
        steps: 0,
        done: true,
    }))
}

impl Env for Corridor {
    fn observation_space(&self) -> Space {
        Space::Box {
            low: vec![0.0],
            high: vec![(self.length - 1) as f32],
        }
    }

    fn action_space(&self) -> Space {
        Space::Discrete(2)
    }

    fn reset(&mut self, _seed: Option<u64>) -> Vec<f32> {
        self.pos = 0;
        self.steps = 0;
        self.done = false;
        vec![0.0]
    }

    fn step(&mut self, action: &Action) -> Result<Step, EnvError> {
        if self.done {
            return Err(EnvError::NeedsReset("after the episode ended"));
        }
        match action {
            Action::Discrete(0) => self.pos = self.pos.saturating_sub(1),
            Action::Discrete(1) => self.pos += 1,
            other => {
                return Err(EnvError::BadAction {
                    action: other.clone(),
                    space: self.action_space(),
                })
            }
        }
        self.steps += 1;
        let terminated = self.pos == self.length - 1;
        let truncated = !terminated && self.steps >= MAX_STEPS;
        self.done = terminated || truncated;
        Ok(Step {
            obs: vec![self.pos as f32],
            reward: if terminated { 1.0 } else { -0.1 },
            terminated,
            truncated,
        })
    }
}

#[rayforge::main]
fn main() -> std::process::ExitCode {
    Cli::new("rllib-examples").register_env("corridor", corridor).main()
}
