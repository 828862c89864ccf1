"""Record Ray 2.60's own Tune schedulers deciding on a fixed, asynchronous
stream of trial results, so the Rust schedulers (tune/src/schedulers.rs)
can be tested against a replay of Ray's decisions.

  target/ray-venv/bin/python tune/bench/ray_scheduler_replay.py
  # writes tune/tests/fixtures/ray_scheduler_replay.json (--out to change)

Needs the Ray venv at target/ray-venv with `ray[tune]`'s import-time
dependencies (fsspec, pandas, pyarrow): `ray.tune` refuses to import
without them (`target/ray-venv/bin/pip install fsspec pandas pyarrow`;
core/bench/compare-ray makes the venv). No Ray cluster is started (no ray.init): the scheduler
classes `AsyncHyperBandScheduler` and `MedianStoppingRule` are driven
directly with stand-ins for the trial (`trial_id`, `status`, hashable by
identity) and for the controller (`get_live_trials()` returns []).

Deterministic: every stream comes from Python's `random.Random(seed)` with
a fixed seed per case; values are rounded to 4 decimals *before* Ray sees
them, so the fixture holds exactly what Ray decided on.

Protocol, as Ray's TuneController drives a scheduler (tune_controller.py
`_process_trial_result` and `stop_trial`):
  * `on_trial_add(trial)` when a trial first appears in the stream;
  * `on_trial_result(trial, {time_attr: t, metric: v})` for each result
    delivered; its decision is recorded as the event's "decision";
  * after a STOP the (RUNNING) trial is stopped: Ray calls
    `on_trial_complete(trial, last_result)` with that same result (plus
    done=True), and the trial's later results in the stream are dropped
    (not in the fixture). For ASHA this second call re-runs the bracket
    with the same (t, value): the trial gets recorded at the highest rung
    <= t where it is not recorded yet (the top rung for a trial stopped at
    t >= max_t; a lower, skipped rung for one that jumped over rungs). For
    MedianStoppingRule it appends the same result to the trial's results
    a second time. A replay must do the same to reproduce later decisions.
  * trials not stopped just stop reporting at the end of their schedule;
    no on_trial_complete is called for them.

MedianStoppingRule asks `controller.get_live_trials()` for PENDING/PAUSED
trials when it has too few samples (`_on_insufficient_samples`) and would
PAUSE the trial if there were any; the stand-in returns [], so it always
CONTINUEs on insufficient samples (no PAUSE in the fixture). hard_stop is
True, min_time_slice 0.

ASHA cases use brackets=1 (several brackets assign trials to brackets with
np.random) and stop_last_trials=True (the default).

NaN metric values are written as the JSON string "NaN" (in "value" and in
"final_rungs"); every other value is a JSON number. "t" is written as a
float though Ray was given an int training_iteration.

Each ASHA case also carries "final_rungs": Ray's bracket at the end of the
stream, highest milestone first, with the recorded scores (value for
mode max, -value for mode min, as Ray stores them), and
"own_result_sensitive": the indices (into "events") of the decisions that
would flip if the cutoff were computed with the trial's own result
recorded first (Ray computes it from the earlier results only). Every case
carries "complete_sensitive": the indices of the decisions that would
differ without the on_trial_complete call after each STOP. Seeds were
picked so that both lists are non-empty in some cases.

The script also replays each stream through a small reference model of the
rules as read in Ray's source (`asha_model`, `median_model` below) and
asserts it agrees with Ray on every event, so the model is a checked
statement of those rules.
"""
import argparse
import copy
import json
import math
import os
import random
import warnings

import numpy as np
import ray
from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule

CONTINUE, STOP, PAUSE = "CONTINUE", "STOP", "PAUSE"
TIME_ATTR = "training_iteration"
METRIC = "loss"


class Trial:
    """What the schedulers touch: trial_id (ASHA's dict key), hashability
    (MedianStoppingRule keys its dicts by the trial object), status."""

    def __init__(self, trial_id):
        self.trial_id = trial_id
        self.status = "RUNNING"

    def __repr__(self):
        return self.trial_id


class Controller:
    def get_live_trials(self):
        return []


# ---------------------------------------------------------------- streams


def make_stream(rng, specs):
    """specs: per trial, dict(start, period, schedule=[t...], value=f(t) or
    values={t: v}). Each trial reports its schedule's times in order, one
    time unit taking `period` wall seconds (+-15% jitter); the stream is
    all results ordered by wall time (ties by trial index)."""
    events = []
    for i, s in enumerate(specs):
        wall, prev = s["start"], 0
        for t in s["schedule"]:
            wall += s["period"] * (t - prev) * (1 + rng.uniform(-0.15, 0.15))
            prev = t
            v = s["values"][t] if t in s.get("values", {}) else s["value"](t)
            if not (isinstance(v, float) and math.isnan(v)):
                v = round(v, 4)
            events.append((wall, i, f"t{i}", t, v))
    events.sort(key=lambda e: (e[0], e[1]))
    return [(name, t, v) for _, _, name, t, v in events]


def loss_curve(rng, base, noise=0.03):
    draws = {t: rng.gauss(0, noise) for t in range(1, 40)}
    return lambda t: base * (0.55 + 0.45 / math.sqrt(t)) + draws[t]


def acc_curve(rng, q, noise=0.02):
    draws = {t: rng.gauss(0, noise) for t in range(1, 40)}
    return lambda t: q * (1 - math.exp(-t / 4.0)) + draws[t]


def asha_min_stream(seed=2637):
    # Seed picked (of 2600..2700) for the most decisions that counting the
    # trial's own result in the cutoff would flip (4, all CONTINUE in Ray).
    rng = random.Random(seed)
    specs = []
    for i in range(20):
        start = 0.0 if i < 8 else rng.uniform(4, 16)  # most arrive late
        specs.append(
            dict(
                start=start,
                period=rng.uniform(0.8, 2.5),
                schedule=list(range(1, 10)),
                value=loss_curve(rng, rng.uniform(0.3, 1.2)),
            )
        )
    # A fast, poor trial reaches every rung first: an empty rung lets it go on.
    specs[0].update(period=0.5, value=loss_curve(rng, 1.5, 0.0))
    # Two trials reporting t0's value at rung 1 right after it (ties with
    # the cutoff: not strictly below, so they go on).
    specs[1].update(start=0.2, period=0.6, values={1: 1.5})
    specs[2].update(start=0.25, period=0.6, values={1: 1.5})
    return make_stream(rng, specs)


def asha_max_jumps_stream(seed=2738):
    # Seed picked (of 2600..2899) so that decisions depend both on the own
    # result being left out of the cutoff and on on_trial_complete's record.
    rng = random.Random(seed)
    schedules = [
        list(range(1, 17)),
        list(range(1, 19)),  # would go past max_t: stopped at 16
        [1, 5, 13, 18],  # 5 decided at rung 4 (2 skipped), 13 at 8, 18 >= max_t
        [1, 5, 6, 7, 9, 10, 17],  # 5 records rung 4, then 6 visits rung 2
        [3, 6, 9, 12, 15, 18],
        [2, 4, 8, 16, 20],
        [1, 2, 3, 9, 10, 11, 12, 13, 14, 15, 16],
        [4, 8, 12, 16],
        [1, 17],  # below every rung, then past max_t (STOP; recorded at 16)
        [5, 6, 7],  # first result at 5: recorded at rung 4, next at rung 2
        list(range(1, 17)),
        list(range(1, 17)),
        list(range(1, 17)),
        list(range(1, 17)),
        [1, 5, 6, 7],  # good at 5 (rung 4), collapses at 6: stopped at rung 2
        [1, 5, 6],  # poor at 5: stopped at rung 4; on_trial_complete then
        [1, 5, 6],  # records its t=5 value at rung 2, raising that cutoff
        list(range(1, 17)),
        list(range(1, 17)),
        list(range(1, 17)),
    ]
    specs = []
    for i in range(len(schedules)):
        sched = schedules[i]
        specs.append(
            dict(
                start=0.0 if i % 3 else rng.uniform(2, 12),
                period=rng.uniform(0.7, 2.2),
                schedule=sched,
                value=acc_curve(rng, rng.uniform(0.5, 0.95)),
            )
        )
    for i in (3, 9):  # strong jumpers: they pass rung 4, then visit rung 2
        specs[i].update(value=acc_curve(rng, 0.99, 0.0))
    specs[14].update(start=8.0, values={5: 0.95, 6: 0.05})
    specs[15].update(start=3.0, period=0.8, values={5: 0.33})
    specs[16].update(start=4.0, period=0.8, values={5: 0.35})
    for i in (17, 18, 19):  # late: they meet rung 2 after 15 and 16 completed
        specs[i].update(start=14.0 + i - 17)
    return make_stream(rng, specs)


def asha_nan_stream(seed=2726):
    # Seed picked (of 2600..2899) for own-result-sensitive decisions.
    rng = random.Random(seed)
    nan = float("nan")
    specs = []
    for i in range(10):
        specs.append(
            dict(
                start=0.0 if i < 6 else rng.uniform(3, 8),
                period=rng.uniform(0.8, 2.0),
                schedule=list(range(1, 10)),
                value=loss_curve(rng, rng.uniform(0.3, 1.1)),
            )
        )
    # t0: first at rung 1 with NaN (rung of [NaN] only: cutoff NaN for the next).
    specs[0].update(start=0.0, period=0.3, values={1: nan, 3: nan})
    specs[1].update(start=0.0, period=0.45)
    # t4 reports NaN at rung 3 after others recorded there; t5 a NaN mid-rung.
    specs[4].update(values={3: nan})
    specs[5].update(values={2: nan, 4: nan})
    return make_stream(rng, specs)


def median_min_stream(seed=2802):
    # Seed picked (of 2600..2899) so that a decision depends on the result
    # on_trial_complete appends a second time for a stopped trial.
    rng = random.Random(seed)
    specs = []
    for i in range(14):
        start = 0.0 if i < 5 else rng.uniform(2, 20)  # many start late
        sched = list(range(1, 11))
        if i == 6:
            sched = [1, 4, 7, 10]  # sparse: its window can be empty
        if i == 7:
            sched = [1, 2, 6, 10]
        specs.append(
            dict(
                start=start,
                period=rng.choice([0.6, 1.0, 1.5, 2.5]) * rng.uniform(0.9, 1.1),
                schedule=sched,
                value=loss_curve(rng, rng.uniform(0.3, 1.2), 0.05),
            )
        )
    return make_stream(rng, specs)


def median_max_stream(seed=2605):
    rng = random.Random(seed)
    specs = []
    for i in range(10):
        specs.append(
            dict(
                start=0.0 if i < 4 else rng.uniform(1, 10),
                period=rng.uniform(0.6, 2.4),
                schedule=list(range(1, 9)),
                value=acc_curve(rng, rng.uniform(0.4, 0.95), 0.04),
            )
        )
    # A tie at t=1: t3's best equals the median of t0..t2 (0.5): it goes on.
    for i, v in enumerate([0.3, 0.5, 0.7]):
        specs[i].update(start=0.0, period=0.5, values={1: v})
    specs[3].update(start=0.3, period=0.6, values={1: 0.5})
    return make_stream(rng, specs)


def median_nan_stream(seed=2606):
    rng = random.Random(seed)
    nan = float("nan")
    specs = []
    for i in range(8):
        specs.append(
            dict(
                start=0.0 if i < 4 else rng.uniform(1, 6),
                period=rng.uniform(0.7, 1.8),
                schedule=list(range(1, 8)),
                value=loss_curve(rng, rng.uniform(0.3, 1.1), 0.04),
            )
        )
    # t1 starts late and its first result is NaN: Python's min() over its
    # results then stays NaN, and min(median, NaN) is the median != NaN: STOP
    # as soon as there are enough samples.
    specs[1].update(start=3.0, period=0.8, values={1: nan})
    # t6's results in the window [grace, t] are all NaN at t=2, 3: its
    # running mean is NaN there and it is left out of the others' samples.
    specs[6].update(start=0.5, period=0.7, values={2: nan, 3: nan}, value=loss_curve(rng, 0.2))
    # t0 (a good trial) has a NaN in the middle: min() skips it.
    specs[0].update(value=loss_curve(rng, 0.25), values={3: nan})
    return make_stream(rng, specs)


# ------------------------------------------------------- reference models


def nanpct(values, q):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanpercentile(values, q))


class asha_model:
    """async_hyperband.py as read: rungs highest first; a result at t >=
    max_t STOPs unrecorded; otherwise the first rung (from the top) with
    milestone <= t where the trial is not recorded decides, with the cutoff
    of the values recorded there BEFORE this one (none recorded: no
    cutoff), STOP iff score < cutoff; the score is then recorded there;
    lower rungs are not visited."""

    def __init__(self, max_t, grace, rf, mode):
        self.max_t, self.rf = max_t, rf
        self.sign = 1.0 if mode == "max" else -1.0
        n = int(np.log(max_t / grace) / np.log(rf) + 1)
        self.rungs = [(grace * rf**k, {}) for k in reversed(range(n))]
        self.sensitive = False  # the last decision flips if the own score counts

    def _bracket(self, trial, t, v):
        score = self.sign * v
        for milestone, rec in self.rungs:
            if t < milestone or trial in rec:
                continue
            cutoff = nanpct(list(rec.values()), (1 - 1 / self.rf) * 100) if rec else None
            action = STOP if cutoff is not None and score < cutoff else CONTINUE
            with_own = nanpct(list(rec.values()) + [score], (1 - 1 / self.rf) * 100)
            self.sensitive = (score < with_own) != (action == STOP)
            rec[trial] = score
            return action
        return CONTINUE

    def result(self, trial, t, v):
        self.sensitive = False
        if t >= self.max_t:
            return STOP
        return self._bracket(trial, t, v)

    def complete(self, trial, t, v):
        self._bracket(trial, t, v)


class median_model:
    """median_stopping_rule.py as read (hard_stop, no PAUSE)."""

    def __init__(self, grace, min_samples, mode):
        self.grace, self.min_samples = grace, min_samples
        self.op = max if mode == "max" else min
        self.results = {}  # insertion ordered, as Ray's defaultdict

    def result(self, trial, t, v):
        self.results.setdefault(trial, []).append((t, v))
        if t < self.grace:
            return CONTINUE
        means = []
        for other, rs in self.results.items():
            if other == trial or rs[-1][0] < t:
                continue
            scoped = [x for (tt, x) in rs if self.grace <= tt <= t]
            m = float(np.mean(scoped)) if scoped else float("nan")
            if np.isfinite(m):
                means.append(m)
        if len(means) < self.min_samples:
            return CONTINUE
        median = float(np.median(means))
        best = self.op([x for (_, x) in self.results[trial]])
        return STOP if self.op(median, best) != best else CONTINUE

    def complete(self, trial, t, v):
        self.results[trial].append((t, v))


# ----------------------------------------------------------------- driver


def run_case(name, kind, params, stream):
    ctrl = Controller()
    if kind == "asha":
        sched = AsyncHyperBandScheduler(
            time_attr=TIME_ATTR,
            max_t=params["max_t"],
            grace_period=params["grace_period"],
            reduction_factor=params["reduction_factor"],
            brackets=1,
        )
        model = asha_model(
            params["max_t"], params["grace_period"], params["reduction_factor"], params["mode"]
        )
    else:
        sched = MedianStoppingRule(
            time_attr=TIME_ATTR,
            grace_period=params["grace_period"],
            min_samples_required=params["min_samples_required"],
            min_time_slice=0,
            hard_stop=True,
        )
        model = median_model(params["grace_period"], params["min_samples_required"], params["mode"])
    assert sched.set_search_properties(METRIC, params["mode"])

    # The same rules without the on_trial_complete call after a STOP: where
    # it decides otherwise, Ray's decision depends on that call.
    bare = copy.deepcopy(model)
    trials, stopped, events, sensitive, via_complete = {}, set(), [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # All-NaN slice
        for tid, t, v in stream:
            if tid in stopped:
                continue
            if tid not in trials:
                trials[tid] = Trial(tid)
                sched.on_trial_add(ctrl, trials[tid])
            trial = trials[tid]
            decision = sched.on_trial_result(ctrl, trial, {TIME_ATTR: t, METRIC: v})
            assert decision in (CONTINUE, STOP), decision
            expected = model.result(tid, t, v)
            assert expected == decision, (name, tid, t, v, decision, expected)
            if bare.result(tid, t, v) != decision:
                via_complete.append(len(events))
            if kind == "asha" and model.sensitive:
                sensitive.append(len(events))
            events.append({"trial": tid, "t": float(t), "value": v, "decision": decision})
            if decision == STOP:
                stopped.add(tid)
                sched.on_trial_complete(ctrl, trial, {TIME_ATTR: t, METRIC: v, "done": True})
                model.complete(tid, t, v)

    case = {"name": name, "scheduler": kind, "params": params, "events": events}
    case["complete_sensitive"] = via_complete
    if kind == "asha":
        ray_rungs = sched._brackets[0]._rungs
        for (m1, r1), (m2, r2) in zip(ray_rungs, model.rungs):
            assert m1 == m2 and r1.keys() == r2.keys(), (m1, r1, r2)
        case["final_rungs"] = [
            {"milestone": float(m), "recorded": {k: float(x) for k, x in rec.items()}}
            for m, rec in ray_rungs
        ]
        case["own_result_sensitive"] = sensitive
    n_stop = sum(e["decision"] == STOP for e in events)
    extra = f", own-result-sensitive events {sensitive}" if kind == "asha" else ""
    print(f"{name}: {len(trials)} trials, {len(events)} events, {n_stop} STOP{extra}, "
          f"complete-sensitive events {via_complete}")
    return case


def jnum(v):
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    return v


def dump(cases, path):
    def enc(x):
        return json.dumps(x, allow_nan=False, separators=(", ", ": "))

    lines = ["{", f' "ray_version": {enc(ray.__version__)},', ' "cases": [']
    for ci, c in enumerate(cases):
        lines.append("  {" + f'"name": {enc(c["name"])}, "scheduler": {enc(c["scheduler"])},')
        lines.append(f'   "params": {enc(c["params"])},')
        if "own_result_sensitive" in c:
            lines.append(f'   "own_result_sensitive": {enc(c["own_result_sensitive"])},')
        lines.append(f'   "complete_sensitive": {enc(c["complete_sensitive"])},')
        if "final_rungs" in c:
            rungs = [
                {"milestone": r["milestone"], "recorded": {k: jnum(x) for k, x in r["recorded"].items()}}
                for r in c["final_rungs"]
            ]
            lines.append(f'   "final_rungs": {enc(rungs)},')
        lines.append('   "events": [')
        for ei, e in enumerate(c["events"]):
            e = dict(e, value=jnum(e["value"]))
            lines.append("    " + enc(e) + ("," if ei < len(c["events"]) - 1 else ""))
        lines.append("   ]}" + ("," if ci < len(cases) - 1 else ""))
    lines += [" ]", "}"]
    text = "\n".join(lines) + "\n"
    json.loads(text)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "ray_scheduler_replay.json"))
    a = p.parse_args()

    def asha(mode, grace, rf, max_t):
        return {
            "time_attr": TIME_ATTR, "metric": METRIC, "mode": mode,
            "max_t": max_t, "grace_period": grace, "reduction_factor": rf, "brackets": 1,
        }

    def median(mode, grace, min_samples):
        return {
            "time_attr": TIME_ATTR, "metric": METRIC, "mode": mode,
            "grace_period": grace, "min_samples_required": min_samples,
            "hard_stop": True, "min_time_slice": 0,
        }

    cases = [
        run_case("asha_min_g1_rf3_maxt9", "asha", asha("min", 1, 3, 9), asha_min_stream()),
        run_case("asha_max_g2_rf2_maxt16_jumps", "asha", asha("max", 2, 2, 16), asha_max_jumps_stream()),
        run_case("asha_min_nan", "asha", asha("min", 1, 3, 9), asha_nan_stream()),
        run_case("median_min_g2_ms3", "median", median("min", 2, 3), median_min_stream()),
        run_case("median_max_g1_ms2", "median", median("max", 1, 2), median_max_stream()),
        run_case("median_min_nan_g2_ms2", "median", median("min", 2, 2), median_nan_stream()),
    ]
    assert cases[0]["own_result_sensitive"], "the ASHA min stream must hold own-result-sensitive decisions"
    dump(cases, os.path.normpath(a.out))
    print(f"wrote {os.path.normpath(a.out)}: {len(cases)} cases, {sum(len(c['events']) for c in cases)} events")


if __name__ == "__main__":
    main()
