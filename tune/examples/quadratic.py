"""An executable trainable for `tune run tune/examples/search.toml`: it
"trains" by walking towards the minimum of (x - 1.5)^2 + (y + 0.5)^2 from
its parameters, printing one JSON line per step (the trial's reports).

Parameters come as arguments (`--x {x} --y {y}` in search.toml); they are
also in $RAYFORGE_TUNE_CONFIG as JSON, in $RAYFORGE_TUNE_PARAMS_FILE and
one $RAYFORGE_TUNE_PARAM_<NAME> each.

Checkpoints: each step writes its state into $RAYFORGE_TUNE_CHECKPOINT_DIR
and says `"should_checkpoint": true` on its line; a trial that restarts
(after a failure, or when its experiment is resumed) finds its latest
checkpoint in $RAYFORGE_TUNE_RESTORE_FROM and goes on from there.
"""
import argparse
import json
import os
import time

p = argparse.ArgumentParser()
p.add_argument("--x", type=float, required=True)
p.add_argument("--y", type=float, required=True)
p.add_argument("--steps", type=int, default=8)
p.add_argument("--delay", type=float, default=0.05, help="seconds per step")
a = p.parse_args()

loss = (a.x - 1.5) ** 2 + (a.y + 0.5) ** 2
start = 1
restore = os.environ.get("RAYFORGE_TUNE_RESTORE_FROM")
if restore:
    with open(os.path.join(restore, "state.json")) as f:
        state = json.load(f)
    loss, start = state["loss"], state["step"] + 1
    print(f"going on from step {state['step']}", flush=True)  # not JSON: logged only

ckpt = os.environ.get("RAYFORGE_TUNE_CHECKPOINT_DIR")
for step in range(start, a.steps + 1):
    time.sleep(a.delay)  # a step's work
    loss *= 0.7
    line = {"loss": loss, "step": step}
    if restore and step == start:
        line["resumed_at"] = start - 1
    if ckpt:
        with open(os.path.join(ckpt, "state.json"), "w") as f:
            json.dump({"loss": loss, "step": step}, f)
        line["should_checkpoint"] = True
    print(json.dumps(line), flush=True)
