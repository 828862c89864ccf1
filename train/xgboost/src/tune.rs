//! XGBoost as a Tune trainable: [`trainable`] runs one trial as a
//! distributed [`XGBoostTrainer`] run in the trial's placement group (its
//! `worker_bundles`), passing each boosting round on to Tune as the trial's
//! result, with the run's checkpoints, so ASHA stops poor trials after a few
//! rounds and PBT or HyperBand resume them from their models.
//!
//! A binary registers it (`rayforge_tune::cli::Cli::new("my-tune")
//! .register("xgboost", rayforge_xgboost::tune::trainable).main()`) and runs
//! an experiment whose `[param_space]` holds XGBoost's parameters and these
//! (constants, or searched like any other):
//!
//! | key | |
//! |---|---|
//! | `train` | the Parquet files to boost on (a path, directory or storage URI) |
//! | `valid` | Parquet files evaluated every round (optional; named `valid-...`) |
//! | `label` | the label column |
//! | `num_boost_round` | rounds (ASHA's `max_t` counts them) |
//! | `features` | the feature columns (default: all but the label) |
//! | `early_stopping_rounds` | optional |
//! | `checkpoint_frequency` | rounds between checkpoints (default 5) |
//! | `cpus_per_worker` | what each worker bundle holds of CPU (default 1; XGBoost's threads) |
//!
//! ```toml
//! metric = "valid-logloss"
//! mode = "min"
//! [trainable]
//! name = "xgboost"
//! [resources_per_trial]
//! cpu = 0.25
//! worker_bundles = [{ CPU = 1 }, { CPU = 1 }]
//! [scheduler]
//! type = "asha"
//! max_t = 50
//! grace_period = 5
//! [param_space]
//! train = "data/train"
//! valid = "data/valid"
//! label = "income"
//! num_boost_round = 50
//! objective = "binary:logistic"
//! eta = { loguniform = [0.01, 0.5] }
//! max_depth = { randint = [2, 9] }
//! subsample = { uniform = [0.5, 1.0] }
//! ```

use rayforge_train::{RunConfig, ScalingConfig};
use rayforge_tune::TrialContext;

use crate::booster::Params;
use crate::trainer::XGBoostTrainer;

/// The keys of a trial's config that are not XGBoost parameters.
const OWN: [&str; 8] = [
    "cpus_per_worker",
    "train",
    "valid",
    "label",
    "num_boost_round",
    "features",
    "early_stopping_rounds",
    "checkpoint_frequency",
];

/// One Tune trial: a distributed XGBoost run (see the module's docs).
pub fn trainable(ctx: &mut TrialContext) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let train: String = ctx.get("train").map_err(|e| err(&e))?;
    let label: String = ctx.get("label").map_err(|e| err(&e))?;
    let rounds: usize = ctx.get("num_boost_round").map_err(|e| err(&e))?;
    let optional = |name: &str| ctx.config().contains_key(name);
    let params: Params = ctx
        .config()
        .iter()
        .filter(|(k, _)| !OWN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let pg = ctx
        .placement_group()
        .cloned()
        .ok_or("the trial holds no placement group: give it worker_bundles (one per XGBoost worker)")?;
    // Bundle 0 holds the trial's own process; the workers have the rest.
    let workers = pg.bundle_count().saturating_sub(1);
    if workers == 0 {
        return Err("the trial's placement group has no worker bundles: give it worker_bundles".into());
    }
    let cpus: f64 = if optional("cpus_per_worker") {
        ctx.get("cpus_per_worker").map_err(|e| err(&e))?
    } else {
        1.0
    };
    let mut trainer = XGBoostTrainer::new(params, &label, rounds)
        .dataset(
            "train",
            rayforge_data::read_parquet(train.as_str()).map_err(|e| err(&e))?,
        )
        .checkpoint_frequency(if optional("checkpoint_frequency") {
            ctx.get("checkpoint_frequency").map_err(|e| err(&e))?
        } else {
            5
        })
        .scaling(ScalingConfig {
            num_workers: workers,
            cpus_per_worker: cpus,
            ..Default::default()
        })
        .placement_group(&pg, 1)
        .run_config(RunConfig {
            name: "xgboost".into(),
            // The trial's own directory in the experiment's storage: a
            // restarted trial's run resumes boosting from its checkpoint.
            storage_path: ctx.storage().uri().into(),
            verbose: false,
            // The trial's own event file (Tune's) has these reports.
            tensorboard: false,
            ..Default::default()
        });
    if optional("valid") {
        let valid: String = ctx.get("valid").map_err(|e| err(&e))?;
        trainer = trainer.dataset(
            "valid",
            rayforge_data::read_parquet(valid.as_str()).map_err(|e| err(&e))?,
        );
    }
    if optional("features") {
        trainer = trainer.features(ctx.get::<Vec<String>>("features").map_err(|e| err(&e))?);
    }
    if optional("early_stopping_rounds") {
        trainer = trainer.early_stopping_rounds(ctx.get("early_stopping_rounds").map_err(|e| err(&e))?);
    }
    let mut failed = None;
    let result = trainer
        .fit_with(|r| {
            if failed.is_some() {
                return;
            }
            let metrics: Vec<(String, f64)> = r.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect();
            failed = ctx.report_copy(metrics, r.checkpoint.as_ref()).err().map(|e| err(&e));
        })
        .map_err(|e| err(&e))?;
    if let Some(e) = failed {
        return Err(e);
    }
    match result.error() {
        Some(e) => Err(e.to_string()),
        None => Ok(()),
    }
}
