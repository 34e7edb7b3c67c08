"""Differential test: an incremental build must produce exactly what a fresh build of the same sources does.

For random workspaces (tests/diffgen.py) and random sequences of user edits, every step builds twice with the real
CLI: incrementally in the persistent workspace (its `.gaffer/` state and a persistent local cache), and in a fresh
copy of its sources with an empty cache. The declared outputs must agree byte for byte, with modes, symlink
targets and directory listings. A disagreement is a wrong result gaffer is responsible for: every task reads
only what gaffer keys, so up-to-date checks, keys and restores are all that can make the two differ.

GAFFER_TEST_EXAMPLES=N runs N random workspaces (default 5, seeds 0..N-1); GAFFER_TEST_SEED=S runs seed S alone.
"""

from __future__ import annotations

import difflib
import os
import random
import shutil
from pathlib import Path

import pytest

from tests import diffgen
from tests.support import gaffer_env, run_gaffer

EDITS_PER_EXAMPLE = 6


def _seeds() -> list[int]:
    if os.environ.get("GAFFER_TEST_SEED"):
        return [int(os.environ["GAFFER_TEST_SEED"])]
    return list(range(int(os.environ.get("GAFFER_TEST_EXAMPLES", "5"))))


def _build(root: Path, cache: Path, values: dict[str, str]) -> tuple[int, str]:
    env = gaffer_env(cache)
    for name in diffgen.ENV_NAMES:
        env.pop(name, None)
    env.update(values)
    proc = run_gaffer(["run", "-j", "2"], cwd=root, env=env, timeout=120)
    return proc.returncode, proc.stderr


def _differences(incremental: dict[str, tuple], fresh: dict[str, tuple]) -> list[str]:
    """One entry per differing path: kinds and modes side by side, contents as a diff."""
    lines = []
    for path in sorted(incremental.keys() | fresh.keys()):
        a, b = incremental.get(path, ("missing",)), fresh.get(path, ("missing",))
        if a == b:
            continue
        if a[0] == b[0] == "file" and a[2] != b[2]:
            diff = difflib.unified_diff(a[2].decode(errors="replace").splitlines(),
                                        b[2].decode(errors="replace").splitlines(),
                                        "incremental", "fresh", n=1, lineterm="")
            lines.append(f"  {path} ({a[1]} / {b[1]}):\n" + "\n".join(f"    {d}" for d in diff))
        else:
            lines.append(f"  {path}: incremental {a[:2]}, fresh {b[:2]}")
    return lines


@pytest.mark.parametrize("seed", _seeds(), ids=lambda s: f"seed={s}")
def test_incremental_build_equals_fresh_build(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    ws = diffgen.generate(rng)
    root = tmp_path / "ws"
    ws.write(root)
    initial = ws.describe()
    steps: list[str] = []
    for step in range(EDITS_PER_EXAMPLE + 1):
        if step:
            steps.append(diffgen.apply_edit(rng, ws))
        inc_status, inc_err = _build(root, tmp_path / "cache", ws.env)
        fresh = tmp_path / "fresh"
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(tmp_path / "fresh-cache", ignore_errors=True)
        diffgen.copy_sources(root, fresh)
        fresh_status, fresh_err = _build(fresh, tmp_path / "fresh-cache", ws.env)
        # Every generated task succeeds, so any other status (or a traceback) is gaffer's failure.
        problems = [f"  the {which} build exited {status}:\n{err}"
                    for which, status, err in (("incremental", inc_status, inc_err), ("fresh", fresh_status, fresh_err))
                    if status != 0 or "Traceback" in err]
        if not problems:
            problems = _differences(diffgen.snapshot(root, ws.outputs()), diffgen.snapshot(fresh, ws.outputs()))
        if problems:
            pytest.fail("\n".join([
                f"seed {seed}: after step {step}, the incremental and the fresh build disagree",
                f"(rerun: GAFFER_TEST_SEED={seed} pytest tests/test_differential.py)",
                "the workspace at first (built once before step 1):", initial,
                "steps, each followed by `gaffer run -j 2`:", *[f"  {i}. {s}" for i, s in enumerate(steps, 1)],
                "differences:", *problems, "incremental build's stderr:", inc_err]), pytrace=False)
