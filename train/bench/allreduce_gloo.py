"""gloo all-reduce anchor for the Train benchmark: times dist.all_reduce (sum)
of float32 buffers between torchrun's processes.

  torchrun --standalone --nproc_per_node=2 allreduce_gloo.py [--sizes 1,4,16,64,256]

For each size (MB = 2**20 bytes) it warms up once, then times R repetitions
(R=21 up to 16 MB, 5 above, as the rayforge side), each started together after a barrier. Rank 0
prints {"impl":"gloo","mb":..,"seconds":median,"gbps":bytes/seconds/1e9}
(algorithm bandwidth: buffer bytes over time).
"""
import argparse
import json
import statistics
import time

import torch
import torch.distributed as dist

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--sizes", default="1,4,16,64,256", help="buffer sizes in MB, comma-separated")
args = p.parse_args()

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()

for mb in [int(s) for s in args.sizes.split(",")]:
    nbytes = mb << 20
    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    dist.all_reduce(buf)  # warm-up
    times = []
    for _ in range(21 if mb <= 16 else 5):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        s = statistics.median(times)
        print(json.dumps({"impl": "gloo", "mb": mb, "seconds": round(s, 6),
                          "gbps": round(nbytes / s / 1e9, 4)}), flush=True)
    del buf

dist.barrier()
dist.destroy_process_group()
