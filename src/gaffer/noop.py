"""The whole-build fast path: decide "nothing to do" from `stat` calls alone, as ninja does.

After a successful build, `write_record` stores what that build saw: the graph file's stat signature, the
targets, the values of every declared env var (and of PATH when a task runs tools), the stat signature of
every input and tool file (taken *before* the tasks used them) and every output (taken right after they were
made), and the signatures of the directories that glob and directory inputs were found in (a file added or
removed there changes its directory's mtime).

`check` compares all of that with the file system now. If nothing differs, every task would be "up to date"
in the per-task check too, so the build is a no-op without even loading the graph file. Every file in the
record names the tasks that read or made it, so when only files differ, `check` says which tasks are dirty:
the build then checks those and everything downstream of them, and takes every other task's fingerprint and
outputs from the build log the record was written with (its stat signature is in the record). A directory a
glob searched that changed makes every task whose globs start at or above it dirty: their globs are run
again (a new file matching one is found). Anything else that differs (the graph file, the targets, a declared
variable, the build log), or a record that cannot be read, falls back to the full build, which is always
correct.
"""

from __future__ import annotations

import marshal
import os
import struct
import sys
from array import array
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from gaffer import __version__
from gaffer.atomic import save_bytes
from gaffer.workspace import workspace_root

if TYPE_CHECKING:
    from gaffer.build import Build

# The record's layout; its arrays are in this machine's byte order (a record is never shared).
_FORMAT = (5, sys.byteorder)
_GLOB_CHARS = frozenset("*?[")
_NO_DOTS, _DOTS, _ALL_DOTS = 0, 1, 2  # how far a glob below a directory may enter dot-directories
_SIG = struct.Struct("<qqQq")  # a stat signature packed: size, mtime_ns, inode, ctime_ns
_MISSING = (-1, 0, 0, 0)  # what a file that cannot be stat'ed packs as: no file has a negative size
_BLOCK = 64  # signatures compared at once while looking for the ones that differ

Sig = tuple[int, int, int, int]


class Files(NamedTuple):
    """Files the record watches, as parallel columns: few objects to load and to store, whatever their number.
    Workspace files are relative to the workspace (checked from a descriptor of it), others absolute."""

    paths: list[str]
    sigs: bytes  # each path's stat signature, packed (_SIG)
    owners: Any  # inputs: a sequence of the tasks reading each; outputs: an array of the task making each


class Record(NamedTuple):
    """What a successful build saw; stored as plain tuples, strings and bytes (marshal holds no named types).
    Each file names the tasks it belongs to (their indices among the real tasks, `names`), so that a change
    points at the tasks to check again."""

    format: tuple[int, str]
    version: str
    graph: str  # the graph file's real path
    graph_sig: Sig
    graph_digest: str  # the graph file's content digest with that signature (load_graph need not read it)
    state_sig: Sig  # the build log the record was written with: the fingerprints and outputs it vouches for
    targets: tuple[str, ...]
    env: tuple[tuple[str, str | None], ...]  # (name, value or None if unset)
    inputs: Files  # input and tool files (stat), each with the tasks reading it
    outputs: Files  # output files and directories (lstat), each with its task
    symlinks: tuple[tuple[str, str, int], ...]  # (path, target, task)
    bases: tuple[tuple[str, int, tuple[int, ...]], ...]  # where globs walk (directory_bases), and whose globs
    dirs: tuple[tuple[str, tuple[int, int]], ...]  # every directory below them: (path, (mtime_ns, inode))
    order: list[str]  # the build's order (Graph.closure of the targets), groups included
    real: array[int]  # the positions in `order` of the real tasks (not groups), whose indices the files name
    durations: array[float]  # each real task's last execution time
    # Who depends on each task or group, by position in `order`: those of position p are dependents[1][s:e],
    # with s, e = dependents[0][p], dependents[0][p + 1] (the incremental build walks down from the dirty ones).
    dependents: tuple[array[int], array[int]]
    names: list[str]  # the real tasks' names (read from `order` and `real`, not stored)

    def tasks(self) -> Iterable[tuple[str, float]]:
        """(task, its last execution time) of every real task, in order."""
        return zip(self.names, self.durations, strict=True)

    def stored(self) -> tuple[object, ...]:
        """The record as marshal stores it: each column one string, one bytes or one tuple."""
        inputs, outputs = self.inputs, self.outputs
        return (*self[:8], ("\0".join(inputs.paths), inputs.sigs, tuple(inputs.owners)),
                ("\0".join(outputs.paths), outputs.sigs, array("I", outputs.owners).tobytes()),
                self.symlinks, self.bases, self.dirs, "\0".join(self.order), self.real.tobytes(),
                self.durations.tobytes(), self.dependents[0].tobytes(), self.dependents[1].tobytes())

    @classmethod
    def load(cls, data: bytes) -> Record:
        """The record `stored` made; raises ValueError, TypeError or EOFError if it is not one (another layout,
        columns of different lengths, a position outside the order)."""
        (fmt, version, graph, graph_sig, graph_digest, state_sig, targets, env, inputs, outputs, symlinks, bases,
         dirs, order, real, durations, starts, dependents) = marshal.loads(data)
        if fmt != _FORMAT:
            raise ValueError("another layout")
        in_paths, in_sigs, in_owners = inputs
        out_paths, out_sigs, out_owners = outputs
        order = _split(order)
        real, starts, dependents = array("I", real), array("I", starts), array("I", dependents)
        if (len(starts) != len(order) + 1 or starts[-1] != len(dependents)
                or max(real, default=-1) >= len(order) or max(dependents, default=-1) >= len(order)):
            raise ValueError("positions outside the order")
        record = cls(fmt, version, graph, graph_sig, graph_digest, state_sig, targets, env,
                     Files(_split(in_paths), in_sigs, in_owners),
                     Files(_split(out_paths), out_sigs, array("I", out_owners)), symlinks, bases, dirs,
                     order, real, array("d", durations), (starts, dependents), list(map(order.__getitem__, real)))
        for files in (record.inputs, record.outputs):
            if len(files.sigs) != _SIG.size * len(files.paths) or len(files.owners) != len(files.paths):
                raise ValueError("columns of different lengths")
        if len(record.durations) != len(real):
            raise ValueError("columns of different lengths")
        return record

    def downstream(self, positions: Iterable[int]) -> set[int]:
        """`positions` in the order and everything that depends on them, directly or not."""
        starts, dependents = self.dependents
        found: set[int] = set()
        stack = list(positions)
        while stack:
            p = stack.pop()
            if p not in found:
                found.add(p)
                stack.extend(dependents[starts[p]:starts[p + 1]])
        return found


def _split(joined: str) -> list[str]:
    """The inverse of "\0".join (no path or task name holds a NUL character; none is empty)."""
    return joined.split("\0") if joined else []


class Changes(NamedTuple):
    """What changed since the recorded build: the tasks whose inputs, tools or outputs differ now (each must be
    checked again, and everything downstream of it); none at all is a no-op."""

    record: Record
    dirty: frozenset[str]
    dirs: bool  # a directory globs searched changed: the record's directory list is stale
    dirty_at: tuple[int, ...]  # the dirty tasks' positions in the record's order


def record_path(root: Path) -> Path:
    return root / ".gaffer" / "noop"


def state_signature(root: Path) -> Sig | None:
    try:
        st = os.stat(root / ".gaffer" / "state")
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def check(graph_path: str, targets: Sequence[str]) -> Changes | None:
    """The changes since the last successful build of `targets`, found by `stat` calls alone; None when that
    cannot be known this way (no record, another graph file, targets, environment or gaffer): a full build."""
    try:
        real = os.path.realpath(graph_path)
        st = os.stat(real)
        graph_sig = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        root = Path(workspace_root(graph_path))
        with open(record_path(root), "rb") as f:
            record = Record.load(f.read())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if (record.version, record.graph, record.graph_sig, record.targets, record.state_sig) != (
        __version__, real, graph_sig, tuple(targets), state_signature(root)
    ):
        return None
    environ = os.environ
    for name, value in record.env:
        if environ.get(name) != value:
            return None
    try:  # workspace files are looked up from the workspace: shorter paths for the kernel to walk
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        dirty: set[int] = set()
        inputs, outputs = record.inputs, record.outputs
        for i in changed(inputs, os.stat, top):
            dirty.update(inputs.owners[i])
        dirty.update(outputs.owners[i] for i in changed(outputs, os.lstat, top))
        for path, target, owner in record.symlinks:
            try:
                if os.readlink(path, dir_fd=top) != target:
                    dirty.add(owner)
            except OSError:
                dirty.add(owner)
    finally:
        os.close(top)
    changed_dirs = []
    stat = os.stat
    for path, dir_sig in record.dirs:
        try:
            st = stat(path)
        except OSError:
            changed_dirs.append(path)
            continue
        if (st.st_mtime_ns, st.st_ino) != dir_sig:
            changed_dirs.append(path)
    for base, _dots, owners in record.bases if changed_dirs else ():  # a file added or removed where globs look
        top_dir = f"{root}/{base}" if base else str(root)
        inside = top_dir + "/"
        if any(path == top_dir or path.startswith(inside) for path in changed_dirs):
            dirty.update(owners)
    names, at = record.names, record.real
    try:
        return Changes(record, frozenset(names[i] for i in dirty), bool(changed_dirs), tuple(at[i] for i in dirty))
    except IndexError:  # a damaged record naming a task it does not hold: no record
        return None


def changed(files: Files, stat: Callable[..., os.stat_result], top: int) -> list[int]:
    """The positions of `files` whose signature differs now (`stat`: os.stat or os.lstat, relative paths from
    the directory `top`). Every signature is taken, packed all at once and compared with the recorded ones in
    one go; only when they differ are they compared block by block, then one by one."""
    live: list[int] = []
    extend = live.extend
    for path in files.paths:
        try:
            st = stat(path, dir_fd=top)
        except OSError:
            extend(_MISSING)
            continue
        extend((st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    recorded = files.sigs
    try:  # as _SIG packs them while every inode number is below 2**63 (always, but on a few file systems)
        now = struct.pack(f"<{len(live)}q", *live)
    except struct.error:
        try:
            now = struct.pack(f"<{'qqQq' * len(files.paths)}", *live)  # exact, but the format takes a while
        except struct.error:  # a value no signature can be recorded with (write_record would not have): changed
            return [i for i in range(len(files.paths)) if not _same(live, i, recorded)]
    if now == recorded:
        return []
    size, block = _SIG.size, _SIG.size * _BLOCK
    found: list[int] = []
    for start in range(0, len(recorded), block):
        end = start + block
        if now[start:end] != recorded[start:end]:
            found.extend(at // size for at in range(start, min(end, len(recorded)), size)
                         if now[at:at + size] != recorded[at:at + size])
    return found


def _same(live: list[int], i: int, recorded: bytes) -> bool:
    try:
        return _SIG.pack(*live[4 * i:4 * i + 4]) == recorded[_SIG.size * i:_SIG.size * (i + 1)]
    except struct.error:
        return False


def discard(root: Path) -> None:
    """Forget the record (a full build is starting: until it succeeds, nothing is known to be up to date)."""
    try:
        os.unlink(record_path(root))
    except FileNotFoundError:
        pass


def write_record(build: Build, targets: Sequence[str]) -> None:
    """Record a successful build. Skipped when a signature is racy: the file (or directory, or the graph file)
    was modified in or after the file-system timestamp tick the build began in, so it could still change
    without its signature changing. An incremental build keeps what the previous record says of the tasks it
    settled (their files were found unchanged) and records the tasks it checked afresh."""
    from gaffer.digest import is_racy

    graph = build.graph
    moment = build.stat_cache.moment
    since = build.since
    found = _Found()
    if since is None:
        names: list[str] = []
        real = array("I")
        for at, name in enumerate(build.order):
            if name not in graph.groups:
                if not found.add(build, name, len(names)):
                    return
                names.append(name)
                real.append(at)
        durations = array("d", found.durations.values())
        inputs, outputs = found.inputs_files(), found.outputs_files()
        if inputs is None or outputs is None:
            return
        symlinks, bases, dirs = found.symlinks, _bases(found.bases), build.plan.input_dirs
        dependents = _dependents(build.order, graph.deps)
    else:
        old = since.record  # of the same graph and targets: the same order, tasks and dependents
        names, real, durations, dependents = old.names, old.real, array("d", old.durations), old.dependents
        position = dict(zip(names, range(len(names)), strict=True))
        for name in build.plan.tasks:  # every task the build checked (the others it settled)
            index = position.get(name)
            if index is None or not found.add(build, name, index):
                return
            durations[index] = found.durations[index]
        merged = _merge(old, found)
        if merged is None:
            return
        inputs, outputs, symlinks, bases = merged
        # After a directory changed, walk again everything globs look at: the record holds every directory below.
        dirs = (directory_signatures(str(graph.root), {(b, d) for b, d, _o in bases}) if since.dirs
                else list(old.dirs))
    if any(sig[0] >= moment for _p, sig in dirs):
        return
    if is_racy(graph.signature, moment):
        return
    state_sig = state_signature(graph.root)
    if state_sig is None:
        return
    record = Record(_FORMAT, __version__, os.path.realpath(graph.path), graph.signature, graph.digest, state_sig,
                    tuple(targets), tuple((n, os.environ.get(n)) for n in sorted(found.env_names)), inputs, outputs,
                    tuple(symlinks), tuple(bases), tuple(dirs), build.order, real, durations, dependents, names)
    # marshal's version 2: without the back-references of later versions (which a record, all big columns,
    # has no use for) it is dumped and loaded a third faster.
    save_bytes(record_path(graph.root), marshal.dumps(record.stored(), 2))  # type: ignore[arg-type]


def _dependents(order: list[str], deps: Mapping[str, Sequence[str]]) -> tuple[array[int], array[int]]:
    """Record.dependents: who depends on each task or group of `order` (which holds every dep of its own)."""
    position = dict(zip(order, range(len(order)), strict=True))
    found: list[list[int]] = [[] for _ in order]
    for at, name in enumerate(order):
        for dep in deps[name]:
            found[position[dep]].append(at)
    starts, dependents = array("I", [0]), array("I")
    for those in found:
        dependents.extend(those)
        starts.append(len(dependents))
    return starts, dependents


class _Found:
    """What the tasks a build checked saw, gathered for the record (each task numbered by its index in it)."""

    def __init__(self) -> None:
        self.env_names: set[str] = set()
        self.inputs: dict[str, tuple[Sig, list[int]]] = {}  # a file many tasks read is listed once
        self.outputs: list[tuple[str, Sig, int]] = []
        self.symlinks: list[tuple[str, str, int]] = []
        self.bases: dict[tuple[str, int], list[int]] = {}  # (where a glob walks, how) -> the tasks whose globs
        self.durations: dict[int, float] = {}

    def add(self, build: Build, name: str, index: int) -> bool:
        """Add task `name`; False when nothing can be recorded (a task that always runs, a racy input...)."""
        from gaffer.records import left_remote
        from gaffer.tools import ENVIRONMENT as TOOL_ENVIRONMENT

        task = build.graph.tasks[name]
        if not task.cache:
            return False  # a `cache: false` task always runs: never a whole-build no-op
        self.env_names.update(task.env)
        fingerprint = build.fingerprints[name]
        if fingerprint.racy:
            return False  # an input was too fresh to trust its signature
        for rel, sig in fingerprint.inputs:
            if sig is None or not self._own(rel, sig, index):
                return False
        if fingerprint.tools:  # the task's tools: the files found (racy ones made the fingerprint racy) and PATH
            for signatures in fingerprint.tools:
                for path, sig in signatures:
                    if not self._own(path, sig, index):
                        return False
            self.env_names.update(TOOL_ENVIRONMENT)
        records = build.outputs[name]
        if left_remote(records):
            return False  # left on the remote: only the remote can say whether they are still there
        # An output directory's signature changes when a stray file lands in it: the full build removes it.
        self.outputs.extend((f.path, f.sig, index) for f in records.files)  # type: ignore[misc]  # not remote
        self.outputs.extend((d.path, d.sig, index) for d in records.directories)  # type: ignore[misc]
        self.symlinks.extend((s.path, s.target, index) for s in records.symlinks)
        for base in directory_bases(task.inputs, {rel for rel, _sig in fingerprint.inputs}):
            self.bases.setdefault(base, []).append(index)
        state = build.state.tasks.get(name)
        if state is None:
            return False
        self.durations[index] = state.duration_s
        return True

    def _own(self, path: str, sig: Sig, index: int) -> bool:
        """Record a file's signature and that task `index` reads it. False when another task saw it with another
        signature: it changed during the build (after the check that settled a task, say), so no record can
        say what the tasks were built from."""
        entry = self.inputs.get(path)
        if entry is None:
            self.inputs[path] = (sig, [index])
            return True
        entry[1].append(index)
        return entry[0] == sig

    def inputs_files(self) -> Files | None:
        """The inputs as columns; None if a signature cannot be packed (no record)."""
        packed = _pack(sig for sig, _owners in self.inputs.values())
        if packed is None:
            return None
        return Files(list(self.inputs), packed, [tuple(owners) for _sig, owners in self.inputs.values()])

    def outputs_files(self) -> Files | None:
        packed = _pack(sig for _path, sig, _owner in self.outputs)
        if packed is None:
            return None
        return Files([path for path, _sig, _owner in self.outputs], packed, [owner for *_e, owner in self.outputs])


def _pack(sigs: Iterable[Sig]) -> bytes | None:
    try:
        return b"".join(_SIG.pack(*sig) for sig in sigs)
    except struct.error:
        return None


def _merge(old: Record, found: _Found) -> tuple[Files, Files, list[tuple[str, str, int]],
                                               list[tuple[str, int, tuple[int, ...]]]] | None:
    """The new record's files: what the previous record says of every task but those the build checked (the
    same graph and targets number them the same), whose files were found unchanged, and what the checked ones
    saw. An entry without a checked task is kept as it was, copied with its neighbours as one slice of each
    column (an edit of one task copies no other entry one by one); a file a checked task read that the old
    entry's other tasks read too joins its entry. None if that file has changed since (no record). A file a
    checked task reads for the first time that untouched tasks read as well is listed twice, once for each:
    each entry makes its own tasks dirty when the file differs from what they were built from."""
    checked = found.durations.keys()
    found.env_names.update(name for name, _value in old.env)  # a superset is harmless: the same graph declares them
    touched = [i for i, owners in enumerate(old.inputs.owners) if not checked.isdisjoint(owners)]
    paths, sigs, owners = _without(old.inputs, touched, [])
    size = _SIG.size
    for i in touched:
        left = tuple(o for o in old.inputs.owners[i] if o not in checked)
        if not left:
            continue
        path, sig = old.inputs.paths[i], old.inputs.sigs[size * i:size * (i + 1)]
        shared = found.inputs.get(path)
        if shared is None:
            paths.append(path)
            sigs.append(sig)
            owners.append(left)
        elif _pack((shared[0],)) != sig:
            return None
        else:
            shared[1].extend(left)
    new_inputs = found.inputs_files()
    out_paths, out_sigs, out_owners = _without(old.outputs, _find(old.outputs.owners, checked), array("I"))
    new_outputs = found.outputs_files()
    if new_inputs is None or new_outputs is None:
        return None
    owners += new_inputs.owners
    out_owners += array("I", new_outputs.owners)
    inputs = Files(paths + new_inputs.paths, b"".join(sigs) + new_inputs.sigs, owners)
    outputs = Files(out_paths + new_outputs.paths, b"".join(out_sigs) + new_outputs.sigs, out_owners)
    symlinks = [entry for entry in old.symlinks if entry[2] not in checked] + found.symlinks
    bases = found.bases
    for base, dots, watchers in old.bases:
        left = watchers if checked.isdisjoint(watchers) else tuple(i for i in watchers if i not in checked)
        if left:
            bases.setdefault((base, dots), []).extend(left)
    return inputs, outputs, symlinks, _bases(bases)


def _bases(bases: dict[tuple[str, int], list[int]]) -> list[tuple[str, int, tuple[int, ...]]]:
    return [(base, dots, tuple(watchers)) for (base, dots), watchers in bases.items()]


def _find(column: array[int], wanted: Collection[int]) -> list[int]:
    """The positions in `column` holding one of `wanted`, ascending; a few are searched for by the array
    itself (an edit checks a few tasks), many in one pass."""
    if len(wanted) > 8:
        return [i for i, value in enumerate(column) if value in wanted]
    found = []
    for value in wanted:
        at = 0
        while True:
            try:
                at = column.index(value, at)
            except ValueError:
                break
            found.append(at)
            at += 1
    return sorted(found)


def _without(files: Files, gone: list[int], owners: Any) -> tuple[list[str], list[bytes], Any]:
    """The columns of `files` without the positions `gone` (ascending), in slices between them; the owners
    added to `owners` (an empty list or array of the same kind as `files.owners`)."""
    paths: list[str] = []
    sigs: list[bytes] = []
    size, start = _SIG.size, 0
    for stop in [*gone, len(files.paths)]:
        if stop > start:
            paths += files.paths[start:stop]
            sigs.append(files.sigs[size * start:size * stop])
            owners += files.owners[start:stop]
        start = stop + 1
    return paths, sigs, owners


def directory_bases(patterns: Iterable[str], resolved: set[str]) -> Iterable[tuple[str, int]]:
    """The directories inputs were searched in, each with how far a walk below it enters dot-directories
    (`_NO_DOTS`, `_DOTS`, `_ALL_DOTS`, as the glob walker in graph/inputs.py does): each glob's literal prefix,
    and literal paths that named a directory (a literal that resolved to itself is a plain file: its own
    signature covers it; a directory is walked like `dir/**`, which enters no dot-directory)."""
    from gaffer.graph.inputs import _LITERAL_ONLY  # the walker's own rule (loaded already: only plans call this)

    for pattern in patterns:
        parts = pattern.split("/")
        literal = []
        for part in parts:
            if _GLOB_CHARS.intersection(part):
                break
            literal.append(part)
        if len(literal) < len(parts):
            rest = parts[len(literal):]
            dots = (_ALL_DOTS if _LITERAL_ONLY.intersection(rest)
                    else _DOTS if any(part[0] == "." for part in rest) else _NO_DOTS)
            yield "/".join(literal), dots
        elif pattern not in resolved:
            yield pattern, _NO_DOTS


def directory_signatures(root: str, bases: set[tuple[str, int]]) -> list[tuple[str, tuple[int, int]]]:
    """(path, (mtime_ns, inode)) of every directory below the bases that a glob could enter: adding or removing
    a file changes one. Dot-directories only where a pattern names them, so `.git`'s churn is no change."""
    from gaffer.graph.inputs import _LITERAL_ONLY

    seen: dict[str, tuple[int, int]] = {}
    for base, dots in sorted(bases):
        top = f"{root}/{base}" if base else root
        for dirpath, dirnames, _files in os.walk(top):
            if dots != _ALL_DOTS:
                dirnames[:] = [d for d in dirnames
                               if d[0] != "." or (dots == _DOTS and d not in _LITERAL_ONLY)]
            if dirpath not in seen:
                st = os.stat(dirpath)
                seen[dirpath] = (st.st_mtime_ns, st.st_ino)
    return list(seen.items())
