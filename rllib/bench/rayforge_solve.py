"""rayforge-rllib's side of the time-to-target benchmarks (rllib/bench/compare's
time-to-450 and rllib/bench/mujoco): runs the `rllib` binary as a user would,

  rllib train --algo ppo --env CartPole-v1 --stop-reward 450 --stop-timesteps 300000 --seed S

(the PPO preset: 2 runners x 4 envs x 32 steps, 20 epochs, minibatch 256,
lr 1e-3 and clip 0.2 annealed over 100k steps, gamma 0.98, lambda 0.8; the
stop reward is the mean return of the last 100 training episodes, checked
after every iteration), reads its progress lines as they come and prints one
JSON line: wall seconds from launching the process to the line of the
iteration that crossed the target (start-up of the embedded cluster
included), and the binary's own "done in" (from building the algorithm to
the end, its checkpoint included).

  python3 rllib/bench/rayforge_solve.py --bin target/release/rllib --seed 0

--algo, --env and --config pick another run; with --eval the target is
checked against the evaluation return (`| eval R` on the progress lines, as
`--stop-reward` does when the preset evaluates) and the JSON line says
`"bench": "mujoco"` with the best evaluation return.

  python3 rllib/bench/rayforge_solve.py --algo sac --env gym:InvertedPendulum-v5 --eval \
      --target 1000 --max-steps 100000
"""
import argparse
import json
import re
import subprocess
import tempfile
import time

p = argparse.ArgumentParser()
p.add_argument("--bin", default="target/release/rllib")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--target", type=float, default=450.0)
p.add_argument("--max-steps", type=int, default=300_000)
p.add_argument("--algo", default="ppo")
p.add_argument("--env", default="CartPole-v1")
p.add_argument("--config", help="a TOML file over the preset (rllib train --config)")
p.add_argument("--eval", action="store_true", help="cross on the evaluation return")
a = p.parse_args()

line_re = re.compile(r"^iter\s+(\d+) \| steps\s+(\d+) \| return\s+(\S+)")
done_re = re.compile(r"^done in ([\d.]+) s")
eval_re = re.compile(r"\| eval (\S+)$")
with tempfile.TemporaryDirectory() as ckpt:
    cmd = [a.bin, "train", "--algo", a.algo, "--env", a.env, "--stop-reward", str(a.target),
           "--stop-timesteps", str(a.max_steps), "--seed", str(a.seed), "--checkpoint-dir", ckpt]
    if a.config:
        cmd += ["--config", a.config]
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    crossed_at = None
    it = steps = 0
    ret = best_eval = float("nan")
    crossed_steps = None
    train_s = None
    for line in proc.stdout:
        m = line_re.match(line)
        if m:
            it, steps, ret = int(m[1]), int(m[2]), float(m[3])
            e = eval_re.search(line.rstrip())
            if e:
                best_eval = max(float(e[1]), best_eval) if best_eval == best_eval else float(e[1])
            score = (float(e[1]) if e else None) if a.eval else ret
            if crossed_at is None and score is not None and score >= a.target:
                crossed_at, crossed_steps = time.time(), steps
        m = done_re.match(line)
        if m:
            train_s = float(m[1])
    rc = proc.wait()
    end = time.time()
if rc != 0:
    raise SystemExit(f"{' '.join(cmd)} exited with {rc}")
row = {"bench": "mujoco" if a.eval else "solve", "impl": f"rayforge-rllib {a.algo.upper()}", "seed": a.seed,
       "reached": crossed_at is not None, "target": a.target, "return": ret,
       "env_steps": crossed_steps or steps, "iterations": it,
       "wall_s": (crossed_at or end) - start, "process_s": end - start,
       "train_s": train_s}
if a.eval:
    row.update(impl="rayforge-rllib", algo=a.algo.upper(), env=a.env.removeprefix("gym:"), best_eval=best_eval)
print(json.dumps(row))
