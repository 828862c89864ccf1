#!/usr/bin/env bash
# Sets up the S3-compatible server that rayforge's storage tests upload to
# and download from (moto's server mode, from PyPI):
#
#   bash scripts/s3-venv.sh      (scripts/test.sh runs it)
#
#   target/s3-venv   moto[server]==5.2.5   (target/s3-venv/bin/moto_server)
#
# Each test starts its own server on a free loopback port (and may stop it
# mid-upload); the tests find the program through RAYFORGE_MOTO_SERVER,
# which scripts/test.sh exports.
#
# Idempotent and quick: a venv whose server already runs is left alone. The
# wheels are downloaded once into the same cache as libtorch's
# (scripts/cache-dir.sh), so a CI job that keeps that folder downloads
# nothing. Override the venv's path with RAYFORGE_S3_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${RAYFORGE_S3_VENV:-$PWD/target/s3-venv}"
pin="moto[server]==5.2.5"
ok='import moto, flask; assert moto.__version__ == "5.2.5"'

if [ -x "$venv/bin/moto_server" ] && "$venv/bin/python" -c "$ok" >/dev/null 2>&1; then
  echo "== $venv: moto 5.2.5 already there"
  exit 0
fi

# shellcheck source=scripts/cache-dir.sh
source "$(dirname "${BASH_SOURCE[0]}")/cache-dir.sh"
rayforge_pip_venv "$venv" s3-wheels "$ok" "$pin"
echo "== s3-venv: moto $("$venv/bin/python" -c 'import moto; print(moto.__version__)') ($venv/bin/moto_server)"
