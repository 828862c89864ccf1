//! A binary with a registered Rust trainable, run by `tune`'s command line:
//! `pbt_schedule`, a toy whose best schedule is known, for
//! `tune/examples/pbt.toml`:
//!
//! ```sh
//! cargo run --release -p rayforge-tune --bin tune-examples -- run tune/examples/pbt.toml
//! ```
//!
//! The "model" gains up to 1 per step, less by half for each decade its
//! learning rate is off the best one, which falls from 0.1 (steps 1-8) to
//! 0.01 (9-16) to 0.001 (17-24). A fixed rate scores at most 16 over 24
//! steps (0.01 throughout); following the schedule scores 24. PBT gets
//! there by copying the best trial's checkpoint into the worst and moving
//! its rate.

use std::process::ExitCode;

use rayforge::checkpoint::CheckpointWriter;
use rayforge_tune::TrialContext;

/// The learning rate that is best at `step`.
fn best_lr(step: u64) -> f64 {
    [0.1, 0.01, 0.001][((step.max(1) - 1) / 8).min(2) as usize]
}

/// Trains for `steps` steps at `lr`, checkpointing its score every step,
/// going on from a checkpoint when it has one.
fn pbt_schedule(ctx: &mut TrialContext) -> Result<(), String> {
    let lr: f64 = ctx.get("lr").map_err(|e| e.to_string())?;
    let steps: u64 = ctx.get("steps").map_err(|e| e.to_string())?;
    let delay_ms: u64 = ctx.get("delay_ms").unwrap_or(20);
    let mut score = match ctx.checkpoint() {
        Some(c) => {
            let bytes = c.read("state.json").map_err(|e| e.to_string())?;
            let state: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            state["score"].as_f64().ok_or("a checkpoint without a score")?
        }
        None => 0.0,
    };
    for step in ctx.iteration() + 1..=steps {
        std::thread::sleep(std::time::Duration::from_millis(delay_ms)); // a step's work
        score += (1.0 - (lr.log10() - best_lr(step).log10()).abs() / 2.0).max(0.0);
        let mut w = CheckpointWriter::new().map_err(|e| e.to_string())?;
        w.write(
            "state.json",
            serde_json::json!({ "score": score }).to_string().as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        ctx.report_checkpoint([("score", score), ("lr", lr)], w)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[rayforge::main]
fn main() -> ExitCode {
    rayforge_tune::cli::Cli::new("tune-examples")
        .register("pbt_schedule", pbt_schedule)
        .main()
}
