"""Ray Train (2.60, TorchTrainer) anchor for the Train benchmark: the same MLP,
data shards and optimizer as ddp_gloo.py, run by Ray Train's workers.

  python ray_train.py --data DIR --workers W [--epochs 2 --batch 128]

Each worker reads the data files itself and takes the shard of its world rank;
the model goes through ray.train.torch.prepare_model (DDP over gloo on CPU).
After each epoch rank 0 evaluates on the full data set (not timed) and every
worker calls ray.train.report; rank 0 attaches a tiny checkpoint, since Ray
Train 2.x hands back to the driver only the metrics that came with one.
The driver prints, after fit(), one JSON line per epoch
  {"impl":"ray-train","workers":W,"epoch":e,"epoch_s":...,"accuracy":...}
(epoch_s measured inside rank 0), then
  {"impl":"ray-train","import_s":...,"ray_init_s":...,"startup_s":...,"fit_s":...}
startup_s: from the trainer.fit() call to the end of rank 0's first optimizer
step (wall-clock time.time() stamps, the worker's passed back in the report).
"""
import time

T_START = time.time()
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import ray  # noqa: E402
import ray.cloudpickle  # noqa: E402
import ray.train  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchTrainer, prepare_model  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

# Ship bench_common inside the pickled train function: Ray's workers need not
# have this folder on their import path.
ray.cloudpickle.register_pickle_by_value(bc)

T_IMPORTED = time.time()


def train_func(cfg):
    torch.set_num_threads(1)
    args = cfg["args"]
    rank = ray.train.get_context().get_world_rank()
    world = ray.train.get_context().get_world_size()

    n, d, classes = bc.load_meta(args.data)
    lo, hi = bc.shard_range(n, rank, world)
    x, y = bc.load_rows(args.data, lo, hi)
    if rank == 0:
        x_all, y_all = bc.load_rows(args.data)  # for the evaluation

    model = prepare_model(bc.make_model(d, classes))
    net = getattr(model, "module", model)  # unwrapped, for the evaluation
    opt = bc.make_optimizer(model, args)

    first_step = None
    for epoch in range(1, args.epochs + 1):
        if dist.is_initialized():
            dist.barrier()  # start every epoch together
        t0 = time.perf_counter()
        for xb, yb in bc.batches(x, y, args.batch):
            bc.train_step(model, opt, xb, yb)
            if first_step is None:
                first_step = time.time()
        metrics = {"epoch": epoch, "epoch_s": time.perf_counter() - t0,
                   "first_step_ts": first_step}
        if rank == 0:
            metrics["accuracy"] = bc.accuracy(net, x_all, y_all)
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, "metrics.json"), "w") as f:
                    json.dump(metrics, f)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


def main():
    p = bc.train_args(__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    args.data = os.path.abspath(args.data)

    t0 = time.time()
    ray.init(num_cpus=2)
    ray_init_s = time.time() - t0

    storage = tempfile.mkdtemp(prefix="ray-train-bench-")
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"args": args},
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=False,
                                     resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=storage, name="mlp",
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),
    )
    t_fit = time.time()
    result = trainer.fit()
    fit_s = time.time() - t_fit
    if result.error:
        raise result.error

    history = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])
    for m in history:
        bc.emit(impl="ray-train", workers=args.workers, epoch=m["epoch"],
                epoch_s=round(m["epoch_s"], 4), accuracy=round(m["accuracy"], 4))
    bc.emit(impl="ray-train", import_s=round(T_IMPORTED - T_START, 4),
            ray_init_s=round(ray_init_s, 4),
            startup_s=round(history[0]["first_step_ts"] - t_fit, 4), fit_s=round(fit_s, 4))
    shutil.rmtree(storage, ignore_errors=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
