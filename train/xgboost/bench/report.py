"""Prints train/xgboost/bench/compare's results as a table with ratios to
rayforge-xgboost's 2 workers (medians over the runs).

  python3 train/xgboost/bench/report.py target/xgb-bench/results.jsonl
"""
import json
import os
import statistics
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
print(f"\nmachine: {os.cpu_count()} CPUs ({cpu})")
for dataset in dict.fromkeys(r.get("dataset", "") for r in rows):
    groups = defaultdict(list)
    for r in rows:
        if r.get("dataset", "") == dataset:
            groups[(r["impl"], r["workers"], r["threads"])].append(r)
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("load_s", "round_s", "total_s", "train_metric")}
           for k, v in groups.items()}
    ours = next((m for k, m in med.items() if k[0].startswith("rayforge") and k[1] == 2), None)
    first = next(iter(groups.values()))[0]
    print(f"\n{dataset}: {first['rounds']} rounds; medians of {min(len(v) for v in groups.values())} runs\n")
    print(f"{'':<48} {'load s':>7} {'round s':>8} {'total s':>8} {first['metric']:>15} "
          f"{'round / ours':>13} {'total / ours':>13}")
    for (impl, w, t), m in med.items():
        label = f"{impl}, {w} x {t} thr"
        rr = m["round_s"] / ours["round_s"] if ours else float("nan")
        tr = m["total_s"] / ours["total_s"] if ours else float("nan")
        print(f"{label:<48} {m['load_s']:>7.2f} {m['round_s']:>8.4f} {m['total_s']:>8.2f} "
              f"{m['train_metric']:>15.5f} {rr:>12.2f}x {tr:>12.2f}x")
