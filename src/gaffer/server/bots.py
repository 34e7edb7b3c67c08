"""The Remote Workers API's Bots service and gaffer's Inventory service: how workers connect, take work, report
results and say which blobs they hold, over the coordinator (dispatch.py).

A worker calls CreateBotSession once, then UpdateBotSession in a loop with all its leases: the call is held
open up to a third of the bot timeout waiting for work (a long poll) and returns as soon as there is a new lease
or a cancellation. Those calls are the heartbeat: a session silent for the bot timeout is dead and its leases are
requeued. A completed lease is believed only once every blob its ActionResult names is in the CAS; a successful
result (exit code 0) is then written to the action cache, unless the action is `do_not_cache`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2

from gaffer.config import WORKER_MAX_JOBS
from gaffer.digest import Digest
from gaffer.protos import bots_pb2, bots_pb2_grpc, inventory_pb2, inventory_pb2_grpc
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.server.dispatch import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    INVALID_ARGUMENT,
    OK,
    PENDING,
    Completed,
    Coordinator,
    Outcome,
    Report,
    Session,
)
from gaffer.server.metrics import Metrics
from gaffer.server.reapi import _HANDLED, Context, Failure, _Service
from gaffer.server.store import BackendUnavailable, BadRequest, ServerStore, check_digest, check_instance

MAX_TOOLS = 4096  # characters of `_gaffer_tools`
_STATES = {PENDING: bots_pb2.LeaseState.PENDING, ACTIVE: bots_pb2.LeaseState.ACTIVE,
           COMPLETED: bots_pb2.LeaseState.COMPLETED, CANCELLED: bots_pb2.LeaseState.CANCELLED}
_REPORTED = {v: k for k, v in _STATES.items()}


def _platform(worker: Any) -> tuple[dict[str, set[str]], int, list[str]]:
    """A Worker message's platform properties (devices[0]'s, and worker-level ones not gaffer's own), max jobs
    and tools."""
    properties: dict[str, set[str]] = {}
    listed = list(worker.devices[0].properties) if worker.devices else []
    extra = {p.key: p.value for p in worker.properties}
    listed += [p for p in worker.properties if not p.key.startswith("_gaffer_")]
    for p in listed:
        properties.setdefault(p.key, set()).add(p.value)
    text = extra.get("_gaffer_max_jobs", "1")
    try:
        max_jobs = int(text)
    except ValueError:
        max_jobs = 0
    if not 1 <= max_jobs <= WORKER_MAX_JOBS:
        raise BadRequest(f"_gaffer_max_jobs {text[:20]!r} is not a number from 1 to {WORKER_MAX_JOBS}")
    tools = [t for t in extra.get("_gaffer_tools", "")[:MAX_TOOLS].split(",") if t]
    return properties, max_jobs, tools


class Bots(_Service, bots_pb2_grpc.BotsServicer):
    kind = "bots"

    def __init__(self, store: ServerStore, metrics: Metrics, io: ThreadPoolExecutor, coordinator: Coordinator) -> None:
        super().__init__(store, metrics, io)
        self.coordinator = coordinator
        self._checks: set[asyncio.Task[None]] = set()

    async def CreateBotSession(self, request: bots_pb2.CreateBotSessionRequest, context: Context) -> Any:
        try:
            instance = check_instance(request.parent)
            given = request.bot_session
            if not given.bot_id:
                raise BadRequest("bot_session.bot_id is empty")
            properties, max_jobs, tools = _platform(given.worker)
        except _HANDLED as e:
            await self.fail("CreateBotSession", e, context)
        session = self.coordinator.connect(given.bot_id[:200], instance, properties, max_jobs, tools)
        self.metrics.request("grpc", "CreateBotSession", self.kind, "OK")
        return self._reply(session, given)

    async def UpdateBotSession(self, request: bots_pb2.UpdateBotSessionRequest, context: Context) -> Any:
        coordinator = self.coordinator
        session = coordinator.session(request.name)
        if session is None:
            await self.fail("UpdateBotSession", Failure(
                grpc.StatusCode.NOT_FOUND, f"bot session {request.name[:200]!r} is not known (the server restarted "
                "or the session expired): create a new one"), context)
        reports = [_report(lease) for lease in request.bot_session.leases]
        # leases this session never had (from before a server restart) or already took back: the worker drops them
        stale = [r.id for r in reports if r.id not in session.leases and r.state in (PENDING, ACTIVE)]
        for done in coordinator.update(session, reports):
            task = asyncio.create_task(self._check(done))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
        hold = coordinator.bot_timeout / 3
        remaining = context.time_remaining()
        if remaining is not None:
            hold = min(hold, remaining - 1.0)
        deadline = time.monotonic() + hold
        coordinator.assign(session)
        while not _news(session) and (left := deadline - time.monotonic()) > 0 and coordinator.session(request.name) \
                and not coordinator.stopping:
            woken = asyncio.Event()
            coordinator.waiting(session, woken.set)
            try:
                if session.recheck_at is not None:
                    left = min(left, max(0.0, session.recheck_at - coordinator.clock()) + 0.001)
                await asyncio.wait_for(woken.wait(), left)
            except TimeoutError:
                pass
            finally:
                coordinator.waiting(session, None)
            coordinator.assign(session)
        self.metrics.request("grpc", "UpdateBotSession", self.kind, "OK")
        return self._reply(session, request.bot_session, stale)

    def _reply(self, session: Session, given: Any, stale: Sequence[str] = ()) -> bots_pb2.BotSession:
        """The session as the server sees it: every unfinished lease in the state the worker should know, and
        the `stale` leases it reported as CANCELLED."""
        expire = Timestamp()
        expire.FromNanoseconds(time.time_ns() + int(self.coordinator.bot_timeout * 1e9))
        reply = bots_pb2.BotSession(name=session.name, bot_id=session.bot_id, status=given.status or bots_pb2.OK,
                                    worker=given.worker, expire_time=expire, version=given.version)
        for lease in list(session.leases.values()):
            hash_, _, size = lease.job.action.partition("/")
            proto = reply.leases.add(id=lease.id, state=_STATES[lease.shown])
            proto.payload.Pack(re_pb2.Digest(hash=hash_, size_bytes=int(size)))
            lease.told = lease.shown
        for lease_id in stale:
            reply.leases.add(id=lease_id, state=bots_pb2.LeaseState.CANCELLED)
        return reply

    async def _check(self, done: Completed) -> None:
        """Believe a completed lease only if its outputs are in the CAS; cache a success."""
        try:
            checked = await self.run(self._verify, done)
        except Exception as e:  # noqa: BLE001 - whatever broke, the job must not stay EXECUTING forever
            checked = f"checking the result from worker {done.lease.session.bot_id} failed: {e}"
        if isinstance(checked, Outcome):
            self.coordinator.finish(done, checked)
        else:
            self.coordinator.failed(done, checked)

    def _verify(self, done: Completed) -> Outcome | str:
        """The outcome of a completed lease, or why the attempt failed (then it is retried). Blocking."""
        worker = done.lease.session.bot_id
        instance, _ = done.job.key
        namespace = self.store.namespace(instance)
        result = done.result
        # the action's fault, not the worker's: missing inputs, a bad action, its own timeout. Not retried. A result
        # beside it (the command ran: its exit code, its logs) reaches the client when the CAS holds its blobs.
        if done.code in (code_pb2.FAILED_PRECONDITION, INVALID_ARGUMENT, code_pb2.DEADLINE_EXCEEDED):
            try:
                kept = result if isinstance(result, re_pb2.ActionResult) and namespace.result_complete(result) else None
            except (BadRequest, OSError, BackendUnavailable):
                kept = None
            return Outcome(done.code, f"worker {worker}: {done.message}", result=kept, details=done.details)
        if done.code != OK:
            return f"worker {worker}: {code_name(done.code)}: {done.message}"
        if not isinstance(result, re_pb2.ActionResult):
            return f"worker {worker} completed the lease without an ActionResult"
        try:
            if not namespace.result_complete(result):
                return f"the result from worker {worker} names blobs the CAS does not hold"
        except (BadRequest, OSError, BackendUnavailable) as e:
            return f"the result from worker {worker} could not be checked: {e}"
        if result.exit_code == 0 and done.job.cacheable:
            hash_, _, size = done.job.action.partition("/")
            try:
                namespace.put_action(Digest(hash_, int(size)), result)
            except (OSError, BackendUnavailable) as e:  # the result stands; only the cache misses it
                self.coordinator.log(f"action {done.job.action}: result not cached: {e}")
        return Outcome(OK, result=result, label="ok" if result.exit_code == 0 else f"exit {result.exit_code}")


def _news(session: Session) -> bool:
    """Has the worker something to learn: a new lease, or a cancellation?"""
    return any(not lease.told or (lease.cancel and lease.told != CANCELLED) for lease in session.leases.values())


def _report(lease: Any) -> Report:
    """A lease as the worker reports it; a result that is not an ActionResult is kept as None."""
    result = None
    if lease.result.Is(re_pb2.ActionResult.DESCRIPTOR):
        unpacked = re_pb2.ActionResult()
        if lease.result.Unpack(unpacked):
            result = unpacked
    details: list[AnyProto] = list(lease.status.details)
    return Report(lease.id, _REPORTED.get(lease.state, PENDING), lease.status.code, lease.status.message[:2000],
                  result, details)


def code_name(code: int) -> str:
    return code_pb2.Code.Name(code) if code in code_pb2.Code.values() else str(code)


class Inventory(_Service, inventory_pb2_grpc.InventoryServicer):
    """Which blobs a worker holds: the coordinator prefers the worker holding most of an action's inputs."""

    kind = "inventory"

    def __init__(self, store: ServerStore, metrics: Metrics, io: ThreadPoolExecutor, coordinator: Coordinator) -> None:
        super().__init__(store, metrics, io)
        self.coordinator = coordinator

    async def Report(self, request: inventory_pb2.InventoryReport, context: Context) -> Any:
        session = self.coordinator.session(request.bot_session)
        try:
            if session is None:
                raise Failure(grpc.StatusCode.NOT_FOUND, f"bot session {request.bot_session[:200]!r} is not known")
            held = await self.run(self._record, session, request)
        except _HANDLED as e:
            await self.fail("Report", e, context)
        self.metrics.request("grpc", "Report", self.kind, "OK")
        return inventory_pb2.InventoryAck(held_blobs=held)

    def _record(self, session: Session, request: inventory_pb2.InventoryReport) -> int:
        """Checked and recorded on an I/O thread: a report may name 100,000 blobs."""
        added = [(d.hash, d.size_bytes) for d in map(check_digest, request.added)]
        removed = [check_digest(d).hash for d in request.removed]
        return self.coordinator.inventory(session, request.reset, added, removed)
