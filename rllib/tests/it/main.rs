//! Integration tests of rayforge-rllib, as modules of one test binary: each binary
//! is a link of about 190 MB, and CI's disk and two cores pay for every one.
mod algorithms;
mod cli;
mod gymnasium;
mod learners;

use rayforge_rllib::{Algorithm, IterationResult, Stop};

/// Trains `a` until its return (the evaluation return, when its config
/// evaluates) reaches `reward` or `timesteps` env steps pass, printing a
/// line per iteration; the last result.
pub(crate) fn train_until(a: &mut Algorithm, reward: f64, timesteps: u64) -> IterationResult {
    let stop = Stop {
        reward: Some(reward),
        timesteps: Some(timesteps),
        iters: None,
    };
    a.run(stop, |r| println!("{}", r.line())).unwrap()
}
