"""Optuna's side of TPE's benchmark (tune/bench/searchers/compare runs it
beside tpe_bench.rs): the same functions, budgets and seeds with
optuna.samplers.TPESampler(seed=s, multivariate=...), constant liar off
(the trials run one after the other), the other settings Optuna's defaults.
Prints the same JSON lines as tpe_bench.rs:

  target/optuna-venv/bin/python tune/bench/searchers/optuna_bench.py \
      [--seeds 10] [--functions branin,hartmann6,rosenbrock10] \
      [--modes uni,multi] [--timing 1000,10000] [--measure-up-to 3000]

Optuna's TPE costs O(n) per suggestion, so N trials take O(N^2): a timing
above --measure-up-to is not run; the cumulative time is recorded every
250 trials up to that many trials, fitted as a*n + b*n^2 (least squares)
and evaluated at N, printed with "extrapolated": true. Pass
--measure-up-to 10000 to measure it instead (about 5 minutes a mode on
this machine).
"""
import argparse
import json
import math
import time

import numpy as np
import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)


def branin(p):
    x, y = p["x"], p["y"]
    b = 5.1 / (4 * math.pi**2)
    return (y - b * x * x + 5 / math.pi * x - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x) + 10


ALPHA = [1.0, 1.2, 3.0, 3.2]
A = [
    [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
    [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
    [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
    [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
]
P = [
    [1312, 1696, 5569, 124, 8283, 5886],
    [2329, 4135, 8307, 3736, 1004, 9991],
    [2348, 1451, 3522, 2883, 3047, 6650],
    [4047, 8828, 8732, 5743, 1091, 381],
]


def hartmann6(p):
    xs = [p[f"x{j}"] for j in range(6)]
    return -sum(
        ALPHA[i] * math.exp(-sum(A[i][j] * (xs[j] - P[i][j] * 1e-4) ** 2 for j in range(6)))
        for i in range(4)
    )


def rosenbrock10(p):
    xs = [p[f"x{j}"] for j in range(10)]
    return sum(100 * (xs[i + 1] - xs[i] ** 2) ** 2 + (1 - xs[i]) ** 2 for i in range(9))


# name: (params as (name, low, high), budget, objective)
FUNCTIONS = {
    "branin": ([("x", -5.0, 10.0), ("y", 0.0, 15.0)], 100, branin),
    "hartmann6": ([(f"x{j}", 0.0, 1.0) for j in range(6)], 200, hartmann6),
    "rosenbrock10": ([(f"x{j}", -2.048, 2.048) for j in range(10)], 300, rosenbrock10),
}


def run(params, trials, f, seed, multivariate, marks=None):
    """Ask/tell `trials` trials; the best value. `marks` gets the
    cumulative time every 250 trials."""
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=multivariate, constant_liar=False)
    study = optuna.create_study(sampler=sampler, direction="minimize")
    best = math.inf
    start = time.perf_counter()
    for i in range(trials):
        trial = study.ask()
        p = {name: trial.suggest_float(name, low, high) for name, low, high in params}
        v = f(p)
        best = min(best, v)
        study.tell(trial, v)
        if marks is not None and (i + 1) % 250 == 0:
            marks.append((i + 1, time.perf_counter() - start))
    return best


def words(s):
    return [w for w in s.split(",") if w and w != "none"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--functions", default="branin,hartmann6,rosenbrock10")
    ap.add_argument("--modes", default="uni,multi")
    ap.add_argument("--timing", default="1000,10000")
    ap.add_argument("--measure-up-to", type=int, default=3000)
    a = ap.parse_args()
    modes = [{"uni": False, "multi": True}[m] for m in words(a.modes)]
    for name in words(a.functions):
        params, trials, f = FUNCTIONS[name]
        for mv in modes:
            for seed in range(a.seeds):
                start = time.perf_counter()
                best = run(params, trials, f, seed, mv)
                print(json.dumps({
                    "impl": "optuna", "kind": "best", "function": name,
                    "mode": "multi" if mv else "uni", "multivariate": mv,
                    "seed": seed, "trials": trials, "best": best,
                    "seconds": time.perf_counter() - start,
                }), flush=True)
    params, _, _ = FUNCTIONS["branin"]
    for n in [int(w) for w in words(a.timing)]:
        for mv in modes:
            out = {"impl": "optuna", "kind": "time", "function": "branin",
                   "mode": "multi" if mv else "uni", "multivariate": mv, "trials": n}
            if n <= a.measure_up_to:
                start = time.perf_counter()
                run(params, n, branin, 0, mv)
                out.update(seconds=time.perf_counter() - start, extrapolated=False)
            else:
                marks = []
                run(params, a.measure_up_to, branin, 0, mv, marks)
                ns = np.array([m[0] for m in marks], dtype=float)
                ts = np.array([m[1] for m in marks])
                (lin, quad), *_ = np.linalg.lstsq(np.stack([ns, ns**2], axis=1), ts, rcond=None)
                out.update(seconds=float(lin * n + quad * n * n), extrapolated=True,
                           measured_up_to=a.measure_up_to,
                           measured_seconds=float(ts[-1]))
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
