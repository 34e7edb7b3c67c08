"""One build at a time per workspace: an exclusive `flock` on `.gaffer/lock` held by `gaffer run` and `gaffer clean`.

Two builds in one workspace would each record, and cache, outputs the other changed under it. The lock file
holds the holder's pid and command, so the one that waits can say for whom. The kernel drops the lock when
the holder exits, however it exits: a crashed build never leaves a stale lock. So the lock is simply held for
the rest of the process (a gaffer command is one process), and taking it again in the same process is free.

gaffer puts `GAFFER_WORKSPACE_LOCK=<workspace>` into the environment of the tasks it runs: a task that runs
gaffer on its own workspace is refused (exit 2) instead of waiting forever for the build that runs it.

A gaffer killed with SIGKILL cannot stop its tasks, and what they go on writing would change the outputs the
next build records. So the holder also locks `.gaffer/tasks.lock`, on a descriptor every task inherits
(`task_fds`): the kernel keeps that lock while any process of a task lives, and the next holder waits for them.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from gaffer.errors import EnvironmentProblem, UserError

LOCK_ENV = "GAFFER_WORKSPACE_LOCK"
_held: dict[str, int] = {}  # workspace -> the open lock file (closing it would release the lock)
_task_locks: list[int] = []  # the open task-lock files, inherited by every task


def workspace_of(graph_path: str) -> Path:
    """The workspace a graph file belongs to, as `load_graph` makes it, without reading the graph."""
    return Path(os.path.abspath(graph_path)).parent.resolve()


def lock_workspace(root: Path, command: str, wait: bool, say: Callable[[str], None]) -> None:
    """Hold the workspace's lock until this process exits. Busy: say once for whom we wait, then wait; with
    `wait=False`, exit status 3 at once. A task of the holder asking for it: exit status 2."""
    key = str(root)
    if key in _held:
        return
    path = root / ".gaffer" / "lock"
    fd = _open(path)
    if fd is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        if os.environ.get(LOCK_ENV) == key:
            os.close(fd)
            raise UserError(f"{root}: gaffer {command} from a task of {holder} on the same workspace: a task "
                            "cannot build its own workspace (it would wait for itself)") from None
        if not wait:
            os.close(fd)
            raise EnvironmentProblem(f"{root}: {holder} is using this workspace (not waiting: --no-wait)") from None
        say(f"waiting for {holder} in this workspace")
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:  # a file system without locks (some NFS mounts): refuse rather than build unguarded
        os.close(fd)
        raise EnvironmentProblem(f"cannot lock the workspace: {path}: {e.strerror}") from None
    try:  # fixed width, written in place: a waiting reader never sees it half-written or empty
        os.pwrite(fd, f"{os.getpid()} {command}".ljust(31).encode() + b"\n", 0)
    except OSError:
        pass  # a read-only lock file still locks; the waiting side then just cannot name us
    _held[key] = fd
    os.environ[LOCK_ENV] = key  # inherited by every task this process starts
    _lock_tasks(root, wait, say)


def task_fds() -> tuple[int, ...]:
    """The descriptors every task must inherit (subprocess's `pass_fds`): the held workspaces' task locks."""
    return tuple(_task_locks)


def _lock_tasks(root: Path, wait: bool, say: Callable[[str], None]) -> None:
    """Lock `.gaffer/tasks.lock`, first waiting for the tasks a killed gaffer left running (they hold it)."""
    try:
        fd = os.open(root / ".gaffer" / "tasks.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return  # not ours to create (a read-only .gaffer): only the workspace lock guards the build
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not wait:
            os.close(fd)
            raise EnvironmentProblem(f"{root}: tasks that a killed gaffer left running are still using this "
                                     "workspace (not waiting: --no-wait)") from None
        say("waiting for tasks that a killed gaffer left running in this workspace")
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        return
    os.set_inheritable(fd, True)  # every task holds it, however started (execute/local.py)
    _task_locks.append(fd)


def _open(path: Path) -> int | None:
    """The lock file's descriptor (not inherited by tasks: a task left running must not hold the lock), or
    None in a read-only workspace, where nothing can build and there is nothing to guard."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    try:
        try:
            return os.open(path, flags, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(exist_ok=True)
            return os.open(path, flags, 0o644)
    except OSError as e:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # not ours to write: it locks all the same
        except OSError:
            if e.errno == errno.EROFS:
                return None
            raise EnvironmentProblem(f"cannot lock the workspace: {path}: {e.strerror}") from None


def _holder(fd: int) -> str:
    """'gaffer run (pid 123)' from the lock file, or a vaguer name if it cannot be read."""
    try:
        pid, command = os.pread(fd, 64, 0).decode().split()[:2]
        return f"gaffer {command} (pid {int(pid)})"
    except (OSError, UnicodeDecodeError, ValueError):
        return "another gaffer"
