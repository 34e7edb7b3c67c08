"""The whole-build fast path: decide "nothing to do" from `stat` calls alone, as ninja does.

After a successful build, `write_record` stores what that build saw: the graph file's stat signature, the
targets, the values of every declared env var (and of PATH when a task runs tools), the stat signature of
every input and tool file (taken *before* the tasks used them) and every output (taken right after they were
made), and the signatures of the directories that glob and directory inputs were found in (a file added or
removed there changes its directory's mtime).

`check` compares all of that with the file system now. If nothing differs, every task would be "up to date"
in the per-task check too, so the build is a no-op without even loading the graph file. Anything that differs,
or a record that cannot be read, falls back to the full build, which is always correct.
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

_FORMAT = 2
_GLOB_CHARS = frozenset("*?[")
_NO_DOTS, _DOTS, _ALL_DOTS = 0, 1, 2  # how far a glob below a directory may enter dot-directories


class Record(NamedTuple):
    """What a successful build saw; stored as a plain tuple (marshal holds no named types)."""

    format: int
    version: str
    graph: str  # the graph file's real path
    graph_sig: tuple[int, int, int, int]
    targets: tuple[str, ...]
    env: tuple[tuple[str, str | None], ...]  # (name, value or None if unset)
    inputs: tuple[tuple[str, tuple[int, int, int, int]], ...]  # (absolute path, stat signature), tools' too
    outputs: tuple[tuple[str, tuple[int, int, int, int] | None], ...]  # output files and directories (lstat)
    symlinks: tuple[tuple[str, str], ...]  # (absolute path, target)
    dirs: tuple[tuple[str, tuple[int, int]], ...]  # directories globs searched: (path, (mtime_ns, inode))
    tasks: tuple[tuple[str, float], ...]  # (task, its last execution time)


def record_path(root: Path) -> Path:
    return root / ".gaffer" / "noop"


def check(graph_path: str, targets: Sequence[str]) -> list[tuple[str, float]] | None:
    """[(task, its last execution time)] if nothing changed since the last successful build of `targets`."""
    try:
        real = os.path.realpath(graph_path)
        st = os.stat(real)
        graph_sig = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        with open(record_path(Path(workspace_root(graph_path))), "rb") as f:
            record = Record(*marshal.loads(f.read()))
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if (record.format, record.version, record.graph, record.graph_sig, record.targets) != (
        _FORMAT, __version__, real, graph_sig, tuple(targets)
    ):
        return None
    environ = os.environ
    for name, value in record.env:
        if environ.get(name) != value:
            return None
    stat, lstat = os.stat, os.lstat
    try:
        for path, sig in record.inputs:
            st = stat(path)
            if (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns) != sig:
                return None
        for path, out_sig in record.outputs:
            st = lstat(path)
            if (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns) != out_sig:
                return None
        for path, target in record.symlinks:
            if os.readlink(path) != target:
                return None
        for path, dir_sig in record.dirs:
            st = stat(path)
            if (st.st_mtime_ns, st.st_ino) != dir_sig:
                return None
    except OSError:
        return None
    return list(record.tasks)


def discard(root: Path) -> None:
    """Forget the record (a full build is starting: until it succeeds, nothing is known to be up to date)."""
    try:
        os.unlink(record_path(root))
    except FileNotFoundError:
        pass


def write_record(build: Build, targets: Sequence[str]) -> None:
    """Record a successful build. Skipped when a signature is racy: the file (or directory, or the graph file)
    was modified in or after the file-system timestamp tick the build began in, so it could still change
    without its signature changing."""
    from gaffer.digest import is_racy
    from gaffer.records import left_remote
    from gaffer.tools import ENVIRONMENT as TOOL_ENVIRONMENT

    graph = build.graph
    root = str(graph.root)
    moment = build.stat_cache.moment
    env_names: set[str] = set()
    inputs: dict[str, tuple[int, int, int, int]] = {}
    outputs: list[tuple[str, tuple[int, int, int, int] | None]] = []  # None only in a dry run (which records nothing)
    symlinks: list[tuple[str, str]] = []
    tasks: list[tuple[str, float]] = []
    for name in build.order:
        task = graph.tasks[name]
        if task.is_group:
            continue
        if not task.cache:
            return  # a `cache: false` task always runs: never a whole-build no-op
        env_names.update(task.env)
        fingerprint = build.fingerprints[name]
        if fingerprint.racy:
            return  # an input was too fresh to trust its signature
        for rel, sig in fingerprint.inputs:
            if sig is None:
                return
            inputs[f"{root}/{rel}"] = sig
        if fingerprint.tools:  # the task's tools: the files found (racy ones made the fingerprint racy) and PATH
            inputs.update(signature for signatures in fingerprint.tools for signature in signatures)
            env_names.update(TOOL_ENVIRONMENT)
        records = build.outputs[name]
        if left_remote(records):
            return  # left on the remote: only the remote can say whether they are still there
        # An output directory's signature changes when a stray file lands in it: the full build removes it.
        outputs.extend((f"{root}/{f.path}", f.sig) for f in records.files)
        outputs.extend((f"{root}/{d.path}", d.sig) for d in records.directories)
        symlinks.extend((f"{root}/{s.path}", s.target) for s in records.symlinks)
        state = build.state.tasks.get(name)
        if state is None:
            return
        tasks.append((name, state.duration_s))
    dirs = build.plan.input_dirs
    if any(sig[0] >= moment for _p, sig in dirs):
        return
    if is_racy(graph.signature, moment):
        return
    record = Record(_FORMAT, __version__, os.path.realpath(graph.path), graph.signature, tuple(targets),
                    tuple((n, os.environ.get(n)) for n in sorted(env_names)), tuple(inputs.items()),
                    tuple(outputs), tuple(symlinks), tuple(dirs), tuple(tasks))
    save_marshalled(record_path(graph.root), tuple(record))


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
