"""Processes a task left running outside its process group: found as a child subreaper (Linux), then killed.

Killing a task's process group misses a process that called `setsid` (a daemon, `setsid cmd &`). So where the
kernel offers it, gaffer becomes a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`): when such a process's
parent exits, it becomes a child of gaffer's main thread instead of init's, and
`/proc/<gaffer>/task/<gaffer>/children` lists it. Every process a task starts inherits `GAFFER_TASK_RUN`, which
names the run (a nested gaffer appends its own); an adopted process is killed, and reaped, once every run of
this gaffer that it names has ended. A process without the variable is never touched: it may be gaffer's own
child, and an escaped process that cleared its environment cannot be traced to a task (the documented limit).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

RUN_ENV = "GAFFER_TASK_RUN"
_PR_SET_CHILD_SUBREAPER = 36
_MAX_ROUNDS = 100  # killing a process orphans its children to us in turn; a fork bomb must not hold a task


class Adopter:
    """This process as a child subreaper, and the killing of adopted processes whose task runs have ended."""

    def __init__(self, children: str) -> None:
        self._children = children
        self._prefix = f"{os.getpid()}."
        self._lock = threading.Lock()  # one round at a time: only a round reaps, so a listed pid stays ours

    @classmethod
    def start(cls) -> Adopter | None:
        """Become a child subreaper where the kernel offers it and /proc lists our children; else None."""
        children = f"/proc/{os.getpid()}/task/{os.getpid()}/children"
        if not sys.platform.startswith("linux") or not os.path.exists(children):
            return None
        try:
            import ctypes  # absent from a minimal Python build: then no subreaper, as elsewhere

            if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                return None
        except (ImportError, OSError, AttributeError):
            return None
        return cls(children)

    def marker(self, inherited: str | None, run: int) -> str:
        """The `GAFFER_TASK_RUN` value for a run: the runs of enclosing gaffers, then this one."""
        return f"{inherited} {self._prefix}{run}" if inherited else f"{self._prefix}{run}"

    def kill_finished(self, active: set[str], group: int) -> None:
        """Kill and reap every adopted process that names runs of ours, none of them in `active`; reap the
        adopted zombies of the process `group` of the run that just ended (its `cmd &`, killed with it)."""
        with self._lock:
            for _ in range(_MAX_ROUNDS):
                if not self._round(active, group):
                    return

    def _round(self, active: set[str], group: int) -> bool:
        try:  # after every task: os.open and os.read, where open() adds four system calls
            fd = os.open(self._children, os.O_RDONLY | os.O_CLOEXEC)
            try:
                chunks = []
                while chunk := os.read(fd, 1 << 16):
                    chunks.append(chunk)
            finally:
                os.close(fd)
            pids = [int(p) for p in b"".join(chunks).split()]
        except OSError:
            return False
        killed = False
        for pid in pids:
            runs = _runs(pid)
            ours = [run for run in runs if run.startswith(self._prefix)]
            try:
                if ours and not active.intersection(ours):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    killed = True
                elif not runs and _zombie_of(pid, group):
                    os.waitpid(pid, os.WNOHANG)
            except (ProcessLookupError, ChildProcessError):
                pass
        return killed


def _runs(pid: int) -> list[str]:
    """The runs a process's environment names (none for a zombie, or one we may not read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return []
    prefix = f"{RUN_ENV}=".encode()
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace").split()
    return []


def _zombie_of(pid: int, group: int) -> bool:
    """Is the process a zombie of process group `group`? (A zombie's environment can no longer be read.)"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return False
    return fields[0] == b"Z" and int(fields[2]) == group
