"""The launcher's counters (`gaffer cc --show-stats`, `--zero-stats`), in one small JSON file in its directory.

Each process counts in memory and `flush`es its deltas (an in-process `gaffer cc` once at its end, the daemon
now and then): under an flock on a lock file, the file is read, added to and replaced whole, so concurrent
processes never lose a count and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator, Mapping

from gaffer.atomic import save_bytes

COUNTERS = (  # (name, what --show-stats calls it)
    ("direct_hits", "direct hits"),
    ("preprocessed_hits", "preprocessed hits"),
    ("misses", "misses"),
    ("link_hits", "link hits"),
    ("link_misses", "link misses"),
    ("failed", "compiles that failed (never cached)"),
    ("not_stored", "successful compiles not stored"),
    ("local", "run unchanged (uncacheable)"),
    ("remote", "remote executions"),
    ("remote_fallbacks", "remote fallbacks"),
)


class Stats:
    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "stats.json")
        self.lock_path = os.path.join(directory, "stats.lock")
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._reasons: dict[tuple[str, str], int] = {}
        self._saved = 0.0

    def read(self) -> dict[str, object]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def add(self, counts: Mapping[str, int] | None = None, *, reason_group: str = "", reason: str = "",
            saved_s: float = 0.0) -> None:
        """Count `counts`, one for `reason_group`'s `reason` ("uncacheable": "-E"), and `saved_s` of time saved."""
        with self._lock:
            for name, n in (counts or {}).items():
                self._counts[name] = self._counts.get(name, 0) + n
            if reason_group:
                self._reasons[reason_group, reason] = self._reasons.get((reason_group, reason), 0) + 1
            self._saved += saved_s

    def flush(self) -> None:
        """Add what was counted since the last flush to the file (counting never fails a compile)."""
        with self._lock:
            counts, reasons, saved = self._counts, self._reasons, self._saved
            self._counts, self._reasons, self._saved = {}, {}, 0.0
        if not counts and not reasons and not saved:
            return
        try:
            with self._locked():
                data = self.read()
                for name, n in counts.items():
                    data[name] = _int(data.get(name)) + n
                for (group_name, reason), n in reasons.items():
                    group = data.get(group_name)
                    group = group if isinstance(group, dict) else {}
                    group[reason] = _int(group.get(reason)) + n
                    data[group_name] = group
                if saved:
                    data["saved_s"] = _float(data.get("saved_s")) + saved
                self._write(data)
        except OSError:
            pass

    def zero(self) -> None:
        with self._locked():
            self._write({})

    def _write(self, data: dict[str, object]) -> None:
        save_bytes(self.path, json.dumps(data, sort_keys=True).encode())  # no temp file left on a full disk

    def report(self) -> list[str]:
        """The lines of --show-stats."""
        data = self.read()
        lines = [f"{label:<40} {_int(data.get(name))}" for name, label in COUNTERS]
        hits = _int(data.get("direct_hits")) + _int(data.get("preprocessed_hits"))
        lookups = hits + _int(data.get("misses"))
        rate = f"{100 * hits / lookups:.1f} %" if lookups else "-"
        lines.insert(3, f"{'hit rate (compiles)':<40} {rate}")
        for group, title in (("uncacheable", "uncacheable"), ("not_stored_why", "not stored")):
            reasons = data.get(group)
            if isinstance(reasons, dict):
                for reason, n in sorted(reasons.items(), key=lambda kv: (-_int(kv[1]), kv[0])):
                    lines.append(f"  {title}: {reason:<{max(1, 38 - len(title))}} {_int(n)}")
        lines.append(f"{'time saved by hits':<40} {_float(data.get('saved_s')):.1f} s")
        return lines


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
