//! An MLP classifier on handwritten digits (the data set ships in
//! `examples/datasets/`), trained by two ranks with rayforge-train: each
//! reads its shard of the rows through rayforge-data, gradients are
//! averaged across the ranks, a checkpoint every epoch (the best two by
//! validation accuracy kept, plus the latest). With `--kill-at-epoch N`,
//! rank 1 kills its process once at epoch N and the gang resumes from the
//! latest checkpoint. With `--gpus N`, N ranks train on one GPU each, their
//! collectives through NCCL (a GPU set-up: `RAYFORGE_TORCH_CUDA=1 source
//! scripts/libtorch.sh` before building).
//!
//! Run: `cargo run --release -p rayforge-examples --bin train_mlp -- [--epochs 10] [--kill-at-epoch 3] [--gpus 1]`

use rayforge_examples::digits::{self, Settings};
use rayforge_train::{CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, Trainer};

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{name} needs a number")),
    }
}

#[rayforge::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let epochs: u64 = arg(&args, "--epochs")?.unwrap_or(10);
    let kill_at_epoch: Option<u64> = arg(&args, "--kill-at-epoch")?;
    let gpus: usize = arg(&args, "--gpus")?.unwrap_or(0);
    let ranks = if gpus > 0 { gpus } else { 2 };
    rayforge::init(rayforge::Config::default())?;

    let rows = rayforge_data::read_csv(digits::CSV)?.map_batches(digits::to_features);
    let (train, valid) = rows.train_test_split(0.2, Some(42))?;
    let storage = std::env::temp_dir().join(format!("rayforge-mlp-example-{}", std::process::id()));
    let settings = Settings {
        epochs,
        batch_size: 32,
        lr: 3e-3,
        hidden: 128,
        kill_at_epoch,
        marker: storage.join("killed").display().to_string(),
    };
    let result = Trainer::new(digits::train)
        .scaling(ScalingConfig {
            num_workers: ranks,
            use_gpu: gpus > 0,
            // Leaves CPU for the data set's tasks beside the ranks.
            cpus_per_worker: 0.5,
            ..Default::default()
        })
        .run_config(RunConfig {
            name: "digits-mlp".into(),
            storage_path: storage.clone().into(),
            checkpoint: CheckpointConfig {
                num_to_keep: Some(2),
                score_attribute: Some("val_accuracy".into()),
                higher_is_better: true,
            },
            failure: FailureConfig { max_failures: 1 },
            ..Default::default()
        })
        .config(serde_json::to_value(&settings)?)
        .dataset("train", train)
        .dataset("valid", valid)
        .fit()?
        .into_result()?;
    let best = result.best_checkpoint.as_ref().ok_or("no checkpoint")?;
    println!(
        "trained {} epochs on {}{}, {} restart(s): validation accuracy {:.3} (best {:.3} in {})",
        result.metrics["epoch"],
        match ranks {
            1 => "1 rank".to_string(),
            n => format!("{n} ranks"),
        },
        if gpus > 0 { " on GPUs" } else { "" },
        result.failures,
        result.metrics["val_accuracy"],
        best.manifest()?.metrics["val_accuracy"],
        best.location()
    );
    println!(
        "history: {} reports, {}",
        result.history.len(),
        result.storage.uri_of("progress.csv")
    );
    let _ = std::fs::remove_dir_all(&storage);
    Ok(())
}
