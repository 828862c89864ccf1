"""Prints rllib/bench/compare's results (JSON lines) as tables with ratios.

  python3 rllib/bench/report.py target/rllib-bench/results.jsonl
"""
import json
import os
import statistics
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
print(f"\nmachine: {os.cpu_count()} CPUs ({cpu}), no GPU used\n")


def throughput(bench, title):
    rs = [r for r in rows if r["bench"] == bench]
    ours = next((r for r in rs if r["impl"].startswith("rayforge")), None)
    if not rs:
        return
    print(f"{title}")
    print(f"  {'':<40} {'env steps':>10} {'wall s':>8} {'env steps/s':>13} {'rayforge x':>11}")
    for r in rs:
        ratio = ours["env_steps_per_s"] / r["env_steps_per_s"] if ours else float("nan")
        print(f"  {r['impl']:<40} {r['env_steps']:>10} {r['wall_s']:>8.3f} "
              f"{r['env_steps_per_s']:>13,.0f} {ratio:>10.1f}x")
    print()


throughput("env", "1a. env stepping, 8 CartPole-v1, random actions, one process")
throughput("sample", "1b. sampling with the 64x64 policy, 2 runners x 8 envs, no learning")

solve = defaultdict(list)
for r in rows:
    if r["bench"] == "solve":
        solve[r["impl"]].append(r)
if solve:
    ours = next((v for k, v in solve.items() if k.startswith("rayforge")), [])
    ours_wall = statistics.median(r["wall_s"] for r in ours) if ours else float("nan")
    target = next(iter(solve.values()))[0]["target"]
    print(f"2. PPO on CartPole-v1: wall time to a mean return of {target:g} (last 100 episodes)")
    print(f"  {'':<34} {'reached':>8} {'median s':>9} {'median steps':>13} {'x rayforge':>11} "
          f"{'build->450 s':>13}   per seed: s / k steps")
    for impl, rs in solve.items():
        hit = [r for r in rs if r["reached"]]
        # A run that missed counts at its cap for the median (a lower bound).
        med_s = statistics.median(r["wall_s"] for r in rs)
        med_steps = statistics.median(r["env_steps"] for r in rs)
        trains = [r["train_s"] for r in rs if r.get("train_s") is not None]
        med_train = statistics.median(trains) if trains else float("nan")
        seeds = "  ".join(f"{r['seed']}:{r['wall_s']:.1f}/{r['env_steps'] / 1000:.0f}k{'' if r['reached'] else '(miss)'}"
                          for r in rs)
        more = "" if len(hit) == len(rs) else ">="
        print(f"  {impl:<34} {len(hit)}/{len(rs):<6} {more:>2}{med_s:>7.1f} {more:>2}{med_steps:>11,.0f} "
              f"{more:>2}{med_s / ours_wall:>8.1f}x {more:>2}{med_train:>11.1f}   {seeds}")
    print("  (median s: from launching the process to the crossing, start-up included; build->450 s:")
    print("  from building the algorithm; a run that missed counts at its cap, so its median is a bound)")
    for impl, rs in solve.items():
        own = [r["rllib_metric_crossed"] for r in rs if r.get("rllib_metric_crossed")]
        if own:
            print(f"  {impl}: RLlib's own env_runners/episode_return_mean (one iteration's episodes) first "
                  f"read >= {target:g} at " + ", ".join(f"{s / 1000:.0f}k steps/{t:.0f} s" for s, t in own))

# rllib/bench/mujoco: time and env steps to the target evaluation return.
mujoco = defaultdict(list)
for r in rows:
    if r["bench"] == "mujoco":
        mujoco[(r["algo"], r["env"])].append(r)
for (algo, env), rs in mujoco.items():
    target = rs[0]["target"]
    print(f"\n3. {algo} on {env}: to a mean evaluation return of {target:g} (deterministic, 5 episodes)")
    print(f"  {'':<28} {'reached':>8} {'median s':>9} {'median steps':>13} {'best eval':>10} {'x rayforge':>11}"
          f"   per seed: s / k steps")
    by_impl = defaultdict(list)
    for r in rs:
        by_impl[r["impl"]].append(r)
    ours = next((v for k, v in by_impl.items() if k.startswith("rayforge")), [])
    ours_wall = statistics.median(r["wall_s"] for r in ours) if ours else float("nan")
    for impl, runs in by_impl.items():
        hit = [r for r in runs if r["reached"]]
        more = "" if len(hit) == len(runs) else ">="
        med_s = statistics.median(r["wall_s"] for r in runs)
        med_steps = statistics.median(r["env_steps"] for r in runs)
        best = max(r["best_eval"] for r in runs)
        seeds = "  ".join(f"{r['seed']}:{r['wall_s']:.1f}/{r['env_steps'] / 1000:.1f}k{'' if r['reached'] else '(miss)'}"
                          for r in runs)
        print(f"  {impl:<28} {len(hit)}/{len(runs):<6} {more:>2}{med_s:>7.1f} {more:>2}{med_steps:>11,.0f} "
              f"{best:>10.1f} {more:>2}{med_s / ours_wall:>8.2f}x   {seeds}")
