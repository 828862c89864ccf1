"""Stable-Baselines3's side of the MuJoCo benchmark (rllib/bench/mujoco): PPO
or SAC on a Gymnasium MuJoCo task with rl-zoo3's MuJoCo defaults
(hyperparams/ppo.yml and sac.yml, `&mujoco-defaults`):

  PPO  normalize: true (VecNormalize: observations and rewards), 1 env,
       SB3's PPO defaults (n_steps 2048, batch_size 64, n_epochs 10,
       learning_rate 3e-4, gamma 0.99, gae_lambda 0.95, clip_range 0.2,
       ent_coef 0, 64x64 tanh, separate value network), n_timesteps 1e6
  SAC  learning_starts 10000, SB3's SAC defaults (buffer 1e6, batch 256,
       learning_rate 3e-4, tau 0.005, gamma 0.99, train_freq 1,
       gradient_steps 1, ent_coef auto, 256x256 ReLU), n_timesteps 1e6

torch on the CPU. Every --eval-freq env steps the deterministic policy plays
--eval-episodes episodes on a separate env (SB3's EvalCallback; with
VecNormalize the eval env takes the training statistics); the run stops
when their mean return reaches --target, or at --timesteps. Prints one JSON
line: env steps and wall seconds (from the script's start, imports included,
and from building the model) to the crossing, the best evaluation return.

  target/sb3-venv/bin/python rllib/bench/sb3_mujoco.py --algo sac --env InvertedPendulum-v5
"""
import time

T0 = time.time()

import argparse  # noqa: E402
import json  # noqa: E402

import stable_baselines3  # noqa: E402
from stable_baselines3 import PPO, SAC  # noqa: E402
from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import VecNormalize  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--algo", choices=["ppo", "sac"], required=True)
p.add_argument("--env", required=True)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--target", type=float, required=True)
p.add_argument("--timesteps", type=int, default=1_000_000)
p.add_argument("--eval-freq", type=int, default=2048)
p.add_argument("--eval-episodes", type=int, default=5)
a = p.parse_args()

built = time.time()
env = make_vec_env(a.env, n_envs=1, seed=a.seed)
eval_env = make_vec_env(a.env, n_envs=1, seed=a.seed + 10_000)
if a.algo == "ppo":
    env = VecNormalize(env, gamma=0.99)
    eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
    model = PPO("MlpPolicy", env, seed=a.seed, device="cpu", verbose=0)
else:
    model = SAC("MlpPolicy", env, learning_starts=10_000, seed=a.seed, device="cpu", verbose=0)


class Crossing(StopTrainingOnRewardThreshold):
    """Stops at the target and remembers when it was reached."""

    def __init__(self):
        super().__init__(reward_threshold=a.target, verbose=0)
        self.at = None

    def _on_step(self):
        go_on = super()._on_step()
        if not go_on and self.at is None:
            self.at = (time.time(), int(self.model.num_timesteps))
        return go_on


stop = Crossing()
evals = EvalCallback(eval_env, callback_on_new_best=stop, eval_freq=a.eval_freq,
                     n_eval_episodes=a.eval_episodes, deterministic=True, verbose=0)
model.learn(total_timesteps=a.timesteps, callback=evals)
end = time.time()
at_s, at_steps = stop.at or (end, int(model.num_timesteps))
print(json.dumps({"bench": "mujoco", "impl": f"stable-baselines3 {stable_baselines3.__version__}",
                  "algo": a.algo.upper(), "env": a.env, "seed": a.seed, "reached": stop.at is not None,
                  "target": a.target, "best_eval": float(evals.best_mean_reward), "env_steps": at_steps,
                  "wall_s": at_s - T0, "train_s": at_s - built}))
