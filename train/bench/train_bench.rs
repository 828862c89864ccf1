//! Train's benchmarks, the rayforge side (the anchors are the Python
//! scripts beside this file; `train/bench/compare` runs both and prints the
//! ratios). Every mode prints JSON lines.
//!
//! - `single`: a plain single-process tch loop, no rayforge (the anchor for
//!   the per-worker overhead).
//! - `train --workers W`: the same model and data through rayforge-train,
//!   each rank on its contiguous shard, one thread each: time per epoch,
//!   accuracy, and start-up (from `fit` to the first step).
//! - `allreduce`: all-reduce bandwidth between two ranks for 1 MB to 256 MB
//!   of f32.
//!
//! `--amp bf16` runs `single` and `train` with each forward pass under
//! bfloat16 autocast ([`rayforge_train::amp::autocast`]). `--layers L`
//! and `--hidden H` change the model (2 hidden layers of 512 by default),
//! `--bucket-mb` the gradient buckets (25), and `--no-overlap` all-reduces
//! the buckets after backward instead of while it runs.
//!
//! The model, data format and shard scheme match `bench_common.py`:
//! 784 -> 512 -> 512 -> 10 (by default) with ReLU, SGD (lr 0.05, momentum 0.9), batches
//! of 128 in order, accuracy on the whole data set after each epoch (not
//! timed).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rayforge_train::tch::{self, nn, nn::Module, nn::OptimizerConfig, Kind, Tensor};
use rayforge_train::{ReduceOp, RunConfig, ScalingConfig, TrainContext, Trainer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Args {
    data: String,
    epochs: u64,
    batch: i64,
    lr: f64,
    momentum: f64,
    workers: usize,
    sizes_mb: Vec<usize>,
    /// Forward passes under bfloat16 autocast.
    bf16: bool,
    /// The number of hidden layers, and their width.
    layers: usize,
    hidden: i64,
    /// The gradient buckets' size (DDP's `bucket_cap_mb`).
    bucket_mb: f64,
    /// Gradient buckets all-reduced while backward runs (the default), or
    /// after it (`--no-overlap`).
    overlap: bool,
    /// When `fit` was called (seconds since the epoch), for start-up time.
    fit_at: f64,
}

fn parse() -> Result<(String, Args), String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mode = argv
        .first()
        .cloned()
        .ok_or("usage: train-bench single|train|allreduce --data DIR [...]")?;
    let get = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let num = |name: &str, default: f64| -> Result<f64, String> {
        get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| format!("{name}: not a number: {v}"))
        })
    };
    Ok((
        mode,
        Args {
            data: get("--data").unwrap_or_default(),
            epochs: num("--epochs", 2.0)? as u64,
            batch: num("--batch", 128.0)? as i64,
            lr: num("--lr", 0.05)?,
            momentum: num("--momentum", 0.9)?,
            workers: num("--workers", 2.0)? as usize,
            sizes_mb: get("--sizes")
                .unwrap_or_else(|| "1,4,16,64,256".into())
                .split(',')
                .map(|s| s.trim().parse().map_err(|_| format!("--sizes: not a number: {s}")))
                .collect::<Result<_, _>>()?,
            bf16: match get("--amp").as_deref() {
                None => false,
                Some("bf16") => true,
                Some(other) => return Err(format!("--amp: bf16 is the one choice, not {other}")),
            },
            layers: num("--layers", 2.0)? as usize,
            hidden: num("--hidden", 512.0)? as i64,
            bucket_mb: num("--bucket-mb", 25.0)?,
            overlap: !argv.iter().any(|a| a == "--no-overlap"),
            fit_at: 0.0,
        },
    ))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Deserialize)]
struct Meta {
    n: usize,
    d: usize,
    classes: usize,
}

/// Rows `[start, stop)` of the data set.
fn load(dir: &str, start: usize, stop: Option<usize>) -> std::io::Result<(Tensor, Tensor, Meta)> {
    let meta: Meta = serde_json::from_slice(&std::fs::read(format!("{dir}/meta.json"))?)?;
    let stop = stop.unwrap_or(meta.n);
    let x = std::fs::read(format!("{dir}/x.f32"))?;
    let y = std::fs::read(format!("{dir}/y.i64"))?;
    let xs: Vec<f32> = x[start * meta.d * 4..stop * meta.d * 4]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let ys: Vec<i64> = y[start * 8..stop * 8]
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    let rows = (stop - start) as i64;
    Ok((
        Tensor::from_slice(&xs).reshape([rows, meta.d as i64]),
        Tensor::from_slice(&ys),
        meta,
    ))
}

/// `layers` hidden layers of `hidden` units with ReLU (named `l1`, `l2`,
/// ..., the output layer last).
fn model(p: &nn::Path, d: usize, a: &Args, classes: usize) -> impl Module {
    let mut m = nn::seq();
    let mut width = d as i64;
    for i in 1..=a.layers {
        m = m
            .add(nn::linear(p / format!("l{i}"), width, a.hidden, Default::default()))
            .add_fn(|x| x.relu());
        width = a.hidden;
    }
    m.add(nn::linear(
        p / format!("l{}", a.layers + 1),
        width,
        classes as i64,
        Default::default(),
    ))
}

fn accuracy(m: &impl Module, x: &Tensor, y: &Tensor) -> f64 {
    tch::no_grad(|| m.forward(x).accuracy_for_logits(y).double_value(&[]))
}

/// One epoch over `x`, `y` in order, in batches of `batch`: the loss of
/// each batch goes to `step` (the plain optimizer, or the prepared model's
/// backward step), so both sides run the very same loop.
fn epoch<E: From<rayforge_train::Error>>(
    m: &impl Module,
    x: &Tensor,
    y: &Tensor,
    batch: i64,
    bf16: bool,
    mut step: impl FnMut(&Tensor) -> Result<(), E>,
) -> Result<(), E> {
    let n = x.size()[0];
    for i in (0..n).step_by(batch as usize) {
        let len = batch.min(n - i);
        let forward = || {
            m.forward(&x.narrow(0, i, len))
                .cross_entropy_for_logits(&y.narrow(0, i, len))
        };
        let loss = if bf16 {
            rayforge_train::amp::autocast(x.device(), Kind::BFloat16, forward)?
        } else {
            forward()
        };
        step(&loss)?;
    }
    Ok(())
}

fn single(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let (x, y, meta) = load(&a.data, 0, None)?;
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let m = model(&vs.root(), meta.d, a, meta.classes);
    let mut opt = nn::Sgd {
        momentum: a.momentum,
        ..Default::default()
    }
    .build(&vs, a.lr)?;
    let mut first_step = None;
    for e in 1..=a.epochs {
        let start = Instant::now();
        epoch(&m, &x, &y, a.batch, a.bf16, |loss| {
            opt.backward_step(loss);
            first_step.get_or_insert(t0.elapsed().as_secs_f64());
            Ok::<(), rayforge_train::Error>(())
        })?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({"impl": "tch-single", "bf16": a.bf16, "layers": a.layers, "hidden": a.hidden, "workers": 1, "epoch": e, "epoch_s": secs, "accuracy": accuracy(&m, &x, &y)})
        );
    }
    println!("{}", serde_json::json!({"impl": "tch-single", "startup_s": first_step}));
    Ok(())
}

/// One rank of the `train` mode.
fn train_rank(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    let a: Args = ctx.config()?;
    tch::manual_seed(0);
    let (w, r) = (ctx.world_size(), ctx.world_rank());
    let meta: Meta = load(&a.data, 0, Some(0))
        .map_err(|e| rayforge_train::Error::InvalidArgument(format!("{}: {e}", a.data)))?
        .2;
    let (lo, hi) = (r * meta.n / w, (r + 1) * meta.n / w);
    let (x, y, _) =
        load(&a.data, lo, Some(hi)).map_err(|e| rayforge_train::Error::InvalidArgument(format!("{}: {e}", a.data)))?;
    let vs = nn::VarStore::new(ctx.torch_device());
    let m = model(&vs.root(), meta.d, &a, meta.classes);
    let mut opt = nn::Sgd {
        momentum: a.momentum,
        ..Default::default()
    }
    .build(&vs, a.lr)?;
    let mut ddp = ctx.prepare_model_with_buckets(&vs, (a.bucket_mb * (1 << 20) as f64) as usize)?;
    ddp.set_overlap(a.overlap);
    let mut first_step = None;
    let full = if r == 0 {
        Some(load(&a.data, 0, None).map_err(|e| rayforge_train::Error::InvalidArgument(e.to_string()))?)
    } else {
        None
    };
    for e in 1..=a.epochs {
        ctx.group().barrier()?;
        let start = Instant::now();
        epoch(&m, &x, &y, a.batch, a.bf16, |loss| {
            ddp.backward_step(loss, &mut opt)?;
            first_step.get_or_insert(now() - a.fit_at);
            Ok::<(), rayforge_train::Error>(())
        })?;
        ctx.group().barrier()?;
        let secs = start.elapsed().as_secs_f64();
        let acc = full.as_ref().map_or(0.0, |(fx, fy, _)| accuracy(&m, fx, fy));
        ctx.report(
            [
                ("epoch", e as f64),
                ("epoch_s", secs),
                ("accuracy", acc),
                ("startup_s", first_step.unwrap_or(0.0)),
                ("buckets", ddp.num_buckets() as f64),
            ],
            None,
        )?;
    }
    Ok(())
}

fn train(mut a: Args) -> Result<(), Box<dyn std::error::Error>> {
    rayforge::init(rayforge::Config::default())?;
    let storage = std::env::temp_dir().join(format!("rayforge-train-bench-{}", std::process::id()));
    a.fit_at = now();
    let result = Trainer::new(train_rank)
        .scaling(ScalingConfig {
            num_workers: a.workers,
            cpus_per_worker: 1.0,
            ..Default::default()
        })
        .run_config(RunConfig {
            name: "bench".into(),
            storage_path: storage.clone().into(),
            verbose: false,
            ..Default::default()
        })
        .config(serde_json::to_value(&a)?)
        .fit()?
        .into_result()?;
    let name = if a.workers == 1 {
        "rayforge-train-1"
    } else {
        "rayforge-train"
    };
    for r in &result.history {
        println!(
            "{}",
            serde_json::json!({"impl": name, "bf16": a.bf16, "layers": a.layers, "hidden": a.hidden, "bucket_mb": a.bucket_mb, "buckets": r.metrics["buckets"], "overlap": a.overlap, "workers": a.workers, "epoch": r.metrics["epoch"], "epoch_s": r.metrics["epoch_s"], "accuracy": r.metrics["accuracy"]})
        );
    }
    if let Some(r) = result.history.first() {
        println!(
            "{}",
            serde_json::json!({"impl": name, "startup_s": r.metrics["startup_s"]})
        );
    }
    let _ = std::fs::remove_dir_all(&storage);
    rayforge::shutdown();
    Ok(())
}

/// One rank of the `allreduce` mode: times all-reduces of each size.
fn allreduce_rank(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    let a: Args = ctx.config()?;
    let s = Instant::now();
    for _ in 0..100 {
        ctx.group().barrier()?;
    }
    let barrier = s.elapsed().as_secs_f64() / 100.0;
    ctx.report([("barrier_s", barrier)], None)?;
    for mb in &a.sizes_mb {
        let n = mb * (1 << 20) / 4;
        let mut t = Tensor::ones([n as i64], (Kind::Float, tch::Device::Cpu));
        ctx.group().all_reduce_tensor(&mut t, ReduceOp::Sum)?;
        let reps = if *mb <= 16 { 21 } else { 5 };
        let mut times = Vec::new();
        for _ in 0..reps {
            ctx.group().barrier()?;
            let s = Instant::now();
            ctx.group().all_reduce_tensor(&mut t, ReduceOp::Sum)?;
            times.push(s.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        ctx.report([("mb", *mb as f64), ("seconds", times[times.len() / 2])], None)?;
    }
    Ok(())
}

fn allreduce(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    rayforge::init(rayforge::Config::default())?;
    let storage = std::env::temp_dir().join(format!("rayforge-allreduce-bench-{}", std::process::id()));
    let result = Trainer::new(allreduce_rank)
        .scaling(ScalingConfig {
            num_workers: 2,
            ..Default::default()
        })
        .run_config(RunConfig {
            name: "allreduce".into(),
            storage_path: storage.clone().into(),
            verbose: false,
            collective_timeout: Duration::from_secs(600),
            ..Default::default()
        })
        .config(serde_json::to_value(&a)?)
        .fit()?
        .into_result()?;
    for r in &result.history {
        if let Some(b) = r.metrics.get("barrier_s") {
            println!("{}", serde_json::json!({"impl": "rayforge", "barrier_us": b * 1e6}));
            continue;
        }
        let (mb, s) = (r.metrics["mb"], r.metrics["seconds"]);
        println!(
            "{}",
            serde_json::json!({"impl": "rayforge", "mb": mb, "seconds": s, "gbps": mb * (1u64 << 20) as f64 / s / 1e9})
        );
    }
    let _ = std::fs::remove_dir_all(&storage);
    rayforge::shutdown();
    Ok(())
}

#[rayforge::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mode, a) = parse()?;
    match mode.as_str() {
        "single" => single(&a),
        "train" => train(a),
        "allreduce" => allreduce(a),
        other => Err(format!("unknown mode `{other}`: single, train or allreduce").into()),
    }
}
