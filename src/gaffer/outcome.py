"""What happened to each task of a build, and to the build as a whole (read by the UI and the reports).

Kept apart from the scheduler and the build so the whole-build no-op path can report without importing them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    """The outcome of each task a build looked at, and the tasks it settled without looking (up to date as the
    build log says: the no-op, and the untouched part of an incremental build), kept as names and the time
    each took when it last ran: 100,000 of them need no outcome object each unless a report lists them."""

    def __init__(self, outcomes: dict[str, Outcome], wall_s: float, interrupted: str = "",
                 settled: Mapping[str, float] | None = None, order: Sequence[str] = (), jobs: int = 1) -> None:
        self.outcomes = outcomes
        self.jobs = jobs  # how many tasks could run at once (-j)
        self.settled = settled if settled is not None else {}  # task -> saved_s (its last execution time)
        self.order = order  # every task's place when there are settled ones (the build's order)
        self.wall_s = wall_s
        self.interrupted = interrupted  # the signal's name when Ctrl-C / SIGTERM / SIGHUP stopped the build
        self.tiers: list[TierSummary] = []  # per-tier cache stats

    def tasks(self) -> dict[str, Outcome]:
        """Outcomes of real tasks (groups left out: they are not work), settled ones made here, in build order."""
        if not self.settled:
            return {n: o for n, o in self.outcomes.items() if o.status != GROUP}
        settled, outcomes = self.settled, self.outcomes
        up_to_date: dict[str, object] = {"up_to_date": True}  # one for all (read only)
        found: dict[str, Outcome] = {}
        for name in self.order:
            if name in settled:
                found[name] = Outcome(CACHED, saved_s=settled[name], reason="up to date", extra=up_to_date)
            else:
                outcome = outcomes.get(name)
                if outcome is not None and outcome.status != GROUP:
                    found[name] = outcome
        return found

    def count(self, status: str) -> int:
        """How many real tasks ended so (settled ones are up to date: CACHED)."""
        return sum(1 for o in self.outcomes.values() if o.status == status) + (
            len(self.settled) if status == CACHED else 0)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(o.status in (EXECUTED, CACHED, GROUP) for o in self.outcomes.values())
