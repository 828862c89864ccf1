"""PyTorch DDP (gloo) anchor for the Train benchmark: the MLP of bench_common.py
trained on W contiguous shards, one thread per worker.

  torchrun --standalone --nproc_per_node=W ddp_gloo.py --data DIR [--epochs 2 --batch 128]
  python ddp_gloo.py --single --data DIR ...        # one process, no DDP ("torch-single")

--layers, --hidden and --bucket-mb change the model and DDP's buckets (as
train-bench's flags do). Rank 0 prints one JSON line per epoch
  {"impl":"ddp-gloo","workers":W,"epoch":e,"epoch_s":...,"accuracy":...,"layers":L,"hidden":H}
(accuracy on the full data set, evaluated after the epoch and not timed), then
  {"impl":"ddp-gloo","import_s":...,"startup_s":...}
import_s: importing torch and friends; startup_s: from right after the imports
to the end of the first optimizer step (process group, data, model, DDP).
"""
import time

T_START = time.time()
import os  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

T_IMPORTED = time.time()


def main():
    p = bc.train_args(__doc__.splitlines()[0])
    p.add_argument("--single", action="store_true", help="one process, no torch.distributed")
    args = p.parse_args()
    torch.set_num_threads(1)

    if args.single:
        impl, rank, world = "torch-single", 0, 1
    else:
        impl = "ddp-gloo"
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()

    n, d, classes = bc.load_meta(args.data)
    lo, hi = bc.shard_range(n, rank, world)
    x, y = bc.load_rows(args.data, lo, hi)
    if rank == 0:
        x_all, y_all = bc.load_rows(args.data)  # for the evaluation

    net = bc.make_model(d, classes, args.layers, args.hidden)
    # DDP overlaps each bucket's all-reduce with the rest of backward.
    model = net if args.single else DDP(net, bucket_cap_mb=args.bucket_mb)
    opt = bc.make_optimizer(model, args)

    first_step = None
    for epoch in range(1, args.epochs + 1):
        if not args.single:
            dist.barrier()  # start every epoch together (rank 0 may have been evaluating)
        t0 = time.perf_counter()
        for xb, yb in bc.batches(x, y, args.batch):
            bc.train_step(model, opt, xb, yb)
            if first_step is None:
                first_step = time.time()
        epoch_s = time.perf_counter() - t0
        if rank == 0:
            acc = bc.accuracy(net, x_all, y_all)
            bc.emit(impl=impl, workers=world, epoch=epoch, epoch_s=round(epoch_s, 4),
                    accuracy=round(acc, 4), layers=args.layers, hidden=args.hidden)

    if rank == 0:
        bc.emit(impl=impl, import_s=round(T_IMPORTED - T_START, 4),
                startup_s=round(first_step - T_IMPORTED, 4))
    if not args.single:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
