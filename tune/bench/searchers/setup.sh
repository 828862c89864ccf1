#!/usr/bin/env bash
# Sets up the Python venv that TPE's benchmark runs Optuna in:
#
#   bash tune/bench/searchers/setup.sh
#
#   target/optuna-venv   optuna (its latest release on PyPI) + numpy
#
# From PyPI only. Idempotent: a venv whose `import optuna` works is left
# alone. Override the path with RAYFORGE_OPTUNA_VENV.
set -euo pipefail
cd "$(dirname "$0")/../../.."
venv="${RAYFORGE_OPTUNA_VENV:-$PWD/target/optuna-venv}"
if "$venv/bin/python" -c 'import optuna, numpy' >/dev/null 2>&1; then
  echo "== $venv: optuna already there"
else
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  echo "== $venv: pip install optuna"
  "$venv/bin/pip" install --quiet --disable-pip-version-check optuna
fi
"$venv/bin/python" -c 'import optuna, numpy; print("== optuna", optuna.__version__, "numpy", numpy.__version__)'
