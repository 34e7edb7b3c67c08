"""`gaffer run`'s wiring: the whole-build no-op check, then a build assembled from its parts (the cache, the
workspace's state and stat cache, the toolchain, the local and sandboxed executors, the progress display), then
the report.
cli.py parses the flags and calls `run`; the orchestrator itself (gaffer.build) creates none of these parts."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gaffer.errors import UserError
from gaffer.lock import lock_workspace, workspace_of

if TYPE_CHECKING:  # the build's parts are imported when a build runs, never on the no-op path
    from collections.abc import Iterable

    from gaffer.cache.disk import DiskStore
    from gaffer.config import Settings
    from gaffer.execute.base import Executor
    from gaffer.execute.remote import RemoteExecutor
    from gaffer.graph.model import Graph
    from gaffer.state import WorkspaceState
    from gaffer.ui.progress import Progress


def run(args: argparse.Namespace) -> int:
    """Build `args.targets`; the exit status (0 built, 1 a task failed, 128 + the signal's number if interrupted)."""
    import gc

    # A build allocates hundreds of thousands of small tuples (graph, state, stat cache) and makes almost no
    # reference cycles: the cyclic collector would rescan them again and again (seconds on 10,000 tasks).
    gc.disable()
    for flag, path in (("--summary-json", args.summary_json), ("--trace", args.trace)):
        _check_report_path(flag, path)
    if not args.dry_run and os.path.exists(args.graph):  # a dry run changes nothing; no graph, nothing to guard
        lock_workspace(workspace_of(args.graph), "run", wait=not args.no_wait,
                       say=lambda message: print(f"gaffer: {message}", file=sys.stderr, flush=True))
    changes = None
    if not (args.dry_run or args.verbose or args.trace):
        from gaffer import noop

        started = time.perf_counter()
        changes = noop.check(args.graph, args.targets)
        if changes is not None and not changes.dirty and not changes.dirs:
            return _report_noop(args, changes.record.tasks(), time.perf_counter() - started)
    from gaffer.build import Build, BuildOptions
    from gaffer.cache.factory import open_cache, open_local
    from gaffer.config import load_settings
    from gaffer.digest import StatCache
    from gaffer.execute.local import LocalExecutor
    from gaffer.graph import load_graph
    from gaffer.keys import KeyBuilder
    from gaffer.state import STATE_DIR, WorkspaceState
    from gaffer.tools import Toolchain
    from gaffer.ui.progress import Progress

    known = None if changes is None else (changes.record.graph_sig, changes.record.graph_digest)
    graph = load_graph(args.graph, keep=not args.dry_run, known=known)
    _check_env_values(graph)
    settings = load_settings(graph.root, vars(args))
    _check_cache_dir(settings.cache_dir, graph)
    progress = Progress(verbose=args.verbose, quiet=args.dry_run)  # a dry run's result is the plan on stdout
    disk = open_local(settings, progress.warn, full_is_read_only=True, create=not args.dry_run)
    cache = open_cache(disk, settings.remotes, read_only=settings.read_only, timeout=settings.timeout,
                       report=progress.warn)
    cache.connect()
    state = WorkspaceState.load(graph.root / STATE_DIR)
    keys = KeyBuilder(graph.root, graph.platform, StatCache.load(state.stat_cache_path),
                      Toolchain(graph.root, graph.root / STATE_DIR))
    local = LocalExecutor(graph.root, cache.local)
    sandbox = None
    if settings.sandbox or graph.sandboxed:
        from gaffer.execute.sandbox import SandboxExecutor

        sandbox = SandboxExecutor(graph.root, cache.local, local, progress.warn,
                                  keep_failed=settings.sandbox_keep)
    remote = _open_remote(settings, graph, args.targets, state, local, cache.local, progress) \
        if settings.remote and not args.dry_run else None
    build = Build(graph, BuildOptions(targets=args.targets, jobs=settings.jobs, keep_going=args.keep_going,
                                      dry_run=args.dry_run, sandbox=settings.sandbox),
                  keys=keys, cache=cache, state=state, executor=local, sandbox=sandbox, remote=remote,
                  progress=progress, since=changes)
    try:
        report = build.run()
    finally:
        progress.finish()
        cache.close()
        if remote is not None:
            remote.tier.close()
    report.tiers = [t.as_dict() for t in cache.tier_stats()]
    from gaffer.ui import report as reporting

    if args.dry_run:
        for name, o in report.tasks().items():
            print(f"{name}: {o.reason or o.status}")
        return 0
    from gaffer.outcome import CACHED, EXECUTED

    cache.local.record_build(hits=report.count(CACHED), misses=report.count(EXECUTED))
    reporting.print_summary(report, sys.stderr)
    if args.summary_json:
        reporting.write_summary_json(report, Path(args.summary_json))
    if args.trace:
        reporting.write_trace(report, Path(args.trace))
    if report.interrupted:
        return 128 + signal.Signals[report.interrupted].value
    return 0 if report.ok else 1


def _open_remote(settings: Settings, graph: Graph, targets: list[str], state: WorkspaceState, local: Executor,
                 store: DiskStore, progress: Progress) -> RemoteExecutor:
    """`--remote`: the remote executor, connected (an unreachable remote is one warning, or exit 3 without
    fallback). With minimal downloads, the requested targets' outputs come back (every task nothing depends on
    when none is named), and outputs earlier builds left on the remote are known by digest."""
    from gaffer.execute.remote import RemoteExecutor, open_remote
    from gaffer.records import as_outputs, left_remote

    wanted = set(targets) or set(graph.tasks) - {dep for deps in graph.deps.values() for dep in deps}
    remote = RemoteExecutor(graph.root, store, local, open_remote(settings.remote, settings.timeout),
                            fallback=settings.remote_fallback, minimal=settings.remote_download == "minimal",
                            wanted=wanted, on_stage=progress.task_stage, warn=progress.warn)
    remote.remember_remote(as_outputs([task.outputs for task in state.tasks.values() if left_remote(task.outputs)]))
    remote.connect()
    return remote


def _check_report_path(flag: str, path: str | None) -> None:
    """A report file must be writable where it is asked for: say so before building, not after."""
    if path is None:
        return
    if not path:  # else taken for no report at all: asked for, and silently not written
        raise UserError(f"{flag}: '' is not a path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{flag} {path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a directory")


def _check_cache_dir(cache_dir: str, graph: Graph) -> None:
    """The local cache may not be (or be in) a declared output: gaffer removes an output before its task runs,
    which would empty the cache, and then store the cache's own files as the output."""
    real_root = os.path.realpath(graph.root)
    rel = os.path.relpath(os.path.realpath(cache_dir), real_root)
    if rel == ".." or rel.startswith("../"):
        return
    path = rel
    while path and path != ".":
        if path in graph.outputs:
            raise UserError(f"local cache {cache_dir} is inside output '{path}' of the graph, which gaffer removes "
                            "before its task runs: put the cache elsewhere")
        path = path.rpartition("/")[0]


def _check_env_values(graph: Graph) -> None:
    """A declared variable's value goes into the key as a REAPI string, which is UTF-8: refuse one that is not."""
    from gaffer.errors import not_utf8

    for name in graph.env:
        shown = not_utf8(os.environ.get(name, ""))
        if shown is not None:
            raise UserError(f"environment variable {name} is not UTF-8 text ('{shown}'), which cache keys cannot hold")


def _report_noop(args: argparse.Namespace, tasks: Iterable[tuple[str, float]], wall_s: float) -> int:
    """The whole-build fast path found nothing to do: the same summary as a build whose tasks are up to date."""
    from gaffer.cache.factory import open_local
    from gaffer.config import load_settings
    from gaffer.outcome import BuildReport
    from gaffer.ui import report as reporting
    from gaffer.workspace import workspace_root

    settled = dict(tasks)
    report = BuildReport(outcomes={}, wall_s=wall_s, settled=settled, order=list(settled))
    settings = load_settings(Path(workspace_root(args.graph)), vars(args))
    open_local(settings).record_build(hits=len(settled), misses=0)
    reporting.print_summary(report, sys.stderr)
    if args.summary_json:
        reporting.write_summary_json(report, Path(args.summary_json))
    return 0
