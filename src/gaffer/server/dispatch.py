"""The coordinator of remote execution: which action runs where and when, as plain Python state.

Jobs are keyed by action digest, so identical actions in flight run once and every waiting operation gets the
result (an action marked `do_not_cache` gets a job of its own). Queued jobs wait in one queue per platform class
(the instance and the platform properties a worker must have) and, inside it, per build (RequestMetadata's
tool_invocation_id): a worker with a free slot is served from the build served least recently, so one big build
does not starve a small one. A worker never holds more unfinished leases than its max jobs: a full farm means
waiting, never failing. Locality (workers report the blobs they hold): a job queued while capable workers have a
free slot is reserved for the one holding the most of its input bytes, and any other may take it after
LOCALITY_WAIT_S; behind a backlog, a worker coming free takes, of the next SCAN jobs of the build it serves, the one
whose inputs it holds most of.

Time comes from an injected clock and nothing here blocks or speaks gRPC, so the scheduling can be tested and
benchmarked in-process; the gRPC services (execution.py, bots.py) drive it from one event loop and are woken
through the `listeners` of operations and the `wake` of sessions. `snapshot()` (the status page) may be called
from another thread: every public method holds the lock.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

QUEUED, EXECUTING, COMPLETED = "QUEUED", "EXECUTING", "COMPLETED"
PENDING, ACTIVE, CANCELLED = "PENDING", "ACTIVE", "CANCELLED"  # lease states (as the Bots API names them)
LOCALITY_WAIT_S = 0.1  # how long a job waits for the free worker holding most of its inputs before any may take it
MAX_ATTEMPTS = 3  # attempts of one job (a worker lost, a result that did not check out) before it fails
ABANDONED_S = 30.0  # a job whose every client has been gone this long is cancelled (on its worker if running)
SCAN = 8  # queued jobs of a build a worker looks at: the one holding most of their inputs is taken first
KEEP_FINISHED = 10_000  # finished operations kept for WaitExecution / GetOperation
RECENT = 100  # finished jobs the status page shows
MAX_HELD = 200_000  # blobs recorded per worker (workers report at most 100,000 at a time)
MAX_CLASSES = 100  # platform classes kept with nothing queued (beyond, the empty ones are forgotten)
MAX_BUILDS = 10_000  # builds whose last service is remembered (beyond, those with nothing queued are forgotten)
SNAPSHOT_QUEUE = 1000  # queued operations the snapshot lists, oldest first ("queue_length" counts them all)

# google.rpc codes of the outcomes the coordinator decides itself
OK, CANCELLED_CODE, INVALID_ARGUMENT, FAILED_PRECONDITION, UNAVAILABLE = 0, 1, 3, 9, 14

Requirements = tuple[tuple[str, str], ...]  # platform properties an action needs, sorted


class Outcome:
    """How an operation ended: a google.rpc code and message, the ActionResult (opaque here), status details
    (opaque: e.g. a PreconditionFailure), whether it came from the cache, and the status page's short label."""

    __slots__ = ("cached", "code", "details", "label", "message", "result")

    def __init__(self, code: int, message: str = "", result: object = None, cached: bool = False,
                 details: Iterable[object] = (), label: str = "") -> None:
        self.code, self.message, self.result, self.cached = code, message, result, cached
        self.details = list(details)
        self.label = label or ("ok" if code == OK else "failed")


class Operation:
    """One client's request for an action: several may share a job. `waiters`: streams attached now."""

    __slots__ = ("action", "build", "job", "listeners", "name", "outcome", "task", "waiters", "worker")

    def __init__(self, name: str, action: str, job: Job | None, build: str, task: str) -> None:
        self.name, self.action, self.job, self.build, self.task = name, action, job, build, task
        self.waiters = 0
        self.outcome: Outcome | None = None
        self.worker = ""  # the bot that ran it (for a finished one)
        self.listeners: list[Callable[[], None]] = []

    @property
    def stage(self) -> str:
        if self.outcome is not None:
            return COMPLETED
        assert self.job is not None
        return self.job.stage

    @property
    def running_on(self) -> str:
        """The bot executing it, or the one that did."""
        if self.job is not None and self.job.lease is not None:
            return self.job.lease.session.bot_id
        return self.worker

    @property
    def waiting_for(self) -> str:
        """Why it is not running yet, once clients should be told (no capable worker after the timeout)."""
        job = self.job
        return job.klass.unmatched if job is not None and job.stage == QUEUED else ""

    def changed(self) -> None:
        for listener in list(self.listeners):
            listener()


class PlatformClass:
    """The queued jobs of one instance and platform requirements, by build; the sessions able to run them."""

    __slots__ = ("builds", "count", "instance", "requirements", "sessions", "unmatched", "unmatched_since")

    def __init__(self, instance: str, requirements: Requirements) -> None:
        self.instance, self.requirements = instance, requirements
        self.builds: dict[str, deque[Job]] = {}
        self.count = 0  # jobs queued (the deques may also hold stale entries, skipped lazily)
        self.sessions: set[Session] = set()
        self.unmatched_since: float | None = None
        self.unmatched = ""  # set once no capable worker has been connected for the timeout

    def matches(self, session: Session) -> bool:
        return session.instance == self.instance and all(
            value in session.properties.get(key, ()) for key, value in self.requirements)

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.requirements)
        return f"no connected worker matches platform {{{shown}}}"


class Job:
    """One execution of an action, shared by the operations waiting for it."""

    __slots__ = ("abandoned_at", "action", "attempts", "build", "cacheable", "first_queued_at", "inputs", "key",
                 "klass", "lease", "operations", "queued_at", "reserve_until", "reserved_for", "stage", "started_at",
                 "task", "tried")

    def __init__(self, key: tuple[str, str], action: str, klass: PlatformClass, inputs: Mapping[str, int],
                 build: str, task: str, cacheable: bool, now: float) -> None:
        self.key, self.action, self.klass, self.inputs = key, action, klass, inputs
        self.build, self.task, self.cacheable = build, task, cacheable
        self.operations: list[Operation] = []
        self.stage = QUEUED
        self.attempts = 0
        self.tried: list[str] = []
        self.first_queued_at = self.queued_at = now
        self.started_at = 0.0
        self.lease: Lease | None = None
        self.reserved_for: Session | None = None
        self.reserve_until = 0.0
        self.abandoned_at: float | None = None


class Lease:
    """A job handed to a session; `cancel`: the server wants it dropped (sent as CANCELLED)."""

    __slots__ = ("cancel", "id", "job", "session", "state", "told")

    def __init__(self, lease_id: str, job: Job, session: Session) -> None:
        self.id, self.job, self.session = lease_id, job, session
        self.state = PENDING
        self.cancel = False
        self.told = ""  # the state last sent to the worker ("": not sent yet)

    @property
    def shown(self) -> str:
        """The state the worker should see now."""
        return CANCELLED if self.cancel else self.state


class Session:
    """A connected worker (a bot session): its platform, capacity, leases and the blobs it holds."""

    __slots__ = ("bot_id", "classes", "connected_at", "held", "held_bytes", "instance", "last_seen", "leases",
                 "max_jobs", "name", "properties", "recheck_at", "tools", "wake")

    def __init__(self, name: str, bot_id: str, instance: str, properties: Mapping[str, set[str]], max_jobs: int,
                 tools: list[str], now: float) -> None:
        self.name, self.bot_id, self.instance = name, bot_id, instance
        self.properties, self.max_jobs, self.tools = properties, max_jobs, tools
        self.leases: dict[str, Lease] = {}  # unfinished, in the order given
        self.classes: list[PlatformClass] = []  # the platform classes it can run
        self.held: dict[str, int] = {}  # blob hash -> size
        self.held_bytes = 0
        self.connected_at = self.last_seen = now
        self.recheck_at: float | None = None  # a job reserved for another worker becomes free to take then
        self.wake: Callable[[], None] | None = None  # set while the bot's UpdateBotSession waits for work

    @property
    def free(self) -> int:
        return self.max_jobs - len(self.leases)


class Completed:
    """A lease the worker reported done, to be checked (its outputs in the CAS) before the job is believed done."""

    __slots__ = ("code", "details", "job", "lease", "message", "result")

    def __init__(self, lease: Lease, code: int, message: str, result: object, details: list[object]) -> None:
        self.lease, self.job = lease, lease.job
        self.code, self.message, self.result, self.details = code, message, result, details


class Report:
    """One lease as a worker reports it in UpdateBotSession."""

    __slots__ = ("code", "details", "id", "message", "result", "state")

    def __init__(self, lease_id: str, state: str, code: int = OK, message: str = "", result: object = None,
                 details: Iterable[object] = ()) -> None:
        self.id, self.state, self.code, self.message, self.result = lease_id, state, code, message, result
        self.details = list(details)


class Coordinator:
    """The scheduling state of one server. Times are seconds of `clock`."""

    def __init__(self, bot_timeout: float = 15.0, unmatched_timeout: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = lambda _: None) -> None:
        self.bot_timeout = bot_timeout
        self.unmatched_timeout = unmatched_timeout
        self.clock = clock
        self.log = log
        self._lock = threading.RLock()
        self._jobs: dict[tuple[str, str], Job] = {}
        self._operations: dict[str, Operation] = {}  # unfinished
        self._finished: OrderedDict[str, Operation] = OrderedDict()
        self._classes: dict[tuple[str, Requirements], PlatformClass] = {}
        self._sessions: dict[str, Session] = {}
        self._idle: dict[str, Session] = {}  # sessions with a free slot waiting for work
        self._abandoned: dict[tuple[str, str], Job] = {}
        self._served: dict[str, int] = {}  # build -> when it was last served (a counter)
        self._serve_count = itertools.count(1)
        self._lease_ids = itertools.count(1)
        self._lease_prefix = uuid.uuid4().hex[:12]  # lease ids never repeat across server restarts
        self._holders: dict[str, set[Session]] = {}  # blob hash -> sessions holding it
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._queued = 0
        self.stopping = False
        self.counters = dict.fromkeys(
            ("actions_started", "actions_finished", "actions_failed", "actions_retried", "actions_cancelled",
             "queue_to_start_seconds_sum", "queue_to_start_count", "cache_hits", "cache_misses"), 0.0)

    # -- clients -------------------------------------------------------------------------------------------------

    def join(self, instance: str, action: str, build: str, task: str) -> Operation | None:
        """A new operation on the job already in flight for this action, if any (then nothing is checked again)."""
        with self._lock:
            job = self._jobs.get((instance, action))
            return None if job is None else self._operation(job, action, build, task)

    def submit(self, instance: str, action: str, requirements: Mapping[str, str] | Iterable[tuple[str, str]],
               inputs: Mapping[str, int], build: str, task: str, cacheable: bool = True) -> Operation:
        """Queue an action whose inputs the caller has checked (`inputs`: the input root's files, hash -> size),
        or join the identical job in flight; an uncacheable action always gets a job of its own."""
        with self._lock:
            key = (instance, action if cacheable else f"{action}#{uuid.uuid4().hex}")
            job = self._jobs.get(key)
            if job is None:
                pairs = requirements.items() if isinstance(requirements, Mapping) else requirements
                klass = self._class(instance, tuple(sorted(set(pairs))))
                job = Job(key, action, klass, inputs, build, task, cacheable, self.clock())
                self._jobs[key] = job
                self._enqueue(job)
            return self._operation(job, action, build, task)

    def answer(self, action: str, build: str, task: str, outcome: Outcome) -> Operation:
        """An operation answered without running (from the action cache, or refused: inputs missing)."""
        with self._lock:
            if outcome.cached:
                self.counters["cache_hits"] += 1
            op = Operation(self._name(), action, None, build, task)
            op.outcome = outcome
            self._retire(op)
            self._recent.append({"operation": op.name, "action": action, "build": build, "task": task, "worker": "",
                                 "queued_s": 0.0, "ran_s": 0.0, "outcome": outcome.label,
                                 "finished_at": self.clock()})
            return op

    def missed(self) -> None:
        with self._lock:
            self.counters["cache_misses"] += 1

    def operation(self, name: str) -> Operation | None:
        with self._lock:
            return self._operations.get(name) or self._finished.get(name)

    def attach(self, op: Operation) -> None:
        """A client stream now follows `op` (Execute, WaitExecution)."""
        with self._lock:
            op.waiters += 1
            if op.job is not None and op.job.abandoned_at is not None:
                op.job.abandoned_at = None
                self._abandoned.pop(op.job.key, None)

    def detach(self, op: Operation) -> None:
        """A client stream stopped following `op`; a job nobody follows is cancelled after ABANDONED_S."""
        with self._lock:
            op.waiters -= 1
            job = op.job
            if op.outcome is None and job is not None and all(o.waiters <= 0 for o in job.operations):
                job.abandoned_at = self.clock()
                self._abandoned[job.key] = job

    def cancel_operation(self, name: str) -> bool:
        """CancelOperation: end `name` as cancelled; its job too when no other operation waits for it."""
        with self._lock:
            op = self._operations.get(name)
            if op is None or op.job is None:
                return False
            job = op.job
            job.operations.remove(op)
            self._end(op, Outcome(CANCELLED_CODE, "cancelled by the client", label="cancelled"))
            if not job.operations:
                self._cancel(job, "cancelled by the client")
            return True

    # -- workers -------------------------------------------------------------------------------------------------

    def connect(self, bot_id: str, instance: str, properties: Mapping[str, set[str]], max_jobs: int,
                tools: list[str]) -> Session:
        with self._lock:
            name = f"{instance}/bots/{uuid.uuid4()}" if instance else f"bots/{uuid.uuid4()}"
            session = Session(name, bot_id, instance, properties, max_jobs, tools, self.clock())
            self._sessions[name] = session
            for klass in self._classes.values():
                if klass.matches(session):
                    self._capable(klass, session)
            return session

    def session(self, name: str) -> Session | None:
        with self._lock:
            return self._sessions.get(name)

    def update(self, session: Session, reports: Iterable[Report]) -> list[Completed]:
        """A worker's heartbeat with its leases as it sees them: the leases it finished, to be checked and then
        passed to `finish` or `failed`. A lease it no longer reports was lost on the way: requeued."""
        with self._lock:
            session.last_seen = self.clock()
            completed = []
            seen = set()
            for report in reports:
                lease = session.leases.get(report.id)
                if lease is None:
                    continue
                seen.add(report.id)
                if report.state == COMPLETED or report.state == CANCELLED:
                    del session.leases[report.id]
                    if lease.cancel or lease.job.lease is not lease:
                        continue
                    if report.state == CANCELLED:
                        self._attempt_failed(lease, f"worker {session.bot_id} cancelled it")
                    else:
                        completed.append(Completed(lease, report.code, report.message, report.result,
                                                   report.details))
                elif report.state == ACTIVE:
                    lease.state = ACTIVE
            for lease_id, lease in list(session.leases.items()):
                if lease_id not in seen and lease.told:  # sent, yet not in the worker's next update: lost
                    del session.leases[lease_id]
                    if not lease.cancel:
                        self._attempt_failed(lease, f"worker {session.bot_id} never got the lease", counted=False)
            return completed

    def assign(self, session: Session) -> list[Lease]:
        """New leases for `session`'s free slots (fairest build first, its inputs' holder preferred)."""
        with self._lock:
            now = self.clock()
            session.recheck_at = None
            given = []
            while session.free > 0:
                job = self._pick(session, now)
                if job is None:
                    break
                given.append(self._start(job, session, now))
            return given

    def waiting(self, session: Session, wake: Callable[[], None] | None) -> None:
        """`session` waits for work (wake called when there may be some), or stopped waiting (None)."""
        with self._lock:
            session.wake = wake
            if wake is not None and session.free > 0 and session.name in self._sessions:
                self._idle[session.name] = session
            else:
                self._idle.pop(session.name, None)

    def finish(self, done: Completed, outcome: Outcome) -> None:
        """A completed lease checked out: its operations get `outcome`."""
        with self._lock:
            job = done.job
            if self._jobs.get(job.key) is not job:
                return
            job.lease = None
            ran = self.clock() - job.started_at
            self.counters["actions_finished"] += 1
            if outcome.code != OK:
                self.counters["actions_failed"] += 1
            self._complete(job, outcome, done.lease.session.bot_id, ran)

    def failed(self, done: Completed, reason: str) -> None:
        """A completed lease did not check out (a result naming blobs not in the CAS...): retried elsewhere."""
        with self._lock:
            if self._jobs.get(done.job.key) is done.job and done.job.lease is done.lease:
                self._attempt_failed(done.lease, reason)

    def inventory(self, session: Session, reset: bool, added: Iterable[tuple[str, int]],
                  removed: Iterable[str]) -> int:
        """What a worker holds now (Inventory.Report); the number of blobs recorded (at most MAX_HELD)."""
        with self._lock:
            if reset:
                self._drop_holdings(session)
            for hash_ in removed:
                size = session.held.pop(hash_, None)
                if size is not None:
                    session.held_bytes -= size
                    self._unhold(hash_, session)
            for hash_, size in added:
                if hash_ not in session.held and len(session.held) < MAX_HELD:
                    session.held[hash_] = size
                    session.held_bytes += size
                    self._holders.setdefault(hash_, set()).add(session)
            return len(session.held)

    # -- time ----------------------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Periodic: expire silent sessions (their leases requeued), cancel abandoned jobs, tell the clients of
        jobs no connected worker can run."""
        with self._lock:
            now = self.clock()
            for session in [s for s in self._sessions.values() if now - s.last_seen > self.bot_timeout]:
                self._disconnect(session, f"worker {session.bot_id} stopped updating its session "
                                          f"for {self.bot_timeout:g}s")
            for job in [j for j in self._abandoned.values() if now - (j.abandoned_at or now) >= ABANDONED_S]:
                self._cancel(job, f"every client waiting for it went away {ABANDONED_S:g}s ago")
            for klass in self._classes.values():
                if klass.count == 0 or klass.sessions:
                    klass.unmatched_since, klass.unmatched = None, ""
                elif klass.unmatched_since is None:
                    klass.unmatched_since = now
                elif not klass.unmatched and now - klass.unmatched_since >= self.unmatched_timeout:
                    klass.unmatched = klass.describe()
                    self.log(f"{klass.count} queued action(s) wait: {klass.unmatched}")
                    for queue in klass.builds.values():
                        for job in queue:
                            if job.stage == QUEUED and job.klass is klass:
                                for op in job.operations:
                                    op.changed()
            self._prune()

    def stop(self) -> None:
        """The server is stopping: wake every client stream and long poll, so they end now (see `stopping`)."""
        with self._lock:
            self.stopping = True
            for op in list(self._operations.values()):
                op.changed()
            for session in list(self._sessions.values()):
                if session.wake is not None:
                    session.wake()

    # -- reading -------------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        """The counters, the queue length and the number of workers (for /metrics)."""
        with self._lock:
            return {**self.counters, "queued": self._queued, "workers": len(self._sessions),
                    "running": sum(len(s.leases) for s in self._sessions.values())}

    def snapshot(self) -> dict[str, Any]:
        """What the status page shows (JSON-serialisable): workers, the queue (its first SNAPSHOT_QUEUE operations,
        and its length), running and recent jobs, counters."""
        with self._lock:
            now = self.clock()
            workers = [{
                "name": s.bot_id, "session": s.name, "platform": {k: sorted(v) for k, v in s.properties.items()},
                "max_jobs": s.max_jobs, "running": [o.name for lease in s.leases.values()
                                                    for o in lease.job.operations],
                "held_blobs": len(s.held), "held_bytes": s.held_bytes, "last_seen_s_ago": now - s.last_seen,
                "connected_s": now - s.connected_at,
            } for s in self._sessions.values()]
            queue: list[dict[str, Any]] = []
            running: list[dict[str, Any]] = []
            busy: dict[PlatformClass, bool] = {}
            for job in self._jobs.values():
                if job.stage == QUEUED and len(queue) >= SNAPSHOT_QUEUE:
                    continue
                for op in job.operations:
                    entry = {"operation": op.name, "action": job.action, "build": op.build, "task": op.task}
                    if job.stage == QUEUED:
                        queue.append({**entry, "queued_s_ago": now - job.queued_at,
                                      "waiting_for": self._why_waiting(job, now, busy)})
                    else:
                        running.append({**entry, "worker": op.running_on, "started_s_ago": now - job.started_at,
                                        "attempt": job.attempts})
            recent = [{**{k: v for k, v in r.items() if k != "finished_at"},
                       "finished_s_ago": now - r["finished_at"]} for r in self._recent]
            return {"workers": workers, "queue": queue, "queue_length": self._queued, "running": running,
                    "recent": recent, "counters": dict(self.counters)}

    # -- inside --------------------------------------------------------------------------------------------------

    def _name(self) -> str:
        return f"operations/{uuid.uuid4()}"

    def _operation(self, job: Job, action: str, build: str, task: str) -> Operation:
        op = Operation(self._name(), action, job, build, task)
        job.operations.append(op)
        self._operations[op.name] = op
        return op

    def _class(self, instance: str, requirements: Requirements) -> PlatformClass:
        klass = self._classes.get((instance, requirements))
        if klass is None:
            klass = self._classes[(instance, requirements)] = PlatformClass(instance, requirements)
            for session in self._sessions.values():
                if klass.matches(session):
                    self._capable(klass, session)
        return klass

    def _prune(self) -> None:
        """Forget platform classes with nothing queued and builds not queued, once there are many (peers choose
        platforms and build ids: memory stays bounded)."""
        if len(self._classes) > MAX_CLASSES:
            for key, klass in list(self._classes.items()):
                if klass.count == 0:
                    del self._classes[key]
                    for session in klass.sessions:
                        session.classes.remove(klass)
        if len(self._served) > MAX_BUILDS:
            queued = {build for klass in self._classes.values() for build in klass.builds}
            self._served = {build: n for build, n in self._served.items() if build in queued}

    def _capable(self, klass: PlatformClass, session: Session) -> None:
        klass.sessions.add(session)
        session.classes.append(klass)
        klass.unmatched_since, klass.unmatched = None, ""

    def _enqueue(self, job: Job, front: bool = False) -> None:
        now = self.clock()
        job.stage, job.queued_at = QUEUED, now
        klass = job.klass
        if self._classes.get((klass.instance, klass.requirements)) is not klass:  # pruned while the job ran
            klass = job.klass = self._class(klass.instance, klass.requirements)
        queue = klass.builds.get(job.build)
        if queue is None:
            queue = klass.builds[job.build] = deque()
        if front:
            queue.appendleft(job)
        else:
            queue.append(job)
        klass.count += 1
        self._queued += 1
        job.reserved_for = None
        # With a short queue, reserved for a moment for the capable worker with a free slot that holds most of its
        # inputs; behind a backlog, each worker coming free picks what it holds most of (_pick) instead.
        scores = self._scores(job) if job.inputs and self._holders and klass.count <= SCAN else None
        if scores:
            target: Session | None = max(scores, key=scores.__getitem__)
            assert target is not None
            job.reserved_for, job.reserve_until = target, now + LOCALITY_WAIT_S
        else:
            target = next((s for s in self._idle.values() if klass in s.classes and s.free > 0), None)
        if target is not None and target.wake is not None:
            target.wake()

    def _scores(self, job: Job) -> dict[Session, int]:
        """Input bytes of `job` held by each capable worker with a free slot (those holding some)."""
        scores: dict[Session, int] = {}
        able: dict[Session, bool] = {}
        klass = job.klass
        for hash_, size in job.inputs.items():
            for holder in self._holders.get(hash_, ()):
                ok = able.get(holder)
                if ok is None:
                    ok = able[holder] = holder.free > 0 and klass in holder.classes
                if ok:
                    scores[holder] = scores.get(holder, 0) + size
        return scores

    def _pick(self, session: Session, now: float) -> Job | None:
        """The job `session` should run next: from the build served least recently among the queues it can
        serve; among the first SCAN jobs of that build, the one whose inputs it holds most of."""
        held, zeros = session.held, itertools.repeat(0)
        heads = []
        for klass in session.classes:
            if klass.count:
                heads += [(self._served.get(build, 0), build, klass) for build, queue in klass.builds.items() if queue]
        heads.sort(key=lambda h: h[0])
        for _, build, klass in heads:
            queue = klass.builds[build]
            best, best_score, best_at = None, -1, 0
            i = 0
            while i < len(queue) and i < SCAN:
                job = queue[i]
                if job.stage != QUEUED or job.klass is not klass:  # stale: left, requeued elsewhere or cancelled
                    del queue[i]
                    continue
                other = job.reserved_for
                if other is not None and other is not session and now < job.reserve_until \
                        and other.name in self._sessions and other.free > 0:
                    session.recheck_at = min(session.recheck_at or job.reserve_until, job.reserve_until)
                    i += 1
                    continue
                score = sum(map(held.get, job.inputs, zeros)) if held else 0  # bytes this worker holds
                if score > best_score:
                    best, best_score, best_at = job, score, i
                i += 1
            if not queue:
                del klass.builds[build]
            if best is not None:
                del queue[best_at]
                if not queue:
                    del klass.builds[build]
                klass.count -= 1
                self._queued -= 1
                return best
        return None

    def _start(self, job: Job, session: Session, now: float) -> Lease:
        lease = Lease(f"{self._lease_prefix}-{next(self._lease_ids):x}", job, session)
        session.leases[lease.id] = lease
        if session.free <= 0:
            self._idle.pop(session.name, None)
        job.stage, job.lease, job.started_at = EXECUTING, lease, now
        job.attempts += 1
        job.tried.append(session.bot_id)
        self._served[job.build] = next(self._serve_count)
        self.counters["actions_started"] += 1
        self.counters["queue_to_start_seconds_sum"] += now - job.queued_at
        self.counters["queue_to_start_count"] += 1
        for op in job.operations:
            op.changed()
        return lease

    def _attempt_failed(self, lease: Lease, reason: str, counted: bool = True) -> None:
        """The attempt `lease` made is lost: the job is requeued first in its build's line, or fails for good
        after MAX_ATTEMPTS (`counted`: False when the worker never got the lease)."""
        job = lease.job
        job.lease = None
        if not counted:
            job.attempts -= 1
            job.tried.pop()
        self._free(lease.session)
        if job.attempts >= MAX_ATTEMPTS:
            self.counters["actions_finished"] += 1
            self.counters["actions_failed"] += 1
            message = (f"action {job.action} failed {job.attempts} attempts (workers tried: {', '.join(job.tried)}); "
                       f"last: {reason}")
            self.log(message)
            self._complete(job, Outcome(UNAVAILABLE, message), lease.session.bot_id, self.clock() - job.started_at)
            return
        self.counters["actions_retried"] += 1
        self.log(f"action {job.action} requeued: {reason}")
        self._enqueue(job, front=True)
        for op in job.operations:
            op.changed()

    def _free(self, session: Session) -> None:
        """A slot of `session` may have come free: it is idle again if it waits for work."""
        if session.wake is not None and session.free > 0 and session.name in self._sessions:
            self._idle[session.name] = session
            session.wake()

    def _complete(self, job: Job, outcome: Outcome, worker: str, ran: float) -> None:
        del self._jobs[job.key]
        self._abandoned.pop(job.key, None)
        for op in job.operations:
            op.worker = worker
            self._end(op, outcome)
        self._recent.append({"operation": job.operations[0].name if job.operations else "", "action": job.action,
                             "build": job.build, "task": job.task, "worker": worker,
                             "queued_s": job.started_at - job.first_queued_at if job.started_at else 0.0,
                             "ran_s": ran, "outcome": outcome.label, "finished_at": self.clock()})

    def _end(self, op: Operation, outcome: Outcome) -> None:
        op.outcome = outcome
        self._operations.pop(op.name, None)
        self._retire(op)
        op.changed()

    def _retire(self, op: Operation) -> None:
        self._finished[op.name] = op
        while len(self._finished) > KEEP_FINISHED:
            self._finished.popitem(last=False)

    def _cancel(self, job: Job, reason: str) -> None:
        if self._jobs.get(job.key) is not job:
            return
        if job.stage == QUEUED:
            job.klass.count -= 1
            self._queued -= 1
            job.stage = CANCELLED  # its queue entry is now stale
        elif job.lease is not None:
            job.lease.cancel = True
            if job.lease.session.wake is not None:
                job.lease.session.wake()
        self.counters["actions_cancelled"] += 1
        self.log(f"action {job.action} cancelled: {reason}")
        self._complete(job, Outcome(CANCELLED_CODE, f"cancelled: {reason}", label="cancelled"),
                       job.lease.session.bot_id if job.lease else "", 0.0)
        job.lease = None

    def _disconnect(self, session: Session, reason: str) -> None:
        if self._sessions.pop(session.name, None) is None:
            return
        self._idle.pop(session.name, None)
        self.log(f"{reason}: its session ends")
        for klass in session.classes:
            klass.sessions.discard(session)
        self._drop_holdings(session)
        leases, session.leases = list(session.leases.values()), {}
        for lease in leases:
            if not lease.cancel and lease.job.lease is lease:
                self._attempt_failed(lease, reason)

    def _drop_holdings(self, session: Session) -> None:
        for hash_ in session.held:
            self._unhold(hash_, session)
        session.held, session.held_bytes = {}, 0

    def _unhold(self, hash_: str, session: Session) -> None:
        holders = self._holders.get(hash_)
        if holders is not None:
            holders.discard(session)
            if not holders:
                del self._holders[hash_]

    def _why_waiting(self, job: Job, now: float, busy: dict[PlatformClass, bool]) -> str:
        """What a queued job waits for, in words (`busy`: whether each class's workers are all busy, as found)."""
        klass = job.klass
        if not klass.sessions:
            return klass.describe()
        if job.reserved_for is not None and now < job.reserve_until:
            return f"reserved for {job.reserved_for.bot_id}, which holds most of its inputs"
        if klass not in busy:
            busy[klass] = all(s.free <= 0 for s in klass.sessions)
        if busy[klass]:
            return f"every capable worker is busy ({len(klass.sessions)})"
        return "a free worker to ask for work"
