"""`gaffer cc --explain -- COMPILER ARGS`: what happened to this compile command the last time it ran, and why
(a miss names the header that changed, the arguments that differ, or the compiler that changed)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from gaffer.cc.args import Uncacheable, classify
from gaffer.cc.launch import Context


def explain_compile(ctx: Context, cwd: str, command: Sequence[str]) -> list[str]:
    c = classify(command[1:], cwd)
    if isinstance(c, Uncacheable):
        return [f"not cacheable ({c}): gaffer runs the compiler unchanged"]
    last = ctx.history.last(cwd, os.path.join(cwd, c.output))
    if last is None:
        return [f"{c.output}: no compile of it recorded from {cwd}"]
    when = last.get("time")
    ago = f" ({time.time() - when:.0f}s ago)" if isinstance(when, (int, float)) else ""
    reason = last.get("reason")
    return [f"{c.output}: {last.get('outcome')}{ago}" + (f": {reason}" if reason else "")]
