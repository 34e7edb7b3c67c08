#!/bin/sh
# Install BuildGrid (a reference REAPI server) into its own venv, .venv-buildgrid, for the GrpcTier
# conformance tests and benchmarks/bench_server.py, with psycopg2 for its execution service's PostgreSQL. BuildGrid pins its own grpcio/protobuf, so it must not
# share the project venv. Idempotent: a second run only checks the installed version.
# Usage: scripts/install-buildgrid.sh        (then: .venv-buildgrid/bin/bgd --help)
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
VERSION=0.4.4
VENV=$REPO/.venv-buildgrid

if [ -x "$VENV/bin/bgd" ] && "$VENV/bin/python" -c "
import importlib.metadata, sys
import psycopg2
sys.exit(importlib.metadata.version('buildgrid') != '$VERSION')" 2>/dev/null; then
  echo "install-buildgrid: buildgrid $VERSION already in .venv-buildgrid"
  exit 0
fi
PY=${PYTHON:-python3}
echo "install-buildgrid: buildgrid==$VERSION -> .venv-buildgrid (with $($PY -V))"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
log=$(mktemp)
if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check "buildgrid==$VERSION" psycopg2-binary >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
"$VENV/bin/bgd" --help >/dev/null
echo "install-buildgrid: done"
