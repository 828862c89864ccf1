"""An executable trainable for `tune run tune/examples/search.toml`: it
"trains" by walking towards the minimum of (x - 1.5)^2 + (y + 0.5)^2 from
its parameters, printing one JSON line per step (the trial's reports).

Parameters come as arguments (`--x {x} --y {y}` in search.toml); they are
also in $RAYFORGE_TUNE_CONFIG as JSON.
"""
import argparse
import json
import time

p = argparse.ArgumentParser()
p.add_argument("--x", type=float, required=True)
p.add_argument("--y", type=float, required=True)
p.add_argument("--steps", type=int, default=8)
p.add_argument("--delay", type=float, default=0.05, help="seconds per step")
a = p.parse_args()

loss0 = (a.x - 1.5) ** 2 + (a.y + 0.5) ** 2
for step in range(1, a.steps + 1):
    time.sleep(a.delay)  # a step's work
    loss = loss0 * 0.7 ** step
    print(json.dumps({"loss": loss, "step": step}), flush=True)
