#!/bin/sh
# Create .venv (if needed) and install gaffer into it, editable, with the given extras (default: test).
# Usage: scripts/setup-venv.sh [EXTRAS]      e.g. scripts/setup-venv.sh example
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
EXTRAS=${1:-test}
PY=${PYTHON:-python3}
[ -x "$REPO/.venv/bin/python" ] || "$PY" -m venv "$REPO/.venv"
"$REPO/.venv/bin/pip" install --quiet --disable-pip-version-check -e "$REPO[$EXTRAS]"
