"""Ray Tune 2.60's side of Tune's result-throughput benchmark: N trials on
`--cpus` CPUs, one CPU each, each reporting R results as fast as it can
(Ray's default loggers write them to disk, as rayforge-tune does); prints
results per second over the experiment's wall time as a JSON line.

  target/ray-venv/bin/python tune/bench/ray_throughput.py --trials 4 --reports 2000
"""
import argparse
import json
import tempfile
import time

import ray
from ray import tune

p = argparse.ArgumentParser()
p.add_argument("--trials", type=int, default=4)
p.add_argument("--reports", type=int, default=2000)
p.add_argument("--cpus", type=int, default=2)
a = p.parse_args()


def burst(config):
    for i in range(config["reports"]):
        tune.report({"score": i})


ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False)
start = time.time()
tuner = tune.Tuner(
    tune.with_resources(burst, {"cpu": 1}),
    param_space={"i": tune.grid_search(list(range(a.trials))), "reports": a.reports},
    tune_config=tune.TuneConfig(metric="score", mode="max"),
    run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0),
)
results = tuner.fit()
wall = time.time() - start
assert not results.errors, results.errors
n = sum(len(r.metrics_dataframe) for r in results)
print(json.dumps({"impl": "ray-tune", "trials": a.trials, "reports": a.reports, "cpus": a.cpus,
                  "results": n, "wall_s": wall, "results_per_s": n / wall}))
