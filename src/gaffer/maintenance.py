"""`gaffer clean` and `gaffer cache status|gc|verify|clean`: the workspace's outputs and the local cache kept
in order. cli.py parses their flags and calls `clean` or `cache`; what each did is printed on stdout (its result)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from gaffer.config import load_settings, nearest_toml
from gaffer.errors import EnvironmentProblem, UserError
from gaffer.units import format_count, format_size

if TYPE_CHECKING:
    from gaffer.cache.disk import DiskStore


def clean(args: argparse.Namespace) -> int:
    """Remove the declared outputs of `args.targets`' closure and forget their last runs; with `--all` also
    empty the local cache (checked writable before anything changes)."""
    from gaffer.actions import UnsafeOutput, check_outputs, remove_outputs
    from gaffer.graph import load_graph
    from gaffer.lock import lock_workspace
    from gaffer.state import STATE_DIR, WorkspaceState

    graph = load_graph(args.graph)
    lock_workspace(graph.root, "clean", wait=not args.no_wait,
                   say=lambda message: print(f"gaffer: {message}", file=sys.stderr, flush=True))
    store = _local_store(args, graph.root) if args.all else None
    if store is not None and not store.writable:  # stop before anything changes
        raise EnvironmentProblem(f"local cache {store.root}: read-only, so it cannot be emptied")
    state = WorkspaceState.load(graph.root / STATE_DIR)
    names = graph.closure(args.targets)
    for name in names:  # all checked before any is removed: a refusal leaves nothing half done
        try:
            check_outputs(graph.root, graph.tasks[name].outputs)
        except UnsafeOutput as e:
            raise UserError(f"task '{name}': {e}") from None
    removed = 0
    try:
        for name in names:
            task = graph.tasks[name]
            removed += sum(1 for out in task.outputs if os.path.lexists(graph.root / out))
            remove_outputs(graph.root, task.outputs)
            state.forget(name)
    finally:  # what was removed before an error (a file another user owns) is forgotten all the same
        state.save()
    print(f"removed {format_count(removed, 'declared output')}")
    if store is not None:
        with _maintaining(store), store.unserved("gaffer clean --all"):
            store.clean()
        print(f"emptied {store.root}")
    return 0


def cache(args: argparse.Namespace) -> int:
    """`gaffer cache ACTION` on the local cache the nearest gaffer.toml (no graph to stand beside) names."""
    project = nearest_toml(".")
    store = _local_store(args, os.path.dirname(project) if project else None,
                         create=args.cache_command != "status")  # a status reads: it makes no directory
    with _maintaining(store):
        return _cache_action(args, store)


def _local_store(args: argparse.Namespace, workspace: str | os.PathLike[str] | None,
                 create: bool = True) -> DiskStore:
    """The local tier as `workspace`'s settings name it (None: no project gaffer.toml, only the user's)."""
    from gaffer.cache.factory import open_local

    return open_local(load_settings(workspace, vars(args)), create=create)


@contextmanager
def _maintaining(store: DiskStore) -> Iterator[None]:
    """Maintenance writes to the local cache: a read-only directory is one line, exit status 3."""
    try:
        yield
    except OSError as e:
        raise EnvironmentProblem(f"local cache {store.root}: {e.strerror or e}") from None


def _cache_action(args: argparse.Namespace, store: DiskStore) -> int:
    if args.cache_command == "status":
        status = store.status()
        builds = store.recent_builds()
        hits = sum(b["hits"] for b in builds)
        misses = sum(b["misses"] for b in builds)
        rate = hits / (hits + misses) if hits + misses else 0.0
        if args.json:
            import json

            print(json.dumps({"dir": str(store.root), "targets_cached": status.actions, "blobs": status.blobs,
                              "bytes": status.bytes, "max_size": status.max_size, "recent_builds": len(builds),
                              "hits": hits, "misses": misses, "hit_rate": round(rate, 4)}))
            return 0
        print(f"Build Cache Status: {store.root}")
        print(f"  Targets cached: {status.actions}")
        print(f"  Blobs: {status.blobs}")
        print(f"  Cache size: {format_size(status.bytes)} ({status.bytes:,} bytes) of {format_size(status.max_size)}")
        print(f"  Hit rate (last {format_count(len(builds), 'build')}): {100 * rate:.1f}% "
              f"({format_count(hits, 'hit')}, {format_count(misses, 'miss', 'misses')})")
    elif args.cache_command == "gc":
        with store.unserved("gaffer cache gc"):  # files only: a server's own eviction also counts its packs
            removed, freed = store.gc()
        print(f"removed {format_count(removed, 'entry', 'entries')} ({format_size(freed)})")
    elif args.cache_command == "verify":
        verify = store.verify()
        found = [("evicted", verify.corrupt), ("left in place", verify.left)]
        said = "; ".join(f"{what}: {', '.join(h[:12] for h in hashes)}" for what, hashes in found if hashes)
        print(f"checked {format_count(verify.checked, 'blob')} and {format_count(verify.checked_actions, 'action result')}: "
              f"{len(verify.corrupt) + len(verify.left)} corrupt" + (f" ({said})" if said else ""))
        return 1 if verify.corrupt or verify.left else 0
    elif args.cache_command == "clean":
        with store.unserved("gaffer cache clean"):
            store.clean()
        print(f"emptied {store.root}")
    return 0
