"""Run one action's command on this machine: its own process group, logs to files, a timeout, cancellation.

`LocalExecutor` is the first `execute.base.Executor`: it runs the command in the workspace itself and collects
the declared outputs from there into the local CAS.

Each command runs in a new session so that a timeout, Ctrl-C or SIGTERM can kill the whole process tree
(`sh -c` and everything it started), not just the shell. When the command's main process exits, whatever it
left running in its group (`cmd &`) is killed before its outputs are collected, as Bazel does: nothing outside
the task's run may change what gets recorded. A process that calls `setsid` leaves the group: where the kernel
allows, gaffer adopts such processes as a child subreaper and kills them too (see orphans.py).

A command is started with `os.posix_spawn` where that can do all of it (half of `subprocess.Popen`'s CPU, which
a build of many small tasks pays per task): in gaffer's own working directory. posix_spawn
closes no descriptor, so every descriptor gaffer inherited is first marked close-on-exec (Python opens its own
so), except the task locks every task must hold (lock.py). Elsewhere, `subprocess.Popen` with `close_fds`.
"""

from __future__ import annotations

import functools
import itertools
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

from gaffer.digest import digest_bytes
from gaffer.execute.base import ExecuteResult, task_environment
from gaffer.execute.orphans import RUN_ENV, Adopter
from gaffer.lock import task_fds

if TYPE_CHECKING:
    from gaffer.actions import PreparedAction
    from gaffer.cache.disk import DiskStore

KILL_GRACE_S = 2.0


class ProcessResult(NamedTuple):
    exit_code: int
    duration_s: float
    timed_out: bool = False
    cancelled: bool = False
    error: str = ""  # the command could not be started at all

    def failure(self, timeout: float | None) -> str:
        """Why the run failed, as a task's reason says it; "" if the command exited 0."""
        if self.error:
            return self.error
        if self.cancelled:
            return "interrupted"
        if self.timed_out:
            return f"timed out after {timeout:g}s"
        if self.exit_code < 0:  # subprocess's way of saying the signal that killed it (the OOM killer, a kill)
            return f"killed by signal {-self.exit_code} ({_signal_name(-self.exit_code)})"
        return f"exited with status {self.exit_code}" if self.exit_code != 0 else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


class ProcessRunner:
    """Starts commands and remembers the running ones so `cancel_all` can kill them from a signal handler."""

    def __init__(self) -> None:
        self._running: dict[_Child, threading.Event | None] = {}  # -> its run's `cancel`
        self._active: set[str] = set()  # the markers of runs from before their start to after their cleanup
        self._lock = threading.Lock()
        self._serial = itertools.count(1)
        self._adopter = Adopter.start()
        self.cancelled = threading.Event()

    def run(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        stdout: Path | int,
        stderr: Path | int,
        timeout: float | None,
        cancel: threading.Event | None = None,
    ) -> ProcessResult:
        """Run one command to its end, its output to the files `stdout` and `stderr` (paths, or descriptors the
        caller keeps open). `cancel`, if given, is this run's own stop switch (`cancel_run`), beside
        `cancel_all`'s."""
        start = time.perf_counter()
        stop = (self.cancelled, cancel or self.cancelled)
        if any(e.is_set() for e in stop):
            return ProcessResult(exit_code=-1, duration_s=0.0, cancelled=True)
        env = dict(env)
        marker = None
        if self._adopter is not None:
            env[RUN_ENV] = marker = self._adopter.marker(env.get(RUN_ENV), next(self._serial))
            with self._lock:
                self._active.add(marker)
        with _log_target(stdout) as out, _log_target(stderr) as err:
            try:
                proc = _spawn(argv, cwd, env, out, err)
            except OSError as e:
                self._finished(marker, 0)
                return ProcessResult(exit_code=127, duration_s=0.0, error=f"cannot run {argv[0]!r}: {e.strerror}")
            with self._lock:
                self._running[proc] = cancel
            try:
                if any(e.is_set() for e in stop):  # a cancel ran while Popen returned: it could not see this process
                    _kill_group(proc)
                timed_out = not _wait_exited(proc, timeout)
                if timed_out:
                    _kill_group(proc)
                    _wait_exited(proc, None)
                _signal_group(proc, signal.SIGKILL)  # what it left behind; its pid is not reusable until reaped
                code = proc.wait()
            finally:
                with self._lock:
                    self._running.pop(proc, None)
                self._finished(marker, proc.pid)
                _wait_group_dead(proc.pid)
        return ProcessResult(
            exit_code=code, duration_s=time.perf_counter() - start, timed_out=timed_out,
            cancelled=any(e.is_set() for e in stop),
        )

    def _finished(self, marker: str | None, group: int) -> None:
        """The run is over: kill what it left outside its process `group` (and what earlier runs left)."""
        if self._adopter is None or marker is None:
            return
        with self._lock:
            self._active.discard(marker)
            active = set(self._active)
        self._adopter.kill_finished(active, group)

    def cancel_all(self) -> None:
        """Kill every running process group (Ctrl-C / SIGTERM): TERM first, KILL after a grace period."""
        self.cancelled.set()
        with self._lock:
            running = list(self._running)
        _kill_all(running)

    def cancel_run(self, cancel: threading.Event) -> None:
        """Kill the runs started with this `cancel` event (a remote worker's lease the server dropped), as
        `cancel_all` kills every run."""
        cancel.set()
        with self._lock:
            running = [proc for proc, event in self._running.items() if event is cancel]
        _kill_all(running)


class _Spawned:
    """A command started by `os.posix_spawn`: the part of a Popen that `run` and the kill helpers use (its pid,
    and its exit status once `wait` has reaped it). Only where `os.waitid` is, so no `wait` needs a timeout."""

    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def wait(self) -> int:
        if self.returncode is None:
            try:
                self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): what Popen answers then
                self.returncode = 0
        return self.returncode


_Child = subprocess.Popen[bytes] | _Spawned


def _spawn(argv: Sequence[str], cwd: Path, env: Mapping[str, str], out: IO[bytes] | int,
           err: IO[bytes] | int) -> _Child:
    """Start a command in a new session, stdin /dev/null, stdout and stderr to `out` and `err`, no descriptor of
    gaffer's but the task locks inherited. posix_spawn where it can do all of that (see the module's doc): it has
    no working directory of its own."""
    program = _spawn_ready() and str(cwd) == os.getcwd() and _program(argv[0], env)
    if program:
        stdio = ((os.POSIX_SPAWN_DUP2, _devnull(), 0), (os.POSIX_SPAWN_DUP2, _fileno(out), 1),
                 (os.POSIX_SPAWN_DUP2, _fileno(err), 2))
        try:
            return _Spawned(os.posix_spawn(program, list(argv), env, file_actions=stdio, setsid=True,
                                           setsigdef=_RESTORED_SIGNALS))
        except OSError:
            pass  # Popen tries every match on PATH, and says why none ran as it always has
        except NotImplementedError:  # a C library without POSIX_SPAWN_SETSID
            pass
    return subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=_devnull(), stdout=out, stderr=err,
                            start_new_session=True, pass_fds=task_fds())


def _program(name: str, env: Mapping[str, str]) -> str | None:
    """The file Popen would run for `name`: itself if it names a path, else the first executable file of that
    name on the task's PATH. Looked up at every start (a task may install a program for the next): here, because
    posix_spawn holds the interpreter lock until the program is running, and a lookup inside it (an execve per
    PATH directory that lacks it) would stall every other thread meanwhile."""
    if "/" in name:
        return name
    for directory in env.get("PATH", os.defpath).split(os.pathsep):  # os.get_exec_path, without its warnings filter
        path = f"{directory}/{name}" if directory else name
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


# What Python ignores and a command expects at their defaults (Popen's `restore_signals`).
_RESTORED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))


def _fileno(target: IO[bytes] | int) -> int:
    return target if isinstance(target, int) else target.fileno()


@functools.cache
def _spawn_ready() -> bool:
    """Can commands be started with posix_spawn here? Once per process: every descriptor gaffer inherited, but
    the task locks, marked close-on-exec (what Popen's `close_fds` would close); False where the open
    descriptors cannot be listed, or the platform lacks what `_spawn` and `_wait_exited` need."""
    if not (hasattr(os, "posix_spawn") and hasattr(os, "waitid") and os.path.isdir("/proc/self/fd")):
        return False
    keep = set(task_fds())
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for name in names:
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:  # the listing's own descriptor, closed since
                pass
    return True


@functools.cache
def _devnull() -> int:
    """Every task's stdin: /dev/null, opened once per process (not once per task, as `subprocess.DEVNULL` is)."""
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def _log_target(target: Path | int) -> AbstractContextManager[IO[bytes] | int]:
    return nullcontext(target) if isinstance(target, int) else open(target, "wb")


def _kill_all(running: Sequence[_Child]) -> None:
    """TERM every process group, then KILL those still there after the grace period."""
    for proc in running:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    for proc in running:
        if not _wait_exited(proc, max(0.0, deadline - time.monotonic())):
            _signal_group(proc, signal.SIGKILL)


class LocalExecutor:
    """Runs actions in the workspace, with the environment `execute.base.task_environment` gives."""

    def __init__(self, root: Path, store: DiskStore) -> None:
        self.root = root
        self.store = store  # the local CAS: logs are written beside it, outputs collected into it
        self._runner: ProcessRunner | None = None
        self._lock = threading.Lock()

    @property
    def runner(self) -> ProcessRunner:
        """Made on first use (a build that runs nothing never becomes a subreaper)."""
        with self._lock:  # two pool threads may get here at once: exactly one runner, or cancel misses one
            if self._runner is None:
                self._runner = ProcessRunner()
            return self._runner

    def cancel_all(self) -> None:
        self.runner.cancel_all()

    def execute(self, action: PreparedAction, pass_env: Sequence[str], name: str = "") -> ExecuteResult:
        from gaffer import actions

        store = self.store
        actions.remove_outputs(self.root, action.output_paths)  # a stale file must never pass for one it made
        stdout_fd = _anonymous_file()
        try:
            stderr_fd = _anonymous_file()
        except OSError:
            os.close(stdout_fd)
            raise
        try:
            started_at = time.time()
            run = self.runner.run(action.argv, self.root, task_environment(action.env, pass_env), stdout_fd,
                                  stderr_fd, action.timeout)
            finished_at = time.time()
            out, err = _read_all(stdout_fd), _read_all(stderr_fd)
        finally:
            os.close(stdout_fd)
            os.close(stderr_fd)
        failure = run.failure(action.timeout)
        if not failure:
            try:
                outputs = actions.collect_outputs(self.root, action.output_paths, store)
            except actions.MissingOutput as e:
                failure = f"declared output '{e}' was not created by the task"
            except actions.BadCacheEntry as e:
                failure = str(e)
        if failure:
            return ExecuteResult(run.duration_s, out, err, failure=failure)
        stdout_digest, stderr_digest = digest_bytes(out), digest_bytes(err)  # already in memory
        store.write_blob(stdout_digest, out)
        store.write_blob(stderr_digest, err)
        result = actions.make_result(outputs, 0, stdout_digest, stderr_digest, started_at, finished_at)
        return ExecuteResult(run.duration_s, out, err, outputs=outputs, action_result=result,
                             blobs=[*outputs.blobs(), stdout_digest, stderr_digest])


def _anonymous_file() -> int:
    """A file with no name for a task's log: nothing to create, name or remove in a directory (a `memfd` on Linux;
    elsewhere a temp file unlinked at once). Its content is read into memory when the task ends either way."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("gaffer-log", os.MFD_CLOEXEC)
    import tempfile

    fd, name = tempfile.mkstemp(prefix="gaffer-log-")
    os.unlink(name)
    return fd


def _read_all(fd: int) -> bytes:
    """What the file holds, read up to its size as `fstat` reports it, again until that stops growing (most
    logs are empty: one `fstat`, no read)."""
    chunks = []
    offset = 0
    while (size := os.fstat(fd).st_size) > offset and (chunk := os.pread(fd, size - offset, offset)):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _signal_group(proc: _Child, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(proc: _Child) -> None:
    _signal_group(proc, signal.SIGTERM)
    if not _wait_exited(proc, KILL_GRACE_S):
        _signal_group(proc, signal.SIGKILL)


def _wait_exited(proc: _Child, timeout: float | None) -> bool:
    """Wait until the process has exited, without reaping it: until `run` reaps it, its pid (its process
    group's id) cannot be reused, so signalling the group can never hit an unrelated process. False on timeout.
    (Only `run` reaps, through `proc.wait`; where `os.waitid` is missing, as on macOS, this reaps early: there
    every process is a Popen.)"""
    if not hasattr(os, "waitid"):
        assert isinstance(proc, subprocess.Popen)
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    if proc.returncode is not None:
        return True
    try:
        if timeout is not None and not _exits_within(proc.pid, timeout):
            return False
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:  # already reaped
        pass
    return True


def _exits_within(pid: int, timeout: float) -> bool:
    """Whether the child exits within `timeout` seconds: a pidfd where the kernel has them, else polling."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _wait_group_dead(pgid: int) -> None:
    """SIGKILL takes effect asynchronously: wait, briefly, until no process of the group can still run, so
    that nothing writes to the task's outputs after they are collected. Almost always the group is already
    empty and this is one system call."""
    deadline = time.monotonic() + KILL_GRACE_S
    delay = 0.0005
    while _group_has_live_member(pgid) and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _group_has_live_member(pgid: int) -> bool:
    """Is a process of the group still running? A zombie is dead even if nothing reaps it (an init that
    never reaps orphans must not stall the build): on Linux, /proc tells them apart."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False
