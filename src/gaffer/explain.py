"""`gaffer explain TASK`: what changed since the task last ran in this workspace, and whether it is cached."""

from __future__ import annotations

from gaffer.build import STATE_DIR, Build, BuildOptions, explain_all
from gaffer.errors import UserError
from gaffer.graph import Graph
from gaffer.ui.progress import Progress


def explain_task(graph: Graph, name: str) -> list[str]:
    """Lines for the user. Deps are taken as they were last recorded (explain builds nothing)."""
    order = graph.closure([name])
    task = graph.tasks[name]
    if task.is_group:
        return [f"{name} groups {', '.join(task.deps) or 'nothing'}; it has no command of its own to explain"]
    build = Build(graph, cache=None, options=BuildOptions(targets=[name]), progress=Progress(live=False))  # type: ignore[arg-type]
    build.plan()
    for dep in order:
        recorded = build.state.tasks.get(dep)
        if dep != name and recorded is not None:
            build.outputs[dep] = recorded.outputs
    prev = build.state.tasks.get(name)
    if prev is None:
        return [f"{name} has no recorded run in this workspace ({graph.root / STATE_DIR}): it will run, "
                f"or be restored from the cache"]
    try:
        key, manifest = build.key(name)
    except OSError as e:
        raise UserError(f"{name}: cannot read an input: {e}") from None
    changes = explain_all(prev.manifest, manifest)
    if not changes:
        return [f"{name}: nothing changed since it last ran (key {key.hash[:16]}); it is up to date"]
    return [f"{name} will re-run because:"] + [f"  - {c}" for c in changes]
