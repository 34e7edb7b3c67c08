"""`gaffer ld`: links through the cache (filled in below)."""

from __future__ import annotations

from gaffer.cc.launch import RUN_IT, Context, Request, Response


def handle_link(request: Request, context: Context) -> Response:
    """Not cached yet: the caller runs the link unchanged."""
    return RUN_IT
