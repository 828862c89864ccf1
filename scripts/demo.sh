#!/usr/bin/env bash
# Sets up and runs the main demo: an embedded local cluster, no configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
# libtorch 2.11 (for tch) from PyPI, once, into a cache outside the clone.
source scripts/libtorch.sh
# The dev profile (dependencies optimized): the same build as the test
# command's, so after it the demo starts at once (a release build is a
# second, 20-minute compile on two cores, for the same timings here).
echo "== building"
cargo build -p rayforge-examples
echo "== the pipeline: Parquet -> rayforge-data -> rayforge-train (2 ranks) -> TorchScript -> rayforge-serve -> HTTP"
./target/debug/pipeline
echo "== quickstart: tasks and an actor"
./target/debug/quickstart
echo "== put once vs pass by value (200 MB array, 10 tasks)"
./target/debug/put_once
echo "== fan-out over worker processes"
./target/debug/fan_out
