"""`gaffer explain TASK`, and why a task must run: the differences between two manifests (what went into a
task's key when it last ran, and now). `gaffer run -v` and `--dry-run` give the first few as a task's reason."""

from __future__ import annotations

from gaffer.digest import StatCache
from gaffer.errors import UserError
from gaffer.graph import Graph
from gaffer.keys import KeyBuilder
from gaffer.plan import make_plan
from gaffer.state import STATE_DIR, Manifest, OutputRecords, WorkspaceState
from gaffer.tools import Toolchain

ALWAYS_RUNS = "cache: false, so it runs every time"  # the reason of such a task: nothing it sees is compared


def explain_task(graph: Graph, name: str) -> list[str]:
    """Lines for the user. Deps are taken as they were last recorded (explain builds nothing)."""
    order = graph.closure([name])  # an unknown name: UserError with did-you-mean
    task = graph.tasks[name]
    if task.is_group:
        return [f"{name} groups {', '.join(task.deps) or 'nothing'}; it has no command of its own to explain"]
    state_dir = graph.root / STATE_DIR
    state = WorkspaceState.load(state_dir)
    prev = state.tasks.get(name)
    toolchain = Toolchain(graph.root, state_dir)
    planned = make_plan(graph, order, toolchain).tasks[name]  # before `prev`: a bad glob is an error either way
    if not task.cache:
        return [f"{name}: {ALWAYS_RUNS}"]
    if prev is None:
        return [(f"{name} has no recorded run in this workspace ({state_dir}): it will run, or be restored from the "
                 "cache")]
    keys = KeyBuilder(graph.root, graph.platform, StatCache.load(state.stat_cache_path), toolchain)
    deps = {dep: state.tasks[dep].outputs if dep in state.tasks else OutputRecords() for dep in planned.deps}
    try:
        keyed = keys.key(planned, deps)
    except OSError as e:
        raise UserError(f"{name}: cannot read an input: {e}") from None
    changes = explain_all(prev.manifest, keyed.manifest)
    if not changes:
        return [f"{name}: nothing changed since it last ran (key {keyed.key.hash[:16]}); it is up to date"]
    return [f"{name} will re-run because:"] + [f"  - {c}" for c in changes]


def explain(before: Manifest | None, after: Manifest, limit: int = 3) -> str:
    """Why a task must run: the first few differences between the manifest it last ran with and now."""
    changes = explain_all(before, after)
    if len(changes) > limit:
        return "; ".join(changes[:limit]) + f"; and {len(changes) - limit} more"
    return "; ".join(changes) if changes else "not in the cache"


def explain_all(before: Manifest | None, after: Manifest) -> list[str]:
    """Every difference between two manifests, in the order a reader looks for them."""
    if before is None:
        return ["no previous run recorded in this workspace"]
    if len(before) != len(after):
        return ["the previous run was recorded by another version of gaffer"]
    changes: list[str] = []
    if before.argv != after.argv:
        changes.append("the command changed")
    changes += _diff_pairs(dict(before.env), dict(after.env), "env")
    if before.platform != after.platform:
        changes.append("the platform changed")
    changes += _tool_changes(before.tools, after.tools)
    b_in, a_in = dict(before.inputs), dict(after.inputs)
    for path in sorted(a_in.keys() - b_in.keys()):
        changes.append(f"input {path} was added")
    for path in sorted(b_in.keys() - a_in.keys()):
        changes.append(f"input {path} was removed")
    for path in sorted(a_in.keys() & b_in.keys()):
        if a_in[path] != b_in[path]:
            changes.append(f"input {path} changed")
    b_dep, a_dep = dict(before.deps), dict(after.deps)
    for dep in sorted(a_dep.keys() | b_dep.keys()):
        if a_dep.get(dep) != b_dep.get(dep):
            changes.append(f"the outputs of dependency {dep} changed" if dep in b_dep and dep in a_dep
                           else f"dependency {dep} was {'added' if dep in a_dep else 'removed'}")
    if before.outputs != after.outputs:
        changes.append("the declared outputs changed")
    if before.timeout != after.timeout:
        changes.append("the timeout changed")
    return changes


def _tool_changes(before: tuple[tuple[str, str, str], ...], after: tuple[tuple[str, str, str], ...]) -> list[str]:
    """"tool go changed (go1.26.6 -> go1.24.11)" for each tool whose identity differs."""
    old = {spec: (version, h) for spec, version, h in before}
    new = {spec: (version, h) for spec, version, h in after}
    changes = []
    for spec in sorted(old.keys() | new.keys()):
        if spec not in old or spec not in new:
            changes.append(f"tool {spec} was {'added' if spec in new else 'removed'}")
        elif old[spec] != new[spec]:
            versions = f" ({old[spec][0]} -> {new[spec][0]})" if old[spec][0] != new[spec][0] else ""
            changes.append(f"tool {spec} changed{versions}")
    return changes


def _diff_pairs(before: dict[str, str], after: dict[str, str], what: str) -> list[str]:
    changes = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old != new:
            changes.append(f"{what} {name} changed ({_shown(old)} -> {_shown(new)})")
    return changes


def _shown(value: str | None) -> str:
    return "unset" if value is None else repr(value)
