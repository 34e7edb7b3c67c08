#!/bin/sh
# The static checks, exactly as CI runs them (configured in pyproject.toml): ruff on everything (src, tests,
# benchmarks, scripts; the generated protos excluded), then mypy --strict on src/gaffer. Both always run; the
# exit status is non-zero if either found something. Needs the test extras (scripts/setup-venv.sh test).
# Usage: scripts/lint.sh
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
status=0
.venv/bin/ruff check || status=1
.venv/bin/mypy || status=1
exit $status
