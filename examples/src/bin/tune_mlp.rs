//! ASHA over the Train MLP's learning rate and width: each Tune trial is a
//! rayforge-train run of two ranks on the digits (the `train_mlp` example),
//! holding a placement group for its gang; every epoch's validation
//! accuracy goes to Tune as the trial's result, with the run's checkpoint,
//! so ASHA stops the poor configs after an epoch or two.
//!
//! Run: `cargo run --release -p rayforge-examples --bin tune_mlp -- run examples/tune/mlp.toml`

use std::process::ExitCode;

use rayforge_examples::digits::{self, Settings};
use rayforge_train::{RunConfig, ScalingConfig, Trainer};
use rayforge_tune::TrialContext;

/// One trial: a Train run with the trial's `lr` and `hidden`, its reports
/// passed on to Tune. A restarted trial's Train run resumes by name from
/// its own latest checkpoint.
fn mlp(ctx: &mut TrialContext) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let settings = Settings {
        epochs: ctx.get("epochs").map_err(|e| err(&e))?,
        batch_size: ctx.get("batch_size").map_err(|e| err(&e))?,
        lr: ctx.get("lr").map_err(|e| err(&e))?,
        hidden: ctx.get("hidden").map_err(|e| err(&e))?,
        kill_at_epoch: None,
        marker: String::new(),
    };
    let rows = rayforge_data::read_csv(digits::CSV)
        .map_err(|e| err(&e))?
        .map_batches(digits::to_features);
    let (train, valid) = rows.train_test_split(0.2, Some(42)).map_err(|e| err(&e))?;
    let pg = ctx
        .placement_group()
        .cloned()
        .ok_or("the trial holds no placement group: give it worker_bundles")?;
    let trainer = Trainer::new(digits::train)
        .scaling(ScalingConfig {
            num_workers: 2,
            // What each of the trial's worker bundles holds.
            cpus_per_worker: 0.25,
            ..Default::default()
        })
        .placement_group(&pg, 1)
        .run_config(RunConfig {
            name: "train".into(),
            // The trial's own directory in the experiment's storage, on
            // whichever node the ranks run.
            storage_path: ctx.storage().uri().into(),
            verbose: false,
            // The trial's own event file (Tune's) has these reports.
            tensorboard: false,
            ..Default::default()
        })
        .config(serde_json::to_value(&settings).map_err(|e| err(&e))?)
        .dataset("train", train)
        .dataset("valid", valid);
    let mut failed = None;
    let result = trainer
        .fit_with(|r| {
            if failed.is_some() {
                return;
            }
            let mut metrics: Vec<(String, f64)> = r.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect();
            metrics.retain(|(k, _)| k != "training_iteration");
            failed = ctx.report_copy(metrics, r.checkpoint.as_ref()).err().map(|e| err(&e));
        })
        .map_err(|e| err(&e))?;
    if let Some(e) = failed {
        return Err(e);
    }
    result.into_result().map(|_| ()).map_err(|e| err(&e))
}

#[rayforge::main]
fn main() -> ExitCode {
    rayforge_tune::cli::Cli::new("tune_mlp").register("mlp", mlp).main()
}
