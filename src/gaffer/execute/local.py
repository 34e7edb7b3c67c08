"""Run one action's command on this machine: its own process group, logs to files, a timeout, cancellation.

Each command runs in a new session so that a timeout, Ctrl-C or SIGTERM can kill the whole process tree
(`sh -c` and everything it started), not just the shell.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

KILL_GRACE_S = 2.0


@dataclass
class ProcessResult:
    exit_code: int
    duration_s: float
    timed_out: bool = False
    cancelled: bool = False
    error: str = ""  # the command could not be started at all


class ProcessRunner:
    """Starts commands and remembers the running ones so `cancel_all` can kill them from a signal handler."""

    def __init__(self) -> None:
        self._running: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self.cancelled = threading.Event()

    def run(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        stdout: Path,
        stderr: Path,
        timeout: float | None,
    ) -> ProcessResult:
        start = time.perf_counter()
        if self.cancelled.is_set():
            return ProcessResult(exit_code=-1, duration_s=0.0, cancelled=True)
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            try:
                proc = subprocess.Popen(
                    list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True,
                )
            except OSError as e:
                return ProcessResult(exit_code=127, duration_s=0.0, error=f"cannot run {argv[0]!r}: {e.strerror}")
            with self._lock:
                self._running.add(proc)
            try:
                try:
                    code = proc.wait(timeout=timeout)
                    timed_out = False
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    code = proc.wait()
                    timed_out = True
            finally:
                with self._lock:
                    self._running.discard(proc)
        return ProcessResult(
            exit_code=code, duration_s=time.perf_counter() - start, timed_out=timed_out,
            cancelled=self.cancelled.is_set(),
        )

    def cancel_all(self) -> None:
        """Kill every running process group (Ctrl-C / SIGTERM): TERM first, KILL after a grace period."""
        self.cancelled.set()
        with self._lock:
            running = list(self._running)
        for proc in running:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_S
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)
