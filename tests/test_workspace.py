"""What a build owns while it runs: the workspace (one build at a time), its tasks' processes (nothing left
running), and its inputs (a result built from inputs that changed under it is not cached).

Tasks that must be caught mid-run wait at a `Gate`: two fifos the test controls, so no sleeps stand in for
synchronisation."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import alive, gaffer_env, kill_if_alive, require, require_tool, run_gaffer, summary

WAIT_S = 60


class Gate:
    """A task runs `gate.shell`: it says "ready" through one fifo, then waits for the test's "go" on another."""

    def __init__(self, directory: Path, name: str = "gate") -> None:
        self.ready, self.go = directory / f"{name}.ready", directory / f"{name}.go"
        os.mkfifo(self.ready)
        os.mkfifo(self.go)
        self._ready = os.open(self.ready, os.O_RDONLY | os.O_NONBLOCK)
        self._go = os.open(self.go, os.O_RDWR)  # holds the fifo open: a "go" written now is read whenever asked
        self.shell = f"echo ready > {self.ready}; read line < {self.go}"

    def wait_ready(self) -> None:
        assert read_line(self._ready) == b"ready\n"

    def open(self) -> None:
        os.write(self._go, b"go\n")

    def close(self) -> None:
        os.close(self._ready)
        os.close(self._go)


def read_line(fd: int, timeout: float = WAIT_S) -> bytes:
    """One line from a pipe or fifo, failing (not hanging) if none comes within `timeout` seconds."""
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        assert remaining > 0 and select.select([fd], [], [], remaining)[0], f"no line within {timeout}s: {data!r}"
        data += os.read(fd, 1)
    return data


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return gaffer_env(tmp_path / "cache")


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path)
    yield g
    g.close()


def workspace(tmp_path: Path, tasks: dict) -> Path:
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "graph.json").write_text(json.dumps({"tasks": tasks}))
    return ws


def start(ws: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gaffer", *args], cwd=ws, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def stop(*procs: subprocess.Popen[bytes]) -> None:
    """SIGTERM what is still running (gaffer then kills its tasks), so a failed test leaves nothing behind."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=WAIT_S)


# -- one build at a time ---------------------------------------------------------------------------------------


def test_second_run_waits_for_the_first_and_no_wait_exits_3(tmp_path: Path, env: dict[str, str],
                                                             gate: Gate) -> None:
    ws = workspace(tmp_path, {"hold": {"command": f"{gate.shell}; mkdir -p out; echo done > out/x",
                                       "outputs": ["out/x"]}})
    first = start(ws, env, "run")
    second = None
    try:
        gate.wait_ready()  # the first run is inside its task: it holds the workspace
        second = start(ws, env, "run")
        assert second.stderr is not None
        waiting = read_line(second.stderr.fileno()).decode()
        assert waiting == f"gaffer: waiting for gaffer run (pid {first.pid}) in this workspace\n"

        for command in (["run", "--no-wait"], ["clean", "--no-wait"]):
            refused = run_gaffer(command, cwd=ws, env=env, timeout=WAIT_S)
            assert refused.returncode == 3, refused.stderr
            assert refused.stderr == (f"gaffer: {ws.resolve()}: gaffer run (pid {first.pid}) is using this workspace "
                                      "(not waiting: --no-wait)\n")
        assert (ws / "out").exists() is False, "clean --no-wait removed nothing"
        assert second.poll() is None, "the second run is still waiting"

        gate.open()
        _out, err = first.communicate(timeout=WAIT_S)
        assert first.returncode == 0, err
        _out, err = second.communicate(timeout=WAIT_S)
        assert second.returncode == 0, err
        assert "waiting" not in err.decode(), "said once"
        assert "1 cached" in err.decode(), "it ran after the first: the task was up to date"
    finally:
        stop(first, *([second] if second else []))


def test_next_run_waits_for_the_tasks_of_a_run_killed_with_sigkill(tmp_path: Path, env: dict[str, str],
                                                                   gate: Gate) -> None:
    """SIGKILL leaves gaffer no chance to stop its tasks: the next run waits for them instead of recording
    outputs that they then overwrite (here with a result built from the old input)."""
    ws = workspace(tmp_path, {"t": {"command": f'v=$(cat in.txt); if [ "$v" = A ]; then {gate.shell}; fi; '
                                               'echo "$v" > out.txt',
                                    "inputs": ["in.txt"], "outputs": ["out.txt"]}})
    (ws / "in.txt").write_text("A\n")
    first = start(ws, env, "run")
    second = None
    try:
        gate.wait_ready()
        first.kill()
        first.communicate(timeout=WAIT_S)
        (ws / "in.txt").write_text("B\n")
        refused = run_gaffer(["run", "--no-wait"], cwd=ws, env=env, timeout=WAIT_S)
        assert refused.returncode == 3, refused.stderr
        assert refused.stderr == (f"gaffer: {ws.resolve()}: tasks that a killed gaffer left running are still "
                                  "using this workspace (not waiting: --no-wait)\n")
        second = start(ws, env, "run")
        assert second.stderr is not None
        waiting = read_line(second.stderr.fileno()).decode()
        assert waiting == "gaffer: waiting for tasks that a killed gaffer left running in this workspace\n"
        gate.open()  # the orphaned task writes "A" and exits; only then does the second run build
        _out, err = second.communicate(timeout=WAIT_S)
        assert second.returncode == 0, err
        assert (ws / "out.txt").read_text() == "B\n"
        assert run_gaffer(["cache", "verify"], cwd=ws, env=env, timeout=WAIT_S).returncode == 0
    finally:
        gate.open()
        stop(first, *([second] if second else []))


def test_a_task_running_gaffer_on_its_own_workspace_fails_instead_of_deadlocking(tmp_path: Path,
                                                                                  env: dict[str, str]) -> None:
    ws = workspace(tmp_path, {
        "inner": {"command": "mkdir -p out && echo inner > out/inner", "outputs": ["out/inner"]},
        "outer": {"command": [sys.executable, "-m", "gaffer", "run", "inner"], "outputs": []},
    })
    proc = run_gaffer(["run", "outer", "--summary-json", str(tmp_path / "s.json")], cwd=ws, env=env,
                      timeout=WAIT_S)
    assert proc.returncode == 1, proc.stderr
    assert (f"gaffer: {ws.resolve()}: gaffer run from a task of gaffer run (pid " in proc.stderr
            and ") on the same workspace: a task cannot build its own workspace (it would wait for itself)\n"
            in proc.stderr), proc.stderr
    assert summary(tmp_path / "s.json")["tasks"][0]["reason"] == "exited with status 2"
    assert run_gaffer(["run", "inner"], cwd=ws, env=env, timeout=WAIT_S).returncode == 0, "the lock was released"


# -- nothing left running --------------------------------------------------------------------------------------


@pytest.mark.parametrize("started_from", ["the workspace", "elsewhere"])
def test_a_task_inherits_the_task_lock_and_no_other_descriptor_and_default_signals(
        tmp_path: Path, env: dict[str, str], started_from: str) -> None:
    """From its own directory gaffer starts tasks with posix_spawn, which closes no descriptor and restores no
    signal by itself; from elsewhere with Popen. Either way a descriptor gaffer inherited stays out of the task,
    the task lock is in it, and what Python ignores (SIGPIPE, SIGXFSZ) is back at its default."""
    require(Path("/proc/self/fd").is_dir(), "needs /proc to list a task's descriptors")
    ws = workspace(tmp_path, {"t": {"command": "ls -l /proc/self/fd > fds.txt; grep SigIgn /proc/self/status > ign.txt",
                                    "outputs": ["fds.txt", "ign.txt"]}})
    stray = os.open(tmp_path / "stray.txt", os.O_WRONLY | os.O_CREAT)
    try:
        proc = subprocess.run([sys.executable, "-m", "gaffer", "run", "--graph", str(ws / "graph.json")],
                              cwd=ws if started_from == "the workspace" else tmp_path, env=env, pass_fds=(stray,),
                              capture_output=True, text=True, timeout=WAIT_S, check=False)
    finally:
        os.close(stray)
    assert proc.returncode == 0, proc.stderr
    held = {}
    for line in (ws / "fds.txt").read_text().splitlines():
        if " -> " in line:
            name, target = line.split(" -> ")
            held[int(name.split()[-1])] = target
    assert {0, 1, 2} <= set(held)
    own_listing = [fd for fd, target in held.items() if target.startswith("/proc/")]  # ls reading the directory
    others = {fd: target for fd, target in held.items() if fd > 2 and fd not in own_listing}
    assert list(others.values()) == [os.path.realpath(ws / ".gaffer" / "tasks.lock")], held
    ignored = int((ws / "ign.txt").read_text().split()[1], 16)
    # Below SIGRTMIN only the C library's own two signals may stay ignored (posix_spawn leaves them so, for ninja's
    # and make's commands too): no signal a program can use.
    assert [sig for sig in signal.valid_signals() if ignored >> (sig - 1) & 1] == []


def test_a_command_run_from_gaffer_s_own_directory_is_posix_spawned_as_popen_would_find_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path the test above checks is the one taken in gaffer's own directory, and it runs what Popen
    would: the program found on the task's PATH at each start (one a task installs is used by the next), and
    where the first match cannot run, the next one (Popen's own search decides then)."""
    from gaffer.execute import local

    require(Path("/proc/self/fd").is_dir() and hasattr(os, "waitid"), "posix_spawn is used where /proc lists fds")
    monkeypatch.chdir(tmp_path)
    here = Path(os.getcwd())
    early, late = here / "early", here / "late"
    early.mkdir()
    late.mkdir()
    env = {**os.environ, "PATH": f"{early}:{late}:{os.environ['PATH']}"}

    def run(argv: list[str], cwd: Path = here) -> tuple[type, int]:
        started = local._spawn(argv, cwd, env, 1, 2)
        return type(started), started.wait()

    assert run(["sh", "-c", "exit 3"]) == (local._Spawned, 3)
    assert run(["sh", "-c", "exit 4"], cwd=here / "..") == (subprocess.Popen, 4)
    (late / "tool").write_text("#!/bin/sh\nexit 5\n")
    (late / "tool").chmod(0o755)
    assert run(["tool"]) == (local._Spawned, 5)
    (early / "tool").write_text("#!/bin/sh\nexit 6\n")  # installed meanwhile, earlier on PATH
    (early / "tool").chmod(0o755)
    assert run(["tool"]) == (local._Spawned, 6)
    (early / "tool").write_bytes(b"\x7fELF not really")  # executable by its mode, not by its format
    assert run(["tool"]) == (subprocess.Popen, 5)
    with pytest.raises(FileNotFoundError):
        local._spawn(["no-such-tool"], here, env, 1, 2)


def test_a_background_process_is_killed_before_outputs_are_recorded(tmp_path: Path, env: dict[str, str],
                                                                    gate: Gate) -> None:
    require(Path("/proc/self/stat").exists(), "needs /proc to tell a dead process from a live one")
    pid_file = tmp_path / "writer.pid"
    ws = workspace(tmp_path, {"bg": {
        "command": f"mkdir -p out; echo early > out/x; (read line < {gate.go}; echo late > out/x) & "
                   f"echo $! > {pid_file}",
        "outputs": ["out/x"]}})
    try:
        proc = run_gaffer(["run"], cwd=ws, env=env, timeout=WAIT_S)
        assert proc.returncode == 0, proc.stderr
        writer = int(pid_file.read_text())
        assert not alive(writer), "the task's background writer outlived it"
        if sys.platform.startswith("linux"):  # adopted by gaffer as a child subreaper: reaped, not left a zombie
            assert not Path(f"/proc/{writer}").exists()
    finally:
        kill_if_alive(pid_file)
    gate.open()  # had the writer survived, this would let it overwrite the recorded output
    assert (ws / "out" / "x").read_text() == "early\n"
    again = run_gaffer(["run"], cwd=ws, env=env, timeout=WAIT_S)
    assert again.returncode == 0 and "1 cached" in again.stderr, again.stderr


def test_a_process_that_escaped_with_setsid_is_killed_when_its_task_ends(tmp_path: Path, env: dict[str, str],
                                                                         gate: Gate) -> None:
    require(sys.platform.startswith("linux"), "gaffer adopts escaped processes as a child subreaper on Linux")
    require_tool("setsid")
    pid_file, up = tmp_path / "escaped.pid", tmp_path / "up.fifo"
    os.mkfifo(up)
    escape = f"setsid sh -c 'echo $$ > {pid_file}; echo up > {up}; read line < {gate.go}; echo late > out/x' &"
    ws = workspace(tmp_path, {"bg": {"command": f"mkdir -p out; echo early > out/x; {escape} read line < {up}",
                                     "outputs": ["out/x"]}})
    try:
        proc = run_gaffer(["run"], cwd=ws, env=env, timeout=WAIT_S)
        assert proc.returncode == 0, proc.stderr
        assert not alive(int(pid_file.read_text())), "the task's escaped writer outlived it"
    finally:
        kill_if_alive(pid_file)
    gate.open()
    assert (ws / "out" / "x").read_text() == "early\n"


def test_an_escaped_process_of_a_running_task_survives_another_task_ending(tmp_path: Path, env: dict[str, str],
                                                                          gate: Gate) -> None:
    require(sys.platform.startswith("linux"), "gaffer adopts escaped processes as a child subreaper on Linux")
    require_tool("setsid")
    pid_file, up = tmp_path / "daemon.pid", tmp_path / "up.fifo"
    os.mkfifo(up)
    other = Gate(tmp_path, "other")
    # (...&) exits at once: the daemon is orphaned, and adopted by gaffer, while its task still runs
    daemon = f"(setsid sh -c 'echo $$ > {pid_file}; echo up > {up}; exec sleep 600' &); read line < {up}"
    ws = workspace(tmp_path, {
        "long": {"command": f"{daemon}; {gate.shell}", "outputs": []},
        "short": {"command": other.shell, "outputs": []},
    })
    run = start(ws, env, "run", "-j", "2")
    try:
        gate.wait_ready()
        other.wait_ready()
        other.open()
        assert run.stderr is not None
        while b"Completed short" not in (line := read_line(run.stderr.fileno())):
            assert b"Completed long" not in line
        daemon_pid = int(pid_file.read_text())
        assert alive(daemon_pid), "killed while its own task still ran"
        gate.open()
        _out, err = run.communicate(timeout=WAIT_S)
        assert run.returncode == 0, err
        assert not alive(daemon_pid), "its task ended: it is killed"
    finally:
        stop(run)
        other.close()
        kill_if_alive(pid_file)


# -- inputs that change while their task runs ------------------------------------------------------------------


def test_an_input_edited_while_its_task_runs_is_not_cached_under_the_old_content(tmp_path: Path,
                                                                                   env: dict[str, str],
                                                                                   gate: Gate) -> None:
    ws = workspace(tmp_path, {"t": {"command": f"{gate.shell}; mkdir -p out; cat src/a.txt > out/x",
                                    "inputs": ["src/a.txt"], "outputs": ["out/x"]}})
    (ws / "src" / "a.txt").write_text("old\n")
    run = start(ws, env, "run")
    try:
        gate.wait_ready()  # the key is taken (from "old"); the task has not read its input yet
        (ws / "src" / "a.txt").write_text("new\n")
        gate.open()
        _out, err = run.communicate(timeout=WAIT_S)
    finally:
        stop(run)
    assert run.returncode == 0, err
    assert "gaffer: warning: input src/a.txt changed while t ran: result not cached\n" in err.decode()
    assert (ws / "out" / "x").read_text() == "new\n"

    (ws / "src" / "a.txt").write_text("old\n")  # back to the content the first key was taken from
    gate.open()
    proc = run_gaffer(["run", "--summary-json", str(tmp_path / "s.json")], cwd=ws, env=env, timeout=WAIT_S)
    assert proc.returncode == 0, proc.stderr
    assert summary(tmp_path / "s.json")["status"] == {"t": "executed"}
    assert (ws / "out" / "x").read_text() == "old\n", "no result built from 'new' under the key of 'old'"


def test_a_file_added_where_a_glob_looks_while_its_task_runs_is_not_cached(tmp_path: Path, env: dict[str, str],
                                                                           gate: Gate) -> None:
    ws = workspace(tmp_path, {"t": {"command": f"{gate.shell}; mkdir -p out; cat src/*.txt > out/x",
                                    "inputs": ["src/*.txt"], "outputs": ["out/x"]}})
    (ws / "src" / "a.txt").write_text("a\n")
    run = start(ws, env, "run")
    try:
        gate.wait_ready()  # the key is taken from src/a.txt alone; the task has not globbed yet
        (ws / "src" / "b.txt").write_text("b\n")
        gate.open()
        _out, err = run.communicate(timeout=WAIT_S)
    finally:
        stop(run)
    assert run.returncode == 0, err
    assert "gaffer: warning: input src/b.txt changed while t ran: result not cached\n" in err.decode()
    assert (ws / "out" / "x").read_text() == "a\nb\n"

    (ws / "src" / "b.txt").unlink()  # back to the files the first key was taken from
    gate.open()
    proc = run_gaffer(["run", "--summary-json", str(tmp_path / "s.json")], cwd=ws, env=env, timeout=WAIT_S)
    assert proc.returncode == 0, proc.stderr
    assert summary(tmp_path / "s.json")["status"] == {"t": "executed"}
    assert (ws / "out" / "x").read_text() == "a\n", "no result that read src/b.txt under a key without it"


def test_a_tool_edited_while_its_task_runs_is_not_cached(tmp_path: Path, env: dict[str, str], gate: Gate) -> None:
    ws = workspace(tmp_path, {"t": {"command": f"{gate.shell}; mkdir -p out; ./gen.sh > out/x",
                                    "tools": ["./gen.sh"], "outputs": ["out/x"]}})
    (ws / "gen.sh").write_text("#!/bin/sh\necho one\n")
    (ws / "gen.sh").chmod(0o755)
    run = start(ws, env, "run")
    try:
        gate.wait_ready()  # keyed with the first gen.sh; the task has not run it yet
        (ws / "gen.sh").write_text("#!/bin/sh\necho two\n")
        gate.open()
        _out, err = run.communicate(timeout=WAIT_S)
    finally:
        stop(run)
    assert run.returncode == 0, err
    assert "gaffer: warning: input ./gen.sh changed while t ran: result not cached\n" in err.decode()
    assert (ws / "out" / "x").read_text() == "two\n"

    (ws / "gen.sh").write_text("#!/bin/sh\necho one\n")  # back to the tool the first key was taken from
    gate.open()
    proc = run_gaffer(["run", "--summary-json", str(tmp_path / "s.json")], cwd=ws, env=env, timeout=WAIT_S)
    assert proc.returncode == 0, proc.stderr
    assert summary(tmp_path / "s.json")["status"] == {"t": "executed"}
    assert (ws / "out" / "x").read_text() == "one\n", "no result the second gen.sh made under the first's key"


def test_a_glob_that_fails_after_its_task_ran_is_the_one_named(tmp_path: Path, env: dict[str, str],
                                                              gate: Gate) -> None:
    ws = workspace(tmp_path, {"t": {"command": f"{gate.shell}; mkdir -p out; cat a.txt src/*.txt > out/x",
                                    "inputs": ["a.txt", "src/*.txt"], "outputs": ["out/x"]}})
    (ws / "a.txt").write_text("a\n")
    (ws / "src" / "b.txt").write_text("b\n")
    (tmp_path / "outside.txt").write_text("outside\n")
    run = start(ws, env, "run")
    try:
        gate.wait_ready()
        (ws / "src" / "c.txt").symlink_to(tmp_path / "outside.txt")  # the glob now leads out of the workspace
        gate.open()
        _out, err = run.communicate(timeout=WAIT_S)
    finally:
        stop(run)
    assert run.returncode == 0, err
    assert "gaffer: warning: input src/*.txt changed while t ran: result not cached\n" in err.decode()


def test_an_input_made_executable_while_its_task_runs_is_not_cached(tmp_path: Path, env: dict[str, str],
                                                                    gate: Gate) -> None:
    ws = workspace(tmp_path, {"t": {"command": f"{gate.shell}; mkdir -p out; ls -l src/a.txt | cut -c1-10 > out/x",
                                    "inputs": ["src/a.txt"], "outputs": ["out/x"]}})
    (ws / "src" / "a.txt").write_text("same content\n")
    run = start(ws, env, "run")
    try:
        gate.wait_ready()
        (ws / "src" / "a.txt").chmod(0o755)  # the executable bit is in the key; the content is unchanged
        gate.open()
        _out, err = run.communicate(timeout=WAIT_S)
    finally:
        stop(run)
    assert run.returncode == 0, err
    assert "gaffer: warning: input src/a.txt changed while t ran: result not cached\n" in err.decode()


def test_a_task_that_rewrites_its_own_input_is_not_a_hit_on_the_old_content(tmp_path: Path,
                                                                            env: dict[str, str]) -> None:
    ws = workspace(tmp_path, {"format": {"command": "tr a-z A-Z < src/a.txt > src/a.tmp && mv src/a.tmp src/a.txt",
                                         "inputs": ["src/a.txt"]}})
    source = ws / "src" / "a.txt"

    def build() -> tuple[str, str]:
        proc = run_gaffer(["run", "--summary-json", str(tmp_path / "s.json")], cwd=ws, env=env, timeout=WAIT_S)
        assert proc.returncode == 0, proc.stderr
        return summary(tmp_path / "s.json")["status"]["format"], proc.stderr

    source.write_text("hello\n")
    status, err = build()
    assert status == "executed" and source.read_text() == "HELLO\n"
    assert "gaffer: warning: input src/a.txt changed while format ran: result not cached\n" in err

    source.write_text("hello\n")  # unformatted again (a revert, a checkout): the formatter must run again
    status, _err = build()
    assert status == "executed" and source.read_text() == "HELLO\n"

    status, err = build()  # formatted already: rewriting the same content is no change; cached this time
    assert status == "executed" and "warning" not in err
    assert build()[0] == "cached"


def test_a_task_that_changes_its_dependency_s_output_is_not_cached(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path, {
        "gen": {"command": "mkdir -p out && echo one > out/a", "outputs": ["out/a"]},
        "use": {"command": "cat out/a > out/b && echo two >> out/a", "deps": ["gen"], "outputs": ["out/b"]},
    })
    proc = run_gaffer(["run"], cwd=ws, env=env, timeout=WAIT_S)
    assert proc.returncode == 0, proc.stderr
    assert "gaffer: warning: input out/a changed while use ran: result not cached\n" in proc.stderr
    again = run_gaffer(["run", "--summary-json", str(tmp_path / "s.json")], cwd=ws, env=env, timeout=WAIT_S)
    assert again.returncode == 0, again.stderr
    assert summary(tmp_path / "s.json")["status"]["use"] == "executed", "not up to date, not a hit"
