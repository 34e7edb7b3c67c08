"""The bot session: the Remote Workers API loop that takes leases from the server and reports them.

The worker opens a session (CreateBotSession) and then calls UpdateBotSession with every lease it holds, again
and again: the server holds each call open for a few seconds until it has work or a cancellation, so the calls
are also the worker's heartbeat. When one of the worker's own leases finishes, the call in flight is cancelled
and a new one carries the result at once (the Remote Workers API lets a server re-send a lease whose assignment
was lost that way, as BuildGrid does). New leases run on a pool of `max_jobs` threads; a lease the server marks
CANCELLED, or leaves out of its answer (the Remote Workers API's way, BuildGrid's), has its process group killed.

When the server goes away the worker retries with exponential backoff (capped, with jitter). A server that no
longer knows the session (it restarted) gets a new one; leases still running from the lost session finish (their
outputs reach the CAS) and are then dropped, since no one is left to report them to. `stop` (SIGTERM) stops taking
leases, lets the running ones finish and report, then ends the loop.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import code_pb2, status_pb2

from gaffer import errors
from gaffer.digest import Digest
from gaffer.execute.local import ProcessRunner
from gaffer.protos import bots_pb2, bots_pb2_grpc, inventory_pb2, inventory_pb2_grpc, worker_pb2
from gaffer.protos.digests import to_proto
from gaffer.worker.blobs import BlobCache
from gaffer.worker.run import Job, Outcome, run_lease

POLL_TIMEOUT_S = 10.0  # one UpdateBotSession's deadline: gaffer serve holds a call ~5 s, BuildGrid 80% of this
STOP_POLL_TIMEOUT_S = 1.5  # while stopping there is no work to wait for: gaffer serve holds a call to 1 s before
#                            its deadline, BuildGrid answers a terminating bot at once
CREATE_TIMEOUT_S = 3.7  # BuildGrid long-polls a CreateBotSession too, for 80% of its deadline unless that is under 3 s
CALL_TIMEOUT_S = 30.0  # Inventory.Report
REPORT_DIGESTS = 40_000  # digests per InventoryReport: ~3 MB, under the 4 MiB a gRPC server accepts by default
BACKOFF_START_S = 0.1
BACKOFF_CAP_S = 10.0
_SESSION_GONE = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT})
# Answers to CreateBotSession that no retry changes: a missing or wrong token, a server without a Bots service, a
# session it finds malformed (an instance name or a max jobs it does not take).
_REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                      grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INVALID_ARGUMENT})


class Refused(Exception):
    """The server will not take this worker (its token, no Bots service, a malformed session): the operator must
    act."""

    def __init__(self, e: grpc.RpcError) -> None:
        self.token = e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        super().__init__(_describe(e))


def say(message: str) -> None:
    """One line on stderr: what an operator (and a test) follows the worker by."""
    errors.say("gaffer worker", message)


class Backoff:
    """Exponential backoff with full jitter, capped: a fleet of workers does not reconnect in lockstep."""

    def __init__(self) -> None:
        self._delay = BACKOFF_START_S

    def next(self) -> float:
        delay = random.uniform(self._delay / 2, self._delay)
        self._delay = min(BACKOFF_CAP_S, self._delay * 2)
        return delay

    def reset(self) -> None:
        self._delay = BACKOFF_START_S


@dataclass
class _Lease:
    """A lease of a session: ACTIVE while its action runs, COMPLETED with its outcome until the server has it."""

    job: Job
    session: str
    state: int = bots_pb2.ACTIVE
    outcome: Outcome | None = None
    started: float = field(default_factory=time.monotonic)

    def proto(self) -> bots_pb2.Lease:
        lease = bots_pb2.Lease(id=self.job.lease_id, state=self.state)  # type: ignore[arg-type]
        if self.outcome is not None:
            lease.status.CopyFrom(self.outcome.status)
            if self.outcome.result is not None:
                lease.result.Pack(self.outcome.result)
        return lease


class Session:
    """One worker's connection to the server: its bot session, its leases, its inventory reports."""

    def __init__(self, channel: grpc.Channel, instance: str, bot_id: str, worker: worker_pb2.Worker,
                 blobs: BlobCache, exec_dir: Path, env: dict[str, str], max_jobs: int,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._bots = bots_pb2_grpc.BotsStub(channel)
        self._inventory = inventory_pb2_grpc.InventoryStub(channel)
        self.instance = instance
        self.bot_id = bot_id
        self.worker = worker
        self.blobs = blobs
        self.exec_dir = exec_dir
        self.env = env
        self.runner = ProcessRunner()
        self._metadata = metadata
        self._pool = ThreadPoolExecutor(max_jobs, thread_name_prefix="lease")
        self._cv = threading.Condition()
        self._changed = False  # a lease finished, or stop: the call in flight is cut short
        self._stopping = False
        self._name = ""  # the session's name, "" while there is none
        self._version = ""
        self._leases: dict[str, _Lease] = {}  # the current session's
        self._running = 0  # leases whose action has not finished, lost sessions' too
        self._inventory_on = True
        self._inventory_reset = True
        self._inventory_lock = threading.Lock()

    # -- control -------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Take no more leases; the loop ends once the running ones are finished and reported."""
        with self._cv:
            self._stopping = True
            self._changed = True
            self._cv.notify_all()

    def kill(self) -> None:
        """Kill every running action now (a second stop signal); they report CANCELLED."""
        threading.Thread(target=self.runner.cancel_all, daemon=True).start()

    # -- the loop ------------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve leases until `stop`, reconnecting whenever the server goes away."""
        backoff = Backoff()
        try:
            while not self._done():
                if not self._name:
                    if self._stopping:  # no session to report to: let the running leases finish
                        with self._cv:
                            self._cv.wait_for(lambda: not self._running)
                        continue
                    try:
                        self._create()
                    except grpc.RpcError as e:
                        if e.code() in _REFUSED:
                            raise Refused(e) from None
                        self._wait(backoff, f"cannot open a session: {_describe(e)}")
                        continue
                    backoff.reset()
                    self._report_inventory()
                    continue
                if self._update(backoff):
                    backoff.reset()
        except BaseException:
            self.kill()  # no one will hear of the running leases: end them rather than wait for them
            raise
        finally:
            self._pool.shutdown(wait=True)

    def _done(self) -> bool:
        with self._cv:
            return self._stopping and not self._running and not self._leases

    def _wait(self, backoff: Backoff, why: str) -> None:
        """Back off before the next attempt; a finished lease or a stop signal cuts the wait short."""
        delay = backoff.next()
        say(f"{why}; retrying in {delay:.1f}s")
        with self._cv:
            self._cv.wait(delay)

    def _create(self) -> None:
        session = bots_pb2.BotSession(bot_id=self.bot_id, status=bots_pb2.OK, worker=self.worker)
        request = bots_pb2.CreateBotSessionRequest(parent=self.instance, bot_session=session)
        response = self._bots.CreateBotSession(request, timeout=CREATE_TIMEOUT_S, metadata=self._metadata)
        with self._cv:
            self._name, self._version = response.name, response.version
            self._inventory_reset = True
            self._take(response.leases)
        say(f"session {response.name} opened as {self.bot_id}")

    def _update(self, backoff: Backoff) -> bool:
        """One UpdateBotSession; whether the server answered."""
        with self._cv:
            name = self._name
            leases = [lease.proto() for lease in self._leases.values()]
            sent = set(self._leases)
            reported = [lease_id for lease_id, lease in self._leases.items() if lease.state == bots_pb2.COMPLETED]
            status = bots_pb2.BOT_TERMINATING if self._stopping else bots_pb2.OK
            timeout = STOP_POLL_TIMEOUT_S if self._stopping else POLL_TIMEOUT_S
            session = bots_pb2.BotSession(name=name, bot_id=self.bot_id, status=status,
                                          worker=self.worker, leases=leases, version=self._version)
            self._changed = False
        call = self._bots.UpdateBotSession.future(bots_pb2.UpdateBotSessionRequest(name=name, bot_session=session),
                                                  timeout=timeout, metadata=self._metadata)
        call.add_done_callback(lambda _call: self._notify())
        with self._cv:
            self._cv.wait_for(lambda: call.done() or self._changed)
        if not call.done():
            call.cancel()
        try:
            response = call.result()
        except grpc.FutureCancelledError:
            return True
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.CANCELLED:
                return True
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:  # a long poll the server held to our deadline
                return True
            if code in _SESSION_GONE:
                self._lose(name, _describe(e))
                return True
            if self._stopping and not self._running:
                say(f"the server is unreachable while stopping ({_describe(e)}): "
                    f"{len(reported)} finished leases not reported")
                with self._cv:
                    self._leases.clear()
                return False
            self._wait(backoff, f"the server is unreachable: {_describe(e)}")
            return False
        with self._cv:
            if self._name != name:
                return True
            self._version = response.version
            for lease_id in reported:
                self._leases.pop(lease_id, None)
            self._drop(sent - {lease.id for lease in response.leases})
            self._take([lease for lease in response.leases if lease.id not in reported])  # not news: just done
        return True

    def _notify(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _take(self, leases: list[bots_pb2.Lease]) -> None:
        """Follow the server's view of the leases (under the lock): start new ones, kill cancelled ones."""
        for lease in leases:
            known = self._leases.get(lease.id)
            if known is None:
                if lease.state in (bots_pb2.PENDING, bots_pb2.ACTIVE) and not self._stopping:
                    self._start(lease)
            elif lease.state == bots_pb2.CANCELLED and known.state == bots_pb2.ACTIVE:
                say(f"lease {lease.id}: cancelled by the server")
                threading.Thread(target=self.runner.cancel_run, args=(known.job.cancel,), daemon=True).start()

    def _drop(self, lease_ids: set[str]) -> None:
        """Leases the server left out of its answer (under the lock): it no longer wants them (BuildGrid cancels
        a lease that way), so they are killed if running and never reported."""
        for lease_id in lease_ids:
            entry = self._leases.pop(lease_id, None)
            if entry is not None and entry.state == bots_pb2.ACTIVE:
                say(f"lease {lease_id}: dropped by the server")
                threading.Thread(target=self.runner.cancel_run, args=(entry.job.cancel,), daemon=True).start()

    def _start(self, lease: bots_pb2.Lease) -> None:
        job = Job(lease.id, lease.payload, threading.Event())
        entry = _Lease(job, self._name)
        self._leases[lease.id] = entry
        self._running += 1
        self._pool.submit(self._work, entry)

    def _lose(self, name: str, why: str) -> None:
        with self._cv:
            if self._name != name:
                return
            running = [lease_id for lease_id, lease in self._leases.items() if lease.state == bots_pb2.ACTIVE]
            self._name, self._leases = "", {}
        going_on = f"; {len(running)} running leases finish unreported" if running else ""
        say(f"session {name} lost ({why}): opening a new one{going_on}")

    # -- one lease -----------------------------------------------------------------------------------------------

    def _work(self, entry: _Lease) -> None:
        job = entry.job
        say(f"lease {job.lease_id}: running")
        try:
            if job.cancel.is_set():
                outcome = Outcome(status_pb2.Status(code=code_pb2.CANCELLED, message="cancelled by the server"))
            else:
                outcome = run_lease(job, self.blobs, self.exec_dir, self.env, self.runner, self.bot_id)
        except Exception as e:  # noqa: BLE001 - a bug must fail the lease, not kill the worker silently
            outcome = Outcome(status_pb2.Status(code=code_pb2.INTERNAL, message=f"worker {self.bot_id}: {e!r}"))
        with self._cv:
            entry.outcome, entry.state = outcome, bots_pb2.COMPLETED
            self._running -= 1
            current = entry.session == self._name and self._leases.get(job.lease_id) is entry
            self._changed = True
            self._cv.notify_all()
        took = time.monotonic() - entry.started
        result = outcome.result
        what = (f"exit {result.exit_code}" if result is not None and outcome.status.code == code_pb2.OK
                else f"{code_pb2.Code.Name(outcome.status.code)}: {outcome.status.message}")
        dropped = "" if current else " (no longer wanted by the server: not reported)"
        say(f"lease {job.lease_id}: done in {took:.2f}s, {what}{dropped}")
        self.blobs.evict()
        self._report_inventory()

    # -- inventory -----------------------------------------------------------------------------------------------

    def _report_inventory(self) -> None:
        """Tell the server which blobs this worker holds (all after a new session, else what was added). A server
        without the Inventory service (BuildGrid) answers UNIMPLEMENTED once: no more reports then."""
        with self._inventory_lock:
            with self._cv:
                name, reset = self._name, self._inventory_reset
            if not self._inventory_on or not name:
                return
            added, removed = (self.blobs.held(), []) if reset else self.blobs.take_changes()
            if not reset and not added and not removed:
                return
            try:
                for report in _reports(name, reset, added, removed):
                    self._inventory.Report(report, timeout=CALL_TIMEOUT_S, metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self._inventory_on = False
                    say("the server has no Inventory service: no blob reports")
                else:
                    with self._cv:
                        self._inventory_reset = True  # the next report starts over
                return
            with self._cv:
                if self._name == name:
                    self._inventory_reset = False


def _reports(name: str, reset: bool, added: list[Digest], removed: list[Digest]) -> Iterator[
        inventory_pb2.InventoryReport]:
    """One inventory change as reports of at most REPORT_DIGESTS digests each (only the first a reset): a worker
    may hold more blobs than one message can name."""
    changes = [*((d, True) for d in added), *((d, False) for d in removed)]
    for start in range(0, max(len(changes), 1), REPORT_DIGESTS):
        part = changes[start:start + REPORT_DIGESTS]
        yield inventory_pb2.InventoryReport(bot_session=name, reset=reset and not start,
                                            added=[to_proto(d) for d, add in part if add],
                                            removed=[to_proto(d) for d, add in part if not add])


def _describe(e: grpc.RpcError) -> str:
    return f"{e.code().name}: {e.details()}"
