#!/usr/bin/env bash
# Sets up the Python venvs that RLlib's benchmark anchors run in:
#
#   bash rllib/bench/setup.sh
#
#   target/ray-venv   Ray 2.60 (train/bench/setup_venvs.sh) + its [rllib] extra
#                     (gymnasium 1.2.2, dm_tree, scipy, ...)      ray_rllib.py
#   target/gym-venv   gymnasium 1.2.2 + numpy 2 (scripts/gym-venv.sh)  gym_envs.py
#   target/sb3-venv   stable-baselines3 + gymnasium 1.2.2 + mujoco 3.17 on torch 2.11
#                                                           sb3_ppo.py, sb3_mujoco.py
#
# The SB3 venv reuses target/torch-venv's torch 2.11 through a .pth file
# (the torch wheel with its CUDA wheels is 4.6 GB; SB3 runs on the CPU
# here), so pip adds only SB3 and its small dependencies; without a
# torch-venv it installs torch from PyPI like any venv. With under 15 GB
# free and no SB3 yet, it is skipped (rllib/bench/compare then leaves the
# SB3 rows out). Idempotent: a venv whose imports already work is left
# alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash train/bench/setup_venvs.sh
bash scripts/gym-venv.sh

ray_venv="${RAYFORGE_RAY_VENV:-$PWD/target/ray-venv}"
torch_venv="${RAYFORGE_TORCH_VENV:-$PWD/target/torch-venv}"
sb3_venv="${RAYFORGE_SB3_VENV:-$PWD/target/sb3-venv}"
pip_install() { # venv, packages...
  local venv="$1"; shift
  echo "== $venv: pip install $*"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
}
has() { [ -x "$1/bin/python" ] && "$1/bin/python" -c "$2" >/dev/null 2>&1; }

# RLlib: the [rllib] extra of the Ray already there.
if has "$ray_venv" 'import ray.rllib.algorithms.ppo, gymnasium'; then
  echo "== $ray_venv: ray.rllib already there"
else
  ray_version=$("$ray_venv/bin/python" -c 'import ray; print(ray.__version__)')
  pip_install "$ray_venv" "ray[rllib]==$ray_version"
fi

# Stable-Baselines3.
sb3_ok='import stable_baselines3, torch, gymnasium, mujoco; assert gymnasium.__version__ == "1.2.2"; gymnasium.make("InvertedPendulum-v5")'
if has "$sb3_venv" "$sb3_ok"; then
  echo "== $sb3_venv: stable-baselines3 already there"
else
  avail_gb=$(df -Pk "$PWD" | awk 'NR==2 {print int($4 / 1048576)}')
  if [ "$avail_gb" -lt 15 ]; then
    echo "== only $avail_gb GB free (under 15): skipping stable-baselines3"
    exit 0
  fi
  if [ ! -x "$sb3_venv/bin/python" ]; then
    echo "== creating $sb3_venv"
    python3 -m venv "$sb3_venv"
  fi
  if has "$torch_venv" 'import torch'; then
    # torch-venv's site-packages on sys.path after sb3-venv's own: pip sees
    # torch as installed and leaves it.
    site=$("$sb3_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$torch_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$site/rayforge-torch-venv.pth"
  fi
  pip_install "$sb3_venv" stable-baselines3 "gymnasium==1.2.2" "mujoco==3.17.0" imageio packaging
  "$sb3_venv/bin/python" -c "$sb3_ok"
fi
"$sb3_venv/bin/python" -c 'import stable_baselines3, torch, gymnasium; print("== sb3-venv: stable-baselines3", stable_baselines3.__version__, "torch", torch.__version__, "gymnasium", gymnasium.__version__)'
"$ray_venv/bin/python" -c 'import ray, gymnasium; print("== ray-venv: ray", ray.__version__, "gymnasium", gymnasium.__version__)'
