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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from gaffer import __version__
from gaffer.atomic import save_marshalled
from gaffer.workspace import workspace_root

if TYPE_CHECKING:
    from gaffer.build import Build

_FORMAT = 4
_GLOB_CHARS = frozenset("*?[")
_NO_DOTS, _DOTS, _ALL_DOTS = 0, 1, 2  # how far a glob below a directory may enter dot-directories

Sig = tuple[int, int, int, int]


class Record(NamedTuple):
    """What a successful build saw; stored as a plain tuple (marshal holds no named types). Each file names the
    tasks it belongs to (their indices in `tasks`), so that a change points at the tasks to check again."""

    format: int
    version: str
    graph: str  # the graph file's real path
    graph_sig: Sig
    state_sig: Sig  # the build log the record was written with: the fingerprints and outputs it vouches for
    targets: tuple[str, ...]
    env: tuple[tuple[str, str | None], ...]  # (name, value or None if unset)
    inputs: tuple[tuple[str, Sig, tuple[int, ...]], ...]  # (absolute path, stat signature, tasks), tools' too
    outputs: tuple[tuple[str, Sig | None, int], ...]  # output files and directories (lstat), and their task
    symlinks: tuple[tuple[str, str, int], ...]  # (absolute path, target, task)
    bases: tuple[tuple[str, int, tuple[int, ...]], ...]  # where globs walk (directory_bases), and whose globs
    dirs: tuple[tuple[str, tuple[int, int]], ...]  # every directory below them: (path, (mtime_ns, inode))
    tasks: tuple[tuple[str, float], ...]  # (task, its last execution time)
    order: tuple[str, ...]  # the build's order (Graph.closure of the targets), groups included


class Changes(NamedTuple):
    """What changed since the recorded build: the tasks whose inputs, tools or outputs differ now (each must be
    checked again, and everything downstream of it); none at all is a no-op."""

    record: Record
    dirty: frozenset[str]
    dirs: bool  # a directory globs searched changed: the record's directory list is stale


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
            record = Record(*marshal.loads(f.read()))
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if (record.format, record.version, record.graph, record.graph_sig, record.targets, record.state_sig) != (
        _FORMAT, __version__, real, graph_sig, tuple(targets), state_signature(root)
    ):
        return None
    environ = os.environ
    for name, value in record.env:
        if environ.get(name) != value:
            return None
    stat, lstat, readlink = os.stat, os.lstat, os.readlink
    dirty: set[int] = set()
    for path, sig, owners in record.inputs:
        try:
            st = stat(path)
        except OSError:
            dirty.update(owners)
            continue
        if (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns) != sig:
            dirty.update(owners)
    for path, out_sig, owner in record.outputs:
        try:
            st = lstat(path)
        except OSError:
            dirty.add(owner)
            continue
        if (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns) != out_sig:
            dirty.add(owner)
    for path, target, owner in record.symlinks:
        try:
            if readlink(path) != target:
                dirty.add(owner)
        except OSError:
            dirty.add(owner)
    changed_dirs = []
    for path, dir_sig in record.dirs:
        try:
            st = stat(path)
        except OSError:
            changed_dirs.append(path)
            continue
        if (st.st_mtime_ns, st.st_ino) != dir_sig:
            changed_dirs.append(path)
    for base, _dots, owners in record.bases if changed_dirs else ():  # a file added or removed where globs look
        top = f"{root}/{base}" if base else str(root)
        inside = top + "/"
        if any(path == top or path.startswith(inside) for path in changed_dirs):
            dirty.update(owners)
    tasks = record.tasks
    return Changes(record, frozenset(tasks[i][0] for i in dirty), bool(changed_dirs))


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
    from gaffer.records import left_remote
    from gaffer.tools import ENVIRONMENT as TOOL_ENVIRONMENT

    graph = build.graph
    root = str(graph.root)
    moment = build.stat_cache.moment
    since, settled = build.since, build.settled
    env_names: set[str] = set()
    inputs: dict[str, tuple[Sig, list[int]]] = {}
    outputs: list[tuple[str, Sig | None, int]] = []  # None only in a dry run (which records nothing)
    symlinks: list[tuple[str, str, int]] = []
    bases: dict[tuple[str, int], list[int]] = {}
    tasks: list[tuple[str, float]] = []
    checked: set[int] = set()
    for name in build.order:
        if name in settled:  # never a group
            assert since is not None
            tasks.append(since.record.tasks[len(tasks)])
            continue
        task = graph.tasks[name]
        if task.is_group:
            continue
        index = len(tasks)
        checked.add(index)
        if not task.cache:
            return  # a `cache: false` task always runs: never a whole-build no-op
        env_names.update(task.env)
        fingerprint = build.fingerprints[name]
        if fingerprint.racy:
            return  # an input was too fresh to trust its signature
        for rel, sig in fingerprint.inputs:
            if sig is None:
                return
            if not _own(inputs, f"{root}/{rel}", sig, index):
                return
        if fingerprint.tools:  # the task's tools: the files found (racy ones made the fingerprint racy) and PATH
            for signatures in fingerprint.tools:
                for path, sig in signatures:
                    if not _own(inputs, path, sig, index):
                        return
            env_names.update(TOOL_ENVIRONMENT)
        records = build.outputs[name]
        if left_remote(records):
            return  # left on the remote: only the remote can say whether they are still there
        # An output directory's signature changes when a stray file lands in it: the full build removes it.
        outputs.extend((f"{root}/{f.path}", f.sig, index) for f in records.files)
        outputs.extend((f"{root}/{d.path}", d.sig, index) for d in records.directories)
        symlinks.extend((f"{root}/{s.path}", s.target, index) for s in records.symlinks)
        for base in directory_bases(task.inputs, {rel for rel, _sig in fingerprint.inputs}):
            bases.setdefault(base, []).append(index)
        state = build.state.tasks.get(name)
        if state is None:
            return
        tasks.append((name, state.duration_s))
    kept_inputs: list[tuple[str, Sig, tuple[int, ...]]] = []
    kept_bases: list[tuple[str, int, tuple[int, ...]]] = []
    if since is None:
        dirs = build.plan.input_dirs
    else:
        if not _keep(since.record, checked, env_names, inputs, kept_inputs, outputs, symlinks, bases, kept_bases):
            return
        # After a directory changed, walk again everything globs look at: the record holds every directory below.
        dirs = (directory_signatures(root, {(b, d) for b, d, _o in kept_bases} | set(bases)) if since.dirs
                else list(since.record.dirs))
    if any(sig[0] >= moment for _p, sig in dirs):
        return
    if is_racy(graph.signature, moment):
        return
    state_sig = state_signature(graph.root)
    if state_sig is None:
        return
    record = Record(_FORMAT, __version__, os.path.realpath(graph.path), graph.signature, state_sig, tuple(targets),
                    tuple((n, os.environ.get(n)) for n in sorted(env_names)),
                    (*kept_inputs, *((path, sig, tuple(indices)) for path, (sig, indices) in inputs.items())),
                    tuple(outputs), tuple(symlinks),
                    (*kept_bases, *((base, dots, tuple(indices)) for (base, dots), indices in bases.items())),
                    tuple(dirs), tuple(tasks), tuple(build.order))
    save_marshalled(record_path(graph.root), tuple(record))


def _keep(old: Record, checked: set[int], env_names: set[str], inputs: dict[str, tuple[Sig, list[int]]],
          kept_inputs: list[tuple[str, Sig, tuple[int, ...]]], outputs: list[tuple[str, Sig | None, int]],
          symlinks: list[tuple[str, str, int]], bases: dict[tuple[str, int], list[int]],
          kept_bases: list[tuple[str, int, tuple[int, ...]]]) -> bool:
    """Add what the previous record says of every task but those `checked` (indices; the same graph and
    targets number them the same) to the new record's parts: their files were found unchanged. An entry
    without a checked task is kept as it is (`kept_inputs`, `kept_bases`: an edit of one task copies no
    other); a file a checked task also read joins its entry in `inputs`. False if one has changed since."""
    env_names.update(name for name, _value in old.env)  # a superset is harmless: the same graph declares them
    for entry in old.inputs:
        path, sig, owners = entry
        left = owners if checked.isdisjoint(owners) else tuple(i for i in owners if i not in checked)
        if not left:
            continue
        shared = inputs.get(path)
        if shared is None:
            kept_inputs.append(entry if left is owners else (path, sig, left))
        elif shared[0] != sig:
            return False
        else:
            shared[1].extend(left)
    outputs.extend(entry for entry in old.outputs if entry[2] not in checked)
    symlinks.extend(entry for entry in old.symlinks if entry[2] not in checked)
    for found in old.bases:
        base, dots, watchers = found
        left = watchers if checked.isdisjoint(watchers) else tuple(i for i in watchers if i not in checked)
        if not left:
            continue
        if (base, dots) in bases:
            bases[base, dots].extend(left)
        else:
            kept_bases.append(found if left is watchers else (base, dots, left))
    return True


def _own(inputs: dict[str, tuple[Sig, list[int]]], path: str, sig: Sig, index: int) -> bool:
    """Record a file's signature and that task `index` reads it (a file many tasks read is listed once). False
    when another task saw it with another signature: it changed during the build (after the check that settled
    a task, say), so no record can say what the tasks were built from."""
    entry = inputs.get(path)
    if entry is None:
        inputs[path] = (sig, [index])
        return True
    entry[1].append(index)
    return entry[0] == sig


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
