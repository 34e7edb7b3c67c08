"""The workspace's build state (`.gaffer/` beside graph.json): what each task looked like when it last ran.

This is gaffer's ninja-style build log. It lets a no-op build decide "up to date" from `stat` calls alone: a
task whose fingerprint (command, env values, input stat signatures, deps' output digests) and whose outputs'
stat signatures are unchanged needs no hashing, no key and no cache lookup. It also keeps each task's last
manifest so `gaffer explain` and `--dry-run` can say what changed.

Losing this file is harmless: the next build re-hashes and finds everything in the cache. It is stored with
`marshal` (fast, cannot run code); a damaged file is ignored.
"""

from __future__ import annotations

import marshal
import os
from dataclasses import dataclass
from pathlib import Path

_FORMAT = 1

# A manifest: what went into the task's key, comparable between runs.
#   (argv, env items, platform items, ((input path, hash), ...), ((dep, outputs hash), ...), outputs, timeout)
Manifest = tuple
# An output file as recorded: (path, hash, size, executable, stat signature)
OutputRecord = tuple


@dataclass
class TaskState:
    fingerprint: tuple
    key: str  # action digest hash
    outputs: tuple[OutputRecord, ...]
    symlinks: tuple[tuple[str, str], ...]
    manifest: Manifest
    duration_s: float

    def to_tuple(self) -> tuple:
        return (self.fingerprint, self.key, self.outputs, self.symlinks, self.manifest, self.duration_s)


class WorkspaceState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.tasks: dict[str, TaskState] = {}
        self.dirty = False

    @property
    def _path(self) -> Path:
        return self.directory / "state"

    @property
    def stat_cache_path(self) -> Path:
        return self.directory / "stat-cache"

    @classmethod
    def load(cls, directory: Path) -> WorkspaceState:
        state = cls(directory)
        try:
            with open(state._path, "rb") as f:
                version, tasks = marshal.loads(f.read())
            if version == _FORMAT:
                state.tasks = {name: TaskState(*entry) for name, entry in tasks.items()}
        except (OSError, EOFError, ValueError, TypeError):
            state.tasks = {}
        return state

    def update(self, name: str, task_state: TaskState) -> None:
        self.tasks[name] = task_state
        self.dirty = True

    def forget(self, name: str) -> None:
        if self.tasks.pop(name, None) is not None:
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(f"state.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            marshal.dump((_FORMAT, {name: s.to_tuple() for name, s in self.tasks.items()}), f)
        os.replace(tmp, self._path)
        self.dirty = False
