//! tch on a real gang (two worker processes on the embedded cluster): a
//! dataset split across the ranks as tensor batches, one pass per epoch;
//! a model prepared with parameters from rank 0 and gradients averaged in
//! buckets, so the ranks stay identical; its variables and a TorchScript
//! export in the checkpoint, loadable by the driver.

use rayforge_integration_tests::cluster;
use rayforge_train::tch::{nn, nn::Module, nn::OptimizerConfig, Kind, Tensor};
use rayforge_train::{
    CheckpointExt, CheckpointWriter, CheckpointWriterExt, ReduceOp, RunConfig, ScalingConfig, TrainContext, Trainer,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone)]
struct Row {
    x: Vec<f32>,
    y: i64,
}

/// Points in the plane, the class telling which side of a line they are.
fn points(n: usize) -> Vec<Row> {
    let mut s = 12345u64;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    (0..n)
        .map(|_| {
            let (a, b) = (next(), next());
            Row {
                x: vec![a, b],
                y: (a + 0.5 * b > 0.0) as i64,
            }
        })
        .collect()
}

fn net(p: &nn::Path) -> impl Module {
    nn::seq()
        .add(nn::linear(p / "l1", 2, 16, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(p / "l2", 16, 2, Default::default()))
}

fn train(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    // Each rank starts from different random weights: prepare_model makes
    // them rank 0's.
    rayforge_train::tch::manual_seed(ctx.world_rank() as i64 + 1);
    let mut vs = nn::VarStore::new(ctx.torch_device());
    let model = net(&vs.root());
    let mut opt = nn::Sgd::default().build(&vs, 0.5)?;
    let mut ddp = ctx.prepare_model_with_buckets(&vs, 100)?;
    assert!(ddp.num_buckets() > 1, "small buckets: several per step");
    for _epoch in 0..3 {
        let mut rows = Tensor::from_slice(&[0i64]);
        for batch in ctx.iter_torch_batches("train", 32)? {
            let batch = batch?;
            let (x, y) = (batch["x"].to_kind(Kind::Float), &batch["y"]);
            let loss = model.forward(&x).cross_entropy_for_logits(y);
            ddp.backward_step(&loss, &mut opt)?;
            rows += x.size()[0];
        }
        // The ranks' rows this epoch, and how far apart their weights are.
        let seen = ctx.group().all_gather_tensor(&rows)?;
        let sum: Vec<f32> = vs
            .trainable_variables()
            .iter()
            .map(|t| t.sum(Kind::Float).double_value(&[]) as f32)
            .collect();
        let mut lo = Tensor::from_slice(&sum);
        let mut hi = lo.copy();
        ctx.group().all_reduce_tensor(&mut lo, ReduceOp::Mean)?;
        hi -= &lo;
        let all =
            Tensor::from_slice(&points(512).iter().flat_map(|r| r.x.clone()).collect::<Vec<f32>>()).reshape([512, 2]);
        let labels = Tensor::from_slice(&points(512).iter().map(|r| r.y).collect::<Vec<i64>>());
        let acc = model.forward(&all).accuracy_for_logits(&labels).double_value(&[]);
        let mut ckpt = CheckpointWriter::new()?;
        ckpt.save_varstore("model.safetensors", &vs)?;
        ckpt.save_torchscript("model.pt", &mut vs, &all.narrow(0, 0, 1), |x| model.forward(x))?;
        ctx.report(
            [
                ("rows_rank0", seen[0].int64_value(&[0]) as f64),
                ("rows_rank1", seen[1].int64_value(&[0]) as f64),
                ("weight_spread", hi.abs().max().double_value(&[])),
                ("accuracy", acc),
            ],
            Some(ckpt),
        )?;
    }
    Ok(())
}

#[test]
fn a_gang_trains_a_tch_model_on_dataset_shards_with_averaged_gradients() {
    cluster();
    let storage = std::env::temp_dir().join(format!("rayforge-train-torch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let data = rayforge_data::from_items(&points(512)).unwrap();
    let result = Trainer::new(train)
        .scaling(ScalingConfig {
            num_workers: 2,
            ..Default::default()
        })
        .run_config(RunConfig {
            name: "torch".into(),
            storage_path: storage.clone().into(),
            ..Default::default()
        })
        .dataset("train", data)
        .fit()
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(result.history.len(), 3, "a report per epoch");
    for r in &result.history {
        // Every epoch is a full pass, split evenly.
        assert_eq!(
            (r.metrics["rows_rank0"], r.metrics["rows_rank1"]),
            (256.0, 256.0),
            "{r:?}"
        );
        assert!(
            r.metrics["weight_spread"] < 1e-5,
            "the ranks' weights stay identical: {r:?}"
        );
    }
    assert!(result.metrics["accuracy"] > 0.9, "{:?}", result.metrics);

    // The driver loads what rank 0 saved: variables and TorchScript agree.
    let ckpt = result.latest_checkpoint.clone().unwrap();
    let mut vs = nn::VarStore::new(rayforge_train::tch::Device::Cpu);
    let model = net(&vs.root());
    ckpt.load_varstore("model.safetensors", &mut vs).unwrap();
    let ts = ckpt.load_torchscript("model.pt").unwrap();
    let x = Tensor::from_slice(&[0.8f32, 0.4, -0.7, -0.2]).reshape([2, 2]);
    let want = model.forward(&x);
    assert!(ts.forward_ts(&[&x]).unwrap().allclose(&want, 1e-5, 1e-5, false));
    assert_eq!(
        Vec::<i64>::try_from(want.argmax(1, false)).unwrap(),
        vec![1, 0],
        "the model learnt the line"
    );
    // The history as an Arrow batch.
    let batch = result.history_batch().unwrap();
    assert_eq!(batch.num_rows(), 3);
    assert!(batch.schema().field_with_name("accuracy").is_ok());
    std::fs::remove_dir_all(&storage).unwrap();
}

fn missing_dataset(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    ctx.iter_torch_batches("validation", 8).map(|_| ())
}

#[test]
fn asking_for_a_dataset_the_trainer_was_not_given_names_it() {
    cluster();
    let storage = std::env::temp_dir().join(format!("rayforge-train-torch-missing-{}", std::process::id()));
    let result = Trainer::new(missing_dataset)
        .run_config(RunConfig {
            name: "missing".into(),
            storage_path: storage.clone().into(),
            verbose: false,
            ..Default::default()
        })
        .dataset("train", rayforge_data::range(10))
        .fit()
        .unwrap();
    let e = result.error.expect("the run fails").to_string();
    assert!(e.contains("`validation`") && e.contains("train"), "{e}");
    let _ = std::fs::remove_dir_all(&storage);
}
