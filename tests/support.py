"""Helpers shared by the tests: locating tools, skipping (locally) or failing (in CI) when one is absent."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip the test locally when `condition` is false; under CI=true that is a failure, so CI proves it ran."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required for this test in CI: {reason}")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """The absolute path of an executable on PATH (or next to this Python), else skip/fail."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    require(found is not None, f"{name} is not installed (scripts/test.sh installs it)")
    assert found is not None
    return found
