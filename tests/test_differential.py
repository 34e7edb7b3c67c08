"""Differential test: an incremental build must produce exactly what a fresh build of the same sources does.

For random workspaces (tests/diffgen.py) and random sequences of user edits, every step builds twice with the real
CLI: incrementally in the persistent workspace (its `.gaffer/` state and a persistent local cache), and in a fresh
copy of its sources with an empty cache. The declared outputs must agree byte for byte, with modes, symlink
targets and directory listings. A disagreement is a wrong result gaffer is responsible for: every task reads
only what gaffer keys, so up-to-date checks, keys and restores are all that can make the two differ.

A second test drives the incremental build (only the tasks downstream of what changed are looked at, see
gaffer.noop): every task cached, steps of several file edits at once between builds, now and then an edit of
the graph, the environment or gaffer's state; each step after a recorded build must take that path.

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
from tests.support import gaffer_env, noop_changes, run_gaffer

EDITS_PER_EXAMPLE = 6
INCREMENTAL_STEPS = 8


def _seeds() -> list[int]:
    if os.environ.get("GAFFER_TEST_SEED"):
        return [int(os.environ["GAFFER_TEST_SEED"])]
    return list(range(int(os.environ.get("GAFFER_TEST_EXAMPLES", "5"))))


def _env(cache: Path, values: dict[str, str]) -> dict[str, str]:
    env = gaffer_env(cache)
    for name in diffgen.ENV_NAMES:
        env.pop(name, None)
    env.update(values)
    return env


def _build(root: Path, cache: Path, values: dict[str, str]) -> tuple[int, str]:
    proc = run_gaffer(["run", "-j", "2"], cwd=root, env=_env(cache, values), timeout=120)
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
    _compare_steps(seed, tmp_path, rng, diffgen.generate(rng), [[diffgen.EDITS]] * EDITS_PER_EXAMPLE)


@pytest.mark.parametrize("seed", _seeds(), ids=lambda s: f"seed={s}")
def test_builds_of_what_changed_equal_fresh_builds(seed: int, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    ws = diffgen.generate(rng, uncached=0.0)  # a `cache: false` task would make every build check everything
    steps = [[diffgen.FILE_EDITS] * rng.randint(1, 3) if rng.random() < 0.75 else [diffgen.EDITS]
             for _ in range(INCREMENTAL_STEPS)]
    _compare_steps(seed, tmp_path, rng, ws, steps, monkeypatch)


def _compare_steps(seed: int, tmp_path: Path, rng: random.Random, ws: diffgen.Workspace,
                   steps: list[list[tuple]], monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    """Build `ws`, then after each step's random edits (each drawn from its list of kinds) build it again, and
    compare with a fresh build every time. With `monkeypatch`, a step of file edits only after a build that
    left its record must be built from the recorded changes."""
    root = tmp_path / "ws"
    ws.write(root)
    initial = ws.describe()
    done: list[str] = []
    for step in range(len(steps) + 1):
        if step:
            done.extend(diffgen.apply_edit(rng, ws, kinds) for kinds in steps[step - 1])
            done.append("gaffer run -j 2")
            recorded = (root / ".gaffer" / "noop").exists()
            if monkeypatch is not None and recorded and all(kinds == diffgen.FILE_EDITS for kinds in steps[step - 1]):
                found = noop_changes(root, _env(tmp_path / "cache", ws.env), monkeypatch)
                why = f"seed {seed}: step {step} of file edits only is not built from the recorded changes"
                assert found is not None, "\n".join([why, *done])
                done[-1] += f"  # incremental: dirty {sorted(found.dirty)}"
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
                "then, step by step:", *[f"  {line}" for line in done],
                "differences:", *problems, "incremental build's stderr:", inc_err]), pytrace=False)
