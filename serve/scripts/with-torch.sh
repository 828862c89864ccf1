#!/usr/bin/env bash
# Runs a command with libtorch set up for `--features torch`: installs
# torch==2.11.0 (the version tch 0.24 binds) from PyPI into target/torch-venv
# once, and points tch's build at it (LIBTORCH_USE_PYTORCH).
#
#   bash serve/scripts/with-torch.sh cargo nextest run -p rayforge-serve --features torch
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="$ROOT/target/torch-venv"
if ! "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.11.0')" 2>/dev/null; then
  echo "== installing torch==2.11.0 into $VENV (about 4.6 GB with its CUDA wheels)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.11.0
fi
export PATH="$VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export RAYFORGE_TORCH_PYTHON="$VENV/bin/python"
exec "$@"
