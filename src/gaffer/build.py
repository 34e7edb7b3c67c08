"""One `gaffer run`: plan the targets' closure, then for each task decide up to date / restore / execute.

The decision for a task, cheapest first:
1. **Up to date** — its fingerprint (task definition, declared env values, the stat signatures of its inputs,
   everything its deps output) and its outputs' stat signatures equal those recorded in the workspace state:
   nothing is hashed, no key is computed, the cache is not asked. This is the whole of a no-op build.
2. **Same key** — something was touched but every content digest is unchanged (an mtime-only change): the key
   is the recorded one and the outputs on disk are those it made: up to date again, nothing re-runs.
3. **Cache hit** — the action key is in the cache (any tier) and every blob it names verifies: the outputs are
   restored and the task's stdout/stderr replayed.
4. **Execute** — hand the prepared action to the executor, store the declared outputs and logs under the key
   (unless `cache: false`).

`Build` is the orchestrator, ninja's Builder: it is handed its key builder, cache, state, executor, progress
display and clock, and only decides; keys.py computes fingerprints and keys, execute/ runs actions, the
scheduler orders the work.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from gaffer import noop, records
from gaffer.digest import file_system_now
from gaffer.errors import EnvironmentProblem
from gaffer.graph import Graph
from gaffer.keys import KeyBuilder, Keyed
from gaffer.outcome import CACHED, EXECUTED, FAILED, GROUP, SKIPPED, BuildReport, Outcome
from gaffer.plan import Plan, PlannedTask, input_added, make_plan, real_deps
from gaffer.scheduler import Scheduler
from gaffer.state import STATE_DIR, Fingerprint, OutputRecords, TaskState, WorkspaceState

if TYPE_CHECKING:
    from gaffer.actions import CachedResult
    from gaffer.cache.tiered import TieredCache
    from gaffer.execute.base import Executor
    from gaffer.execute.remote import RemoteExecutor
    from gaffer.ui.progress import Progress


class BuildOptions(NamedTuple):
    targets: Sequence[str] = ()
    jobs: int = os.cpu_count() or 1
    keep_going: bool = False
    dry_run: bool = False
    sandbox: bool = False  # every task on the sandboxed executor, not only those marked "sandbox": true


class Build:
    def __init__(self, graph: Graph, options: BuildOptions, *, keys: KeyBuilder, cache: TieredCache,
                 state: WorkspaceState, executor: Executor, progress: Progress,
                 sandbox: Executor | None = None, remote: RemoteExecutor | None = None,
                 clock: Callable[[], float] = time.perf_counter, since: noop.Changes | None = None) -> None:
        self.graph = graph
        self.root = graph.root
        self.options = options
        self.keys = keys
        self.cache = cache
        self.state = state
        self.executor = executor
        self.sandbox = sandbox  # runs the sandboxed tasks (BuildOptions.sandbox: all); required when there are any
        self.remote = remote  # `--remote`: runs the cacheable tasks not marked "remote": false
        self.progress = progress
        self.clock = clock
        self.stat_cache = keys.stat_cache
        # What changed since the recorded build of this graph (noop.check): only the tasks it names and their
        # dependents are checked; None: every task is. Its order is the closure of the same graph and targets.
        self.since = since if since is not None and since.record.graph_sig == graph.signature else None
        self.order = list(self.since.record.order) if self.since is not None else graph.closure(options.targets)
        self.plan = Plan({}, [])
        self.outputs: dict[str, OutputRecords] = {}  # task -> its outputs as made or confirmed this build
        self.fingerprints: dict[str, Fingerprint] = {}
        self.settled: Mapping[str, float] = {}  # up to date as recorded (-> last execution time): see _settle_unchanged
        self.t0 = 0.0
        self._interrupted = ""
        self._lanes: dict[int, int] = {}
        self._would_run: set[str] = set()  # --dry-run: tasks predicted to execute
        self._lock = threading.Lock()  # guards _lanes and _told_not_restored
        self._told_not_restored = False
        # -j: commands at once. The scheduler runs twice as many tasks (without a remote executor, whose -j is
        # its own), so the next tasks are keyed and looked up while these commands run: a slot is never idle
        # for gaffer's own work.
        self._slots = threading.BoundedSemaphore(max(1, options.jobs))
        self._failed = False

    # -- the scheduler's callbacks -----------------------------------------------------------------------------

    def quick(self, name: str) -> Outcome | None:
        """Decide on the main thread whether the task is a group or up to date (no hashing, no threads)."""
        task = self.graph.tasks[name]
        if task.is_group:
            return Outcome(GROUP)
        fingerprint = self.keys.fingerprint(self.plan.tasks[name], self._dep_outputs(name))
        self.fingerprints[name] = fingerprint
        prev = self.state.tasks.get(name)
        intact = self._intact(name, prev) if task.cache and prev and prev.fingerprint == fingerprint else None
        if prev is not None and intact is not None:
            self.outputs[name] = intact
            if intact != prev.outputs:
                self.state.update(name, TaskState(prev.fingerprint, prev.key, intact, prev.manifest, prev.duration_s))
            return Outcome(CACHED, start_s=self._now(), saved_s=prev.duration_s, reason="up to date",
                           extra={"up_to_date": True})
        return None

    def work(self, name: str) -> Outcome:
        """Key the task, then restore it from the cache or execute it (on a pool thread)."""
        from gaffer.explain import ALWAYS_RUNS, explain

        planned = self.plan.tasks[name]
        task = planned.task
        start = self._now()
        lane = self._lane()
        prev = self.state.tasks.get(name)
        if self.options.dry_run:
            self.progress.task_started(name)
            running_dep = next((d for d in planned.deps if d in self._would_run), None)
            if running_dep is not None:  # its outputs, hence this task's key, are known only once it has run
                self._would_run.add(name)
                return Outcome(EXECUTED, start_s=start, reason=f"would run: dependency {running_dep} would run")
        deps = self._dep_outputs(name)
        try:
            keyed = self.keys.key(planned, deps)
        except OSError as e:
            return Outcome(FAILED, start_s=start, reason=f"cannot read an input: {e}")
        reason = explain(prev.manifest if prev else None, keyed.manifest) if task.cache else ALWAYS_RUNS

        intact = self._intact(name, prev) if task.cache and prev and prev.key == keyed.key.hash else None
        if prev is not None and intact is not None:
            self._record(name, keyed, intact, prev.duration_s)
            return Outcome(CACHED, start_s=start, duration_s=self._now() - start, saved_s=prev.duration_s,
                           reason="up to date (only file times changed)", extra={"up_to_date": True, "lane": lane})

        if self.options.dry_run:
            cached = self._peek(planned, keyed) if task.cache else None
            if cached is not None:
                if not self._predict_outputs(name, cached):
                    self._would_run.add(name)  # dependents' keys are known only once its trees are fetched
                return Outcome(CACHED, start_s=start, reason="would restore from the cache")
            self._would_run.add(name)
            return Outcome(EXECUTED, start_s=start, reason=f"would run: {reason}")

        if task.cache:
            restored = self._restore(name, planned, keyed)
            self.cache.settle(keyed.key, restored is not None)
            if restored is not None:
                restored.start_s = start
                restored.duration_s = self._now() - start
                restored.extra["lane"] = lane
                return restored
        outcome = self._execute(name, planned, deps, keyed, reason)  # from when its command started
        outcome.extra["lane"] = lane
        return outcome

    def _dep_outputs(self, name: str) -> dict[str, OutputRecords]:
        """What each of the task's deps output, as made or confirmed this build: part of its fingerprint and key."""
        outputs = self.outputs
        return {dep: outputs[dep] if dep in outputs else self._settled_outputs(dep) for dep in self.plan.tasks[name].deps}

    def _settled_outputs(self, name: str) -> OutputRecords:
        """A task's outputs as the build log records them if the incremental build settled it (else none)."""
        return self.state.tasks[name].outputs if name in self.settled else OutputRecords()

    # -- restore and execute -----------------------------------------------------------------------------------

    def _peek(self, planned: PlannedTask, keyed: Keyed) -> CachedResult | None:
        """`--dry-run`'s restore: the entry a build would restore, found without filling or changing any tier."""
        from gaffer import actions

        data = self.cache.peek_action(keyed.key)
        if data is None:
            return None
        try:
            cached = actions.parse_result(data, planned.task.outputs)
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
        self.outputs[name] = records.predicted(cached.outputs)
        return True

    def _restore(self, name: str, planned: PlannedTask, keyed: Keyed) -> Outcome | None:
        from gaffer import actions

        data = self.cache.get_action(keyed.key)
        if data is None:
            return None
        self.progress.task_started(name)
        fetched = False
        try:
            cached = actions.parse_result(data, planned.task.outputs)
            if not actions.fetch_result(cached, self.cache.ensure_local, self.cache.local):
                return None
            fetched = True
            actions.restore_outputs(self.root, cached, self.cache.local)
        except actions.BadCacheEntry as e:
            if fetched:
                self._not_restored(name, str(e))
            else:
                self.cache.reject(keyed.key, f"cache entry for task {name}", str(e))
            return None
        except OSError as e:
            self.progress.warn(f"cannot restore the outputs of {name}: {e}; running it instead")
            return None
        made = records.on_disk(str(self.root), cached.outputs)
        self._record(name, keyed, made, cached.duration_s)
        self.progress.task_output(name, self.cache.local.read_blob(cached.stdout) or b"",
                                  self.cache.local.read_blob(cached.stderr) or b"")
        return Outcome(CACHED, saved_s=cached.duration_s, reason="restored from the cache")

    def _not_restored(self, name: str, problem: str) -> None:
        """A usable entry, fetched and verified, that the restore refused on this side: the workspace's doing (an
        output below a symlink out of it, as a build directory on another disk: every hit there is refused) or the
        local cache's (a blob lost since). No tier served garbage: said once per build, naming none."""
        with self._lock:
            first, self._told_not_restored = not self._told_not_restored, True
        if first:
            self.progress.warn(f"cache hit for task {name} not restored: {problem}; it runs instead (so do later "
                               "ones refused this way, unsaid)")

    def _execute(self, name: str, planned: PlannedTask, deps: Mapping[str, OutputRecords], keyed: Keyed,
                 reason: str) -> Outcome:
        """Run the action on the executor; cache its result unless an input changed while it ran. The Action,
        Command and Directory blobs go to the local CAS first when something reads them there: a sandboxed or
        remote executor, or a remote tier the result is uploaded to (so that any executor there can run it).
        The workspace executor runs the command as it is in the workspace and reads none of them."""
        from gaffer import actions
        from gaffer.execute.base import ExecuteResult

        task = planned.task
        executor = self.executor
        if self.remote is not None and task.cache and task.remote:  # a worker's exec root is a sandbox already
            executor = self.remote
        elif self.options.sandbox or task.sandbox:
            assert self.sandbox is not None, "a sandboxed task needs Build(sandbox=...)"
            executor = self.sandbox
        read_from_cas = executor is not self.executor or (task.cache and self.cache.uploads)
        action_blobs = keyed.action.store(self.cache.local) if read_from_cas else []
        with self._slots:
            if self._interrupted or (self._failed and not self.options.keep_going):
                return Outcome(SKIPPED, reason="the build stopped")
            start = self._now()
            self.progress.task_started(name)  # shown running once its command runs, not while it waits for -j
            try:
                if self.remote is not None and executor is not self.remote:
                    result = self.remote.run_here(executor, keyed.action, task.pass_env, name)
                else:
                    result = executor.execute(keyed.action, task.pass_env, name)
            except actions.UnsafeOutput as e:  # refused before anything was removed or run
                result = ExecuteResult(0.0, b"", b"", failure=str(e))
            self._failed = self._failed or bool(result.failure)  # before the next task takes the slot
        self.progress.task_output(name, result.stdout, result.stderr)
        extra: dict[str, object] = {"where": result.where} if result.where else {}
        if result.cached and not result.failure:  # the remote's action cache answered: a hit, as a restore is
            reason = "restored from the remote's action cache"
        if result.failure or result.outputs is None:
            return Outcome(FAILED, duration_s=result.duration_s, start_s=start, reason=result.failure, extra=extra)
        made = (records.predicted(result.outputs) if result.remote_only
                else records.on_disk(str(self.root), result.outputs))
        changed = ((self.keys.input_changed(planned, deps, self.fingerprints[name], keyed)
                    or input_added(self.graph, planned)) if task.cache else None)
        if changed:  # built from other inputs than its key says: neither cached nor up to date next time
            self.progress.warn(f"input {changed} changed while {name} ran: result not cached")
            self.outputs[name] = made
            self.state.forget(name)
            return Outcome(EXECUTED, duration_s=result.duration_s, start_s=start, reason=reason, extra=extra)
        if task.cache:
            self.cache.put_action(keyed.key, result.action_result, [*result.blobs, *action_blobs])
        self._record(name, keyed, made, result.duration_s)
        if result.cached:
            return Outcome(CACHED, duration_s=self._now() - start, start_s=start, saved_s=result.duration_s,
                           reason=reason)
        return Outcome(EXECUTED, duration_s=result.duration_s, start_s=start, reason=reason, extra=extra)

    def _record(self, name: str, keyed: Keyed, made: OutputRecords, duration_s: float) -> None:
        self.outputs[name] = made
        if not self.graph.tasks[name].cache:
            self.state.forget(name)
            return
        # The fingerprint taken before the task ran: if an input changed while it ran, the next build re-checks.
        self.state.update(name, TaskState(self.fingerprints[name], keyed.key.hash, made, keyed.manifest,
                                          duration_s))

    def _intact(self, name: str, prev: TaskState) -> OutputRecords | None:
        """The task's recorded outputs if the workspace still holds exactly them (see records.intact); a dry run
        changes nothing, so there a stray in an output directory is only a change. Outputs left on the remote
        (`--remote-download=minimal`) are intact while the remote still holds them."""
        if records.left_remote(prev.outputs):
            remote = self.remote
            return prev.outputs if (remote is not None and remote.keeps_remote(name)
                                    and remote.holds(records.file_digests(prev.outputs))) else None
        return records.intact(self.root, name, prev.outputs, None if self.options.dry_run else self.progress.warn)

    # -- running -----------------------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.clock() - self.t0

    def _lane(self) -> int:
        """A small stable number per pool thread: the trace file's track."""
        ident = threading.get_ident()
        with self._lock:
            return self._lanes.setdefault(ident, len(self._lanes) + 1)

    def run(self) -> BuildReport:
        self.t0 = self.clock()
        if not self.options.dry_run:
            noop.discard(self.root)
        # Before any input is looked at; a dry run creates nothing (without .gaffer/ every file is racy).
        self.stat_cache.moment = file_system_now(self.root / STATE_DIR, create=not self.options.dry_run)
        order = self._settle_unchanged() if self.since is not None else self.order
        self.plan = make_plan(self.graph, order, self.keys.toolchain)
        if not self.options.dry_run:
            self.keys.toolchain.save()
        jobs = self.options.jobs if self.remote is not None else 2 * self.options.jobs  # see _slots
        scheduler = Scheduler(order, {n: self.graph.deps[n] for n in order},
                              jobs=1 if self.options.dry_run else jobs, keep_going=self.options.keep_going)
        groups = [n for n in order if n in self.graph.groups]  # never settled
        self.progress.start(len(self.order) - len(groups), 1 if self.options.dry_run else self.options.jobs, groups)
        self.progress.tasks_settled(self.settled)
        restore = self._install_signal_handlers(scheduler)
        try:
            outcomes = scheduler.run(self.work, self.quick, on_done=self._finished)  # work() announces a start
        finally:
            restore()
            if not self.options.dry_run:
                try:
                    self.state.save()
                    self.stat_cache.save(self.state.stat_cache_path)
                except OSError as e:  # .gaffer/ on a full disk, or clobbered while the build ran (a `git clean`)
                    raise EnvironmentProblem(f"cannot save the build log: {e.filename or self.root / STATE_DIR}: "
                                             f"{e.strerror or e}") from None
        for name in groups:  # a group is no work, skipped or not: counted in no total
            if name in outcomes:
                outcomes[name] = Outcome(GROUP, reason=outcomes[name].reason)
        report = BuildReport(outcomes=outcomes, wall_s=self._now(), interrupted=self._interrupted,
                             settled=self.settled, order=self.order, jobs=max(1, self.options.jobs))
        if report.ok and not self.options.dry_run:
            noop.write_record(self, self.options.targets)
        return report

    def _settle_unchanged(self) -> list[str]:
        """The incremental build: a task that is not dirty and depends on nothing dirty is up to date as the
        build log says (`since` found its inputs, tools and outputs unchanged), without looking at it again or
        even reading its entry, unless a task checked depends on it: its entry is then the outputs that task
        sees, and a task without one (a damaged shard of the log) is checked too. What depends on the dirty
        tasks is found by walking down the record's dependents from them, never looking at the others. Sets
        `settled` (task -> its last execution time); returns the tasks to check (groups included, in order)."""
        assert self.since is not None
        graph, recorded, record, order = self.graph, self.state.tasks, self.since.record, self.order
        affected = record.downstream(self.since.dirty_at)
        while True:
            checked = {order[at] for at in affected}
            unknown = {dep for name in checked if name not in graph.groups
                       for dep in real_deps(graph, graph.tasks[name]) if dep not in checked and dep not in recorded}
            if not unknown:
                break
            position = dict(zip(order, range(len(order)), strict=True))
            affected |= record.downstream(position[name] for name in unknown)
        settled = dict(record.tasks())  # every real task of the order: those not checked are settled
        for name in checked:
            settled.pop(name, None)
        self.settled = settled
        return [n for n in order if n not in settled]

    def _finished(self, name: str, outcome: Outcome) -> None:
        if outcome.status == FAILED:
            self._failed = True  # without --keep-going, tasks keyed meanwhile start no command
        self.progress.task_finished(name, outcome)

    def _cancel_all(self) -> None:
        for executor in (self.executor, self.sandbox, self.remote):
            if executor is not None:
                executor.cancel_all()

    def _install_signal_handlers(self, scheduler: Scheduler) -> Callable[[], None]:
        """Ctrl-C, SIGTERM, SIGHUP (a closed terminal): start nothing new, kill running process groups, keep the
        cache consistent. Tasks run in sessions of their own, which a closed terminal's SIGHUP never reaches."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, _frame: object) -> None:
            self._interrupted = signal.Signals(signum).name
            scheduler.stop()
            threading.Thread(target=self._cancel_all, daemon=True).start()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

        def restore() -> None:
            for sig, earlier in previous.items():
                signal.signal(sig, earlier)

        return restore
