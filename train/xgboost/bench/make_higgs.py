"""Writes a synthetic HIGGS-shaped dataset as Parquet: ROWS rows of 28 float32
features (21 "low-level" ones, standard normal, and 7 "high-level" ones that
are noisy nonlinear combinations of them, as HIGGS's are) and a 0/1 `label`
drawn from a logistic model of both, so boosting has something to learn.
Deterministic for a seed. Split into FILES files (Data reads them as blocks).

  python make_higgs.py --rows 1000000 --files 8 --out target/xgb-bench/higgs
"""
import argparse
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

p = argparse.ArgumentParser()
p.add_argument("--rows", type=int, default=1_000_000)
p.add_argument("--files", type=int, default=8)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", required=True)
a = p.parse_args()

rng = np.random.default_rng(a.seed)
low = rng.standard_normal((a.rows, 21), dtype=np.float32)
high = np.stack([
    np.abs(low[:, 0] * low[:, 1]),
    np.sqrt(low[:, 2] ** 2 + low[:, 3] ** 2),
    np.tanh(low[:, 4] + low[:, 5]),
    low[:, 6] * low[:, 7] - low[:, 8],
    np.maximum(low[:, 9], low[:, 10]),
    np.sin(low[:, 11]) * low[:, 12],
    low[:, 13] ** 2 - low[:, 14],
], axis=1).astype(np.float32)
high += 0.1 * rng.standard_normal(high.shape, dtype=np.float32)
logit = 0.8 * high[:, 0] - 0.6 * high[:, 1] + 1.2 * high[:, 2] + 0.5 * high[:, 3] + 0.7 * high[:, 5] \
    - 0.3 * high[:, 6] + 0.4 * low[:, 15] - 0.4 * low[:, 16] + 0.5
label = (rng.random(a.rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
cols = {f"f{i}": low[:, i] for i in range(21)}
cols.update({f"f{21 + i}": high[:, i] for i in range(7)})
cols["label"] = label
table = pa.table(cols)
os.makedirs(a.out, exist_ok=True)
per = (a.rows + a.files - 1) // a.files
for i in range(a.files):
    pq.write_table(table.slice(i * per, per), os.path.join(a.out, f"part-{i:03d}.parquet"))
print(f"{a.rows} rows x 28 features in {a.files} files under {a.out} (label mean {label.mean():.3f})")
