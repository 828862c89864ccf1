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
groups = defaultdict(list)
for r in rows:
    groups[(r["impl"], r["workers"], r["threads"])].append(r)
med = {k: {f: statistics.median(r[f] for r in v) for f in ("load_s", "round_s", "total_s", "train_logloss")}
       for k, v in groups.items()}
ours = next((m for k, m in med.items() if k[0].startswith("rayforge") and k[1] == 2), None)
rounds = rows[0]["rounds"] if rows else 0
print(f"\nmachine: {os.cpu_count()} CPUs ({cpu}); {rounds} rounds; medians of {min(len(v) for v in groups.values())} runs\n")
print(f"{'':<48} {'load s':>7} {'round s':>8} {'total s':>8} {'logloss':>9} "
      f"{'round / ours':>13} {'total / ours':>13}")
for (impl, w, t), m in med.items():
    label = f"{impl}, {w} x {t} thr"
    rr = m["round_s"] / ours["round_s"] if ours else float("nan")
    tr = m["total_s"] / ours["total_s"] if ours else float("nan")
    print(f"{label:<48} {m['load_s']:>7.2f} {m['round_s']:>8.4f} {m['total_s']:>8.2f} {m['train_logloss']:>9.5f} "
          f"{rr:>12.2f}x {tr:>12.2f}x")
