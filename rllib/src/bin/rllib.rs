//! `rllib train --algo ppo --env CartPole-v1`, `rllib evaluate CHECKPOINT`,
//! `rllib tune SEARCH.TOML`: the command line of [`rayforge_rllib::cli`]
//! with the environments here and Gymnasium's.

#[rayforge::main]
fn main() -> std::process::ExitCode {
    rayforge_rllib::cli::Cli::new("rllib").main()
}
