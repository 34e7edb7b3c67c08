"""The coordinator (server/dispatch.py) alone, in-process, with a clock the test moves: matching, fairness,
capacity, locality, retries, heartbeat expiry, cancellation, merging, the status snapshot."""

from __future__ import annotations

import json

import pytest

from gaffer.server.dispatch import (
    ABANDONED_S,
    ACTIVE,
    CANCELLED,
    COMPLETED,
    LOCALITY_WAIT_S,
    MAX_ATTEMPTS,
    MAX_CLASSES,
    Completed,
    Coordinator,
    Lease,
    Operation,
    Outcome,
    Report,
    Session,
)

LINUX = {"OSFamily": {"linux"}, "ISA": {"x86-64"}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def coordinator(clock: Clock) -> Coordinator:
    return Coordinator(bot_timeout=15.0, unmatched_timeout=60.0, clock=clock)


def action(n: int) -> str:
    return f"{n:064x}/{n}"


def worker(c: Coordinator, name: str, max_jobs: int = 1, **extra: set[str]) -> Session:
    return c.connect(name, "", {**LINUX, **extra}, max_jobs, [])


def submit(c: Coordinator, n: int, build: str = "b", platform: dict[str, str] | None = None,
           inputs: dict[str, int] | None = None, cacheable: bool = True) -> Operation:
    return c.submit("", action(n), platform or {"OSFamily": "linux"}, inputs or {}, build, f"task{n}", cacheable)


def complete(c: Coordinator, session: Session, lease: Lease, exit_code: int = 0) -> None:
    """The worker reports `lease` done and its result checks out."""
    done = c.update(session, [Report(lease.id, COMPLETED, result=f"result of {lease.job.action}")])
    assert [d.lease for d in done] == [lease]
    c.finish(done[0], Outcome(0, result=done[0].result, label="ok" if exit_code == 0 else f"exit {exit_code}"))


def test_platform_must_match_every_property(coordinator: Coordinator) -> None:
    nolink = worker(coordinator, "nolink")
    linker = worker(coordinator, "linker", linking={"true"})
    link = submit(coordinator, 1, platform={"OSFamily": "linux", "linking": "true"})
    assert coordinator.assign(nolink) == []
    leases = coordinator.assign(linker)
    assert [lease.job.action for lease in leases] == [link.action]
    # a key the worker lists with several values matches any of them
    multi = coordinator.connect("multi", "", {"OSFamily": {"linux"}, "ISA": {"x86-64", "i386"}}, 1, [])
    i386 = submit(coordinator, 2, platform={"OSFamily": "linux", "ISA": "i386"})
    assert coordinator.assign(nolink) == []
    assert [lease.job.action for lease in coordinator.assign(multi)] == [i386.action]
    # the instance is part of the match
    other = coordinator.submit("other", action(3), {"OSFamily": "linux"}, {}, "b", "t")
    assert coordinator.assign(nolink) == []
    assert other.stage == "QUEUED"


def test_builds_are_served_in_turn(coordinator: Coordinator) -> None:
    """A build of 100 actions queued first does not make a 2-action build wait for it."""
    for n in range(100):
        submit(coordinator, n, build="big")
    small = [submit(coordinator, 1000 + n, build="small") for n in range(2)]
    w = worker(coordinator, "w")
    order = []
    for _ in range(6):
        (lease,) = coordinator.assign(w)
        order.append(lease.job.build)
        complete(coordinator, w, lease)
    assert order[:4].count("small") == 2, order
    assert all(op.outcome is not None for op in small)


def test_capacity_is_backpressure(coordinator: Coordinator) -> None:
    w = worker(coordinator, "w", max_jobs=2)
    ops = [submit(coordinator, n) for n in range(5)]
    first = coordinator.assign(w)
    assert len(first) == 2 and coordinator.assign(w) == []
    complete(coordinator, w, first[0])
    assert len(coordinator.assign(w)) == 1
    assert coordinator.stats()["queued"] == 2
    assert all(op.outcome is None or op.outcome.code == 0 for op in ops)  # nothing failed for lack of room


def test_locality_prefers_the_holder_then_falls_back(coordinator: Coordinator, clock: Clock) -> None:
    near, far = worker(coordinator, "near"), worker(coordinator, "far")
    coordinator.inventory(near, True, [("big", 10_000_000), ("small", 10)], [])
    coordinator.inventory(far, True, [("small", 10)], [])
    woken: list[str] = []
    coordinator.waiting(near, lambda: woken.append("near"))
    coordinator.waiting(far, lambda: woken.append("far"))
    op = submit(coordinator, 1, inputs={"big": 10_000_000, "small": 10})
    assert woken == ["near"]
    assert coordinator.assign(far) == []  # reserved for the holder for a moment
    assert far.recheck_at == pytest.approx(clock.now + LOCALITY_WAIT_S)
    (near_lease,) = coordinator.assign(near)
    assert near_lease.job.action == op.action
    # when the holder does not take it in time, any capable worker may
    complete(coordinator, near, near_lease)
    coordinator.waiting(near, lambda: woken.append("near"))
    op2 = submit(coordinator, 2, inputs={"big": 10_000_000})
    assert woken[-1] == "near" and coordinator.assign(far) == []
    clock.now += LOCALITY_WAIT_S + 0.01
    assert [lease.job.action for lease in coordinator.assign(far)] == [op2.action]


def test_a_free_worker_takes_the_queued_job_it_holds_most_of(coordinator: Coordinator) -> None:
    w = worker(coordinator, "w")
    coordinator.inventory(w, True, [("mine", 5000)], [])
    submit(coordinator, 1, inputs={"other": 5000})
    mine = submit(coordinator, 2, inputs={"mine": 5000})
    assert [lease.job.action for lease in coordinator.assign(w)] == [mine.action]


def test_a_silent_worker_is_expired_and_its_action_retried_then_failed(coordinator: Coordinator,
                                                                         clock: Clock) -> None:
    op = submit(coordinator, 1)
    tried = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        w = worker(coordinator, f"w{attempt}")
        (lease,) = coordinator.assign(w)
        assert lease.job.attempts == attempt
        tried.append(w.bot_id)
        clock.now += 10
        coordinator.tick()
        assert coordinator.session(w.name) is w  # not yet
        clock.now += 6
        coordinator.tick()
        assert coordinator.session(w.name) is None
    assert op.outcome is not None and op.outcome.code == 14
    assert action(1) in op.outcome.message and all(name in op.outcome.message for name in tried)
    counters = coordinator.snapshot()["counters"]
    assert counters["actions_retried"] == MAX_ATTEMPTS - 1 and counters["actions_failed"] == 1


def test_a_result_that_does_not_check_out_is_retried(coordinator: Coordinator) -> None:
    w = worker(coordinator, "w")
    op = submit(coordinator, 1)
    (lease,) = coordinator.assign(w)
    (done,) = coordinator.update(w, [Report(lease.id, COMPLETED, result="bad")])
    coordinator.failed(done, "names blobs the CAS does not hold")
    assert op.stage == "QUEUED" and op.outcome is None
    (again,) = coordinator.assign(w)
    complete(coordinator, w, again)
    assert op.outcome is not None and op.outcome.result == f"result of {action(1)}"


def test_a_lease_the_worker_never_got_is_requeued_uncounted(coordinator: Coordinator) -> None:
    w = worker(coordinator, "w")
    op = submit(coordinator, 1)
    (lease,) = coordinator.assign(w)
    lease.told = lease.shown  # sent in a reply the worker never received
    assert coordinator.update(w, []) == []
    assert op.stage == "QUEUED" and op.job is not None and op.job.attempts == 0
    (again,) = coordinator.assign(w)
    coordinator.update(w, [Report(again.id, ACTIVE)])
    assert again.state == ACTIVE and op.stage == "EXECUTING"


def test_identical_actions_merge_and_do_not_cache_ones_do_not(coordinator: Coordinator) -> None:
    a, b = submit(coordinator, 1, build="x"), submit(coordinator, 1, build="y")
    assert a.job is b.job
    joined = coordinator.join("", action(1), "z", "t")
    assert joined is not None and joined.job is a.job
    u1, u2 = submit(coordinator, 2, cacheable=False), submit(coordinator, 2, cacheable=False)
    assert u1.job is not u2.job
    assert coordinator.join("", action(2), "z", "t") is None
    w = worker(coordinator, "w", max_jobs=3)
    leases = coordinator.assign(w)
    assert sorted(lease.job.action for lease in leases) == [action(1), action(2), action(2)]
    merged = next(lease for lease in leases if lease.job is a.job)
    complete(coordinator, w, merged)
    assert all(op.outcome is not None and op.outcome.result == f"result of {action(1)}" for op in (a, b, joined))


def test_a_job_nobody_waits_for_is_cancelled_on_its_worker(coordinator: Coordinator, clock: Clock) -> None:
    w = worker(coordinator, "w")
    wakes = []
    running, queued = submit(coordinator, 1), submit(coordinator, 2)
    for op in (running, queued):
        coordinator.attach(op)
    (lease,) = coordinator.assign(w)
    coordinator.waiting(w, lambda: wakes.append(1))
    for op in (running, queued):
        coordinator.detach(op)
    clock.now += ABANDONED_S - 1
    coordinator.update(w, [Report(lease.id, ACTIVE)])  # the worker's heartbeat
    coordinator.tick()
    assert running.outcome is None and queued.outcome is None
    clock.now += 1
    coordinator.tick()
    assert running.outcome is not None and running.outcome.label == "cancelled"
    assert queued.outcome is not None and queued.outcome.label == "cancelled"
    assert lease.shown == CANCELLED and wakes  # the worker is woken to be told
    assert coordinator.update(w, [Report(lease.id, COMPLETED)]) == []  # its late report changes nothing
    assert coordinator.assign(w) == []  # the cancelled queued job is gone from the queue
    assert coordinator.snapshot()["counters"]["actions_cancelled"] == 2


def test_a_client_coming_back_keeps_the_job(coordinator: Coordinator, clock: Clock) -> None:
    op = submit(coordinator, 1)
    coordinator.attach(op)
    coordinator.detach(op)
    clock.now += ABANDONED_S - 1
    coordinator.attach(op)  # WaitExecution
    clock.now += 10
    coordinator.tick()
    assert op.outcome is None


def test_cancel_operation_cancels_the_job_only_when_it_was_the_last(coordinator: Coordinator) -> None:
    a, b = submit(coordinator, 1), submit(coordinator, 1)
    assert coordinator.cancel_operation(a.name)
    assert a.outcome is not None and a.outcome.label == "cancelled" and b.outcome is None
    assert coordinator.cancel_operation(b.name)
    assert coordinator.stats()["queued"] == 0
    assert not coordinator.cancel_operation("operations/unknown")


def test_an_action_no_worker_can_take_says_so_after_the_timeout(coordinator: Coordinator, clock: Clock) -> None:
    worker(coordinator, "nolink")
    op = submit(coordinator, 1, platform={"OSFamily": "linux", "linking": "true"})
    told = []
    op.listeners.append(lambda: told.append(op.waiting_for))
    coordinator.tick()
    clock.now += 59
    coordinator.tick()
    assert op.waiting_for == "" and not told
    clock.now += 1
    coordinator.tick()
    assert op.waiting_for == "no connected worker matches platform {OSFamily=linux, linking=true}"
    assert told == [op.waiting_for] and op.stage == "QUEUED"
    (queued,) = coordinator.snapshot()["queue"]
    assert queued["waiting_for"] == op.waiting_for
    linker = worker(coordinator, "linker", linking={"true"})
    assert op.waiting_for == ""
    assert len(coordinator.assign(linker)) == 1


def test_snapshot_is_json_and_complete(coordinator: Coordinator, clock: Clock) -> None:
    w = worker(coordinator, "w", max_jobs=2)
    coordinator.inventory(w, True, [("a", 100), ("b", 50)], [])
    coordinator.inventory(w, False, [("c", 1)], ["b"])
    done_op, running_op = submit(coordinator, 1, build="B1"), submit(coordinator, 2, build="B1")
    queued_op = submit(coordinator, 3, build="B2", platform={"OSFamily": "windows"})
    first = coordinator.assign(w)
    complete(coordinator, w, next(lease for lease in first if lease.job.action == done_op.action))
    coordinator.answer(action(4), "B2", "cached-task", Outcome(0, cached=True, label="cached"))
    clock.now += 1
    snap = json.loads(json.dumps(coordinator.snapshot()))
    (wk,) = snap["workers"]
    assert wk["name"] == "w" and wk["held_blobs"] == 2 and wk["held_bytes"] == 101 and wk["max_jobs"] == 2
    assert wk["running"] == [running_op.name] and wk["platform"]["OSFamily"] == ["linux"]
    assert [q["operation"] for q in snap["queue"]] == [queued_op.name]
    assert snap["queue"][0]["waiting_for"].startswith("no connected worker matches platform")
    assert [(r["operation"], r["worker"], r["attempt"]) for r in snap["running"]] == [(running_op.name, "w", 1)]
    assert [(r["action"], r["outcome"]) for r in snap["recent"]] == [(action(1), "ok"), (action(4), "cached")]
    assert snap["counters"]["cache_hits"] == 1 and snap["counters"]["actions_started"] == 2
    assert snap["counters"]["queue_to_start_count"] == 2


def test_completed_carries_the_worker_report(coordinator: Coordinator) -> None:
    w = worker(coordinator, "w")
    submit(coordinator, 1)
    (lease,) = coordinator.assign(w)
    (done,) = coordinator.update(w, [Report(lease.id, COMPLETED, 9, "missing", details=["detail"])])
    assert isinstance(done, Completed) and (done.code, done.message, done.details) == (9, "missing", ["detail"])


def test_platform_classes_and_builds_are_forgotten_when_many(coordinator: Coordinator, clock: Clock) -> None:
    """Peers choose platforms and build ids: beyond MAX_CLASSES the empty classes go, and a job running in one
    is still requeued into a live class."""
    w = worker(coordinator, "w", max_jobs=2, test={str(i) for i in range(MAX_CLASSES + 10)})
    running = submit(coordinator, 0, platform={"OSFamily": "linux", "test": "0"})
    (lease,) = coordinator.assign(w)
    for i in range(1, MAX_CLASSES + 10):
        op = submit(coordinator, i, build=f"b{i}", platform={"OSFamily": "linux", "test": str(i)})
        (other,) = coordinator.assign(w)
        complete(coordinator, w, other)
        assert op.outcome is not None
    coordinator.update(w, [Report(lease.id, ACTIVE)])
    coordinator.tick()
    assert len(coordinator._classes) == 0 and len(w.classes) == 0
    coordinator.failed(coordinator.update(w, [Report(lease.id, COMPLETED)])[0], "did not check out")
    assert running.stage == "QUEUED"
    (again,) = coordinator.assign(w)
    assert again.job is running.job
