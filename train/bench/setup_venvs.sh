#!/usr/bin/env bash
# Sets up the Python venvs that the Train benchmark anchors run in:
#
#   train/bench/setup_venvs.sh
#
#   target/torch-venv  torch==2.11.0 + numpy        (ddp_gloo.py, allreduce_gloo.py)
#   target/ray-venv    ray[train]==2.60.0 + torch==2.11.0 + numpy   (ray_train.py)
#
# Both come from PyPI (torch's full wheel pulls the CUDA wheels: about 4.6 GB
# per venv; pip's cache keeps the second install from downloading again).
# target/ray-venv may already exist with Ray 2.60 from core/bench/compare-ray:
# it is reused and only what is missing is added. Idempotent: a venv whose
# imports already work is left alone. Override the paths with
# RAYFORGE_TORCH_VENV / RAYFORGE_RAY_VENV.
set -euo pipefail
cd "$(dirname "$0")/../.."
torch_venv="${RAYFORGE_TORCH_VENV:-$PWD/target/torch-venv}"
ray_venv="${RAYFORGE_RAY_VENV:-$PWD/target/ray-venv}"
torch_pin="torch==2.11.0"
ray_pin="ray[train]==2.60.0"

pip_install() { # venv, packages...
  local venv="$1"; shift
  echo "== $venv: pip install $*"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
}

ensure_venv() { # venv
  if [ ! -x "$1/bin/python" ]; then
    echo "== creating $1"
    python3 -m venv "$1"
  fi
}

# Free space check: each torch install takes about 4.6 GB (+ pip's cache).
need_gb=12
avail_gb=$(df -Pk "$PWD" | awk 'NR==2 {print int($4 / 1048576)}')
echo "== $avail_gb GB free on $(df -P "$PWD" | awk 'NR==2 {print $6}')"

has() { "$1/bin/python" -c "$2" >/dev/null 2>&1; }
torch_ok='import torch, numpy; assert torch.__version__.split("+")[0] == "2.11.0"'
ray_ok='import ray, ray.train.torch; assert ray.__version__ == "2.60.0"'

want=0
has "$torch_venv" "$torch_ok" || want=$((want + 1))
has "$ray_venv" "$torch_ok" || want=$((want + 1))
if [ "$want" -gt 0 ] && [ "$avail_gb" -lt "$need_gb" ]; then
  echo "== warning: under $need_gb GB free; the torch installs may not fit"
fi

# torch-venv
if has "$torch_venv" "$torch_ok"; then
  echo "== $torch_venv: torch 2.11.0 and numpy already there"
else
  ensure_venv "$torch_venv"
  pip_install "$torch_venv" "$torch_pin" numpy
fi

# ray-venv: add only what is missing.
ensure_venv "$ray_venv"
if has "$ray_venv" "$ray_ok"; then
  echo "== $ray_venv: ray[train] 2.60.0 already there"
else
  pip_install "$ray_venv" "$ray_pin" numpy
fi
if has "$ray_venv" "$torch_ok"; then
  echo "== $ray_venv: torch 2.11.0 already there"
else
  pip_install "$ray_venv" "$torch_pin" numpy
fi

"$torch_venv/bin/python" -c 'import torch, numpy; print("== torch-venv:", torch.__version__, "numpy", numpy.__version__)'
"$ray_venv/bin/python" -c 'import ray, torch; print("== ray-venv: ray", ray.__version__, "torch", torch.__version__)'
