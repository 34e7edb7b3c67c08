"""What a build prints: plain numbered lines off a TTY, a redrawn status line on one."""

from __future__ import annotations

import io
import threading

from gaffer.outcome import CACHED, EXECUTED, FAILED, SKIPPED, Outcome
from gaffer.ui.progress import FLUSH_S, Progress, use_live_display


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_one_per_start_and_finish() -> None:
    out = io.StringIO()
    p = Progress(stream=out, live=False)
    p.start(total=3, jobs=2)
    p.task_started("build-common")
    p.task_started("build-models")
    p.task_finished("build-common", Outcome(EXECUTED, duration_s=2.1))
    p.task_finished("build-models", Outcome(CACHED, duration_s=0.05))
    p.task_started("build-gateway")
    p.task_finished("build-gateway", Outcome(FAILED, duration_s=1.0, reason="exited with status 2"))
    p.finish()
    assert out.getvalue().splitlines() == [
        "[1/3] Starting build-common",
        "[2/3] Starting build-models",
        "[1/3] Completed build-common (2.1s)",
        "[2/3] Completed build-models (cached, 0.1s)",
        "[3/3] Starting build-gateway",
        "[3/3] FAILED build-gateway (1.0s): exited with status 2",
    ]
    assert "\x1b" not in out.getvalue()


def test_a_task_started_again_keeps_its_number() -> None:
    """A restore that finds its cache entry unusable runs the task instead: started twice, counted once."""
    out = io.StringIO()
    p = Progress(stream=out, live=False)
    p.start(total=2, jobs=1)
    p.task_started("lib")
    p.task_started("lib")
    p.task_finished("lib", Outcome(EXECUTED, duration_s=0.0))
    p.task_started("app")
    p.task_finished("app", Outcome(CACHED, duration_s=0.0))
    p.finish()
    assert out.getvalue().splitlines() == [
        "[1/2] Starting lib", "[1/2] Starting lib", "[1/2] Completed lib (0.0s)",
        "[2/2] Starting app", "[2/2] Completed app (cached, 0.0s)",
    ]


class Writes(io.StringIO):
    """A stream that keeps each write apart and says when one came."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.wrote = threading.Event()

    def write(self, text: str) -> int:
        self.writes.append(text)
        self.wrote.set()
        return super().write(text)


def test_plain_lines_of_a_running_build_are_written_together_soon_after() -> None:
    out = Writes()
    p = Progress(stream=out, live=False)
    p.start(total=2, jobs=2)
    with p._lock:  # both lines come before the flusher can write either
        p.task_started("a")
        p.task_started("b")
    assert out.wrote.wait(timeout=30), f"nothing written {FLUSH_S}s after"
    assert out.writes == ["[1/2] Starting a\n[2/2] Starting b\n"]
    p.task_finished("a", Outcome(EXECUTED, duration_s=1.0))
    p.finish()  # what is left is written at the end, and anything after at once
    p.warn("late")
    assert out.writes[1:] == ["[1/2] Completed a (1.0s)\n", "gaffer: warning: late\n"]


def test_live_mode_redraws_one_status_line() -> None:
    out = FakeTTY()
    p = Progress(stream=out, live=True)
    p.start(total=2, jobs=2)
    p.task_started("a")
    p.task_started("b")
    assert out.getvalue().endswith("\r\x1b[K[0/2] running: a 0s, b 0s")
    p.task_finished("a", Outcome(EXECUTED, duration_s=1.0))
    text = out.getvalue()
    assert "[1/2] Completed a (1.0s)\n" in text and text.endswith("[1/2] running: b 0s")
    p.finish()
    assert out.getvalue().endswith("\r\x1b[K")


def test_a_remote_tasks_stages_as_lines_or_on_the_status_line() -> None:
    out = io.StringIO()
    p = Progress(stream=out, live=False)
    p.start(total=1, jobs=1)
    p.task_started("compile")
    for stage in ("queued", "queued", "executing on farm-w3"):  # a repeated stage is shown once
        p.task_stage("compile", stage)
    p.task_finished("compile", Outcome(EXECUTED, duration_s=1.2, extra={"where": "worker farm-w3"}))
    p.task_stage("compile", "queued")  # late: the task is done, nothing is shown
    p.finish()
    assert out.getvalue().splitlines() == [
        "[1/1] Starting compile",
        "[1/1] compile: queued",
        "[1/1] compile: executing on farm-w3",
        "[1/1] Completed compile (1.2s on worker farm-w3)",
    ]
    tty = FakeTTY()
    live = Progress(stream=tty, live=True)
    live.start(total=1, jobs=1)
    live.task_started("compile")
    live.task_stage("compile", "executing on farm-w3")
    assert tty.getvalue().endswith("[0/1] running: compile (executing on farm-w3) 0s")
    live.finish()


def test_no_live_display_in_ci_or_without_colour(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_live_display(FakeTTY())
    assert not use_live_display(io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not use_live_display(FakeTTY())
    monkeypatch.delenv("CI")
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_live_display(FakeTTY())


def test_skipped_groups_take_no_number_and_unstarted_tasks_take_the_next_one() -> None:
    out = io.StringIO()
    p = Progress(stream=out, live=False, verbose=True)
    p.start(total=3, jobs=1, groups=["all"])
    p.task_finished("lib", Outcome(CACHED, reason="up to date", extra={"up_to_date": True}))
    p.task_started("app")
    p.task_finished("app", Outcome(FAILED, duration_s=1.0, reason="exited with status 1"))
    p.task_finished("test", Outcome(SKIPPED, reason="dependency app did not succeed"))
    p.task_finished("all", Outcome(SKIPPED, reason="dependency test did not succeed"))
    p.finish()
    assert out.getvalue().splitlines() == [
        "Starting build with 3 tasks (max concurrency: 1)",
        "[1/3] lib: up to date",
        "[2/3] Starting app",
        "[2/3] FAILED app (1.0s): exited with status 1",
        "[3/3] Skipped test: dependency app did not succeed",
    ]


def test_quiet_shows_warnings_only() -> None:
    out = io.StringIO()
    p = Progress(stream=out, live=False, verbose=True, quiet=True)
    p.start(total=1, jobs=1)
    p.task_started("a")
    p.task_finished("a", Outcome(EXECUTED, duration_s=1.0))
    p.warn("cache tier x: down")
    p.finish()
    assert out.getvalue() == "gaffer: warning: cache tier x: down\n"
