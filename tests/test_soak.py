"""The soak benchmark as a test: 40 seconds of honest builds among stalled and garbage connections, against a real
`gaffer serve`; it fails when any of the benchmark's checks does (a build not all hits, an honest call failing, a
dirty `gaffer cache verify`, an unclean stop)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO


@pytest.mark.slow
def test_soak_keeps_every_promise(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_soak.py"), "--seconds", "40",
                          "--json", str(report)], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    result = json.loads(report.read_text())
    assert result["builds"]["warm"] > 0 and not result["failures"]
