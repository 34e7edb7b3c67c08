"""Planning a build: for each task of the targets' closure, the input files its patterns match now, its real
deps (groups flattened) and its tools, all resolved before anything runs so that a bad glob or a missing tool
stops the build at once (exit status 2). `gaffer run` and `gaffer explain` plan the same way."""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import NamedTuple

from gaffer import noop
from gaffer.errors import UserError
from gaffer.graph import Graph, Task
from gaffer.graph.inputs import BadInput, resolve_inputs
from gaffer.graph.model import shown_path
from gaffer.tools import Tool, Toolchain, ToolNotFound, task_tools


class PlannedTask(NamedTuple):
    """What a task's key is made of, besides its deps' outputs (known only once they have run)."""

    task: Task
    inputs: tuple[str, ...]  # workspace-relative input files, as the patterns resolved
    deps: tuple[str, ...]  # the tasks whose outputs it sees: a dep on a group is a dep on everything it groups
    tools: tuple[Tool, ...]


class Plan(NamedTuple):
    tasks: dict[str, PlannedTask]  # every non-group task of the closure
    input_dirs: list[tuple[str, tuple[int, int]]]  # the directories globs searched, for the whole-build record


def make_plan(graph: Graph, order: Sequence[str], toolchain: Toolchain) -> Plan:
    """Resolve the inputs, deps and tools of every task in `order`. Files under any declared output are never
    inputs: a glob like `**/*.go` must not pick up build results."""
    produced = graph.outputs
    tasks: dict[str, PlannedTask] = {}
    bases: set[tuple[str, int]] = set()
    for name in order:
        task = graph.tasks[name]
        if task.is_group:
            continue
        paths = resolve_inputs(graph.root, task, graph.path)
        if produced:
            paths = [p for p in paths if not _under_any(p, produced)]
        try:
            tools = tuple(toolchain.find(spec) for spec in task_tools(task, lambda p: _under_any(p, produced)))
        except ToolNotFound as e:
            raise UserError(f"{shown_path(graph.path)}: task {name!r}: {e}") from None
        tasks[name] = PlannedTask(task, tuple(paths), real_deps(graph, task), tools)
        bases.update(noop.directory_bases(task.inputs, set(paths)))
    return Plan(tasks, noop.directory_signatures(str(graph.root), bases))


def input_added(graph: Graph, planned: PlannedTask) -> str | None:
    """A file the task's globs or directory inputs match now but did not when it was planned (added while it
    ran, or before it started): its key does not cover it, though the task may have read it. Tasks whose
    inputs are all literal files are not looked at again (each file's own stat covers it)."""
    task = planned.task
    planned_inputs = set(planned.inputs)
    if next(iter(noop.directory_bases(task.inputs, planned_inputs)), None) is None:
        return None
    try:
        now = resolve_inputs(graph.root, task, graph.path)
    except BadInput as e:  # a pattern that matches nothing now, or leads out of the workspace: not what was keyed
        return e.input
    produced = graph.outputs
    return next((p for p in now if p not in planned_inputs and not _under_any(p, produced)), None)


def real_deps(graph: Graph, task: Task) -> tuple[str, ...]:
    """A dep on a group is a dep on everything it groups: their outputs are this task's inputs."""
    real: set[str] = set()
    stack = list(task.deps)
    visited: set[str] = set()
    while stack:
        dep = stack.pop()
        if dep in visited:
            continue
        visited.add(dep)
        if dep in graph.groups:
            stack.extend(graph.deps[dep])
        else:
            real.add(dep)
    return tuple(sorted(real))


def _under_any(path: str, outputs: AbstractSet[str]) -> bool:
    """Is `path` a declared output or inside one? (A set lookup per ancestor: graphs have 10,000s of outputs.)"""
    while path:
        if path in outputs:
            return True
        path = path.rpartition("/")[0]
    return False
