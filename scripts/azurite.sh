#!/usr/bin/env bash
# Sets up Azurite, Azure Blob Storage's emulator (npm, locked in
# integration-tests/azurite), for the storage test of az:// URIs
# (integration-tests/tests/it/storage.rs). npm keeps its downloads in its
# own cache outside the clone (~/.npm).
#
#   bash scripts/azurite.sh      (scripts/test.sh runs it and exports
#                                 RAYFORGE_AZURITE, the blob server's program)
set -euo pipefail
cd "$(dirname "$0")/../integration-tests/azurite"
if [ -x node_modules/.bin/azurite-blob ]; then
  echo "== Azurite $(node -p 'require("./node_modules/azurite/package.json").version') already there"
  exit 0
fi
command -v npm >/dev/null || { echo "Node.js with npm is required for Azurite (Debian: apt-get install nodejs npm)"; exit 1; }
echo "== installing Azurite (npm) for the az:// storage test"
npm ci --no-audit --no-fund --loglevel=error
