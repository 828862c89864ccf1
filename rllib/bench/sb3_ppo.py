"""Stable-Baselines3's side of the time-to-450 benchmark: PPO on CartPole-v1
with rl-zoo3's tuned hyperparameters (hyperparams/ppo.yml: n_envs 8,
n_steps 32, batch_size 256, gae_lambda 0.8, gamma 0.98, n_epochs 20,
ent_coef 0, learning_rate lin_0.001, clip_range lin_0.2, n_timesteps 1e5,
MlpPolicy: 64x64 tanh, separate value network), which rayforge's PPO preset
copies. The 8 envs in a DummyVecEnv (one process, make_vec_env's default),
torch on the CPU. Stops as soon as the mean return of the last 100 episodes
(SB3's ep_info_buffer) reaches the target, checked at every vector step;
the run ends at the zoo's 1e5 steps otherwise (its linear schedules reach 0
there). Prints one JSON line: wall seconds to the crossing from the
script's start (imports included) and from building the model.

  target/sb3-venv/bin/python rllib/bench/sb3_ppo.py --seed 0
"""
import time

T0 = time.time()

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import stable_baselines3  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=0)
p.add_argument("--target", type=float, default=450.0)
p.add_argument("--timesteps", type=int, default=100_000)
a = p.parse_args()


def linear(initial):
    # rl-zoo3's `lin_X`: X times the fraction of training left.
    return lambda progress_remaining: progress_remaining * initial


class StopAtReturn(BaseCallback):
    def __init__(self):
        super().__init__()
        self.reached = False
        self.mean = float("nan")

    def _on_step(self):
        buf = self.model.ep_info_buffer
        if buf:
            self.mean = float(np.mean([e["r"] for e in buf]))
            if self.mean >= a.target:
                self.reached = True
                return False
        return True


built = time.time()
env = make_vec_env("CartPole-v1", n_envs=8, seed=a.seed)
model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
            ent_coef=0.0, learning_rate=linear(0.001), clip_range=linear(0.2), seed=a.seed,
            device="cpu", verbose=0)
cb = StopAtReturn()
model.learn(total_timesteps=a.timesteps, callback=cb)
end = time.time()
print(json.dumps({"bench": "solve", "impl": f"stable-baselines3 {stable_baselines3.__version__} PPO",
                  "seed": a.seed, "reached": cb.reached, "target": a.target, "return": cb.mean,
                  "env_steps": int(model.num_timesteps), "wall_s": end - T0, "train_s": end - built}))
