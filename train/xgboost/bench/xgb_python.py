"""The anchors of rayforge-xgboost's benchmark (train/xgboost/bench/compare):

  single  XGBoost in one Python process (the same library version, 3.2.0):
          Parquet -> pandas -> DMatrix, then xgboost.train
  ray     Ray 2.60's XGBoostTrainer with --workers workers: Ray Data reads the
          Parquet, each worker's shard becomes a DMatrix, xgboost.train under
          Ray's collective (as Ray's own example does)

Both time each round with an XGBoost callback (update and evaluation) and
print one JSON line: data loading (Parquet to the DMatrix, rank 0's for
Ray), the median round, the whole run from the start of the
script, the last training metric. --objective, --num-class, --metric and
--label change the task (binary:logistic, logloss, `label` by default).

  target/ray-venv/bin/python train/xgboost/bench/xgb_python.py single --data DIR --rounds 50 --threads 2
"""
import time

T0 = time.time()

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402

import xgboost  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["single", "ray"])
p.add_argument("--data", required=True)
p.add_argument("--rounds", type=int, default=50)
p.add_argument("--threads", type=int, default=2, help="XGBoost threads (per worker for ray)")
p.add_argument("--workers", type=int, default=2)
p.add_argument("--objective", default="binary:logistic")
p.add_argument("--num-class", type=int, default=0)
p.add_argument("--metric", default="logloss")
p.add_argument("--label", default="label")
p.add_argument("--cluster-cpus", type=int, default=4,
               help="Ray's logical CPUs: the workers' and room for Ray Data's read tasks (with only the "
                    "machine's 2, two 1-CPU workers leave Data none and the run never starts)")
a = p.parse_args()

PARAMS = {"objective": a.objective, "tree_method": "hist", "max_depth": 6, "eta": 0.1,
          "eval_metric": a.metric, "seed": 0}
if a.num_class:
    PARAMS["num_class"] = a.num_class


class RoundTimes(xgboost.callback.TrainingCallback):
    def __init__(self):
        super().__init__()
        self.times = []
        self.t = None

    def before_iteration(self, model, epoch, evals_log):
        self.t = time.perf_counter()
        return False

    def after_iteration(self, model, epoch, evals_log):
        self.times.append(time.perf_counter() - self.t)
        return False


def train(dtrain, threads, extra_callbacks=()):
    times = RoundTimes()
    log = {}
    booster = xgboost.train({**PARAMS, "nthread": threads}, dtrain, a.rounds, evals=[(dtrain, "train")],
                            evals_result=log, callbacks=[times, *extra_callbacks], verbose_eval=False)
    return booster, times.times, log["train"][a.metric][-1]


if a.mode == "single":
    import pandas as pd

    t = time.perf_counter()
    df = pd.concat([pd.read_parquet(f) for f in sorted(glob.glob(os.path.join(a.data, "*.parquet")))])
    dtrain = xgboost.DMatrix(df.drop(columns=[a.label]), label=df[a.label], nthread=a.threads)
    load_s = time.perf_counter() - t
    _, times, loss = train(dtrain, a.threads)
    print(json.dumps({"bench": "xgboost", "impl": f"xgboost {xgboost.__version__} (Python, one process)",
                      "workers": 1, "threads": a.threads, "rounds": a.rounds, "load_s": load_s,
                      "round_s": statistics.median(times), "total_s": time.time() - T0,
                      "metric": f"train-{a.metric}", "train_metric": loss}))
else:
    import ray
    import ray.train
    from ray.train import ScalingConfig
    from ray.train.xgboost import XGBoostTrainer

    def loop(config):
        t = time.perf_counter()
        shard = ray.train.get_dataset_shard("train")
        df = shard.materialize().to_pandas()
        dtrain = xgboost.DMatrix(df.drop(columns=[a.label]), label=df[a.label], nthread=config["threads"])
        load_s = time.perf_counter() - t
        times = RoundTimes()
        log = {}
        xgboost.train({**PARAMS, "nthread": config["threads"]}, dtrain, config["rounds"],
                      evals=[(dtrain, "train")], evals_result=log, verbose_eval=False,
                      callbacks=[times])
        # Train v2 keeps the metrics of reports that carry a checkpoint.
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            open(os.path.join(d, "done"), "w").close()
            ray.train.report({"load_s": load_s, "round_s": statistics.median(times.times),
                              "train_metric": log["train"][a.metric][-1]},
                             checkpoint=ray.train.Checkpoint.from_directory(d))

    ray.init(num_cpus=a.cluster_cpus, include_dashboard=False, log_to_driver=False)
    ds = ray.data.read_parquet(a.data)
    trainer = XGBoostTrainer(loop, train_loop_config={"threads": a.threads, "rounds": a.rounds},
                             scaling_config=ScalingConfig(num_workers=a.workers,
                                                          resources_per_worker={"CPU": a.threads}),
                             datasets={"train": ds})
    result = trainer.fit()
    m = result.metrics
    print(json.dumps({"bench": "xgboost", "impl": f"Ray {ray.__version__} XGBoostTrainer",
                      "workers": a.workers, "threads": a.threads, "rounds": a.rounds, "load_s": m["load_s"],
                      "round_s": m["round_s"], "total_s": time.time() - T0,
                      "metric": f"train-{a.metric}", "train_metric": m["train_metric"]}))
