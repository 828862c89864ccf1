//! Data-parallel training with rayforge-train: two ranks fit `y = 3x + 1`
//! by gradient descent, each on its own share of the points, averaging
//! their gradients with a ring all-reduce; a checkpoint every iteration
//! (the best two by loss kept), and a rank killed once mid-run to show the
//! gang restarting from the latest checkpoint.
//!
//! Run: `cargo run --release -p rayforge-examples --bin train_linear`

use rayforge_train::{
    CheckpointConfig, CheckpointWriter, FailureConfig, ReduceOp, RunConfig, ScalingConfig, TrainContext, Trainer,
};

/// One rank's loop: gradient on its points, averaged over the ranks, one
/// step; report with a checkpoint.
fn train(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    let crash_marker: String = ctx.config()?;
    let (mut w, mut b) = match ctx.checkpoint() {
        Some(c) => {
            let v = c.read("params")?;
            let f = |i: usize| f32::from_le_bytes(v[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]));
            (f(0), f(1))
        }
        None => (0.0, 0.0),
    };
    let (n, rank) = (ctx.world_size(), ctx.world_rank());
    let xs: Vec<f32> = (0..500).map(|i| (i * n + rank) as f32 / (500 * n) as f32).collect();
    for it in ctx.iteration()..100 {
        if rank == 1 && it == 30 && std::fs::metadata(&crash_marker).is_err() {
            // Once: this rank's process dies; the run restarts from iteration 30.
            let _ = std::fs::write(&crash_marker, b"crashed once");
            std::process::abort();
        }
        let mut g = [0f32; 3]; // d/dw, d/db, loss
        for x in &xs {
            let err = w * x + b - (3.0 * x + 1.0);
            g[0] += 2.0 * err * x;
            g[1] += 2.0 * err;
            g[2] += err * err;
        }
        g.iter_mut().for_each(|v| *v /= xs.len() as f32);
        ctx.all_reduce(&mut g, ReduceOp::Mean)?;
        w -= 0.7 * g[0];
        b -= 0.7 * g[1];
        let mut ckpt = CheckpointWriter::new()?;
        ckpt.write("params", &[w.to_le_bytes(), b.to_le_bytes()].concat())?;
        ctx.report([("loss", g[2] as f64), ("w", w as f64), ("b", b as f64)], Some(ckpt))?;
    }
    Ok(())
}

#[rayforge::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    rayforge::init(rayforge::Config::default())?;
    let storage = std::env::temp_dir().join(format!("rayforge-train-example-{}", std::process::id()));
    let result = Trainer::new(train)
        .scaling(ScalingConfig {
            num_workers: 2,
            cpus_per_worker: 0.5,
            ..Default::default()
        })
        .run_config(RunConfig {
            name: "linear".into(),
            storage_path: storage.clone().into(),
            checkpoint: CheckpointConfig {
                num_to_keep: Some(2),
                score_attribute: Some("loss".into()),
                higher_is_better: false,
            },
            failure: FailureConfig { max_failures: 1 },
            ..Default::default()
        })
        .config(serde_json::json!(storage.join("crashed").display().to_string()))
        .fit()?
        .into_result()?;
    println!(
        "fitted y = {:.3}x + {:.3} in {} iterations, {} restart(s); best checkpoint: {}",
        result.metrics["w"],
        result.metrics["b"],
        result.history.last().map_or(0, |r| r.iteration),
        result.failures,
        result
            .best_checkpoint
            .as_ref()
            .map_or("none".into(), |c| c.path().display().to_string()),
    );
    let _ = std::fs::remove_dir_all(&storage);
    Ok(())
}
