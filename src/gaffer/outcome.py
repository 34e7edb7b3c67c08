"""What happened to each task of a build, and to the build as a whole (read by the UI and the reports).

Kept apart from the scheduler and the build so the whole-build no-op path can report without importing them.
"""

from __future__ import annotations

from typing import TypedDict

EXECUTED, CACHED, FAILED, SKIPPED = "executed", "cached", "failed", "skipped"
GROUP = "group"  # a task without a command: not work, left out of counts


class Outcome:
    """One task's result. A plain class, not a dataclass: `dataclasses` costs ~10 ms of import on the no-op path."""

    __slots__ = ("duration_s", "extra", "reason", "saved_s", "start_s", "status")

    def __init__(self, status: str, duration_s: float = 0.0, start_s: float = 0.0, saved_s: float = 0.0,
                 reason: str = "", extra: dict[str, object] | None = None) -> None:
        self.status = status  # executed | cached | failed | skipped | group
        self.duration_s = duration_s
        self.start_s = start_s  # seconds since the build started
        self.saved_s = saved_s  # for cached: how long executing it took when it was made
        self.reason = reason  # why it executed / failed / was skipped
        self.extra = {} if extra is None else extra


class TierSummary(TypedDict):
    """What one cache tier did (cache.resilient.TierStats.as_dict): the summary's and `--summary-json`'s tiers."""

    name: str
    hits: int
    misses: int
    bytes_down: int
    bytes_up: int
    seconds: float
    errors: int
    disabled: bool


class BuildReport:
    def __init__(self, outcomes: dict[str, Outcome], wall_s: float, interrupted: str = "") -> None:
        self.outcomes = outcomes
        self.wall_s = wall_s
        self.interrupted = interrupted  # the signal's name when Ctrl-C / SIGTERM stopped the build
        self.tiers: list[TierSummary] = []  # per-tier cache stats

    def tasks(self) -> dict[str, Outcome]:
        """Outcomes of real tasks (groups left out: they are not work)."""
        return {n: o for n, o in self.outcomes.items() if o.status != GROUP}

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(o.status in (EXECUTED, CACHED, GROUP) for o in self.outcomes.values())
