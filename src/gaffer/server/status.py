"""What `gaffer serve` shows of itself: the status document (GET /status.json) and the page that renders it
(GET /status).

The document is the coordinator's snapshot (workers, queue, running and recent actions, counters) beside the
cache's hit rate, so the page, `gaffer status` and any script read one thing. Without an execution service
("execution": false) it holds the cache statistics only.

The page is one static file with its CSS and script inline: it loads nothing from elsewhere (a status page must
work on a farm without internet access, and a Content-Security-Policy says so to the browser). It holds no data
itself, so it is served without a token; the document it fetches needs one when the server has one, which the
page asks for (a browser cannot send a bearer header by itself).
"""

from __future__ import annotations

import functools
import time
from importlib import resources
from typing import Any, Protocol

from gaffer import __version__
from gaffer.server.metrics import Metrics

#: The page may run its own inline script and style and fetch from its own origin, nothing else, and may not be
#: framed by another site (the token form).
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
               "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class StatusSource(Protocol):
    """The execution service's coordinator as the status page sees it. `snapshot` is called from the HTTP
    server's threads, so it must be safe to call from any thread."""

    def snapshot(self) -> dict[str, Any]: ...


def document(coordinator: StatusSource | None, metrics: Metrics, store_bytes: int, max_bytes: int) -> dict[str, Any]:
    """The status document: the coordinator's snapshot (when this server executes actions) and the cache's hits."""
    lookups = metrics.lookup_counts()
    cache: dict[str, Any] = {"store_bytes": store_bytes, "max_bytes": max_bytes}
    for kind in ("ac", "cas"):
        hits, misses = lookups.get(kind, (0, 0))
        cache[kind] = {"hits": hits, "misses": misses, "hit_rate": hits / (hits + misses) if hits + misses else None}
    status: dict[str, Any] = {"server": f"gaffer {__version__}", "time": time.time(),
                              "execution": coordinator is not None, "cache": cache}
    if coordinator is not None:
        status.update(coordinator.snapshot())
    return status


@functools.cache
def page() -> bytes:
    """The HTML of /status (read once: it is part of the package)."""
    return resources.files("gaffer.server").joinpath("status.html").read_bytes()
