"""The last outcome of each compile command (by working directory and output), and what its key was made of:
why a compile missed when there was no manifest to compare with ("args differ", "the compiler changed"), and
what `gaffer cc --explain` prints.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import time
from collections.abc import Sequence

from gaffer.atomic import save_marshalled

_LABELS = (("compiler ", "the compiler changed"), ("platform ", "the platform changed"),
           ("cpu ", "the CPU changed (-march=native)"), ("cwd ", "the working directory changed"),
           ("mapped ", "a path the object records changed (what -ffile-prefix-map leaves of it)"))


class History:
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, cwd: str, output: str) -> str:
        name = hashlib.sha256(f"{cwd}\0{output}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return os.path.join(self.directory, name[:2], name)

    def last(self, cwd: str, output: str) -> dict[str, object] | None:
        try:
            with open(self._path(cwd, output), "rb") as f:
                data = marshal.loads(f.read())
            return data if isinstance(data, dict) else None
        except (OSError, EOFError, ValueError, TypeError):
            return None

    def record(self, cwd: str, output: str, argv: Sequence[str], outcome: str, reason: str,
               parts: Sequence[str]) -> None:
        """Remember this run (a failure to write is not the compile's problem)."""
        doc = {"argv": list(argv), "outcome": outcome, "reason": reason, "parts": list(parts), "time": time.time()}
        try:
            save_marshalled(self._path(cwd, output), doc)
        except OSError:
            pass

    def why_new(self, cwd: str, output: str, parts: Sequence[str]) -> str:
        """Why a compile with no manifest is new: what changed in its key since this command last ran."""
        last = self.last(cwd, output)
        before = last.get("parts") if last else None
        if not isinstance(before, list) or not before:
            return "new (never run with these arguments)"
        return key_change(before, list(parts)) or "same key as last time (its entry was evicted, or never stored)"


def key_change(before: Sequence[str], after: Sequence[str]) -> str | None:
    """The first difference between two keys' parts, as a reader would say it."""
    old, new = set(before), set(after)
    if old == new:
        return None
    for prefix, label in _LABELS:
        if {p for p in old if p.startswith(prefix)} != {p for p in new if p.startswith(prefix)}:
            return label
    inputs = sorted({p.split(" ")[1] for p in old ^ new if p.startswith("input ")})
    if inputs:
        return f"{inputs[0]} changed"
    env = sorted({p[4:].split("=")[0] for p in old ^ new if p.startswith("env ")})
    if env:
        return f"environment {env[0]} changed"
    removed = [p[4:] for p in before if p.startswith("arg ") and p not in new]
    added = [p[4:] for p in after if p.startswith("arg ") and p not in old]
    change = ", ".join([*(f"-{a!r}" for a in removed), *(f"+{a!r}" for a in added)])
    return f"arguments differ: {change}" if change else "the key changed"

