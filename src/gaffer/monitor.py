"""`gaffer status --server URL`: what the status page of a `gaffer serve` shows, as plain-text tables.

It reads the same document as the page (GET /status.json on the server's HTTP port, see server/status.py), with
the standard library's HTTP client only: no gRPC, no protobuf, so it starts as fast as `gaffer --version`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from gaffer.cache.urls import read_token, redact, split_url
from gaffer.errors import EnvironmentProblem, UserError, printable
from gaffer.units import format_count, format_size

TIMEOUT_S = 10.0
Cell = str | list[str]  # a list is one line per item


def status(args: argparse.Namespace) -> int:
    """Print the server's status (tables, or the raw document with --json); 0, or a one-line error."""
    url = server_url(args.server)
    token = read_token(args.token_file, "--token-file") if args.token_file else None
    document = fetch(url, token, args.token_file)
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print("\n".join(render(document, redact(url))))
    return 0


def server_url(text: str) -> str:
    """The base http(s):// URL of the server's HTTP port; "host:port" alone means http://host:port."""
    url = text if "://" in text else f"http://{text}"
    parts = split_url(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--server {redact(text)}: give the http://HOST:PORT address of gaffer serve's --http port "
                        "(the status is not served on the gRPC port)")
    return url.rstrip("/")


def fetch(url: str, token: str | None, token_file: str | None) -> dict[str, Any]:
    """The status document at `url`/status.json; a refusal is the user's to fix (exit 2), an unreachable or broken
    server the environment's (exit 3). Messages name the URL without its password."""
    shown = redact(url)
    request = urllib.request.Request(f"{url}/status.json", headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise UserError(f"{shown}: the server refused the token in {token_file}" if token else
                            f"{shown}: the server needs a token: give --token-file FILE") from None
        if e.code == 404:
            raise UserError(f"{shown}: no status there: is it gaffer serve's --http address?") from None
        raise EnvironmentProblem(f"{shown}: the server answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:  # first: RemoteDisconnected is an HTTPException too
        reason = getattr(e, "reason", None) or e
        raise EnvironmentProblem(f"{shown}: cannot reach the server: {getattr(reason, 'strerror', None) or reason}") \
            from None
    except http.client.HTTPException:  # not an HTTP answer: a gRPC port speaks HTTP/2 frames only
        raise UserError(f"{shown}: the answer is not HTTP: is it gaffer serve's --http address (not its --grpc one)?") \
            from None
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict) or "cache" not in document:
        raise EnvironmentProblem(f"{shown}/status.json: the answer is not gaffer serve's status document")
    return document


def render(s: dict[str, Any], url: str) -> list[str]:
    """The document as lines: a summary, then the workers, queue, running and recent tables."""
    cache = s["cache"]
    ac = cache["ac"]
    lines = [f"{printable(str(s.get('server', 'gaffer serve')))} at {url}",
             (f"action cache: {_percent(ac['hit_rate'])} hits ({ac['hits']:,} of {ac['hits'] + ac['misses']:,} "
             f"lookups); store {format_size(cache['store_bytes'])} of {format_size(cache['max_bytes'])}")]
    if not s.get("execution"):
        return [*lines, "execution: not served (cache statistics only)"]
    workers = s["workers"]
    c = {name: int(value) if name != "queue_to_start_seconds_sum" else value for name, value in s["counters"].items()}
    slots, busy = sum(w["max_jobs"] for w in workers), sum(len(w["running"]) for w in workers)
    served = c["cache_hits"] + c["cache_misses"]
    wait = (f"; mean queue-to-start {_duration(c['queue_to_start_seconds_sum'] / c['queue_to_start_count'])}"
            if c["queue_to_start_count"] else "")
    lines += [(f"execution: {format_count(len(workers), 'worker')} ({busy} of {slots} slots busy), "
              f"{s.get('queue_length', len(s['queue'])):,} queued, {len(s['running'])} running{wait}"),
              (f"actions: {c['actions_started']:,} started, {c['actions_finished']:,} finished, "
              f"{c['actions_failed']:,} failed, {c['actions_retried']:,} retried, {c['actions_cancelled']:,} "
              f"cancelled; answered from the action cache: {c['cache_hits']:,} of {served:,}")]
    running = {r["operation"]: r for r in s["running"]}

    def jobs(w: dict[str, Any]) -> list[str]:
        return [f"{_task(r)} [{_build(r.get('build'))}] {_duration(r.get('started_s_ago'))}"
                for r in (running.get(op, {"operation": op}) for op in w["running"])] or ["idle"]

    lines += _section("workers", workers, "none connected",
                      ("WORKER", "LOAD", "RUNNING", "HOLDS", "LAST SEEN", "CONNECTED", "PLATFORM"), {1, 4, 5},
                      lambda w: (w["name"], f"{len(w['running'])}/{w['max_jobs']}", jobs(w),
                                 f"{w['held_blobs']:,} blobs, {format_size(w['held_bytes'])}",
                                 _ago(w["last_seen_s_ago"]), _duration(w["connected_s"]),
                                 " ".join(f"{k}={'|'.join(v)}" for k, v in sorted(w["platform"].items()))))
    lines += _section("queue", s["queue"], "empty", ("TASK", "BUILD", "WAITING", "WHY"), {2},
                      lambda q: (_task(q), _build(q.get("build")), _duration(q["queued_s_ago"]), q["waiting_for"]),
                      s.get("queue_length", 0))
    lines += _section("running", s["running"], "nothing", ("TASK", "BUILD", "WORKER", "FOR", "ATTEMPT"), {3, 4},
                      lambda r: (_task(r), _build(r.get("build")), r["worker"], _duration(r["started_s_ago"]),
                                 str(r["attempt"])))
    lines += _section("recent", s["recent"], "nothing yet",
                      ("TASK", "BUILD", "WORKER", "OUTCOME", "QUEUED", "RAN", "FINISHED"), {4, 5, 6},
                      lambda r: (_task(r), _build(r.get("build")), r.get("worker") or "-", r["outcome"],
                                 _duration(r["queued_s"]), _duration(r["ran_s"]), _ago(r["finished_s_ago"])))
    return lines


def _section(title: str, items: Sequence[dict[str, Any]], empty: str, headers: Sequence[str],
             right: Collection[int], row: Callable[[dict[str, Any]], Sequence[Cell]], total: int = 0) -> list[str]:
    """A titled table; `total`: how many there are when `items` lists only the first (the queue's oldest 1,000)."""
    if not items:
        return ["", f"{title}: {empty}"]
    count = f"{total:,}; the oldest {len(items):,} shown" if total > len(items) else f"{len(items):,}"
    return ["", f"{title} ({count})", *table(headers, [row(item) for item in items], right)]


def table(headers: Sequence[str], rows: Iterable[Sequence[Cell]], right: Collection[int] = ()) -> list[str]:
    """Columns padded to their widest cell (`right`: the indexes aligned right); a list cell spans several lines."""
    grid = [[[h] for h in headers]] + [[[printable(line) for line in (c if isinstance(c, list) else [c])] for c in r]
                                       for r in rows]
    widths = [max(len(line) for r in grid for line in r[i]) for i in range(len(headers))]
    out = []
    for r in grid:
        for n in range(max(len(c) for c in r)):
            cells = [c[n] if n < len(c) else "" for c in r]
            out.append("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                                 for i, (cell, w) in enumerate(zip(cells, widths, strict=True))).rstrip())
    return out


def _task(item: dict[str, Any]) -> str:
    return str(item.get("task") or (item.get("action") or "")[:12] or item["operation"])


def _build(build: str | None) -> str:
    """A build's tool_invocation_id shortened as on the page: its first 8 characters."""
    return build[:8] if build else "-"


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _ago(seconds: float) -> str:
    return "just now" if seconds < 1 else f"{_duration(seconds)} ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
