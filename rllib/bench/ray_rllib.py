"""RLlib 2.60's side of RLlib's benchmarks (new API stack, torch), on
`--cpus` CPUs (2 here); prints one JSON line.

`sample`: sampling throughput, no learning. PPO built with the default PPO
RLModule at the size of rayforge's (fcnet_hiddens [64, 64], tanh, separate
value network), 2 env runners x 8 CartPole-v1 each, rollout_fragment_length
256. One round is what PPO's `training_step` does before learning: the
learner's weights synced to the env runners (`sync_weights`, as PPO calls it,
fire-and-forget) and `synchronous_parallel_sample` of 2 x 8 x 256 env steps,
the episodes returned to the driver. Env steps per second over R rounds after
W warm-up rounds (building the algorithm is not timed). The env runners act
with the inference-only module (`forward_exploration`: the policy logits,
no value; PPO's values are computed later, on the learner).

`solve --preset zoo|tuned`: PPO trained on CartPole-v1 until the mean
return of the last 100 episodes >= the target, or the caps (env steps, wall
seconds); the learner in the driver (num_learners=0: a learner actor would
need a third CPU beside the 2 env runners). Presets:
- `zoo`: rayforge's preset, i.e. rl-zoo3's hyperparameters (2 runners x 4
  envs x 32 steps = 256 a batch, one minibatch, 20 epochs, lr 1e-3 falling
  linearly to 0 over 100k steps, gamma 0.98, lambda 0.8, clip 0.2 fixed,
  64x64 tanh): the same algorithm settings, so the frameworks' speed shows;
- `tuned`: Ray's tuned example, rllib/tuned_examples/ppo/cartpole_ppo.py
  (16 envs per runner, rollout_fragment_length 32, train_batch_size 2048,
  minibatch 128, lr 3e-4, 5 epochs, vf_loss_coeff 1.5, entropy 0, gamma
  0.99, lambda 0.95, clip 0.3, one shared 32-unit linear layer), on 2 env
  runners instead of its 4 (the batch, hence the learning, is the same).
The mean of the last 100 is computed here from every finished episode's
return (an on_episode_end callback): RLlib 2.60's own
env_runners/episode_return_mean is cleared at every iteration (its windowed
stats empty on reduce), so it averages only the episodes that ended in that
iteration (NaN when none did), and one lucky 500-step episode would stop the
run; where that metric first crossed is reported too. Wall seconds to the
crossing from the script's start (imports and ray.init included) and from
building the algorithm.

  target/ray-venv/bin/python rllib/bench/ray_rllib.py sample --rounds 20
  target/ray-venv/bin/python rllib/bench/ray_rllib.py solve --preset zoo --seed 0
"""
import time

T0 = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
from collections import deque  # noqa: E402

import ray  # noqa: E402
from ray.rllib.algorithms.ppo import PPOConfig  # noqa: E402
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig  # noqa: E402
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["sample", "solve"])
p.add_argument("--cpus", type=int, default=2)
p.add_argument("--runners", type=int, default=2)
p.add_argument("--envs", type=int, default=None)
p.add_argument("--steps", type=int, default=256)
p.add_argument("--rounds", type=int, default=20)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--preset", choices=["tuned", "zoo"], default="tuned")
p.add_argument("--target", type=float, default=450.0)
p.add_argument("--max-steps", type=int, default=300_000)
p.add_argument("--max-seconds", type=float, default=420.0)
a = p.parse_args()

ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False)


def sample():
    envs = a.envs or 8
    batch = a.runners * envs * a.steps
    config = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=a.runners, num_envs_per_env_runner=envs,
                     rollout_fragment_length=a.steps)
        .learners(num_learners=0)
        .training(train_batch_size=batch, minibatch_size=min(batch, 128))
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="tanh"))
        .debugging(seed=a.seed)
    )
    built = time.time()
    algo = config.build_algo()
    group = algo.env_runner_group

    def round_():
        group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)
        episodes = synchronous_parallel_sample(worker_set=group, max_env_steps=batch,
                                               _uses_new_env_runners=True)
        return int(sum(len(e) for e in episodes)), int(sum(bool(e.is_done) for e in episodes))

    for _ in range(a.warmup):
        round_()
    startup = time.time() - built
    steps = episodes = 0
    start = time.perf_counter()
    for _ in range(a.rounds):
        s, e = round_()
        steps += s
        episodes += e
    wall = time.perf_counter() - start
    algo.stop()
    print(json.dumps({"bench": "sample", "impl": f"rllib {ray.__version__} EnvRunner",
                      "runners": a.runners, "envs_per_runner": envs, "steps_per_call": a.steps,
                      "rounds": a.rounds, "env_steps": steps, "episodes": episodes, "wall_s": wall,
                      "startup_and_warmup_s": startup, "env_steps_per_s": steps / wall}))


def log_return(episode, metrics_logger, prev_episode_chunks=(), **kwargs):
    # Every finished episode's whole return (earlier chunks included), as a
    # list that reaches the driver with the iteration's results.
    ret = episode.get_return() + sum(c.get_return() for c in prev_episode_chunks)
    metrics_logger.log_value("bench_episode_returns", float(ret), reduce="item_series")


def solve():
    if a.preset == "tuned":
        config = (
            PPOConfig()
            .environment("CartPole-v1")
            .env_runners(num_env_runners=a.runners, num_envs_per_env_runner=a.envs or 16,
                         rollout_fragment_length=32)
            .learners(num_learners=0)
            .training(train_batch_size=2048, minibatch_size=128, lr=0.0003, num_epochs=5,
                      vf_loss_coeff=1.5, entropy_coeff=0, gamma=0.99, lambda_=0.95, clip_param=0.3,
                      vf_clip_param=10_000)
            .rl_module(model_config=DefaultModelConfig(vf_share_layers=True, fcnet_hiddens=[32],
                                                       fcnet_activation="linear"))
            .debugging(seed=a.seed)
        )
    else:
        # rayforge's preset (rl-zoo3's): 2 x 4 envs x 32 steps = 256 a batch,
        # one minibatch of 256, 20 epochs, lr 1e-3 falling linearly to 0 over
        # 100k steps, gamma 0.98, lambda 0.8, clip 0.2 (fixed: RLlib has no
        # clip schedule), vf_coef 0.5, no KL term, no value clipping, global
        # gradient norm 0.5, 64x64 tanh with a separate value network.
        config = (
            PPOConfig()
            .environment("CartPole-v1")
            .env_runners(num_env_runners=a.runners, num_envs_per_env_runner=a.envs or 4,
                         rollout_fragment_length=32)
            .learners(num_learners=0)
            .training(train_batch_size=256, minibatch_size=256, num_epochs=20,
                      lr=[[0, 1e-3], [100_000, 0.0]], gamma=0.98, lambda_=0.8, clip_param=0.2,
                      vf_loss_coeff=0.5, entropy_coeff=0.0, use_kl_loss=False,
                      vf_clip_param=float("inf"), grad_clip=0.5, grad_clip_by="global_norm")
            .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="tanh",
                                                       vf_share_layers=False))
            .debugging(seed=a.seed)
        )
    config = config.callbacks(on_episode_end=log_return)
    built = time.time()
    algo = config.build_algo()
    window = deque(maxlen=100)
    ret, steps, it, reached, own_crossed = float("nan"), 0, 0, False, None
    curve = []
    while True:
        r = algo.train()
        it += 1
        runners = r["env_runners"]
        # A list; a bare number when one episode ended, NaN when none did.
        new = runners.get("bench_episode_returns", [])
        window.extend(new if isinstance(new, (list, tuple)) else [] if new != new else [new])
        ret = sum(window) / len(window) if window else float("nan")
        own = runners.get("episode_return_mean", float("nan"))
        steps = int(runners.get("num_env_steps_sampled_lifetime", r.get("num_env_steps_sampled_lifetime", 0)))
        now = time.time()
        if own_crossed is None and own >= a.target:
            own_crossed = [steps, round(now - T0, 2)]
        curve.append([steps, round(ret, 2), round(own, 2), round(now - built, 2)])
        if ret >= a.target:
            reached = True
            break
        if steps >= a.max_steps or now - T0 >= a.max_seconds:
            break
    end = time.time()
    algo.stop()
    print(json.dumps({"bench": "solve", "impl": f"rllib {ray.__version__} PPO ({a.preset})", "seed": a.seed,
                      "reached": reached, "target": a.target, "return": ret, "env_steps": steps,
                      "iterations": it, "wall_s": end - T0, "train_s": end - built,
                      # [env steps, wall s] when RLlib's own episode_return_mean
                      # (the iteration's episodes only in 2.60) first reached it.
                      "rllib_metric_crossed": own_crossed,
                      # [env steps, mean of the last 100, RLlib's metric, s since build]
                      "curve": curve}))


sample() if a.mode == "sample" else solve()
