"""Ray Data 2.60 anchor for the shuffle-scaling benchmark: random_shuffle over
16, 64 and 256 materialized blocks of the data-bench input.

Usage: python shuffle_blocks_anchor.py DIR ROWS
Reads DIR/input/*.parquet (written by data-bench), cuts it into N blocks and
materializes them (untimed), then times random_shuffle(seed=0).materialize().
Prints one line per case: "ray: random_shuffle N blocks   SECONDS s".
"""
import os, sys, time

import ray
import ray.data as rd

d = sys.argv[1]
rows = int(sys.argv[2])
inp = os.path.join(d, "input")
ray.init(include_dashboard=False)
for blocks in (16, 64, 256):
    ds = rd.read_parquet(inp).repartition(blocks).materialize()
    # One untimed run, as data-bench's --warmup: workers and heaps are warm.
    ds.random_shuffle(seed=0).materialize()
    t = time.perf_counter()
    n = ds.random_shuffle(seed=0).materialize().count()
    dt = time.perf_counter() - t
    assert n == rows, (n, rows)
    print(f"{'ray: random_shuffle %d blocks' % blocks:48s} {dt:8.2f} s  {rows / dt / 1e6:8.2f} M rows/s", flush=True)
ray.shutdown()
