"""One `gaffer run`: plan the targets' closure, then for each task decide up to date / restore / execute.

The decision for a task, cheapest first:
1. **Up to date** — its fingerprint (task definition, declared env values, the stat signatures of its inputs,
   everything its deps output) and its outputs' stat signatures equal those recorded in the workspace state:
   nothing is hashed, no key is computed, the cache is not asked. This is the whole of a no-op build.
2. **Same key** — something was touched but every content digest is unchanged (an mtime-only change): the key
   is the recorded one and the outputs on disk are those it made: up to date again, nothing re-runs.
3. **Cache hit** — the action key is in the cache (any tier) and every blob it names verifies: the outputs are
   restored and the task's stdout/stderr replayed.
4. **Execute** — run the commands, store the declared outputs and logs under the key (unless `cache: false`).
"""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gaffer import noop
from gaffer.digest import Digest, StatCache, digest_bytes, digest_file, file_system_now, is_racy, stat_signature
from gaffer.errors import UserError
from gaffer.graph import Graph, Task
from gaffer.graph.inputs import resolve_inputs
from gaffer.graph.model import shown_path
from gaffer.outcome import CACHED, EXECUTED, FAILED, GROUP, BuildReport, Outcome
from gaffer.scheduler import Scheduler
from gaffer.state import DirectoryRecord, FileRecord, Manifest, OutputRecords, SymlinkRecord, TaskState, WorkspaceState
from gaffer.tools import Tool, Toolchain, ToolNotFound, task_tools

if TYPE_CHECKING:
    from gaffer.actions import Outputs
    from gaffer.actions import CachedResult
    from gaffer.cache.tiered import TieredCache
    from gaffer.execute.local import ProcessRunner
    from gaffer.ui.progress import Progress

STATE_DIR = ".gaffer"


@dataclass
class BuildOptions:
    targets: Sequence[str] = ()
    jobs: int = os.cpu_count() or 1
    keep_going: bool = False
    dry_run: bool = False


def _env_values(task: Task) -> tuple[tuple[str, str], ...]:
    """Declared env vars with their values; an unset variable is left out, so unset and empty differ."""
    return tuple((name, os.environ[name]) for name in task.env if name in os.environ)


class Build:
    def __init__(self, graph: Graph, cache: TieredCache, options: BuildOptions, progress: Progress) -> None:
        self.graph = graph
        self.root = graph.root
        self.cache = cache
        self.options = options
        self.progress = progress
        self.state = WorkspaceState.load(self.root / STATE_DIR)
        self.stat_cache = StatCache.load(self.state.stat_cache_path)
        self.order = graph.closure(options.targets)
        self.inputs: dict[str, list[str]] = {}
        self.input_dirs: list[tuple[str, tuple[int, int]]] = []  # directories globs searched, at plan time
        self.real_deps: dict[str, tuple[str, ...]] = {}
        self.toolchain = Toolchain(self.root, self.root / STATE_DIR)
        self.tools: dict[str, tuple[Tool, ...]] = {}
        self.outputs: dict[str, OutputRecords] = {}  # task -> its outputs as made or confirmed this build
        self.fingerprints: dict[str, tuple] = {}
        self.t0 = 0.0
        self._runner: ProcessRunner | None = None
        self._interrupted = ""
        self._lanes: dict[int, int] = {}
        self._would_run: set[str] = set()  # --dry-run: tasks predicted to execute
        self._lock = threading.Lock()  # guards _lanes and the lazy _runner

    # -- planning ----------------------------------------------------------------------------------------------

    def plan(self) -> None:
        """Resolve every task's inputs before anything runs, so a bad glob stops the build at once (exit 2).
        Files under any declared output are never inputs: a glob like `**/*.go` must not pick up build results."""
        produced = {out for t in self.graph.tasks.values() for out in t.outputs}
        bases: set[tuple[str, int]] = set()
        for name in self.order:
            task = self.graph.tasks[name]
            if task.is_group:
                continue
            paths = resolve_inputs(self.root, task, self.graph.path)
            if produced:
                paths = [p for p in paths if not _under_any(p, produced)]
            self.inputs[name] = paths
            self.real_deps[name] = self._flatten_deps(task)
            self.tools[name] = self._find_tools(name, task, produced)
            bases.update(noop.directory_bases(task.inputs, set(paths)))
        self.input_dirs = noop.directory_signatures(str(self.root), bases)
        if not self.options.dry_run:
            self.toolchain.save()

    def _find_tools(self, name: str, task: Task, produced: set[str]) -> tuple[Tool, ...]:
        try:
            return tuple(self.toolchain.find(spec) for spec in task_tools(task, lambda p: _under_any(p, produced)))
        except ToolNotFound as e:
            raise UserError(f"{shown_path(self.graph.path)}: task {name!r}: {e}") from None

    # -- the scheduler's callbacks -----------------------------------------------------------------------------

    def quick(self, name: str) -> Outcome | None:
        """Decide on the main thread whether the task is a group or up to date (no hashing, no threads)."""
        task = self.graph.tasks[name]
        if task.is_group:
            return Outcome(GROUP)
        fingerprint = self._fingerprint(name, task)
        self.fingerprints[name] = fingerprint
        prev = self.state.tasks.get(name)
        records = self._outputs_intact(name, prev) if task.cache and prev and prev.fingerprint == fingerprint else None
        if prev is not None and records is not None:
            self.outputs[name] = records
            if records != prev.outputs:
                self.state.update(name, TaskState(prev.fingerprint, prev.key, records, prev.manifest, prev.duration_s))
            return Outcome(CACHED, start_s=self._now(), saved_s=prev.duration_s, reason="up to date",
                           extra={"up_to_date": True})
        return None

    def work(self, name: str) -> Outcome:
        """Key the task, then restore it from the cache or execute it (on a pool thread)."""
        from gaffer import actions

        task = self.graph.tasks[name]
        start = self._now()
        lane = self._lane()
        prev = self.state.tasks.get(name)
        if self.options.dry_run:
            running_dep = next((d for d in self.real_deps[name] if d in self._would_run), None)
            if running_dep is not None:  # its outputs, hence this task's key, are known only once it has run
                self._would_run.add(name)
                return Outcome(EXECUTED, start_s=start, reason=f"would run: dependency {running_dep} would run")
        try:
            key, manifest = self.key(name)
        except OSError as e:
            return Outcome(FAILED, start_s=start, reason=f"cannot read an input: {e}")
        reason = explain(prev.manifest if prev else None, manifest)

        records = self._outputs_intact(name, prev) if task.cache and prev and prev.key == key.hash else None
        if prev is not None and records is not None:
            self._record(name, task, key, manifest, records, prev.duration_s)
            return Outcome(CACHED, start_s=start, duration_s=self._now() - start, saved_s=prev.duration_s,
                           reason="up to date (only file times changed)", extra={"up_to_date": True, "lane": lane})

        if self.options.dry_run:
            cached = self._peek(task, key) if task.cache else None
            if cached is not None:
                if not self._predict_outputs(name, cached):
                    self._would_run.add(name)  # dependents' keys are known only once its trees are fetched
                return Outcome(CACHED, start_s=start, reason="would restore from the cache")
            self._would_run.add(name)
            return Outcome(EXECUTED, start_s=start, reason=f"would run: {reason}")

        if task.cache:
            restored = self._restore(name, task, key, manifest)
            self.cache.settle(key, restored is not None)
            if restored is not None:
                restored.start_s = start
                restored.duration_s = self._now() - start
                restored.extra["lane"] = lane
                return restored
        outcome = self._execute(name, task, key, manifest, actions.command_argv(task.commands), reason)
        outcome.start_s = start
        outcome.extra["lane"] = lane
        return outcome

    # -- keys --------------------------------------------------------------------------------------------------

    def _fingerprint(self, name: str, task: Task) -> tuple:
        """Cheap identity of the task's inputs. An input modified since this build began (by the file system's
        clock) could still change without its signature changing, so such a fingerprint gets a marker that never
        compares equal."""
        root = str(self.root)
        sigs = []
        moment = self.stat_cache.moment
        racy = False
        for rel in self.inputs[name]:
            try:
                sig = stat_signature(os.stat(f"{root}/{rel}"))
                racy = racy or is_racy(sig, moment)
                sigs.append((rel, sig))
            except OSError:
                sigs.append((rel, None))
                racy = True
        deps = tuple((dep, self.outputs.get(dep, OutputRecords()).content()) for dep in self.real_deps[name])
        tools = tuple(tool.signatures for tool in self.tools[name])
        racy = racy or any(is_racy(sig, moment) for signatures in tools for _path, sig in signatures)
        return (task.commands, task.outputs, task.timeout, _env_values(task),
                tuple(sorted(self.graph.platform.items())), tuple(sigs), deps, time.time_ns() if racy else 0, tools)

    def _flatten_deps(self, task: Task) -> tuple[str, ...]:
        """A dep on a group is a dep on everything it groups: their outputs are this task's inputs."""
        real: set[str] = set()
        stack = list(task.deps)
        visited: set[str] = set()
        while stack:
            dep = stack.pop()
            if dep in visited:
                continue
            visited.add(dep)
            if self.graph.tasks[dep].is_group:
                stack.extend(self.graph.tasks[dep].deps)
            else:
                real.add(dep)
        return tuple(sorted(real))

    def key(self, name: str) -> tuple[Digest, Manifest]:
        """The task's action key and its manifest (what went into the key), hashing inputs via the stat cache."""
        from gaffer import actions

        task = self.graph.tasks[name]
        root = str(self.root)
        entries = []
        input_hashes = []
        for rel in self.inputs[name]:
            path = f"{root}/{rel}"
            st = os.stat(path)
            d = self.stat_cache.digest(path, st)
            entries.append(actions.FileEntry(rel, d, bool(st.st_mode & 0o100)))
            input_hashes.append((rel, d.hash))
        dep_hashes = []
        symlinks: list[actions.SymlinkEntry] = []
        directories: list[actions.DirectoryEntry] = []
        for dep in self.real_deps[name]:
            records = self.outputs.get(dep, OutputRecords())
            entries += (actions.FileEntry(f.path, Digest(f.hash, f.size), bool(f.mode & 0o100), f.mode)
                        for f in records.files)
            symlinks += (actions.SymlinkEntry(s.path, s.target) for s in records.symlinks)
            directories += (actions.DirectoryEntry(d.path, d.mode) for d in records.directories)
            dep_hashes.append((dep, records.content()))
        argv = actions.command_argv(task.commands)
        env = dict(_env_values(task))
        platform = {**self.graph.platform, **actions.host_properties()}  # the executing machine always wins
        tools = tuple(self.toolchain.identity(tool, self.stat_cache) for tool in self.tools[name])
        key = actions.action_key(argv, env, task.outputs, entries, platform, task.timeout, symlinks, directories,
                                 tools)
        manifest = Manifest(tuple(argv), tuple(sorted(env.items())), tuple(sorted(platform.items())),
                            tuple(input_hashes), tuple(dep_hashes), task.outputs, task.timeout, tools)
        return key, manifest

    # -- restore and execute -----------------------------------------------------------------------------------

    def _peek(self, task: Task, key: Digest) -> CachedResult | None:
        """`--dry-run`'s restore: the entry a build would restore, found without filling or changing any tier."""
        from gaffer import actions

        data = self.cache.peek_action(key)
        if data is None:
            return None
        try:
            cached = actions.parse_result(data, task.outputs)
        except actions.BadCacheEntry:
            return None
        return cached if self.cache.contains([*cached.outputs.blobs(), cached.stdout, cached.stderr]) else None

    def _predict_outputs(self, name: str, cached: CachedResult) -> bool:
        """`--dry-run`: record the outputs a restore would make, so dependents are keyed on them. False when an
        output directory's tree is not in the local tier (reading it would fill the cache): unknown until then."""
        from gaffer import actions

        try:
            actions.read_trees(cached.outputs, self.cache.local)
        except actions.BadCacheEntry:
            return False
        self.outputs[name] = OutputRecords(
            tuple(FileRecord(f.path, f.digest.hash, f.digest.size_bytes,
                             f.mode if f.mode is not None else (0o755 if f.executable else 0o644), None)
                  for f in cached.outputs.files),
            tuple(SymlinkRecord(s.path, s.target) for s in cached.outputs.symlinks),
            tuple(DirectoryRecord(d.path, d.mode, None) for d in cached.outputs.directories))
        return True

    def _restore(self, name: str, task: Task, key: Digest, manifest: Manifest) -> Outcome | None:
        from gaffer import actions

        data = self.cache.get_action(key)
        if data is None:
            return None
        try:
            cached = actions.parse_result(data, task.outputs)
            if not self.cache.ensure_local(list(cached.outputs.trees.values())):
                return None
            actions.read_trees(cached.outputs, self.cache.local)
            if not self.cache.ensure_local([*cached.outputs.blobs(), cached.stdout, cached.stderr]):
                return None
            actions.restore_outputs(self.root, cached, self.cache.local)
        except actions.BadCacheEntry as e:
            self.progress.warn(f"cache entry for task {name} ignored: {e}")
            return None
        except OSError as e:
            self.progress.warn(f"cannot restore the outputs of {name}: {e}; running it instead")
            return None
        self._record(name, task, key, manifest, self._output_records(cached.outputs), cached.duration_s)
        self.progress.task_output(name, self.cache.local.read_blob(cached.stdout) or b"",
                                  self.cache.local.read_blob(cached.stderr) or b"")
        return Outcome(CACHED, saved_s=cached.duration_s, reason="restored from the cache")

    def _execute(self, name: str, task: Task, key: Digest, manifest: Manifest, argv: list[str], reason: str
                 ) -> Outcome:
        from gaffer import actions

        store = self.cache.local
        actions.remove_outputs(self.root, task.outputs)
        stdout_path, stderr_path = store.temp_path(), store.temp_path()
        try:
            started_at = time.time()
            result = self.runner.run(argv, self.root, os.environ, stdout_path, stderr_path, task.timeout)
            finished_at = time.time()
            out, err = stdout_path.read_bytes(), stderr_path.read_bytes()
            self.progress.task_output(name, out, err)
            if result.error:
                return Outcome(FAILED, duration_s=result.duration_s, reason=result.error)
            if result.cancelled:
                return Outcome(FAILED, duration_s=result.duration_s, reason="interrupted")
            if result.timed_out:
                return Outcome(FAILED, duration_s=result.duration_s, reason=f"timed out after {task.timeout:g}s")
            if result.exit_code != 0:
                return Outcome(FAILED, duration_s=result.duration_s, reason=f"exited with status {result.exit_code}")
            try:
                outputs = actions.collect_outputs(self.root, task.outputs, store)
            except actions.MissingOutput as e:
                return Outcome(FAILED, duration_s=result.duration_s,
                               reason=f"declared output '{e}' was not created by the task")
            except actions.BadCacheEntry as e:
                return Outcome(FAILED, duration_s=result.duration_s, reason=str(e))
            records = self._output_records(outputs)
            changed = self._input_changed(name, key, manifest) if task.cache else None
            if changed:  # built from other inputs than its key says: neither cached nor up to date next time
                self.progress.warn(f"input {changed} changed while {name} ran: result not cached")
                self.outputs[name] = records
                self.state.forget(name)
                return Outcome(EXECUTED, duration_s=result.duration_s, reason=reason)
            if task.cache:
                stdout_digest, stderr_digest = digest_bytes(out), digest_bytes(err)  # already in memory
                store.write_blob(stdout_digest, out)
                store.write_blob(stderr_digest, err)
                data = actions.make_result(outputs, 0, stdout_digest, stderr_digest, started_at, finished_at)
                self.cache.put_action(key, data, [*outputs.blobs(), stdout_digest, stderr_digest])
            self._record(name, task, key, manifest, records, result.duration_s)
            return Outcome(EXECUTED, duration_s=result.duration_s, reason=reason)
        finally:
            stdout_path.unlink(missing_ok=True)
            stderr_path.unlink(missing_ok=True)

    def _input_changed(self, name: str, key: Digest, manifest: Manifest) -> str | None:
        """The first input or dep output that is no longer what `key` was computed from, now that the task has
        run: edited meanwhile, or rewritten by the task itself (a formatter). A stat each; only if an input's
        signature moved (or was too fresh before the run to trust) is the key computed again, hashing what moved."""
        root = str(self.root)
        fingerprint = self.fingerprints[name]
        racy_since = self.stat_cache.moment if fingerprint[7] else None
        moved = [rel for rel, sig in fingerprint[5] if _moved(f"{root}/{rel}", os.stat, sig, racy_since)]
        if moved:
            try:
                now, now_manifest = self.key(name)
            except OSError:
                return moved[0]
            if now != key:
                before = dict(manifest.inputs)
                return next((rel for rel, h in now_manifest.inputs if before.get(rel) != h), moved[0])
        for dep in self.real_deps[name]:
            records = self.outputs.get(dep, OutputRecords())
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

    def _output_records(self, outputs: Outputs) -> OutputRecords:
        """The outputs as they now are on disk (called once all are written: a directory's signature is final)."""
        from gaffer.actions import PERMISSION_BITS

        root = str(self.root)
        files = []
        for f in outputs.files:
            path = f"{root}/{f.path}"
            st = os.lstat(path)
            self.stat_cache.remember(path, st, f.digest)
            mode = stat.S_IMODE(st.st_mode) & PERMISSION_BITS
            files.append(FileRecord(f.path, f.digest.hash, f.digest.size_bytes, mode, stat_signature(st)))
        directories = tuple(DirectoryRecord(d.path, d.mode, stat_signature(os.lstat(f"{root}/{d.path}")))
                            for d in outputs.directories)
        symlinks = tuple(SymlinkRecord(s.path, s.target) for s in outputs.symlinks)
        return OutputRecords(tuple(files), symlinks, directories)

    def _record(self, name: str, task: Task, key: Digest, manifest: Manifest, records: OutputRecords,
                duration_s: float) -> None:
        self.outputs[name] = records
        if not task.cache:
            self.state.forget(name)
            return
        # The fingerprint taken before the task ran: if an input changed while it ran, the next build re-checks.
        self.state.update(name, TaskState(self.fingerprints[name], key.hash, records, manifest, duration_s))

    def _outputs_intact(self, name: str, prev: TaskState) -> OutputRecords | None:
        """The task's recorded outputs if the workspace still holds exactly them (their signatures refreshed),
        else None. A declared output directory is gaffer's: an entry in it the task did not make (an editor's
        `a.txt~`) is removed, one warning each, so a dependent sees exactly what was recorded and keyed."""
        recorded = prev.outputs
        root = str(self.root)
        try:
            for f in recorded.files:
                if stat_signature(os.lstat(f"{root}/{f.path}")) != f.sig:
                    return None
            for s in recorded.symlinks:
                if os.readlink(f"{root}/{s.path}") != s.target:
                    return None
            changed = [d for d in recorded.directories if stat_signature(os.lstat(f"{root}/{d.path}")) != d.sig]
        except OSError:
            return None
        if not changed:
            return recorded
        if self.options.dry_run:
            return None  # a dry run changes nothing: the real build removes the strays
        expected: dict[str, set[str]] = {}
        for path in [*(f.path for f in recorded.files), *(s.path for s in recorded.symlinks),
                     *(d.path for d in recorded.directories)]:
            parent, _, base = path.rpartition("/")
            expected.setdefault(parent, set()).add(base)
        from gaffer import actions

        refreshed = {}
        real_root = os.path.realpath(root)
        for d in changed:
            full = f"{root}/{d.path}"
            if os.path.realpath(full) != f"{real_root}/{d.path}" or not os.path.isdir(full):
                return None  # replaced by a symlink (or through one): never remove anything outside the outputs
            try:
                names = set(os.listdir(full))
                for stray in sorted(names - expected.get(d.path, set())):
                    actions.remove_outputs(self.root, [f"{d.path}/{stray}"])
                    self.progress.warn(f"removed {d.path}/{stray}: task {name} did not make it, and its declared "
                                       f"output {d.path} holds only what the task made")
                st = os.lstat(full)
            except OSError:
                return None
            if expected.get(d.path, set()) - names or stat.S_IMODE(st.st_mode) & actions.PERMISSION_BITS != d.mode:
                return None
            refreshed[d.path] = d._replace(sig=stat_signature(st))
        return recorded._replace(directories=tuple(refreshed.get(d.path, d) for d in recorded.directories))

    # -- running -----------------------------------------------------------------------------------------------

    @property
    def runner(self) -> ProcessRunner:
        with self._lock:  # two pool threads may get here at once: exactly one runner, or cancel misses one
            if self._runner is None:
                from gaffer.execute.local import ProcessRunner

                self._runner = ProcessRunner()
            return self._runner

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    def _lane(self) -> int:
        """A small stable number per pool thread: the trace file's track."""
        ident = threading.get_ident()
        with self._lock:
            return self._lanes.setdefault(ident, len(self._lanes) + 1)

    def run(self) -> BuildReport:
        self.t0 = time.perf_counter()
        if not self.options.dry_run:
            noop.discard(self.root)
        # Before any input is looked at; a dry run creates nothing (without .gaffer/ every file is racy).
        self.stat_cache.moment = file_system_now(self.root / STATE_DIR, create=not self.options.dry_run)
        self.plan()
        scheduler = Scheduler(self.order, {n: self.graph.tasks[n].deps for n in self.order},
                              jobs=1 if self.options.dry_run else self.options.jobs,
                              keep_going=self.options.keep_going)
        groups = [n for n in self.order if self.graph.tasks[n].is_group]
        self.progress.start(len(self.order) - len(groups), scheduler.jobs, groups)
        restore = self._install_signal_handlers(scheduler)
        try:
            outcomes = scheduler.run(self.work, self.quick, on_start=self.progress.task_started,
                                     on_done=self.progress.task_finished)
        finally:
            restore()
            if not self.options.dry_run:
                self.state.save()
                self.stat_cache.save(self.state.stat_cache_path)
        for name in groups:  # a group is no work, skipped or not: counted in no total
            if name in outcomes:
                outcomes[name] = Outcome(GROUP, reason=outcomes[name].reason)
        report = BuildReport(outcomes=outcomes, wall_s=self._now(), interrupted=self._interrupted)
        if report.ok and not self.options.dry_run:
            noop.write_record(self, self.options.targets)
        return report

    def _install_signal_handlers(self, scheduler: Scheduler) -> Callable[[], None]:
        """Ctrl-C / SIGTERM: start nothing new, kill running process groups, keep the cache consistent."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, _frame: object) -> None:
            self._interrupted = signal.Signals(signum).name
            scheduler.stop()
            threading.Thread(target=self.runner.cancel_all, daemon=True).start()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return lambda: [signal.signal(sig, h) for sig, h in previous.items()] and None


def _moved(path: str, stat_call: Callable[[str], os.stat_result], sig: tuple | None, racy_since: int | None
           ) -> bool:
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


def _under_any(path: str, outputs: set[str]) -> bool:
    """Is `path` a declared output or inside one? (A set lookup per ancestor: graphs have 10,000s of outputs.)"""
    while path:
        if path in outputs:
            return True
        path = path.rpartition("/")[0]
    return False


def explain(before: Manifest | None, after: Manifest, limit: int = 3) -> str:
    """Why a task must run: the first few differences between the manifest it last ran with and now."""
    changes = explain_all(before, after)
    if len(changes) > limit:
        return "; ".join(changes[:limit]) + f"; and {len(changes) - limit} more"
    return "; ".join(changes) if changes else "not in the cache"


def explain_all(before: Manifest | None, after: Manifest) -> list[str]:
    if before is None:
        return ["no previous run recorded in this workspace"]
    if len(before) != len(after):
        return ["the previous run was recorded by another version of gaffer"]
    b_argv, b_env, b_platform, b_inputs, b_deps, b_outputs, b_timeout, b_tools = before
    a_argv, a_env, a_platform, a_inputs, a_deps, a_outputs, a_timeout, a_tools = after
    changes: list[str] = []
    if b_argv != a_argv:
        changes.append("the command changed")
    changes += _diff_pairs(dict(b_env), dict(a_env), "env")
    if b_platform != a_platform:
        changes.append("the platform changed")
    changes += _tool_changes(b_tools, a_tools)
    b_in, a_in = dict(b_inputs), dict(a_inputs)
    for path in sorted(a_in.keys() - b_in.keys()):
        changes.append(f"input {path} was added")
    for path in sorted(b_in.keys() - a_in.keys()):
        changes.append(f"input {path} was removed")
    for path in sorted(a_in.keys() & b_in.keys()):
        if a_in[path] != b_in[path]:
            changes.append(f"input {path} changed")
    b_dep, a_dep = dict(b_deps), dict(a_deps)
    for dep in sorted(a_dep.keys() | b_dep.keys()):
        if a_dep.get(dep) != b_dep.get(dep):
            changes.append(f"the outputs of dependency {dep} changed" if dep in b_dep and dep in a_dep
                           else f"dependency {dep} was {'added' if dep in a_dep else 'removed'}")
    if b_outputs != a_outputs:
        changes.append("the declared outputs changed")
    if b_timeout != a_timeout:
        changes.append("the timeout changed")
    return changes


def _tool_changes(before: tuple, after: tuple) -> list[str]:
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
            show = lambda v: "unset" if v is None else repr(v)  # noqa: E731
            changes.append(f"{what} {name} changed ({show(old)} -> {show(new)})")
    return changes

