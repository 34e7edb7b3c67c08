"""Racy timestamps on a real file system that keeps whole seconds (ext4 made with 128-byte inodes, loop-mounted):
an input rewritten with the same size in the second it was built in keeps its stat signature, and gaffer must
still see the edit — in the per-task check, the whole-build no-op record and the stat cache (which outlives
`gaffer clean`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support import gaffer_env, run_gaffer, run_ok

GRAPH = {"copy": {"command": "cp src.txt out.txt", "inputs": ["src.txt"], "outputs": ["out.txt"]}}


@pytest.fixture
def ws(coarse_fs: Path) -> Path:
    root = coarse_fs / "ws"
    root.mkdir()
    (root / "graph.json").write_text(json.dumps(GRAPH))
    return root


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return gaffer_env(tmp_path / "cache")


def build(ws: Path, env: dict[str, str], *args: str) -> str:
    """Run `gaffer run` and return the task's status."""
    return run_ok(ws, env, *args)["status"]["copy"]


def signature(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def build_then_edit_within_one_second(ws: Path, env: dict[str, str]) -> bytes:
    """Write the input, build, and rewrite it in place with other bytes of the same size, until that all fell
    within one second, so the edit left size, mtime, ctime and inode as the build saw them. Returns the edited
    content. (A build takes a fraction of a second: the second turns over during some attempts, not all.)"""
    src = ws / "src.txt"
    for attempt in range(20):
        before, after = f"before {attempt:02d}\n".encode(), f"edited {attempt:02d}\n".encode()
        src.write_bytes(before)
        assert build(ws, env) == "executed"
        assert (ws / "out.txt").read_bytes() == before
        seen = signature(src)
        src.write_bytes(after)
        if signature(src) == seen:
            assert seen[1] % 10**9 == 0
            return after
    pytest.fail("20 times a build and an edit did not fit in one second")


@pytest.mark.parametrize("verbose", [False, True], ids=["no-op record", "per-task check"])
def test_an_edit_in_the_second_of_the_build_reruns(ws: Path, env: dict[str, str], verbose: bool) -> None:
    """-v skips the whole-build no-op record, so the per-task fingerprint is what decides."""
    edited = build_then_edit_within_one_second(ws, env)
    assert build(ws, env, *(["-v"] if verbose else [])) == "executed"
    assert (ws / "out.txt").read_bytes() == edited


def test_the_stat_cache_does_not_trust_a_racy_entry_after_clean(ws: Path, env: dict[str, str]) -> None:
    """`gaffer clean` forgets the tasks, not the stat cache: a digest recorded in the second of the edit must be
    re-hashed, or the old key gives a false cache hit restoring the old output."""
    edited = build_then_edit_within_one_second(ws, env)
    run_gaffer(["clean"], cwd=ws, env=env, check=True)
    assert build(ws, env) == "executed"
    assert (ws / "out.txt").read_bytes() == edited


@pytest.mark.parametrize("o_tmpfile", [True, False], ids=["O_TMPFILE", "named-temp-file"])
def test_the_build_moment_is_the_file_system_clock(coarse_fs: Path, monkeypatch: pytest.MonkeyPatch,
                                                   o_tmpfile: bool) -> None:
    """`file_system_now`: the time a file made in the directory gets (whole seconds here, not the system
    clock's nanoseconds), from an unnamed file, or a named one removed at once where O_TMPFILE is missing."""
    from gaffer.digest import file_system_now

    if not o_tmpfile:
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)  # as on a system without it
    (coarse_fs / "before").write_bytes(b"")
    now = file_system_now(coarse_fs / "state")
    (coarse_fs / "after").write_bytes(b"")
    assert (coarse_fs / "before").stat().st_mtime_ns <= now <= (coarse_fs / "after").stat().st_mtime_ns
    assert now % 10**9 == 0
    assert os.listdir(coarse_fs / "state") == []
