"""Resolve a task's input patterns to the workspace files they name.

This runs for every task on every build, a no-op build included, so the common case is kept to one system
call: a literal path (no `*`, `?` or `[`) is a single `os.lstat`. A glob walks with `os.scandir` only below its
longest literal prefix, matches one path component at a time (so `src/*/x.c` never lists `src/a/b/`), and does
not enter dot-directories unless the pattern names them (`.git` and `.gaffer` only when named literally).
Directories are never inputs themselves: a pattern matching one adds nothing, a literal path naming one adds
every file below it (like `dir/**`).

Symlinks: a symlink to a regular file inside the workspace is an input, listed under its own path; one leading
outside the workspace is an error. A glob skips symlinks to directories (it does not descend through them) and
broken ones; a literal path naming one is walked or refused. The literal prefix of a glob and a literal
directory are resolved once (realpath) to check they stay inside; for a literal file only the last component
is checked, which keeps that case at one system call.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from gaffer.errors import UserError, not_utf8
from gaffer.graph.model import Task, shown_path

_ANY_DEPTH = "**"
_LITERAL_ONLY = frozenset({".git", ".gaffer"})  # entered only when a pattern spells the name out
_GLOB_CHARS = re.compile(r"[*?[]")


class BadInput(UserError):
    """A task's input that cannot be resolved: `input` is the pattern (or the file it matched) at fault."""

    def __init__(self, message: str, input: str) -> None:
        super().__init__(message)
        self.input = input


class _NoInput(Exception):
    """What is wrong with one pattern; `resolve_inputs` adds the graph file, the task and the pattern."""


class _Component(NamedTuple):
    text: str  # as written: "**", a literal name, or a wildcard
    literal: bool
    match: Callable[[str], object] | None  # for wildcards: the compiled fnmatch regex


class _Glob(NamedTuple):
    prefix: str  # the leading literal components ("" for none)
    parts: tuple[_Component, ...]  # the rest; the first one is not literal
    closures: tuple[frozenset[int], ...]  # state i -> the states reached without consuming a name (past "**")


def resolve_inputs(root: Path, task: Task, graph_path: Path) -> list[str]:
    """The sorted, unique workspace-relative posix paths of the regular files (and symlinks to files inside
    the workspace) the task's input patterns match. A pattern that matches nothing -> BadInput naming the
    graph file, the task and the pattern. A match outside the workspace (through a symlink) -> BadInput."""
    base = os.fspath(root).rstrip("/") + "/"
    found: set[str] = set()
    for pattern in task.inputs:
        try:
            if "*" in pattern or "?" in pattern or "[" in pattern:
                _glob(base, pattern, found)
            else:
                _literal(base, pattern, found)
        except _NoInput as e:
            raise BadInput(f"{shown_path(graph_path)}: task {task.name!r}: input {pattern!r} {e}", pattern) from None
    for path in found:
        shown = None if path.isascii() else not_utf8(path)  # the common case inline: this runs per input file
        if shown is not None:
            raise BadInput(f"{shown_path(graph_path)}: task {task.name!r}: input file '{shown}' has a name that is not"
                           " UTF-8, which cache keys cannot hold: rename it", shown)
    return sorted(found)


def _literal(base: str, path: str, found: set[str]) -> None:
    full = base if path == "." else base + path
    try:
        mode = os.lstat(full).st_mode
    except FileNotFoundError:
        raise _NoInput("does not exist") from None
    except NotADirectoryError:
        raise _NoInput("does not exist (a parent is a file)") from None
    except OSError as e:
        raise _NoInput(f"cannot be read: {e.strerror}") from None
    if stat.S_ISREG(mode):
        found.add(path)
        return
    if stat.S_ISLNK(mode):
        try:
            mode = os.stat(_inside(base, full, path)).st_mode
        except OSError:
            raise _NoInput("is a broken symlink") from None
        if stat.S_ISREG(mode):
            found.add(path)
            return
    elif stat.S_ISDIR(mode):
        _inside(base, full, path)
    if not stat.S_ISDIR(mode):
        raise _NoInput("is not a regular file or directory")
    rel = "" if path == "." else path + "/"
    if not _walk(base, full, rel, _WHOLE_TREE, frozenset({0}), found):
        raise _NoInput("is a directory with no files")


def _glob(base: str, pattern: str, found: set[str]) -> None:
    glob = _compile(pattern)
    start = base + glob.prefix
    if glob.prefix:
        if not os.path.isdir(start):
            raise _NoInput("matches no files")
        _inside(base, start, glob.prefix)
    rel = glob.prefix + "/" if glob.prefix else ""
    if not _walk(base, start, rel, glob, frozenset({0}), found):
        raise _NoInput("matches no files")


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> _Glob:
    """Split and compile a pattern once, however many builds or tasks use it."""
    names = pattern.split("/")
    first = next(i for i, name in enumerate(names) if _GLOB_CHARS.search(name))
    parts = tuple(
        _Component(name, False, None) if name == _ANY_DEPTH
        else _Component(name, True, None) if not _GLOB_CHARS.search(name)
        else _Component(name, False, re.compile(fnmatch.translate(name)).match)
        for name in names[first:]
    )
    closures: list[frozenset[int]] = []
    for i in range(len(parts) + 1):
        reach = {i}
        while i < len(parts) and parts[i].text == _ANY_DEPTH:
            i += 1
            reach.add(i)
        closures.append(frozenset(reach))
    return _Glob("/".join(names[:first]), parts, tuple(closures))


_WHOLE_TREE = _compile("**")  # what a literal directory means: every file below it


def _walk(
    base: str,
    directory: str,
    rel: str,
    glob: _Glob,
    states: frozenset[int],
    found: set[str],
) -> int:
    """Match the entries of `directory` (workspace path `rel`, "" or ending in "/") against the pattern parts
    still to match in `states`; recurse into the directories that can still lead to a match. Returns the number
    of files matched (duplicates included) so an unmatched pattern can be reported."""
    parts = glob.parts
    last = len(parts) - 1
    active: set[int] = set()
    for i in states:
        active |= glob.closures[i]
    any_file = last + 1 in active  # a trailing "**" was reached: every file from here down matches
    file_part = parts[last] if last in active and parts[last].text != _ANY_DEPTH else None
    count = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                if entry.is_dir(follow_symlinks=False):
                    below = frozenset(j for i in active if i <= last for j in _steps(parts[i], i, last, name))
                    if below:
                        count += _walk(base, entry.path, rel + name + "/", glob, below, found)
                elif any_file or (file_part is not None and _matches(file_part, name)):
                    path = rel + name
                    if entry.is_file(follow_symlinks=False) or (
                        entry.is_symlink() and _link_to_file(base, entry, path)
                    ):
                        found.add(path)
                        count += 1
    except (FileNotFoundError, NotADirectoryError):
        return count
    except OSError as e:
        raise _NoInput(f"cannot list {rel or '.'}: {e.strerror}") from None
    return count


def _steps(part: _Component, i: int, last: int, name: str) -> tuple[int, ...]:
    """The states a directory called `name` leads to from state i. A directory matching the last part is not
    an input, so it leads nowhere; "**" and wildcards do not enter dot-directories."""
    if part.text == _ANY_DEPTH:
        return () if name[0] == "." else (i,)
    if i == last:
        return ()
    if name[0] == "." and not part.literal and (name in _LITERAL_ONLY or not part.text.startswith(".")):
        return ()
    return (i + 1,) if _matches(part, name) else ()


def _matches(part: _Component, name: str) -> bool:
    if part.literal:
        return name == part.text
    assert part.match is not None
    return part.match(name) is not None


def _link_to_file(base: str, entry: os.DirEntry[str], rel: str) -> bool:
    """A symlink met while globbing: True if it points to a file in the workspace, an error if outside."""
    try:
        return stat.S_ISREG(os.stat(_inside(base, entry.path, rel)).st_mode)
    except OSError:
        return False


def _inside(base: str, path: str, rel: str) -> str:
    """`path` (workspace path `rel`) with every symlink resolved; refused if that leaves the workspace."""
    real = os.path.realpath(path)
    real_root = _real_root(base)
    if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
        raise _NoInput(f"leads outside the workspace through a symlink ({rel} -> {real})")
    return real


@functools.lru_cache(maxsize=16)
def _real_root(base: str) -> str:
    return os.path.realpath(base)
