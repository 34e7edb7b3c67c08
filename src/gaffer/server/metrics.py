"""Counters for `gaffer serve`, rendered in the Prometheus text exposition format at /metrics."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping


class Metrics:
    """Requests by protocol/method/kind/status, cache hits and misses by kind, bytes in and out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str, str, str]] = Counter()
        self._hits: Counter[str] = Counter()
        self._misses: Counter[str] = Counter()
        self._received = 0
        self._sent = 0
        self._dispatch: Callable[[], Mapping[str, float]] | None = None

    def watch_dispatch(self, stats: Callable[[], Mapping[str, float]]) -> None:
        """Render remote execution's gauges and counters too, as `stats()` gives them (Coordinator.stats)."""
        self._dispatch = stats

    def request(self, protocol: str, method: str, kind: str, status: str) -> None:
        with self._lock:
            self._requests[(protocol, method, kind, status)] += 1

    def lookups(self, kind: str, hits: int, misses: int) -> None:
        with self._lock:
            self._hits[kind] += hits
            self._misses[kind] += misses

    def lookup_counts(self) -> dict[str, tuple[int, int]]:
        """(hits, misses) by kind so far: the status page's hit rates."""
        with self._lock:
            return {kind: (self._hits[kind], self._misses[kind]) for kind in self._hits.keys() | self._misses.keys()}

    def transferred(self, received: int = 0, sent: int = 0) -> None:
        with self._lock:
            self._received += received
            self._sent += sent

    def render(self, store_bytes: int, max_bytes: int) -> str:
        with self._lock:
            requests = sorted(self._requests.items())
            hits, misses = dict(self._hits), dict(self._misses)
            received, sent = self._received, self._sent
        lines = [
            "# HELP gaffer_requests_total Requests served, by protocol, method, kind (ac, cas...) and status.",
            "# TYPE gaffer_requests_total counter",
        ]
        for (protocol, method, kind, status), n in requests:
            lines.append(
                f'gaffer_requests_total{{protocol="{protocol}",method="{method}",kind="{kind}",status="{status}"}} {n}'
            )
        for name, counts, what in (("hits", hits, "found"), ("misses", misses, "not found")):
            lines += [f"# HELP gaffer_cache_{name}_total Lookups of entries that were {what}, by kind.",
                      f"# TYPE gaffer_cache_{name}_total counter"]
            lines += [f'gaffer_cache_{name}_total{{kind="{kind}"}} {counts.get(kind, 0)}' for kind in ("ac", "cas")]
        lines += [
            "# HELP gaffer_received_bytes_total Blob and action result bytes received.",
            "# TYPE gaffer_received_bytes_total counter",
            f"gaffer_received_bytes_total {received}",
            "# HELP gaffer_sent_bytes_total Blob and action result bytes sent.",
            "# TYPE gaffer_sent_bytes_total counter",
            f"gaffer_sent_bytes_total {sent}",
            "# HELP gaffer_store_bytes Bytes held by the store (all instances).",
            "# TYPE gaffer_store_bytes gauge",
            f"gaffer_store_bytes {store_bytes}",
            "# HELP gaffer_store_max_bytes The store's size bound (--max-size).",
            "# TYPE gaffer_store_max_bytes gauge",
            f"gaffer_store_max_bytes {max_bytes}",
        ]
        if self._dispatch is not None:
            lines += _dispatch_lines(self._dispatch())
        return "\n".join(lines) + "\n"


def _dispatch_lines(stats: Mapping[str, float]) -> list[str]:
    lines = []
    for name, key, what in (("queued_actions", "queued", "Actions waiting for a worker."),
                            ("workers", "workers", "Connected workers (bot sessions)."),
                            ("running_actions", "running", "Actions leased to workers.")):
        lines += [f"# HELP gaffer_{name} {what}", f"# TYPE gaffer_{name} gauge", f"gaffer_{name} {stats[key]:g}"]
    lines += [("# HELP gaffer_actions_total Remote actions by event: started (a lease given), finished, failed "
               "(of finished), retried, cancelled."), "# TYPE gaffer_actions_total counter"]
    lines += [f'gaffer_actions_total{{event="{event}"}} {stats["actions_" + event]:g}'
              for event in ("started", "finished", "failed", "retried", "cancelled")]
    lines += ["# HELP gaffer_queue_to_start_seconds From queued to leased to a worker.",
              "# TYPE gaffer_queue_to_start_seconds summary",
              f"gaffer_queue_to_start_seconds_sum {stats['queue_to_start_seconds_sum']:g}",
              f"gaffer_queue_to_start_seconds_count {stats['queue_to_start_count']:g}"]
    return lines
