#!/usr/bin/env bash
# Sets up and runs every check and test: formatting, lints, unit,
# integration (real worker processes), example and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
# libtorch 2.11 (for tch) from PyPI, once, into a cache outside the clone.
source scripts/libtorch.sh
# XGBoost 3.2's library from PyPI's xgboost-cpu wheel, into the same cache (rayforge-xgboost loads it).
source scripts/xgboost.sh
# Gymnasium 1.2.2 in target/gym-venv, for rllib's step-for-step comparisons (rllib/tests/it/gymnasium.rs).
bash scripts/gym-venv.sh && export RAYFORGE_GYM_PYTHON="${RAYFORGE_GYM_VENV:-$PWD/target/gym-venv}/bin/python"
# Object-store servers for the storage tests (integration-tests/tests/it/storage.rs): moto (S3) from
# PyPI in target/s3-venv, Azurite (Azure Blob Storage) from npm.
bash scripts/s3-venv.sh && export RAYFORGE_MOTO_SERVER="${RAYFORGE_S3_VENV:-$PWD/target/s3-venv}/bin/moto_server"
bash scripts/azurite.sh && export RAYFORGE_AZURITE="$PWD/integration-tests/azurite/node_modules/.bin/azurite-blob"
# MLflow 3.18 (a real `mlflow server`) and TensorBoard 2.21's event reader in target/tracking-venv, for the experiment-tracking tests.
bash scripts/tracking-venv.sh && export RAYFORGE_TRACKING_PYTHON="${RAYFORGE_TRACKING_VENV:-$PWD/target/tracking-venv}/bin/python" RAYFORGE_MLFLOW="${RAYFORGE_TRACKING_VENV:-$PWD/target/tracking-venv}/bin/mlflow"
# Chromium, promtool, playwright-core, kubernetes-validate and kubectl, for the dashboard checks.
source scripts/observability-tools.sh
# OpenSSH's server and client, for the launcher's ssh-provider test.
source scripts/ssh-tools.sh
# As root, cgroup v2 holds each job's process tree (core/src/util/cgroup.rs): its tests are required then.
if [ "$(id -u)" -eq 0 ]; then export RAYFORGE_REQUIRE_CGROUPS=1; fi
echo "== disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free at the start"
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== building binaries (cluster tests start real rayforge daemons)"
cargo build --workspace --bins
echo "== tests (nextest: one process per test)"
cargo nextest run --workspace --no-fail-fast
echo "== disk: $(du -sh target | cut -f1) in target/, $(df -h --output=avail . | tail -1 | tr -d ' ') left"
# The same tests as a contributor's `cargo test` runs them, doc tests included: many tests to a
# process, sharing one embedded cluster per test binary; a test that needs a cluster of its own
# runs in a process of its own (rayforge_integration_tests::own_process!).
echo "== cargo test (many tests per process) and doc tests"
cargo test --workspace --no-fail-fast
echo "== Kubernetes manifests (kustomize render, kubernetes-validate --strict, pod security and NetworkPolicy, a head and a worker from their arguments)"
target/k8s-venv/bin/python core/cli/kubernetes/check.py --rayforge target/debug/rayforge \
  --validate target/k8s-venv/bin/kubernetes-validate --kubectl "$RAYFORGE_KUBECTL"
