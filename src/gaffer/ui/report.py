"""After a build: the closing summary, `--summary-json`, and the Chrome trace-event file (`--trace`)."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO, TypedDict

from gaffer.errors import UserError
from gaffer.outcome import CACHED, EXECUTED, FAILED, GROUP, SKIPPED, BuildReport, TierSummary
from gaffer.units import format_count, format_size


class TaskSummary(TypedDict):
    name: str
    status: str
    duration_s: float
    reason: str


class Totals(TypedDict):
    """The summary without its per-task list: what the closing summary prints."""

    executed: int
    cached: int
    failed: int
    skipped: int
    wall_s: float
    task_s: float
    hit_rate: float
    time_saved_s: float
    parallel_efficiency: float | None
    interrupted: str | None


def totals(report: BuildReport) -> Totals:
    """Counted over the outcomes and the settled tasks (up to date: cached, no time taken now), without an
    outcome object for each settled one."""
    checked = [o for o in report.outcomes.values() if o.status != GROUP]
    counts = {s: report.count(s) for s in (EXECUTED, CACHED, FAILED, SKIPPED)}
    task_s = sum(o.duration_s for o in checked)
    command_s = sum(o.duration_s for o in checked if o.status in (EXECUTED, FAILED))  # what the -j slots ran
    ran = counts[EXECUTED] + counts[CACHED]
    saved = sum(max(0.0, o.saved_s - o.duration_s) for o in checked if o.status == CACHED)
    last_runs = report.settled.values()  # a time per settled task: 10,000 at once in an edit build of as many
    saved += sum(last_runs) if min(last_runs, default=0.0) >= 0 else sum(max(0.0, s) for s in last_runs)
    return {
        "executed": counts[EXECUTED],
        "cached": counts[CACHED],
        "failed": counts[FAILED],
        "skipped": counts[SKIPPED],
        "wall_s": round(report.wall_s, 3),
        "task_s": round(task_s, 3),
        "hit_rate": round(counts[CACHED] / ran, 4) if ran else 0.0,
        "time_saved_s": round(saved, 3),
        # the share of the -j command slots kept busy: the commands' time over wall time x jobs (1.0: every slot
        # busy all along). Restoring from the cache takes no slot, so it is not counted; None when no command ran
        # (a no-op, a build all from the cache): there was no parallelism to measure
        "parallel_efficiency": (round(command_s / (report.wall_s * report.jobs), 3)
                                if command_s > 0 and report.wall_s > 0 else None),
        "interrupted": report.interrupted or None,
    }


class Summary(Totals):
    """The document `--summary-json` writes; the closing summary prints its totals."""

    tasks: list[TaskSummary]
    tiers: list[TierSummary]


def summary_dict(report: BuildReport) -> Summary:
    return {
        **totals(report),
        "tasks": [
            {"name": name, "status": o.status, "duration_s": round(o.duration_s, 3), "reason": o.reason}
            for name, o in report.tasks().items()
        ],
        "tiers": report.tiers,
    }


def print_summary(report: BuildReport, stream: TextIO) -> None:
    s = totals(report)
    if report.interrupted:
        verdict = f"Build interrupted ({report.interrupted})"
    elif s["failed"]:
        verdict = "Build FAILED"
    else:
        verdict = "Build completed"
    efficiency = s["parallel_efficiency"]
    stream.write(
        f"{verdict} in {s['wall_s']:.1f}s: {s['executed']} executed, {s['cached']} cached, "
        f"{s['failed']} failed, {s['skipped']} skipped\n"
        f"  hit rate {100 * s['hit_rate']:.1f}% | total task time {s['task_s']:.1f}s | "
        + (f"parallel efficiency {100 * efficiency:.1f}% | " if efficiency is not None else "")
        + f"time saved by the cache {s['time_saved_s']:.1f}s\n"
    )
    for tier in report.tiers:
        if tier["hits"] or tier["misses"] or tier["errors"] or tier["bytes_up"]:
            stream.write(
                f"  cache {tier['name']}: {format_count(tier['hits'], 'hit')}, "
                f"{format_count(tier['misses'], 'miss', 'misses')}, "
                f"{format_size(tier['bytes_down'])} down, {format_size(tier['bytes_up'])} up, "
                f"{tier['seconds']:.2f}s, "
                f"{format_count(tier['errors'], 'error')}{' (disabled)' if tier['disabled'] else ''}\n"
            )
    for name, o in report.outcomes.items():
        if o.status == FAILED:
            stream.write(f"  failed: {name}: {o.reason}\n")
    stream.flush()


def write_summary_json(report: BuildReport, path: Path) -> None:
    import json  # only for the files asked for: not on every build's path

    _write(path, json.dumps(summary_dict(report), indent=2) + "\n")


def _write(path: Path, text: str) -> None:
    """Write a report file; failing to is one line (the build itself is done and cached by now)."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot write: {e.strerror or e}") from None


def write_trace(report: BuildReport, path: Path) -> None:
    """Chrome trace-event JSON (opens in Perfetto / chrome://tracing): one complete ("X") slice per task, one
    track per worker thread; up-to-date tasks are instant events on track 0."""
    events: list[dict[str, object]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "gaffer run"}},
    ]
    for name, o in report.tasks().items():
        lane = o.extra.get("lane", 0)
        event: dict[str, object] = {
            "name": name, "cat": o.status, "pid": 1, "tid": lane, "ts": round(o.start_s * 1e6),
            "args": {"status": o.status, "reason": o.reason},
        }
        if o.duration_s > 0:
            event.update(ph="X", dur=max(1, round(o.duration_s * 1e6)))
        else:
            event.update(ph="i", s="t")
        events.append(event)
    import json

    _write(path, json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}) + "\n")
