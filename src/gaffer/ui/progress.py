"""What a build shows while it runs, on stderr.

Plain mode (not a TTY, or CI / NO_COLOR / TERM=dumb): one line per task start and finish:
    [1/6] Starting build-common
    [1/6] Completed build-common (2.1s)
    [2/6] Completed build-models (cached, 0.1s)
While a build runs, plain lines are written together every `FLUSH_S` (and before a task's output, and at the
end), not one system call each from whichever thread: an edit build re-running hundreds of tasks wrote two
lines per task, each a write to stderr under a lock the task threads and the scheduler contend for.
Live mode (a TTY): finished tasks scroll by as lines and one status line at the bottom is redrawn with the
running tasks and the count.
A task on a remote execution service (`--remote`) also shows its stage: a line "[3/6] build-common: queued",
then "executing on worker-1" (live: beside its name on the status line), and its worker on its Completed line.
Up-to-date tasks print nothing (a no-op build of 10,000 tasks must not print 10,000 lines); they are counted.
Every real task takes the next number once, when it starts or (if it never starts: up to date, skipped) when it
finishes, so the numbers run 1..total whatever mix of lines is shown; groups take none.
Quiet mode (`--dry-run`, whose result is the plan on stdout) shows only warnings.
A task's stdout goes to stdout and its stderr to stderr, after its line, whole (never interleaved).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Collection
from typing import TextIO

from gaffer.outcome import CACHED, EXECUTED, FAILED, GROUP, SKIPPED, Outcome
from gaffer.units import format_count

FLUSH_S = 0.1  # how late a plain line may appear while a build runs


def use_live_display(stream: TextIO) -> bool:
    if os.environ.get("CI") or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


class Progress:
    def __init__(self, stream: TextIO = sys.stderr, live: bool | None = None, verbose: bool = False,
                 quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self.live = not quiet and (use_live_display(stream) if live is None else live)
        self.verbose = verbose and not quiet
        self.total = 0
        self.done = 0
        self.started = 0
        self.running: dict[str, float] = {}
        self.stages: dict[str, str] = {}  # running remote tasks: "queued", "executing on W"
        self._lock = threading.RLock()
        self._status_shown = False
        self._numbers: dict[str, int] = {}
        self._groups: frozenset[str] = frozenset()
        self._stopped = threading.Event()
        self._pending: list[str] | None = None  # plain lines not yet written (None: written at once)

    def start(self, total: int, jobs: int, groups: Collection[str] = ()) -> None:
        """`total` real tasks; `groups` names tasks without a command, which are never counted (even skipped)."""
        self.total = total
        self._groups = frozenset(groups)
        if self.verbose:
            self._line(f"Starting build with {format_count(total, 'task')} (max concurrency: {jobs})")
        if self.live:
            threading.Thread(target=self._tick, name="gaffer-progress", daemon=True).start()
        elif not self.quiet:
            self._pending = []
            threading.Thread(target=self._flush_plain, name="gaffer-progress", daemon=True).start()

    def _tick(self) -> None:
        """Redraw the status line twice a second so running tasks' times move between events."""
        while not self._stopped.wait(0.5):
            with self._lock:
                self._redraw()

    def _flush_plain(self) -> None:
        """Write the plain lines gathered meanwhile, every FLUSH_S until the build is over."""
        while not self._stopped.wait(FLUSH_S):
            with self._lock:
                self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            self.stream.write("".join(self._pending))
            self._pending.clear()
            self.stream.flush()

    def task_started(self, name: str) -> None:
        """A task began (again, keeping its number, when the cache entry it was being restored from proved
        unusable and it runs instead)."""
        with self._lock:
            number = self._numbers.get(name)
            if number is None:
                self.started += 1
                number = self._numbers[name] = self.started
            self.running[name] = time.monotonic()
            if self.quiet:
                return
            if not self.live:
                self._line(f"[{number}/{self.total}] Starting {name}")
            else:
                self._redraw()

    def task_stage(self, name: str, stage: str) -> None:
        """A remote task moved on (queued, executing on a worker): a line when it changes, or the status line."""
        with self._lock:
            if self.quiet or self.stages.get(name) == stage or name not in self.running:
                return
            self.stages[name] = stage
            if self.live:
                self._redraw()
            else:
                self._line(f"[{self._numbers.get(name, self.started)}/{self.total}] {name}: {stage}")

    def task_finished(self, name: str, outcome: Outcome) -> None:
        if outcome.status == GROUP or name in self._groups:
            return
        with self._lock:
            self.done += 1
            self.running.pop(name, None)
            self.stages.pop(name, None)
            announced = name in self._numbers
            if not announced:
                self.started += 1
            number = self._numbers.pop(name, self.started)
            if self.quiet:
                return
            if outcome.extra.get("up_to_date"):
                if announced:
                    self._line(f"[{number}/{self.total}] Completed {name} (up to date, {outcome.duration_s:.1f}s)")
                elif self.verbose:
                    self._line(f"[{number}/{self.total}] {name}: up to date")
                elif self.live:
                    self._redraw()
                return
            if outcome.status == CACHED:
                text = f"Completed {name} (cached, {outcome.duration_s:.1f}s)"
            elif outcome.status == EXECUTED:
                where = f" on {outcome.extra['where']}" if outcome.extra.get("where") else ""
                text = f"Completed {name} ({outcome.duration_s:.1f}s{where})"
                if self.verbose and outcome.reason:
                    text += f": {outcome.reason}"
            elif outcome.status == FAILED:
                text = f"FAILED {name} ({outcome.duration_s:.1f}s): {outcome.reason}"
            elif outcome.status == SKIPPED:
                text = f"Skipped {name}: {outcome.reason}"
            else:
                text = f"{name}: {outcome.reason}"
            self._line(f"[{number}/{self.total}] {text}")

    def tasks_settled(self, names: Collection[str]) -> None:
        """Tasks up to date as the build log says, never looked at (an incremental build): counted at once,
        as `task_finished` counts each up-to-date task (one line each only in verbose mode)."""
        if self.verbose:
            up_to_date = Outcome(CACHED, reason="up to date", extra={"up_to_date": True})
            for name in names:
                self.task_finished(name, up_to_date)
            return
        with self._lock:
            self.done += len(names)
            self.started += len(names)
            if self.live:
                self._redraw()

    def task_output(self, name: str, stdout: bytes, stderr: bytes) -> None:
        """Print a task's captured output whole, under the lock so outputs of parallel tasks never mix."""
        if not stdout and not stderr:
            return
        with self._lock:
            self._write_pending()
            self._clear_status()
            if stdout:
                self.stream.flush()
                sys.stdout.buffer.write(stdout if stdout.endswith(b"\n") else stdout + b"\n")
                sys.stdout.flush()
            if stderr:
                self.stream.flush()
                sys.stderr.buffer.write(stderr if stderr.endswith(b"\n") else stderr + b"\n")
                sys.stderr.flush()
            self._redraw()

    def warn(self, message: str) -> None:
        self._line(f"gaffer: warning: {message}")

    def finish(self) -> None:
        self._stopped.set()
        with self._lock:
            self._write_pending()
            self._pending = None  # from now on (the summary's warnings), at once
            self._clear_status()

    # -- drawing -----------------------------------------------------------------------------------------------

    def _line(self, text: str) -> None:
        with self._lock:
            if self._pending is not None:
                self._pending.append(text + "\n")
                return
            self._clear_status()
            self.stream.write(text + "\n")
            self._redraw()
            self.stream.flush()

    def _clear_status(self) -> None:
        if self._status_shown:
            self.stream.write("\r\x1b[K")
            self._status_shown = False

    def _redraw(self) -> None:
        if not self.live or not self.running:
            return
        now = time.monotonic()
        names = sorted(self.running, key=self.running.__getitem__)
        shown = ", ".join(f"{n}{f' ({self.stages[n]})' if n in self.stages else ''} {now - self.running[n]:.0f}s"
                          for n in names[:3])
        more = f" +{len(names) - 3}" if len(names) > 3 else ""
        width = _terminal_width(self.stream)
        text = f"[{self.done}/{self.total}] running: {shown}{more}"[: width - 1]
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._status_shown = True


def _terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 100
