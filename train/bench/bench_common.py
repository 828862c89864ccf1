"""Shared by the Train benchmark anchors (ddp_gloo.py, ray_train.py): the data
format, the shard scheme, the model and the evaluation, so that every anchor
trains exactly the same thing as the Rust benchmark.

Data directory (written by the Rust benchmark or make_data.py):
  x.f32      N*D little-endian float32, row-major
  y.i64      N little-endian int64 labels in 0..C-1
  meta.json  {"n": N, "d": D, "classes": C}
"""
import argparse
import json
import os

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def train_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="data directory (x.f32, y.i64, meta.json)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=128, help="batch size per worker")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--layers", type=int, default=2, help="hidden layers (train-bench's --layers)")
    p.add_argument("--hidden", type=int, default=512, help="their width (train-bench's --hidden)")
    p.add_argument("--bucket-mb", type=float, default=25.0, help="DDP's bucket_cap_mb (train-bench's --bucket-mb)")
    return p


def load_meta(data):
    with open(os.path.join(data, "meta.json")) as f:
        m = json.load(f)
    return int(m["n"]), int(m["d"]), int(m["classes"])


def load_rows(data, start=0, stop=None):
    """Rows [start, stop) of the data set as (x float32 [rows, D], y int64 [rows])."""
    n, d, _ = load_meta(data)
    stop = n if stop is None else stop
    x = np.memmap(os.path.join(data, "x.f32"), dtype="<f4", mode="r", shape=(n, d))
    y = np.memmap(os.path.join(data, "y.i64"), dtype="<i8", mode="r", shape=(n,))
    return (torch.from_numpy(np.array(x[start:stop], dtype=np.float32)),
            torch.from_numpy(np.array(y[start:stop], dtype=np.int64)))


def shard_range(n, rank, world):
    """Rank r trains on the contiguous rows [r*N/W, (r+1)*N/W)."""
    return rank * n // world, (rank + 1) * n // world


def make_model(d, classes, layers=2, hidden=512):
    """d -> hidden (ReLU), layers - 1 more hidden -> hidden (ReLU), -> classes."""
    torch.manual_seed(0)
    mods = [nn.Linear(d, hidden), nn.ReLU()]
    for _ in range(layers - 1):
        mods += [nn.Linear(hidden, hidden), nn.ReLU()]
    mods.append(nn.Linear(hidden, classes))
    return nn.Sequential(*mods)


def make_optimizer(model, args):
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)


def batches(x, y, batch):
    """In order, no shuffling; the last batch may be partial."""
    for i in range(0, len(x), batch):
        yield x[i:i + batch], y[i:i + batch]


def train_step(model, opt, xb, yb):
    loss = F.cross_entropy(model(xb), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


@torch.no_grad()
def accuracy(model, x, y, chunk=8192):
    model.eval()
    correct = 0
    for i in range(0, len(x), chunk):
        correct += (model(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum().item()
    model.train()
    return correct / len(x)


def emit(**record):
    print(json.dumps(record), flush=True)
