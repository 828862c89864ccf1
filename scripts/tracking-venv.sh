#!/usr/bin/env bash
# Sets up the Python services that the experiment-tracking tests check
# rayforge's MLflow and TensorBoard output against (from PyPI):
#
#   bash scripts/tracking-venv.sh      (scripts/test.sh runs it)
#
#   target/tracking-venv   mlflow==3.18.0       (target/tracking-venv/bin/mlflow:
#                                                a real `mlflow server`)
#                          tensorboard==2.21.0  (its event-file reader, through
#                                                integration-tests/python/tb_scalars.py)
#
# Each test starts its own `mlflow server` on a free loopback port; the tests
# find the programs through RAYFORGE_MLFLOW and RAYFORGE_TRACKING_PYTHON,
# which scripts/test.sh exports.
#
# Idempotent and quick: a venv whose imports already work is left alone. The
# wheels are downloaded once into the same cache as libtorch's
# (scripts/cache-dir.sh), so a CI job that keeps that folder downloads
# nothing. Override the venv's path with RAYFORGE_TRACKING_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${RAYFORGE_TRACKING_VENV:-$PWD/target/tracking-venv}"
mlflow_pin="mlflow==3.18.0"
tb_pin="tensorboard==2.21.0"
ok='import mlflow, tensorboard; from tensorboard.backend.event_processing import event_multiplexer; assert mlflow.__version__ == "3.18.0", mlflow.__version__; assert tensorboard.__version__ == "2.21.0", tensorboard.__version__'

if [ -x "$venv/bin/mlflow" ] && "$venv/bin/python" -c "$ok" >/dev/null 2>&1; then
  echo "== $venv: mlflow 3.18.0 and tensorboard 2.21.0 already there"
  exit 0
fi

# shellcheck source=scripts/cache-dir.sh
source "$(dirname "${BASH_SOURCE[0]}")/cache-dir.sh"
rayforge_pip_venv "$venv" tracking-wheels "$ok" "$mlflow_pin" "$tb_pin"
"$venv/bin/python" -c 'import mlflow, tensorboard; print("== tracking-venv: mlflow", mlflow.__version__, "tensorboard", tensorboard.__version__)'
