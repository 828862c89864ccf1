//! GPU ranks. On a machine with CUDA (a torch install with CUDA as
//! LIBTORCH, and libnccl.so loadable): a gang of one rank per GPU (at most
//! two) trains on CUDA with every collective going through NCCL, and a
//! communicator whose second rank never comes fails by the timeout instead
//! of hanging; with two GPUs, a rank killed in the middle of NCCL
//! collectives restarts the gang from its checkpoint. Without CUDA those
//! skip, and a rank asked to use a GPU that
//! libtorch cannot see fails the run with an error saying so.

use std::time::{Duration, Instant};

use rayforge_integration_tests::{cluster_with, kill_self};
use rayforge_train::tch::{self, nn, nn::Module, nn::OptimizerConfig, Device, Kind, Tensor};
use rayforge_train::{
    CheckpointWriter, Error, FailureConfig, Group, ReduceOp, RunConfig, ScalingConfig, TrainContext, Trainer,
};

/// The embedded cluster, with the machine's GPUs, or one it does not have
/// when it has none (so a GPU rank is placed, and finds no CUDA).
fn gpu_cluster() -> usize {
    let gpus = if tch::Cuda::is_available() {
        tch::Cuda::device_count() as usize
    } else {
        0
    };
    cluster_with(|c| c.num_gpus(gpus.max(1) as f64).num_cpus(2.0));
    gpus
}

fn storage_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("rayforge-train-gpu-{}", std::process::id()))
}

fn run_config(name: &str) -> RunConfig {
    RunConfig {
        name: name.into(),
        storage_path: storage_dir().into(),
        failure: FailureConfig { max_failures: 0 },
        collective_timeout: Duration::from_secs(60),
        verbose: true,
        ..Default::default()
    }
}

/// Fails the rank with `what` unless `ok`.
fn check(ok: bool, what: impl FnOnce() -> String) -> rayforge_train::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(what()))
    }
}

/// Each collective on CUDA tensors, checked against what it must give,
/// then an MLP trained on CUDA with its gradients averaged by NCCL.
fn train_on_cuda(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    let dev = ctx.torch_device();
    check(dev == Device::Cuda(0), || format!("device {dev:?}"))?;
    let (n, r) = (ctx.world_size() as f64, ctx.world_rank() as f64);
    check(ctx.group().nccl().is_some(), || "no NCCL communicator".into())?;

    let mut t = Tensor::full([1000], r + 1.0, (Kind::Float, dev));
    ctx.group().all_reduce_tensor(&mut t, ReduceOp::Sum)?;
    let want = n * (n + 1.0) / 2.0;
    check(t.device() == dev, || "the sum left the GPU".into())?;
    check((t.min().double_value(&[]) - want).abs() < 1e-6, || {
        format!("sum {t} != {want}")
    })?;
    let mut m = Tensor::full([3, 5], r, (Kind::Double, dev));
    ctx.group().all_reduce_tensor(&mut m, ReduceOp::Mean)?;
    check((m.max().double_value(&[]) - (n - 1.0) / 2.0).abs() < 1e-12, || {
        format!("mean {m}")
    })?;
    let mut ints = Tensor::full([7], ctx.world_rank() as i64 + 1, (Kind::Int64, dev));
    ctx.group().all_reduce_tensor(&mut ints, ReduceOp::Sum)?;
    check(ints.int64_value(&[6]) == want as i64, || format!("int sum {ints}"))?;
    // A view that is not contiguous goes through a copy and comes back.
    let mut strided = Tensor::full([4, 4], r + 1.0, (Kind::Float, dev)).tr();
    ctx.group().all_reduce_tensor(&mut strided, ReduceOp::Sum)?;
    check(
        (strided.sum(Kind::Float).double_value(&[]) - 16.0 * want).abs() < 1e-3,
        || format!("strided {strided}"),
    )?;
    let mut b = Tensor::full([8], r, (Kind::Float, dev));
    let last = ctx.world_size() - 1;
    ctx.group().broadcast_tensor(&mut b, last)?;
    check(b.min().double_value(&[]) == n - 1.0, || format!("broadcast {b}"))?;
    let all = ctx
        .group()
        .all_gather_tensor(&Tensor::full([2, 2], r, (Kind::Float, dev)))?;
    for (i, a) in all.iter().enumerate() {
        check(
            a.size() == [2, 2] && a.device() == dev && a.max().double_value(&[]) == i as f64,
            || format!("gathered {i}: {a}"),
        )?;
    }

    // Two classes of points on either side of a line, on the GPU.
    tch::manual_seed(7 + ctx.world_rank() as i64);
    let x = Tensor::rand([4096, 2], (Kind::Float, dev)) * 2.0 - 1.0;
    let y = (x.select(1, 0) + x.select(1, 1) * 0.5).gt(0.0).to_kind(Kind::Int64);
    let vs = nn::VarStore::new(dev);
    let model = nn::seq()
        .add(nn::linear(vs.root() / "l1", 2, 64, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(vs.root() / "l2", 64, 2, Default::default()));
    let mut opt = nn::Adam::default().build(&vs, 1e-2)?;
    let mut ddp = ctx.prepare_model(&vs)?;
    for epoch in 0..3 {
        for i in 0..16 {
            let (xb, yb) = (x.narrow(0, i * 256, 256), y.narrow(0, i * 256, 256));
            let loss = model.forward(&xb).cross_entropy_for_logits(&yb);
            ddp.backward_step(&loss, &mut opt)?;
        }
        let acc = model.forward(&x).accuracy_for_logits(&y).double_value(&[]);
        // Every rank holds the same weights: their sum over ranks is n
        // times rank 0's.
        let Some(mut w) = vs.variables().get("l1.weight").map(|w| w.detach().copy()) else {
            return Err(Error::InvalidArgument(format!(
                "no l1.weight among {:?}",
                vs.variables().keys()
            )));
        };
        check(w.device() == dev, || "the weights left the GPU".into())?;
        let mine = w.copy();
        ctx.group().all_reduce_tensor(&mut w, ReduceOp::Mean)?;
        let drift = (w - mine).abs().max().double_value(&[]);
        let calls = ctx.group().nccl().map(|i| i.calls).unwrap_or(0);
        ctx.report(
            [
                ("epoch", epoch as f64),
                ("accuracy", acc),
                ("drift", drift),
                ("nccl_calls", calls as f64),
            ],
            None,
        )?;
    }
    Ok(())
}

#[test]
fn gpu_ranks_train_on_cuda_with_every_collective_through_nccl() {
    let gpus = gpu_cluster();
    if gpus == 0 {
        eprintln!("skipped: no CUDA device (libtorch sees none)");
        return;
    }
    let workers = gpus.min(2);
    let result = Trainer::new(train_on_cuda)
        .scaling(ScalingConfig {
            num_workers: workers,
            use_gpu: true,
            cpus_per_worker: 0.5,
            ..Default::default()
        })
        .run_config(run_config("cuda"))
        .fit()
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(result.history.len(), 3);
    let m = &result.metrics;
    assert!(m["accuracy"] > 0.9, "{m:?}");
    assert!(m["drift"] < 1e-5, "ranks differ: {m:?}");
    // 6 collectives before training, 1 per parameter broadcast (4), 1 per
    // bucket and step (48 steps; only with 2 ranks), 1 per epoch's check.
    let least = 6.0 + 4.0 + 3.0;
    assert!(m["nccl_calls"] >= least, "{m:?}");
    eprintln!("{workers} GPU rank(s): {m:?}");
}

#[test]
fn an_nccl_communicator_whose_peer_never_comes_fails_by_the_timeout() {
    if gpu_cluster() == 0 {
        eprintln!("skipped: no CUDA device (libtorch sees none)");
        return;
    }
    // Rank 0 of two, on the GPU; "rank 1" takes part in the TCP ring (the
    // agreement and the id's broadcast) but never makes its communicator.
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to_b = std::net::TcpStream::connect(b.local_addr().unwrap()).unwrap();
    let to_a = std::net::TcpStream::connect(a.local_addr().unwrap()).unwrap();
    let timeout = Duration::from_secs(5);
    let mut g0 = Group::from_streams(0, 2, to_b, a.accept().unwrap().0, timeout).unwrap();
    let mut g1 = Group::from_streams(1, 2, to_a, b.accept().unwrap().0, timeout).unwrap();
    let peer = std::thread::spawn(move || {
        let mut ok = [0f32];
        g1.all_reduce(&mut ok, ReduceOp::Sum).unwrap();
        let mut id = [0u8; 128];
        g1.broadcast(&mut id, 0).unwrap();
        g1
    });
    let started = Instant::now();
    let err = g0.init_nccl(0).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(60), "failed by the timeout");
    assert!(
        matches!(&err, Error::Collective { rank: 0, message } if message.contains("a rank did not join")),
        "{err}"
    );
    assert!(g0.nccl().is_none());
    drop(peer.join().unwrap());
}

#[test]
fn a_gpu_rank_without_cuda_fails_the_run_saying_why() {
    if gpu_cluster() > 0 {
        eprintln!("skipped: this machine has CUDA (the other tests use it)");
        return;
    }
    let started = Instant::now();
    let out = Trainer::new(train_on_cuda)
        .scaling(ScalingConfig {
            num_workers: 1,
            use_gpu: true,
            cpus_per_worker: 0.5,
            ..Default::default()
        })
        .run_config(run_config("no-cuda"))
        .fit()
        .unwrap();
    let err = out.error.clone().expect("the run failed");
    let text = err.to_string();
    assert!(text.contains("GPU on rank 0"), "{text}");
    assert!(text.contains("libtorch sees no CUDA device"), "{text}");
    assert!(out.history.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "failed at once, not by a timeout"
    );
}

/// All-reduces a CUDA tensor each iteration, checkpointing the iteration;
/// rank 1 kills its process once, at iteration 3, while rank 0 is in (or
/// about to enter) the next collective.
fn sum_until_killed(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
    let marker: String = ctx.config()?;
    let dev = ctx.torch_device();
    for it in ctx.iteration()..6 {
        if ctx.world_rank() == 1 && it == 3 && std::fs::metadata(&marker).is_err() {
            std::fs::write(&marker, b"1").map_err(|e| Error::InvalidArgument(e.to_string()))?;
            kill_self();
        }
        let mut t = Tensor::full([1 << 20], 1.0, (Kind::Float, dev));
        ctx.group().all_reduce_tensor(&mut t, ReduceOp::Sum)?;
        let got = t.min().double_value(&[]);
        check(got == ctx.world_size() as f64, || format!("sum {got}"))?;
        let mut ckpt = CheckpointWriter::new()?;
        ckpt.write("it", &it.to_le_bytes())?;
        ctx.report([("sum", got)], Some(ckpt))?;
    }
    Ok(())
}

#[test]
fn a_gpu_rank_killed_between_nccl_collectives_restarts_the_gang_from_its_checkpoint() {
    let gpus = gpu_cluster();
    if gpus < 2 {
        eprintln!("skipped: needs two CUDA devices (this machine has {gpus})");
        return;
    }
    let mut config = run_config("nccl-kill");
    config.failure = FailureConfig { max_failures: 1 };
    config.collective_timeout = Duration::from_secs(30);
    let marker = storage_dir().join("nccl-kill.killed");
    let _ = std::fs::create_dir_all(storage_dir());
    let started = Instant::now();
    let result = Trainer::new(sum_until_killed)
        .scaling(ScalingConfig {
            num_workers: 2,
            use_gpu: true,
            cpus_per_worker: 0.5,
            ..Default::default()
        })
        .run_config(config)
        .config(serde_json::json!(marker.display().to_string()))
        .fit()
        .unwrap();
    assert!(result.error.is_none(), "{:?}", result.error);
    assert_eq!(result.failures, 1);
    let iterations: Vec<u64> = result.history.iter().map(|r| r.iteration).collect();
    assert_eq!(iterations, (1..=6).collect::<Vec<_>>(), "resumed after iteration 3");
    assert_eq!(result.metrics["sum"], 2.0);
    assert!(started.elapsed() < Duration::from_secs(300), "no hang");
}

/// float16 autocast on CUDA with loss scaling (`torch.amp` on a GPU):
/// products run in float16, the loss comes out float32, and a line is fit
/// as in float32; a loss scaled past float16's range is skipped by the
/// scaler.
#[test]
fn float16_autocast_with_a_grad_scaler_fits_a_line_on_cuda() {
    use rayforge_train::amp::{autocast, GradScaler};
    use rayforge_train::optim::{Adam, Optimizer};
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device (libtorch sees none)");
        return;
    }
    let dev = Device::Cuda(0);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(dev);
    let net = nn::seq()
        .add(nn::linear(vs.root() / "l1", 1, 16, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(vs.root() / "l2", 16, 1, Default::default()));
    let mut opt = Adam::new(&vs, 1e-2);
    let x = Tensor::linspace(-1.0, 1.0, 64, (Kind::Float, dev)).view([64, 1]);
    let y = &x * 3.0 - 1.0;
    let mut scaler = GradScaler::new();
    let kinds = autocast(dev, Kind::Half, || {
        let h = net.forward(&x);
        (h.kind(), h.mse_loss(&y, tch::Reduction::Mean).kind())
    })
    .unwrap();
    assert_eq!(
        kinds,
        (Kind::Half, Kind::Float),
        "products in float16, the loss in float32"
    );
    let mut loss = f64::NAN;
    let mut skipped = 0;
    for _ in 0..300 {
        let l = autocast(dev, Kind::Half, || net.forward(&x).mse_loss(&y, tch::Reduction::Mean)).unwrap();
        opt.zero_grad();
        scaler.scale(&l).backward();
        skipped += !scaler.step(&vs, &mut opt).unwrap() as u32;
        loss = l.double_value(&[]);
    }
    assert!(loss < 1e-2, "float16 loss {loss}");
    assert!(skipped <= 5, "{skipped} steps skipped");
    // A scale past float16's range overflows: that step is skipped.
    let before = scaler.scale;
    scaler.scale = 1e30;
    let l = autocast(dev, Kind::Half, || net.forward(&x).mse_loss(&y, tch::Reduction::Mean)).unwrap();
    opt.zero_grad();
    scaler.scale(&l).backward();
    assert!(!scaler.step(&vs, &mut opt).unwrap());
    assert!(scaler.scale < 1e30 && before > 0.0);
}
