"""Gymnasium 1.2.2's side of the env-stepping benchmark: 8 CartPole-v1s
stepped N times with uniformly random actions (drawn up front), as
rllib_bench.rs's `env` mode does with rayforge's VectorEnv; prints a JSON
line per vectorizer:

- `sync`: gymnasium.vector.SyncVectorEnv over gymnasium.make("CartPole-v1")
  (the TimeLimit and checker wrappers included, as make builds it), with
  autoreset_mode SAME_STEP, which is what rayforge's VectorEnv does;
- `vector_entry_point`: gymnasium.make_vec(..., vectorization_mode=
  "vector_entry_point"), i.e. CartPoleVectorEnv, the whole batch in NumPy
  (it only has NEXT_STEP autoreset: an ended episode's env spends its next
  step resetting).

  target/gym-venv/bin/python rllib/bench/gym_envs.py --steps 100000
"""
import argparse
import json
import time

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

p = argparse.ArgumentParser()
p.add_argument("--envs", type=int, default=8)
p.add_argument("--steps", type=int, default=100_000)
p.add_argument("--modes", default="sync,vector_entry_point")
a = p.parse_args()

actions = np.random.default_rng(0).integers(0, 2, size=(a.steps, a.envs))


def run(name, envs):
    envs.reset(seed=0)
    episodes = 0
    start = time.perf_counter()
    for act in actions:
        _, _, term, trunc, _ = envs.step(act)
        episodes += int(np.count_nonzero(term | trunc))
    wall = time.perf_counter() - start
    envs.close()
    n = a.steps * a.envs
    print(json.dumps({"bench": "env", "impl": f"gymnasium {gym.__version__} {name}",
                      "envs": a.envs, "steps": a.steps, "env_steps": n, "episodes": episodes,
                      "wall_s": wall, "env_steps_per_s": n / wall}), flush=True)


for mode in a.modes.split(","):
    if mode == "sync":
        run("SyncVectorEnv", SyncVectorEnv([lambda: gym.make("CartPole-v1")] * a.envs,
                                           autoreset_mode=AutoresetMode.SAME_STEP))
    elif mode == "vector_entry_point":
        run("CartPoleVectorEnv", gym.make_vec("CartPole-v1", num_envs=a.envs,
                                              vectorization_mode="vector_entry_point"))
    else:
        raise SystemExit(f"unknown mode {mode}")
