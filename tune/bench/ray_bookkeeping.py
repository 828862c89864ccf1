"""Ray Tune 2.60's side of Tune's bookkeeping benchmark (as Ray's own
release test: trials of 1 s reporting once a second): N trials on
`--cpus` CPUs, one CPU each; prints wall time against the floor
(N x seconds / CPUs) as a JSON line.

  target/ray-venv/bin/python tune/bench/ray_bookkeeping.py --trials 40
"""
import argparse
import json
import tempfile
import time

import ray
from ray import tune

p = argparse.ArgumentParser()
p.add_argument("--trials", type=int, default=40)
p.add_argument("--seconds", type=int, default=1)
p.add_argument("--cpus", type=int, default=2)
a = p.parse_args()


def trainable(config):
    for i in range(config["seconds"]):
        time.sleep(1)
        tune.report({"score": i})


ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False)
start = time.time()
tuner = tune.Tuner(
    tune.with_resources(trainable, {"cpu": 1}),
    param_space={"i": tune.grid_search(list(range(a.trials))), "seconds": a.seconds},
    tune_config=tune.TuneConfig(metric="score", mode="max"),
    run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0),
)
results = tuner.fit()
wall = time.time() - start
floor = a.trials * a.seconds / a.cpus
assert not results.errors, results.errors
print(json.dumps({"impl": "ray-tune", "trials": a.trials, "seconds": a.seconds, "cpus": a.cpus,
                  "wall_s": wall, "floor_s": floor, "overhead_pct": 100 * (wall / floor - 1)}))
