"""The workspace's build state (`.gaffer/` beside graph.json): what each task looked like when it last ran.

This is gaffer's ninja-style build log. It lets a no-op build decide "up to date" from `stat` calls alone: a
task whose fingerprint (command, env values, input stat signatures, deps' outputs) and whose outputs' stat
signatures are unchanged needs no hashing, no key and no cache lookup. It also keeps each task's last
manifest so `gaffer explain` and `--dry-run` can say what changed.

Losing it is harmless: the next build re-hashes and finds everything in the cache. Each task's entry is stored
with `marshal` (fast, cannot run code) in one of the log's shards (gaffer.shards); a damaged shard or entry is
ignored (those tasks are checked in full). marshal stores plain tuples only, so the named records below become
tuples when stored and are rebuilt when read.
"""

from __future__ import annotations

import marshal
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, NamedTuple

from gaffer.atomic import save_marshalled
from gaffer.digest import StatSignature
from gaffer.shards import SHARDS, ShardedMap

_FORMAT = 5  # 4: each task's state marshalled on its own; 5: in shards
_HEAD = (_FORMAT, SHARDS)
STATE_DIR = ".gaffer"  # beside the graph file

# What a dependent sees of a task's outputs: (files (path, hash, mode), symlinks (path, target), directories
# (path, mode)), as plain tuples.
OutputContent = tuple[tuple[tuple[str, str, int], ...], tuple[tuple[str, str], ...], tuple[tuple[str, int], ...]]


class FileRecord(NamedTuple):
    """An output file as recorded: its content, permission bits and the stat signature it had."""

    path: str
    hash: str
    size: int
    mode: int
    sig: StatSignature | None  # None: predicted by a dry run, or left on the remote (--remote-download=minimal)


class SymlinkRecord(NamedTuple):
    path: str
    target: str


class DirectoryRecord(NamedTuple):
    """An output directory (declared, or below a declared one): a file added to it changes its signature."""

    path: str
    mode: int
    sig: StatSignature | None  # None: predicted by a dry run, never written


class OutputRecords(NamedTuple):
    """Everything a task's outputs hold: what its dependents see, and so what their keys cover."""

    files: tuple[FileRecord, ...] = ()
    symlinks: tuple[SymlinkRecord, ...] = ()
    directories: tuple[DirectoryRecord, ...] = ()

    def content(self) -> OutputContent:
        """The outputs without their stat signatures, as plain tuples: equal exactly when a dependent would see
        the same thing (the part of a dependent's fingerprint and manifest that comes from this task)."""
        return (tuple((f.path, f.hash, f.mode) for f in self.files), tuple((s.path, s.target) for s in self.symlinks),
                tuple((d.path, d.mode) for d in self.directories))

    def to_tuple(self) -> tuple[Any, ...]:
        return (tuple(map(tuple, self.files)), tuple(map(tuple, self.symlinks)), tuple(map(tuple, self.directories)))

    @classmethod
    def from_tuple(cls, data: tuple[Any, ...]) -> OutputRecords:
        files, symlinks, directories = data
        return cls(tuple(FileRecord(*f) for f in files), tuple(SymlinkRecord(*s) for s in symlinks),
                   tuple(DirectoryRecord(*d) for d in directories))


class Fingerprint(NamedTuple):
    """The cheap identity of a task's inputs (gaffer.keys builds it): if it and the outputs' signatures are
    unchanged, the task is up to date without hashing anything."""

    commands: tuple[tuple[str, ...], ...]
    outputs: tuple[str, ...]
    timeout: float | None
    env: tuple[tuple[str, str], ...]  # declared variables with their values (unset ones left out)
    platform: tuple[tuple[str, str], ...]
    inputs: tuple[tuple[str, StatSignature | None], ...]  # (input path, its stat signature; None if unreadable)
    deps: tuple[tuple[str, OutputContent], ...]  # (dep, OutputRecords.content())
    racy: int  # 0, or a time that never compares equal: an input could still change without its signature moving
    tools: tuple[tuple[tuple[str, StatSignature], ...], ...]  # each tool's Tool.signatures


class Manifest(NamedTuple):
    """What went into the task's key, comparable between runs (`gaffer explain` diffs two of them)."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    platform: tuple[tuple[str, str], ...]
    inputs: tuple[tuple[str, str], ...]  # (input path, hash)
    deps: tuple[tuple[str, OutputContent], ...]  # (dep, OutputRecords.content())
    outputs: tuple[str, ...]
    timeout: float | None
    tools: tuple[tuple[str, str, str], ...] = ()  # (name, version, content hash) of each tool


class TaskState(NamedTuple):
    fingerprint: Fingerprint
    key: str  # action digest hash
    outputs: OutputRecords
    manifest: Manifest
    duration_s: float

    def to_tuple(self) -> tuple[Any, ...]:
        return (tuple(self.fingerprint), self.key, self.outputs.to_tuple(), tuple(self.manifest), self.duration_s)

    @classmethod
    def from_tuple(cls, data: tuple[Any, ...]) -> TaskState:
        fingerprint, key, outputs, manifest, duration_s = data
        return cls(Fingerprint(*fingerprint), key, OutputRecords.from_tuple(outputs), Manifest(*manifest), duration_s)


class TaskStates(MutableMapping[str, TaskState]):
    """Each task's state, stored marshalled on its own in the build log's shards (gaffer.shards) and decoded
    only when asked for: an incremental build of 10,000 tasks reads the few shards holding the tasks it checks
    and their deps, and writes back only the shards it changed."""

    def __init__(self, stored: ShardedMap) -> None:
        self._stored = stored  # every entry, marshalled
        self._decoded: dict[str, TaskState] = {}  # those asked for, decoded

    def get(self, name: str, default: Any = None) -> Any:  # the hot path: no KeyError raised and caught
        found = self._decoded.get(name)
        if found is not None:
            return found
        stored = self._stored.get(name)
        if stored is None:
            return default
        try:
            found = TaskState.from_tuple(marshal.loads(stored))
        except (EOFError, TypeError, ValueError):  # a damaged entry: as if the task had never run
            return default
        return self._decoded.setdefault(name, found)

    def __getitem__(self, name: str) -> TaskState:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found  # type: ignore[no-any-return]  # get's default is Any: the entries are TaskStates

    def __contains__(self, name: object) -> bool:
        return type(name) is str and self.get(name) is not None

    def __setitem__(self, name: str, value: TaskState) -> None:
        self._decoded[name] = value
        self._stored.set(name, marshal.dumps(value.to_tuple()))

    def __delitem__(self, name: str) -> None:
        self._decoded.pop(name, None)
        if self._stored.pop(name) is None:
            raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return self._stored.keys()

    def __len__(self) -> int:
        return len(self._stored)

    def clear(self) -> None:
        self._stored.clear()
        self._decoded.clear()

    @property
    def changed(self) -> bool:
        return self._stored.changed

    def save(self, directory: str) -> None:
        """Write the shards holding a changed entry; raises OSError naming the file."""
        self._stored.save(directory)


class WorkspaceState:
    """The build log: `.gaffer/state` says which format its shards (`.gaffer/log/`) are in, and is replaced
    after every change to them, so its stat signature names the log's version (the no-op record keeps it)."""

    def __init__(self, directory: Path, fresh: bool = True) -> None:
        self.directory = directory
        self.tasks = TaskStates(ShardedMap(f"{directory}/log", fresh=fresh))

    @property
    def _path(self) -> Path:
        return self.directory / "state"

    @property
    def stat_cache_path(self) -> Path:
        return self.directory / "stats"

    @classmethod
    def load(cls, directory: Path) -> WorkspaceState:
        """The workspace's build log; empty (and its shards removed on save) if `state` is missing, damaged or
        of another format: whatever the shards hold may then be older than what the workspace holds."""
        try:
            with open(directory / "state", "rb") as f:
                known = marshal.loads(f.read()) == _HEAD
        except (OSError, EOFError, ValueError, TypeError):
            known = False
        return cls(directory, fresh=not known)

    def update(self, name: str, task_state: TaskState) -> None:
        self.tasks[name] = task_state

    def forget(self, name: str) -> None:
        self.tasks.pop(name, None)

    def save(self) -> None:
        if not self.tasks.changed:
            return
        self.tasks.save(f"{self.directory}/log")
        save_marshalled(self._path, _HEAD)
