"""A task's outputs in the workspace as the build log records them (state.OutputRecords): made from what a run
or a restore wrote, predicted from a cache entry, and checked to be still intact, all by `lstat`.

What a task's outputs hold is what its dependents see, and so what their fingerprints and keys cover: a
declared output directory is gaffer's, and an entry in it the task did not make is removed, not keyed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gaffer.digest import Digest, stat_signature
from gaffer.state import DirectoryRecord, FileRecord, OutputRecords, SymlinkRecord

if TYPE_CHECKING:
    from gaffer.actions import Outputs


def on_disk(root: str, outputs: Outputs) -> OutputRecords:
    """The outputs as they now are on disk (called once all are written: a directory's signature is final).
    Their digests are in these records, which is where a dependent reads them (an output is never an input
    read through the stat cache: plan.make_plan leaves every file under a declared output out of the inputs, and
    tools.task_tools a tool there), so the stat cache is not told of them: an edit build that re-runs hundreds
    of tasks would otherwise read and write back nearly every shard of it for entries nothing reads."""
    from gaffer.actions import PERMISSION_BITS

    files = []
    for f in outputs.files:
        st = os.lstat(f"{root}/{f.path}")
        mode = stat.S_IMODE(st.st_mode) & PERMISSION_BITS
        files.append(FileRecord(f.path, f.digest.hash, f.digest.size_bytes, mode, stat_signature(st)))
    directories = tuple(DirectoryRecord(d.path, d.mode, stat_signature(os.lstat(f"{root}/{d.path}")))
                        for d in outputs.directories)
    symlinks = tuple(SymlinkRecord(s.path, s.target) for s in outputs.symlinks)
    return OutputRecords(tuple(files), symlinks, directories)


def predicted(outputs: Outputs) -> OutputRecords:
    """Records without signatures, of outputs not written here: those a restore would make (`--dry-run`), or
    those a remote execution left on the remote (`--remote-download=minimal`)."""
    return OutputRecords(
        tuple(FileRecord(f.path, f.digest.hash, f.digest.size_bytes,
                         f.mode if f.mode is not None else (0o755 if f.executable else 0o644), None)
              for f in outputs.files),
        tuple(SymlinkRecord(s.path, s.target) for s in outputs.symlinks),
        tuple(DirectoryRecord(d.path, d.mode, None) for d in outputs.directories))


def as_outputs(recorded: Sequence[OutputRecords]) -> Outputs:
    """The inverse of `predicted`: recorded outputs as action entries (a dependent's input root, or what earlier
    builds left on the remote)."""
    from gaffer.actions import DirectoryEntry, FileEntry, Outputs, SymlinkEntry

    return Outputs([FileEntry(f.path, Digest(f.hash, f.size), bool(f.mode & 0o100), f.mode)
                    for records in recorded for f in records.files],
                   [SymlinkEntry(s.path, s.target) for records in recorded for s in records.symlinks],
                   [DirectoryEntry(d.path, d.mode) for records in recorded for d in records.directories])


def left_remote(recorded: OutputRecords) -> bool:
    """Outputs recorded by digest only, left on the remote (a dry run, the other maker of such records, never
    saves them)."""
    return any(f.sig is None for f in recorded.files) or any(d.sig is None for d in recorded.directories)


def file_digests(recorded: OutputRecords) -> list[Digest]:
    return [Digest(f.hash, f.size) for f in recorded.files]


def intact(root: Path, name: str, recorded: OutputRecords, warn: Callable[[str], None] | None
           ) -> OutputRecords | None:
    """`recorded` (their signatures refreshed) if the workspace still holds exactly those outputs of task
    `name`, else None. An entry in a declared output directory that the task did not make (an editor's
    `a.txt~`) is removed with one `warn` each, so a dependent sees exactly what was recorded and keyed; without
    `warn` (a dry run, which changes nothing) such a directory is only a change."""
    top = str(root)
    try:
        for f in recorded.files:
            if stat_signature(os.lstat(f"{top}/{f.path}")) != f.sig:
                return None
        for s in recorded.symlinks:
            if os.readlink(f"{top}/{s.path}") != s.target:
                return None
        changed = [d for d in recorded.directories if stat_signature(os.lstat(f"{top}/{d.path}")) != d.sig]
    except OSError:
        return None
    if not changed:
        return recorded
    if warn is None:
        return None
    expected: dict[str, set[str]] = {}
    for path in [*(f.path for f in recorded.files), *(s.path for s in recorded.symlinks),
                 *(d.path for d in recorded.directories)]:
        parent, _, base = path.rpartition("/")
        expected.setdefault(parent, set()).add(base)
    from gaffer import actions

    refreshed = {}
    real_root = os.path.realpath(top)
    for d in changed:
        full = f"{top}/{d.path}"
        if os.path.realpath(full) != f"{real_root}/{d.path}" or not os.path.isdir(full):
            return None  # replaced by a symlink (or through one): never remove anything outside the outputs
        try:
            names = set(os.listdir(full))
            for stray in sorted(names - expected.get(d.path, set())):
                actions.remove_outputs(root, [f"{d.path}/{stray}"])
                warn(f"removed {d.path}/{stray}: task {name} did not make it, and its declared output {d.path} "
                     "holds only what the task made")
            st = os.lstat(full)
        except OSError:
            return None
        if expected.get(d.path, set()) - names or stat.S_IMODE(st.st_mode) & actions.PERMISSION_BITS != d.mode:
            return None
        refreshed[d.path] = d._replace(sig=stat_signature(st))
    return recorded._replace(directories=tuple(refreshed.get(d.path, d) for d in recorded.directories))
