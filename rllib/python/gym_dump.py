"""Replays action sequences in Gymnasium from given start states and prints
what it returned, for rayforge's step-for-step comparisons
(rllib/tests/it/gymnasium.rs).

    python gym_dump.py '{"env": "Pendulum-v1", "state": [0.5, 0.0], "actions": [[1.0], [-2.5]]}'
    echo '[CASE, CASE, ...]' | python gym_dump.py

A case names the environment (`env`, made with `gymnasium.make`, so with
its TimeLimit; optional `kwargs` for it), a start state (`state`, set as
`env.unwrapped.state = np.array(state, dtype=np.float64)` after a reset)
and actions (an integer each for a discrete action space, a list of
floats each for a box, passed as a float32 array as a policy would). The
actions are stepped until the episode terminates or is truncated (or
they run out). Prints, for a case, one JSON object:

    {"obs": [[...], ...], "rewards": [...], "terminated": [...],
     "truncated": [...], "obs_bits": [[...], ...], "reward_bits": [...],
     "observation_space": SPACE, "action_space": SPACE}

(`obs[k]` is the observation after action k, as float32 values; SPACE as in
gym_server.py), or a JSON list of them for a list of cases. `obs_bits` and
`reward_bits` are the same numbers' IEEE bit patterns (float32 and float64)
as integers, so that a reader compares them exactly whatever its JSON
parser's float rounding.
"""

import json
import struct
import sys

import gymnasium as gym
import numpy as np

from gym_server import action_space_json, flat, obs_space_json


def f32_bits(obs):
    return [int(b) for b in np.asarray(obs, dtype=np.float32).ravel().view(np.uint32)]


def run(case):
    env = gym.make(case["env"], **case.get("kwargs", {}))
    env.reset(seed=0)
    env.unwrapped.state = np.array(case["state"], dtype=np.float64)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    out = {"obs": [], "rewards": [], "terminated": [], "truncated": [], "obs_bits": [], "reward_bits": []}
    for a in case["actions"]:
        action = int(a) if discrete else np.array(a, dtype=np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        out["obs"].append(flat(obs))
        out["rewards"].append(float(reward))
        out["obs_bits"].append(f32_bits(obs))
        out["reward_bits"].append(struct.unpack("<Q", struct.pack("<d", float(reward)))[0])
        out["terminated"].append(bool(terminated))
        out["truncated"].append(bool(truncated))
        if terminated or truncated:
            break
    out["observation_space"] = obs_space_json(env.observation_space)
    out["action_space"] = action_space_json(env.action_space)
    env.close()
    return out


def main():
    text = sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read()
    cases = json.loads(text)
    result = [run(c) for c in cases] if isinstance(cases, list) else run(cases)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
