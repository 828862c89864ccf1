"""Serves N copies of a Gymnasium environment over stdin/stdout, for
rayforge's `ProcessEnv` (rllib/src/env/remote.rs, where the protocol is
documented): one JSON request a line on stdin, one JSON reply a line on
stdout.

    python gym_server.py CartPole-v1 --num-envs 4 [--kwargs '{"g": 9.81}']

Requests and replies:

    {"cmd": "spaces"}             -> {"ok": true, "num_envs": N,
                                      "observation_space": SPACE,
                                      "action_space": SPACE}
    {"cmd": "reset", "seed": S}   -> {"ok": true, "obs": [[...], ...]}
    {"cmd": "step", "actions": [A, ...]}
                                  -> {"ok": true, "obs": [[...], ...],
                                      "rewards": [...], "terminated": [...],
                                      "truncated": [...],
                                      "final_obs": [null | [...], ...]}
    {"cmd": "close"}              -> {"ok": true}, then the server exits

SPACE is {"type": "discrete", "n": n}, {"type": "box", "low": [...],
"high": [...]} (flattened; an infinite bound is null) or {"type":
"multi_discrete", "nvec": [n, ...]}. An observation space other than a
Box is served flattened to a Box (gymnasium.spaces.flatten_space: a
Discrete one one-hot, a Dict or Tuple the concatenation of its parts, in
Gymnasium's order). MultiDiscrete, MultiBinary (each bit a choice of 2)
and a Tuple or Dict of those and Discrete spaces are served as actions as
multi_discrete, the choices in Gymnasium's flattening order; an action
is then a list of integers, turned back into the space's own structure.
A Tuple or Dict that also holds Boxes is served as {"type": "mixed",
"nvec": [...], "low": [...], "high": [...]}: its discrete choices and its
boxes' values (each box flattened), both in Gymnasium's order; an action is
then {"discrete": [indices], "continuous": [values]}. Environment i is
reset with seed S + i (S may be null). An environment whose episode ends
is reset in the same step: its "obs" is the new episode's first and
"final_obs" the ended one's last. A failed request gets {"ok": false,
"error": "..."}; the server keeps serving. It exits at end of input.
"""

import argparse
import json
import math
import sys
import traceback


def box_json(space):
    import numpy as np

    def bounds(xs):
        return [float(x) if math.isfinite(x) else None for x in np.asarray(xs, dtype=np.float64).ravel()]

    return {"type": "box", "low": bounds(space.low), "high": bounds(space.high)}


def choices(space):
    """The discrete choices of an action space, in order (a Box inside a
    Tuple or Dict adds none: see boxes)."""
    from gymnasium import spaces
    import numpy as np

    if isinstance(space, spaces.Discrete):
        if int(space.start) != 0:
            raise ValueError(f"a Discrete space starting at {space.start} is not supported")
        return [int(space.n)]
    if isinstance(space, spaces.MultiDiscrete):
        if np.any(np.asarray(space.start) != 0):
            raise ValueError(f"a MultiDiscrete space starting at {space.start} is not supported")
        return [int(n) for n in np.asarray(space.nvec).ravel()]
    if isinstance(space, spaces.MultiBinary):
        return [2] * int(np.prod(space.shape))
    parts = None
    if isinstance(space, spaces.Tuple):
        parts = list(space.spaces)
    elif isinstance(space, spaces.Dict):
        parts = list(space.spaces.values())
    if isinstance(space, spaces.Box):
        return []
    if parts is None:
        raise ValueError(
            f"action space {space} is not supported (Discrete, Box, MultiDiscrete, MultiBinary, and Tuple or Dict of "
            "those are)"
        )
    out = []
    for p in parts:
        out.extend(choices(p))
    return out


def boxes(space):
    """The Boxes inside a Tuple or Dict action space, in order."""
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return [space]
    if isinstance(space, spaces.Tuple):
        return [b for p in space.spaces for b in boxes(p)]
    if isinstance(space, spaces.Dict):
        return [b for p in space.spaces.values() for b in boxes(p)]
    return []


def unflatten_action(space, indices, values=None):
    """The action of `space` that the first indices in the list `indices`
    and the first values in `values` (both consumed as read) stand for."""
    from gymnasium import spaces
    import numpy as np

    if isinstance(space, spaces.Discrete):
        return int(indices.pop(0))
    if isinstance(space, (spaces.MultiDiscrete, spaces.MultiBinary)):
        n = len(choices(space))
        taken = [indices.pop(0) for _ in range(n)]
        return np.asarray(taken, dtype=space.dtype).reshape(space.shape)
    if isinstance(space, spaces.Box):
        n = int(np.prod(space.shape))
        taken = [values.pop(0) for _ in range(n)]
        return np.asarray(taken, dtype=space.dtype).reshape(space.shape)
    if isinstance(space, spaces.Tuple):
        return tuple(unflatten_action(p, indices, values) for p in space.spaces)
    return {k: unflatten_action(p, indices, values) for k, p in space.spaces.items()}


def obs_space_json(space):
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return box_json(space)
    return box_json(spaces.flatten_space(space))


def action_space_json(space):
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return box_json(space)
    if isinstance(space, spaces.Discrete):
        return {"type": "discrete", "n": choices(space)[0]}
    n = choices(space)
    inner = boxes(space)
    if inner:
        low, high = [], []
        for b in inner:
            j = box_json(b)
            low += j["low"]
            high += j["high"]
        return {"type": "mixed", "nvec": n, "low": low, "high": high}
    return {"type": "multi_discrete", "nvec": n}


def flat(obs, space=None):
    from gymnasium import spaces
    import numpy as np

    if space is not None and not isinstance(space, spaces.Box):
        obs = spaces.flatten(space, obs)
    return [float(x) for x in np.asarray(obs, dtype=np.float32).ravel()]


class Server:
    def __init__(self, env_id, num_envs, kwargs):
        import gymnasium as gym

        self.envs = [gym.make(env_id, **kwargs) for _ in range(num_envs)]
        self.action_space = self.envs[0].action_space
        self.observation_space = self.envs[0].observation_space

    def obs(self, o):
        return flat(o, self.observation_space)

    def action(self, a):
        from gymnasium import spaces
        import numpy as np

        if isinstance(self.action_space, spaces.Discrete):
            if not isinstance(a, int) or isinstance(a, bool):
                raise ValueError(f"action {a!r} is not an integer")
            return a
        if isinstance(self.action_space, spaces.Box):
            return np.asarray(a, dtype=self.action_space.dtype).reshape(self.action_space.shape)
        n = choices(self.action_space)
        inner = boxes(self.action_space)
        if inner:
            k = sum(int(np.prod(b.shape)) for b in inner)
            if (
                not isinstance(a, dict)
                or not isinstance(a.get("discrete"), list)
                or not isinstance(a.get("continuous"), list)
                or len(a["discrete"]) != len(n)
                or len(a["continuous"]) != k
                or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < m for i, m in zip(a["discrete"], n))
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in a["continuous"])
            ):
                raise ValueError(f"action {a!r} is not {{discrete: {len(n)} indices below {n}, continuous: {k} numbers}}")
            return unflatten_action(self.action_space, list(a["discrete"]), [float(x) for x in a["continuous"]])
        if (
            not isinstance(a, list)
            or len(a) != len(n)
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < k for i, k in zip(a, n))
        ):
            raise ValueError(f"action {a!r} is not a list of {len(n)} indices below {n}")
        return unflatten_action(self.action_space, list(a))

    def handle(self, req):
        cmd = req.get("cmd")
        if cmd == "spaces":
            return {
                "num_envs": len(self.envs),
                "observation_space": obs_space_json(self.observation_space),
                "action_space": action_space_json(self.action_space),
            }
        if cmd == "reset":
            seed = req.get("seed")
            obs = [self.obs(e.reset(seed=None if seed is None else seed + i)[0]) for i, e in enumerate(self.envs)]
            return {"obs": obs}
        if cmd == "step":
            actions = req.get("actions")
            if not isinstance(actions, list) or len(actions) != len(self.envs):
                raise ValueError(f"`actions` must be a list of {len(self.envs)} actions")
            out = {"obs": [], "rewards": [], "terminated": [], "truncated": [], "final_obs": []}
            for env, a in zip(self.envs, actions):
                obs, reward, terminated, truncated, _ = env.step(self.action(a))
                final = None
                if terminated or truncated:
                    final = self.obs(obs)
                    obs, _ = env.reset()
                out["obs"].append(self.obs(obs))
                out["rewards"].append(float(reward))
                out["terminated"].append(bool(terminated))
                out["truncated"].append(bool(truncated))
                out["final_obs"].append(final)
            return out
        raise ValueError(f"unknown command {cmd!r} (spaces, reset, step, close)")


def main():
    parser = argparse.ArgumentParser(prog="gym_server.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("env_id")
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--kwargs", default="{}", help="JSON keyword arguments for gymnasium.make")
    args = parser.parse_args()
    # Replies go to the real stdout alone: anything an environment prints
    # goes to stderr instead of breaking the protocol.
    out = sys.stdout
    sys.stdout = sys.stderr
    server = Server(args.env_id, args.num_envs, json.loads(args.kwargs))
    for line in sys.stdin:
        if not line.strip():
            continue
        closing = False
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("a request must be a JSON object")
            closing = req.get("cmd") == "close"
            reply = {"ok": True} if closing else dict(ok=True, **server.handle(req))
            text = json.dumps(reply, allow_nan=False)
        except Exception as e:  # reported to the client, which decides
            traceback.print_exc(file=sys.stderr)
            text = json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"})
        out.write(text + "\n")
        out.flush()
        if closing:
            break
    for e in server.envs:
        e.close()


if __name__ == "__main__":
    main()
