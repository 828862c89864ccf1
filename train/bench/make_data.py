"""Writes a synthetic classification data set in the Train benchmark format
(x.f32, y.i64, meta.json; see bench_common.py), for testing the anchors:

  python make_data.py --out /tmp/bench-data [--n 60000 --d 784 --classes 10 --seed 0]

x is uniform in [-1, 1]; y = argmax(x @ W) for a fixed-seed random W (D x C).
"""
import argparse
import json
import os

import numpy as np

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--out", required=True)
p.add_argument("--n", type=int, default=60000)
p.add_argument("--d", type=int, default=784)
p.add_argument("--classes", type=int, default=10)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()

rng = np.random.default_rng(a.seed)
w = rng.standard_normal((a.d, a.classes)).astype(np.float32)
x = rng.uniform(-1.0, 1.0, size=(a.n, a.d)).astype("<f4")
y = np.argmax(x @ w, axis=1).astype("<i8")

os.makedirs(a.out, exist_ok=True)
x.tofile(os.path.join(a.out, "x.f32"))
y.tofile(os.path.join(a.out, "y.i64"))
with open(os.path.join(a.out, "meta.json"), "w") as f:
    json.dump({"n": a.n, "d": a.d, "classes": a.classes}, f)
print(f"wrote {a.out}: n={a.n} d={a.d} classes={a.classes}, "
      f"label counts {np.bincount(y, minlength=a.classes).tolist()}")
