#!/usr/bin/env bash
# Runs rayforge-train's GPU tests (train/tests/gpu.rs: CUDA training with
# every collective through NCCL, and an NCCL set-up that times out) on a
# machine with an NVIDIA GPU and a torch install with CUDA, from a test
# binary built elsewhere. Two steps:
#
#   bash train/scripts/gpu-check.sh prepare   # here: builds the binary into .device/
#   bash train/scripts/gpu-check.sh run       # there: runs it against that machine's torch
#
# `prepare` builds the test binary (the dev build, stripped and gzipped: about 36 MB)
# against the CPU libtorch of scripts/libtorch.sh; `run` points the loader
# at the GPU machine's own torch 2.11 (`python3 -c 'import torch'`, with
# libtorch_cuda, preloaded) and at its NCCL wheel through a `libnccl.so`
# link, and
# writes the log to $OUT/gpu-check.log when $OUT is set. On a machine that
# builds with a CUDA torch itself, `cargo nextest run -p rayforge-train
# --test gpu` does the same (see README, "Train").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

case "${1:-}" in
prepare)
  # shellcheck source=scripts/libtorch.sh
  source scripts/libtorch.sh
  exe=$(cargo test -p rayforge-train --test gpu --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')
  [ -n "$exe" ] || { echo "building the GPU test failed"; exit 1; }
  mkdir -p .device
  strip -o .device/gpu-test "$exe"
  gzip -f -1 .device/gpu-test
  ls -l .device/gpu-test.gz
  ;;
run)
  log="${OUT:-/tmp}/gpu-check.log"
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "no nvidia-smi"; } | tee "$log"
  torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "nccl", torch.cuda.nccl.version())' | tee -a "$log"
  nccl="$torch_lib/../../nvidia/nccl/lib/libnccl.so.2"
  [ -f "$nccl" ] || { echo "no NCCL wheel beside torch ($nccl)" | tee -a "$log"; exit 1; }
  links=$(mktemp -d)
  ln -s "$(readlink -f "$nccl")" "$links/libnccl.so"
  export LD_LIBRARY_PATH="$links:$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # Built against the CPU libtorch, the binary does not link libtorch_cuda:
  # loading it registers libtorch's CUDA backend (as `import torch` does).
  export LD_PRELOAD="$torch_lib/libtorch_cuda.so${LD_PRELOAD:+:$LD_PRELOAD}"
  bin=$(mktemp -d)/gpu-test
  gunzip -c .device/gpu-test.gz >"$bin"
  chmod +x "$bin"
  export RUST_LOG="${RUST_LOG:-info}"
  # The tests skip (and say so) without CUDA: a pass must not be a skip.
  set +e
  timeout 400 "$bin" --test-threads=1 --nocapture 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  set -e
  if grep -q "skipped: no CUDA device" "$log"; then
    echo "FAILED: the tests skipped, libtorch saw no CUDA device" | tee -a "$log"
    exit 1
  fi
  echo "gpu-check exit status $rc" | tee -a "$log"
  exit "$rc"
  ;;
*)
  echo "usage: $0 prepare|run"
  exit 2
  ;;
esac
