#!/usr/bin/env bash
# Sets up the Python venv that rllib's Gymnasium comparison tests run in:
#
#   bash scripts/gym-venv.sh      (scripts/test.sh runs it)
#
#   target/gym-venv   gymnasium==1.2.2 + numpy 2.x   (rllib/python/gym_dump.py,
#                                                     rllib/python/gym_server.py)
#                     + mujoco 3.17 and what Gymnasium's MuJoCo tasks import
#                       (imageio, packaging): InvertedPendulum-v5 and friends
#
# Idempotent and quick: a venv whose imports already work is left alone.
# The wheels are downloaded once into a cache outside the clone, as
# scripts/libtorch.sh does: $RAYFORGE_CACHE, else $XDG_CACHE_HOME/rayforge,
# else ~/.cache/rayforge (the clone's target/cache when none is writable),
# and installed from there, so a CI job that keeps that folder downloads
# nothing. Override the venv's path with RAYFORGE_GYM_VENV.
#
# Prints nothing else on stdout but progress lines; the tests find the venv's
# python through RAYFORGE_GYM_PYTHON (scripts/test.sh exports it).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${RAYFORGE_GYM_VENV:-$PWD/target/gym-venv}"
gym_pin="gymnasium==1.2.2"
# NumPy 2 (NEP 50 promotion rules): Gymnasium's float32 arithmetic in
# MountainCarContinuous and Pendulum depends on them, and our ports follow them.
numpy_pin="numpy>=2,<3"
mujoco_pin="mujoco==3.17.0"
ok='import gymnasium, numpy, mujoco; assert gymnasium.__version__ == "1.2.2"; assert numpy.__version__.startswith("2."); assert mujoco.__version__ == "3.17.0"; gymnasium.make("InvertedPendulum-v5")'

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$ok" >/dev/null 2>&1; then
  echo "== $venv: gymnasium 1.2.2 and mujoco 3.17.0 already there"
  exit 0
fi

# shellcheck source=scripts/cache-dir.sh
source "$(dirname "${BASH_SOURCE[0]}")/cache-dir.sh"
rayforge_pip_venv "$venv" gym-wheels "$ok" "$gym_pin" "$numpy_pin" "$mujoco_pin" imageio packaging
"$venv/bin/python" -c 'import gymnasium, numpy, mujoco; print("== gym-venv: gymnasium", gymnasium.__version__, "numpy", numpy.__version__, "mujoco", mujoco.__version__)'
