"""The key builder: a planned task and its deps' outputs -> its fingerprint (stat calls only), and its REAPI
action and manifest (content hashes, through the stat cache).

The fingerprint decides "up to date" without hashing; the action's digest is the cache key; the manifest is
what went into the key, in a form `gaffer explain` can diff. docs/caching.md is the contract for all three.
Nothing here runs a process or asks a cache; protobuf is imported only when a key is computed.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from gaffer.digest import Digest, StatCache, StatSignature, digest_file, is_racy, stat_signature
from gaffer.graph import Task
from gaffer.plan import PlannedTask
from gaffer.records import as_outputs, left_remote
from gaffer.state import Fingerprint, Manifest, OutputRecords
from gaffer.tools import Toolchain

if TYPE_CHECKING:
    from gaffer.actions import PreparedAction


class Keyed(NamedTuple):
    """A task's complete action (its digest is the key) and the manifest of what went into it."""

    action: PreparedAction
    manifest: Manifest

    @property
    def key(self) -> Digest:
        return self.action.digest


def env_values(task: Task) -> tuple[tuple[str, str], ...]:
    """Declared env vars with their values; an unset variable is left out, so unset and empty differ."""
    return tuple((name, os.environ[name]) for name in task.env if name in os.environ)


class KeyBuilder:
    """Fingerprints and keys for the tasks of one workspace, reading inputs through one stat cache."""

    def __init__(self, root: Path, platform: Mapping[str, str], stat_cache: StatCache, toolchain: Toolchain) -> None:
        self.root = str(root)
        self.platform = dict(platform)
        self.stat_cache = stat_cache
        self.toolchain = toolchain

    def fingerprint(self, planned: PlannedTask, deps: Mapping[str, OutputRecords]) -> Fingerprint:
        """Cheap identity of the task's inputs. An input modified since this build began (by the file system's
        clock) could still change without its signature changing, so such a fingerprint gets a `racy` marker
        that never compares equal."""
        root = self.root
        moment = self.stat_cache.moment
        sigs: list[tuple[str, StatSignature | None]] = []
        racy = False
        for rel in planned.inputs:
            try:
                sig = stat_signature(os.stat(f"{root}/{rel}"))
                racy = racy or is_racy(sig, moment)
                sigs.append((rel, sig))
            except OSError:
                sigs.append((rel, None))
                racy = True
        tools = tuple(tool.signatures for tool in planned.tools)
        racy = racy or any(is_racy(sig, moment) for signatures in tools for _path, sig in signatures)
        task = planned.task
        return Fingerprint(task.commands, task.outputs, task.timeout, env_values(task),
                           tuple(sorted(self.platform.items())), tuple(sigs),
                           tuple((dep, records.content()) for dep, records in deps.items()),
                           time.time_ns() if racy else 0, tools)

    def key(self, planned: PlannedTask, deps: Mapping[str, OutputRecords]) -> Keyed:
        """The task's action and manifest, hashing inputs via the stat cache. Raises OSError for an input that
        cannot be read."""
        from gaffer import actions

        task = planned.task
        root = self.root
        sources = []
        input_hashes = []
        for rel in planned.inputs:
            path = f"{root}/{rel}"
            st = os.stat(path)
            d = self.stat_cache.digest(path, st)
            sources.append(actions.FileEntry(rel, d, bool(st.st_mode & 0o100)))
            input_hashes.append((rel, d.hash))
        dep_outputs = as_outputs(list(deps.values()))
        argv = actions.command_argv(task.commands)
        env = dict(env_values(task))
        platform = {**self.platform, **actions.host_properties()}  # the executing machine always wins
        tools = tuple(self.toolchain.identity(tool, self.stat_cache) for tool in planned.tools)
        action = actions.prepare_action(argv, env, task.outputs, platform, task.timeout, actions.key_salt(tools),
                                        sources, dep_outputs.files, dep_outputs.symlinks, dep_outputs.directories)
        manifest = Manifest(tuple(argv), tuple(sorted(env.items())), tuple(sorted(platform.items())),
                            tuple(input_hashes), tuple((dep, records.content()) for dep, records in deps.items()),
                            task.outputs, task.timeout, tools)
        return Keyed(action, manifest)

    def input_changed(self, planned: PlannedTask, deps: Mapping[str, OutputRecords], before: Fingerprint,
                      keyed: Keyed) -> str | None:
        """The first input, tool or dep output that is no longer what `keyed` was computed from, now that the
        task has run: edited meanwhile, or rewritten by the task itself (a formatter). A stat each; only if an
        input's signature moved (or was too fresh before the run to trust) is the key computed again, and a
        tool's identity, hashing what moved."""
        root = self.root
        racy_since = self.stat_cache.moment if before.racy else None
        moved = [rel for rel, sig in before.inputs if _moved(f"{root}/{rel}", os.stat, sig, racy_since)]
        if moved:
            try:
                now = self.key(planned, deps)
            except OSError:
                return moved[0]
            if now.key != keyed.key:
                was = dict(keyed.manifest.inputs)
                return next((rel for rel, h in now.manifest.inputs if was.get(rel) != h), moved[0])
        for tool, signatures, was_keyed in zip(planned.tools, before.tools, keyed.manifest.tools, strict=True):
            if any(_moved(path, os.stat, sig, racy_since) for path, sig in signatures):
                try:
                    if self.toolchain.identity(tool, self.stat_cache, again=True) != was_keyed:
                        return tool.spec
                except OSError:  # gone
                    return tool.spec
        for records in deps.values():
            if left_remote(records):  # not in the workspace (or written here from their digests before the run)
                continue
            for f in records.files:
                path = f"{root}/{f.path}"
                if _moved(path, os.lstat, f.sig, None) and _content_and_mode(path) != (f.hash, f.mode):
                    return f.path
            for d in records.directories:  # an entry added to it or removed from it
                if _moved(f"{root}/{d.path}", os.lstat, d.sig, None):
                    return d.path
            for link in records.symlinks:
                if _target(f"{root}/{link.path}") != link.target:
                    return link.path
        return None


def _moved(path: str, stat_call: Callable[[str], os.stat_result], sig: StatSignature | None,
           racy_since: int | None) -> bool:
    """Has the file's stat signature moved from `sig` (or is it racy since the build's moment, so that it could
    have changed without moving)?"""
    try:
        now = stat_signature(stat_call(path))
    except OSError:
        return True
    return now != sig or (racy_since is not None and is_racy(now, racy_since))


def _content_and_mode(path: str) -> tuple[str, int] | None:
    from gaffer.actions import PERMISSION_BITS

    try:
        return digest_file(path).hash, stat.S_IMODE(os.lstat(path).st_mode) & PERMISSION_BITS
    except OSError:
        return None


def _target(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
