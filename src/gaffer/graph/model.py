"""The in-memory build graph: what `load_graph` produces and the runner consumes.

Both classes are frozen: a loaded graph is validated once and then shared (by the scheduler, the key builder,
the UI) without anyone being able to change it behind the validation's back.
"""

from __future__ import annotations

import marshal
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from gaffer.errors import UserError

# Variables every task sees without their values being keyed: what they point at is keyed instead (PATH,
# GOROOT and GOTOOLCHAIN select the tools gaffer hashes, gaffer.tools), or they must not split keys (HOME).
DEFAULT_PASS_ENV = ("GOROOT", "GOTOOLCHAIN", "HOME", "PATH")


class Task(NamedTuple):
    """One node of the graph, normalized so that two spellings of the same task compare (and key) equal."""

    name: str
    commands: tuple[tuple[str, ...], ...]  # each an argv; a string command becomes ("sh", "-c", s)
    deps: tuple[str, ...]  # as written, order kept, duplicates removed
    inputs: tuple[str, ...]  # patterns, posix relative form (no "./"); "." is the whole workspace
    outputs: tuple[str, ...]  # posix relative paths, no trailing "/"
    env: tuple[str, ...]  # graph-level env names + task env names, sorted, unique
    timeout: float | None
    cache: bool
    description: str
    tools: tuple[str, ...] = ()  # graph-level + task tools, sorted, unique: names on PATH, "./rel" or "/abs" paths
    pass_env: tuple[str, ...] = ()  # DEFAULT_PASS_ENV + graph-level + task pass_env, minus `env`: sorted, unique
    sandbox: bool = False  # run in an exec root of its declared inputs only (not keyed: the same action either way)
    remote: bool = True  # may run on `gaffer run --remote`'s execution service (not keyed, as `sandbox`)

    @property
    def is_group(self) -> bool:
        """A task without commands only groups its deps: nothing to run, nothing to cache."""
        return not self.commands


class Tasks(Mapping[str, Task]):
    """A graph's tasks by name, in file order. Loaded from the validated copy, each is kept marshalled and made
    a `Task` when first asked for: an edit build of 10,000 tasks looks at a few (their deps, the groups and
    every output are in `Graph`'s own fields)."""

    __slots__ = ("_decoded", "_stored")

    def __init__(self, decoded: dict[str, Task], stored: dict[str, bytes] | None = None) -> None:
        self._decoded = decoded
        self._stored = stored  # every task (file order) when loaded from the copy, else None: all decoded

    def __getitem__(self, name: str) -> Task:
        found = self._decoded.get(name)
        if found is None:
            if self._stored is None:
                raise KeyError(name)
            found = self._decoded.setdefault(name, Task(*marshal.loads(self._stored[name])))
        return found

    def __contains__(self, name: object) -> bool:
        return name in (self._decoded if self._stored is None else self._stored)

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded if self._stored is None else self._stored)

    def __len__(self) -> int:
        return len(self._decoded if self._stored is None else self._stored)


class Deps(Mapping[str, tuple[str, ...]]):
    """Each task's deps (Graph.deps) as the validated copy holds them: a task's own from its `Task` (an edit
    build asks for those of the few tasks it checks), every task's from the marshalled map kept beside them,
    decoded when the whole map is walked (a full build's closure)."""

    __slots__ = ("_every", "_stored", "_tasks")

    def __init__(self, tasks: Tasks, stored: bytes) -> None:
        self._tasks = tasks
        self._stored = stored
        self._every: dict[str, tuple[str, ...]] | None = None

    def __getitem__(self, name: str) -> tuple[str, ...]:
        if self._every is not None:
            return self._every[name]
        return self._tasks[name].deps

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def _all(self) -> dict[str, tuple[str, ...]]:
        if self._every is None:
            self._every = marshal.loads(self._stored)
        return self._every

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._tasks)


class Graph(NamedTuple):
    path: Path  # the graph file (absolute)
    root: Path  # the workspace root: the graph file's directory (absolute, resolved)
    tasks: Mapping[str, Task]  # in file order
    platform: dict[str, str]
    signature: tuple[int, int, int, int]  # the graph file's stat signature as it was read
    digest: str  # the graph file's content digest (SHA-256), which its validated copy is kept by
    # Read from every task without making a Task of each:
    deps: Mapping[str, tuple[str, ...]]  # each task's deps (Task.deps)
    groups: frozenset[str]  # the tasks without commands
    outputs: frozenset[str]  # every task's declared outputs
    env: tuple[str, ...]  # every variable a task declares (sorted)
    sandboxed: bool  # a task is marked "sandbox": true

    def closure(self, targets: Sequence[str]) -> list[str]:
        """Targets and all their deps, in a topological order (deps first); all tasks when targets is empty.

        Unknown target -> UserError (with did-you-mean).
        """
        for target in targets:
            if target not in self.tasks:
                raise UserError(
                    f"{shown_path(self.path)}: unknown target {target!r}{did_you_mean(target, self.tasks)}"
                )
        return topological_order(self.deps, targets or self.deps, shown_path(self.path))


def topological_order(edges: Mapping[str, Sequence[str]], roots: Iterable[str], shown: str) -> list[str]:
    """`roots` and everything they depend on, deps first; a cycle -> UserError naming it.

    Depth-first post-order, roots and deps taken in the order written, so the order is the same on every run.
    Iterative, because a 10,000-task chain must not hit Python's recursion limit.
    """
    order: list[str] = []
    done: set[str] = set()
    on_path: set[str] = set()
    for root in roots:
        if root in done:
            continue
        on_path.add(root)
        stack = [(root, iter(edges[root]))]
        while stack:
            name, deps = stack[-1]
            for dep in deps:
                if dep in done:
                    continue
                if dep in on_path:
                    path = [n for n, _ in stack]
                    cycle = " -> ".join(path[path.index(dep) :] + [dep])
                    raise UserError(f"{shown}: dependency cycle: {cycle}")
                on_path.add(dep)
                stack.append((dep, iter(edges[dep])))
                break
            else:
                stack.pop()
                on_path.discard(name)
                done.add(name)
                order.append(name)
    return order


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `choices`, or "" when nothing is close."""
    import difflib  # only for a mistake: not on every build's path

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def shown_path(path: Path) -> str:
    """A path as the user most likely typed it: relative when it is below the current directory."""
    text = os.fspath(path)
    try:
        rel = os.path.relpath(text)
    except (ValueError, OSError):  # another drive, or the current directory is gone
        return text
    return text if rel == ".." or rel.startswith("../") else rel
