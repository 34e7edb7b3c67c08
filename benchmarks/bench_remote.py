#!/usr/bin/env python3
"""Remote execution: `gaffer serve` with `gaffer worker`s (and BuildGrid with the same workers), on loopback.

    latency     one trivial action (`true`, its Action and Command already in the CAS) at a time, Execute to the
                final Operation, through gaffer serve + 1 gaffer worker and BuildGrid + 1 gaffer worker: median and
                p90 (target: median <= 50 ms for gaffer)
    throughput  --count trivial actions (default 10,000) over 8 gaffer workers, --concurrency Execute streams in
                flight: actions/s, and the CPU each process used, which says what bounds it
    scale       10, 100 and 500 simulated workers (in this process, speaking the real Bots API over gRPC to a real
                gaffer serve) run a generated graph of sleep actions whose durations are lognormal (median 1 s,
                p99 20 s) times --time-scale: efficiency = useful work / (workers x wall), against the best the
                graph allows (its critical path, or the work spread evenly); target >= 90% at 100 workers
    example     examples/go-microservices built by `gaffer run --remote` on 3 local gaffer workers against a local
                `gaffer run`, both cold (empty caches and GOCACHE): on 2 cores this shows the overhead

    .venv/bin/python benchmarks/bench_remote.py                                  # everything
    .venv/bin/python benchmarks/bench_remote.py --only latency,throughput --count 2000 --json /tmp/remote.json

The client of latency, throughput and scale is written here from the REAPI protos with grpcio (not gaffer's
client code), so what is timed is the server and the workers. Needs BuildGrid in .venv-buildgrid and
PostgreSQL (Debian's) for the BuildGrid side of latency; it is skipped with a note when either is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc
from google.longrunning import operations_pb2

from gaffer.digest import Digest, digest_bytes
from gaffer.protos import bots_pb2, bots_pb2_grpc, worker_pb2
from gaffer.protos import execution_service_pb2_grpc as exec_grpc
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos import remote_execution_pb2_grpc as re_grpc
from gaffer.protos.digests import to_proto
from tests.buildgrid import ReapiServer, start_gaffer_serve
from tests.servers import _spawn, _terminate, wait_until

LATENCY_TARGET_S = 0.050
THROUGHPUT_TARGET = 100.0
SCALE_TARGET = 0.90
HOST_PLATFORM = {"OSFamily": platform.system().lower(), "ISA": platform.machine().lower()}
METADATA_KEY = "build.bazel.remote.execution.v2.requestmetadata-bin"
WORKER_START_TIMEOUT_S = 60.0
# the lognormal of the scale benchmark: median 1 s, p99 20 s (z of the 99th percentile: 2.326)
SIGMA = math.log(20.0) / 2.3263
STREAMS_PER_CHANNEL = 50  # gaffer serve refuses streams beyond 100 per connection
SERVER_CALLS = 1000  # gaffer serve's cap on calls in progress: bot sessions' polls and clients' Execute streams


# -- a REAPI client from the protos ----------------------------------------------------------------------------


def action_blobs(argv: list[str], salt: str, requirements: dict[str, str] | None = None,
                 ) -> tuple[Digest, list[tuple[Digest, bytes]]]:
    """An Action running `argv` in an empty input root; `salt` (an environment variable) makes it unique, so it
    is never answered from the action cache. Its digest and the blobs to upload."""
    props = {**HOST_PLATFORM, **(requirements or {})}
    platform_pb = re_pb2.Platform(properties=[re_pb2.Platform.Property(name=k, value=v) for k, v in sorted(props.items())])
    command = re_pb2.Command(arguments=argv, platform=platform_pb,
                             environment_variables=[re_pb2.Command.EnvironmentVariable(name="BENCH_SALT", value=salt)])
    root = re_pb2.Directory().SerializeToString()
    command_bytes = command.SerializeToString()
    root_digest, command_digest = digest_bytes(root), digest_bytes(command_bytes)
    action = re_pb2.Action(command_digest=to_proto(command_digest), input_root_digest=to_proto(root_digest),
                           platform=platform_pb)
    action_bytes = action.SerializeToString()
    action_digest = digest_bytes(action_bytes)
    return action_digest, [(action_digest, action_bytes), (command_digest, command_bytes), (root_digest, root)]


def request_metadata(build: str, task: str) -> tuple[tuple[str, bytes], ...]:
    meta = re_pb2.RequestMetadata(tool_details=re_pb2.ToolDetails(tool_name="bench_remote"),
                                  tool_invocation_id=build, action_mnemonic=task, target_id=task)
    return ((METADATA_KEY, meta.SerializeToString()),)


def connect(address: str) -> grpc.aio.Channel:
    """A channel with a connection of its own (gRPC shares one between channels to the same address otherwise)."""
    return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


class Client:
    """Execute requests (grpc.aio) over `channels` connections taken in turn, since gaffer serve takes at most
    STREAMS_PER_CHANNEL streams per connection; inputs uploaded first with BatchUpdateBlobs."""

    def __init__(self, address: str, channels: int = 1) -> None:
        self.channels = [connect(address) for _ in range(channels)]
        self.cas = re_grpc.ContentAddressableStorageStub(self.channels[0])
        self.executions = [exec_grpc.ExecutionStub(channel) for channel in self.channels]
        self._turn = itertools.count()

    async def upload(self, blobs: Iterable[tuple[Digest, bytes]]) -> None:
        unique = list(dict(blobs).items())
        for start in range(0, len(unique), 500):
            request = re_pb2.BatchUpdateBlobsRequest(requests=[
                re_pb2.BatchUpdateBlobsRequest.Request(digest=to_proto(d), data=data) for d, data in unique[start:start + 500]])
            response = await self.cas.BatchUpdateBlobs(request, timeout=60)
            bad = [r for r in response.responses if r.status.code]
            assert not bad, bad[0]

    async def execute(self, action: Digest, build: str, task: str) -> tuple[float, re_pb2.ExecuteResponse]:
        """Seconds from the call to the final Operation, and its ExecuteResponse."""
        request = re_pb2.ExecuteRequest(action_digest=to_proto(action), skip_cache_lookup=True)
        t0 = time.perf_counter()
        last: operations_pb2.Operation | None = None
        execution = self.executions[next(self._turn) % len(self.executions)]
        async for operation in execution.Execute(request, metadata=request_metadata(build, task), timeout=3600):
            last = operation
            if operation.done:
                break
        elapsed = time.perf_counter() - t0
        assert last is not None and last.done, f"{task}: the stream ended before the operation was done"
        assert not last.HasField("error"), f"{task}: {last.error}"
        response = re_pb2.ExecuteResponse()
        last.response.Unpack(response)
        assert response.status.code == 0, f"{task}: {response.status}"
        assert response.result.exit_code == 0, f"{task}: exit {response.result.exit_code}"
        return elapsed, response

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


# -- processes ----------------------------------------------------------------------------------------------------


@dataclass
class Workers:
    """`gaffer worker` processes, each with its own directory and log."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.procs:
            _terminate(proc)


def start_workers(address: str, count: int, workdir: Path, max_jobs: int = 1, env: dict[str, str] | None = None,
                  extra: Iterable[str] = ()) -> Workers:
    workers = Workers()
    for n in range(count):
        home = workdir / f"worker-{n}"
        home.mkdir(parents=True, exist_ok=True)
        log = home / "worker.log"
        argv = [sys.executable, "-m", "gaffer", "worker", "--server", address, "--dir", str(home / "dir"),
                "--max-jobs", str(max_jobs), "--name", f"bench-{n}", *extra]
        workers.procs.append(_spawn(argv, log, {**os.environ, **(env or {})}))
        workers.logs.append(log)
    return workers


def status_document(server: ReapiServer) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.http_url}/status.json", timeout=10) as response:
        document: dict[str, Any] = json.load(response)
    return document


def wait_for_workers(server: ReapiServer, count: int, workers: Workers | None = None) -> None:
    """Until the server's status lists `count` workers (a worker that exits meanwhile fails at once)."""
    def ready() -> bool:
        for proc, log in zip(workers.procs if workers else [], workers.logs if workers else [], strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"a worker exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        return len(status_document(server).get("workers", [])) >= count

    wait_until(ready, f"{count} workers", WORKER_START_TIMEOUT_S)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its children it has waited for (the actions of a worker)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- latency ------------------------------------------------------------------------------------------------------


async def _latencies(address: str, runs: int) -> list[float]:
    client = Client(address)
    try:
        actions = [action_blobs(["true"], f"latency-{uuid.uuid4()}") for _ in range(runs + 5)]
        await client.upload(blob for _, blobs in actions for blob in blobs)
        build = str(uuid.uuid4())
        times = []
        for n, (digest, _) in enumerate(actions):
            elapsed, _ = await client.execute(digest, build, f"latency-{n}")
            times.append(elapsed)
        return times[5:]  # the first few warm up the channel, the worker's blob cache and the server
    finally:
        await client.close()


def bench_latency(runs: int, tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    serve = start_gaffer_serve(workdir=tmp / "serve-latency")
    workers = start_workers(serve.grpc_address, 1, tmp / "latency-gaffer")
    try:
        wait_for_workers(serve, 1, workers)
        results["gaffer"] = _summary(asyncio.run(_latencies(serve.grpc_address, runs)))
    finally:
        workers.stop()
        serve.stop()
    results["buildgrid"] = _buildgrid_latency(runs, tmp)
    return results


def _buildgrid_latency(runs: int, tmp: Path) -> dict[str, Any]:
    from tests import buildgrid

    if not buildgrid.buildgrid_installed():
        return {"skipped": "BuildGrid is not installed (scripts/install-buildgrid.sh)"}
    starter = getattr(buildgrid, "start_buildgrid_execution", None)
    if starter is None or not getattr(buildgrid, "postgres_installed", lambda: False)():
        return {"skipped": "BuildGrid's execution service needs PostgreSQL (and tests/buildgrid.py's starter)"}
    bg = starter()
    workers = start_workers(bg.server.grpc_address, 1, tmp / "latency-buildgrid")
    try:
        return _summary(asyncio.run(_latencies(bg.server.grpc_address, runs)))
    finally:
        workers.stop()
        bg.stop()


def _summary(times: list[float]) -> dict[str, Any]:
    return {"runs": len(times), "median_ms": 1000 * statistics.median(times), "p90_ms": 1000 * percentile(times, 0.9),
            "min_ms": 1000 * min(times), "max_ms": 1000 * max(times)}


# -- throughput ---------------------------------------------------------------------------------------------------


async def _flood(address: str, count: int, concurrency: int) -> tuple[float, float]:
    """Seconds to run `count` trivial actions with `concurrency` in flight, and this process's CPU seconds."""
    client = Client(address, math.ceil(concurrency / STREAMS_PER_CHANNEL))
    try:
        actions = [action_blobs(["true"], f"flood-{uuid.uuid4()}") for _ in range(count)]
        await client.upload(blob for _, blobs in actions for blob in blobs)
        build = str(uuid.uuid4())
        queue = iter(enumerate(actions))

        async def lane() -> None:
            for n, (digest, _) in queue:
                await client.execute(digest, build, f"flood-{n}")

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        return time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await client.close()


def bench_throughput(count: int, workers_n: int, concurrency: int, tmp: Path) -> dict[str, Any]:
    serve = start_gaffer_serve(workdir=tmp / "serve-throughput")
    workers = start_workers(serve.grpc_address, workers_n, tmp / "throughput")
    try:
        wait_for_workers(serve, workers_n, workers)
        before = {"server": cpu_seconds(serve.proc.pid), "workers": sum(cpu_seconds(p.pid) for p in workers.procs)}
        wall, client_cpu = asyncio.run(_flood(serve.grpc_address, count, concurrency))
        after = {"server": cpu_seconds(serve.proc.pid), "workers": sum(cpu_seconds(p.pid) for p in workers.procs)}
    finally:
        workers.stop()
        serve.stop()
    cpu = {name: after[name] - before[name] for name in before} | {"client": client_cpu}
    return {"actions": count, "workers": workers_n, "concurrency": concurrency, "wall_s": wall,
            "actions_per_s": count / wall, "cpu_s": cpu, "cores": os.cpu_count(),
            "cpu_share": {name: seconds / wall for name, seconds in cpu.items()}}


# -- scale: simulated workers on the real Bots API -------------------------------------------------------------


@dataclass
class Task:
    name: str
    seconds: float
    deps: list[int]
    digest: Digest | None = None


def scale_graph(workers: int, per_worker: int, layers: int, time_scale: float, seed: int) -> list[Task]:
    """A layered graph of `workers * per_worker` sleep tasks; each task of a layer depends on 1 to 3 of the layer
    below. Durations lognormal (median 1 s, p99 20 s) times `time_scale`."""
    rng = random.Random(seed)
    total = workers * per_worker
    width = max(1, total // layers)
    tasks: list[Task] = []
    for n in range(total):
        layer = n // width
        below = range((layer - 1) * width, layer * width) if layer else range(0)
        deps = rng.sample(below, min(len(below), rng.randint(1, 3))) if layer else []
        tasks.append(Task(f"t{n}", time_scale * rng.lognormvariate(0.0, SIGMA), deps))
    return tasks


def critical_path(tasks: list[Task]) -> float:
    finish: list[float] = []
    for task in tasks:  # deps always come first
        finish.append(task.seconds + max((finish[d] for d in task.deps), default=0.0))
    return max(finish)


async def _answer(call: Any) -> bots_pb2.BotSession:
    response: bots_pb2.BotSession = await call
    return response


class SimWorker:
    """A stand-in worker: the real Bots protocol (a session, long-polled UpdateBotSession carrying every lease),
    but an action is an asyncio.sleep of the task's duration, looked up by action digest."""

    def __init__(self, channel: grpc.aio.Channel, name: str, durations: dict[str, float]) -> None:
        self.stub = bots_pb2_grpc.BotsStub(channel)
        self.name = name
        self.durations = durations
        self.leases: dict[str, bots_pb2.Lease] = {}
        self.changed = asyncio.Event()
        self.busy_s = 0.0
        self.refused = 0  # polls the server refused (its call cap)
        self.lost = 0  # sessions the server ended
        self.session_name = ""

    async def run(self, stop: asyncio.Event) -> None:
        device = worker_pb2.Device(handle=self.name, properties=[
            worker_pb2.Device.Property(key=k, value=v) for k, v in HOST_PLATFORM.items()])
        worker = worker_pb2.Worker(devices=[device],
                                   properties=[worker_pb2.Worker.Property(key="_gaffer_max_jobs", value="1")])
        session = await self._create(worker)
        while not stop.is_set():
            self.changed.clear()
            sent = {lease_id: lease.state for lease_id, lease in self.leases.items()}
            request = bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=bots_pb2.BotSession(
                name=session.name, bot_id=self.name, status=bots_pb2.OK, worker=worker,
                leases=list(self.leases.values())))
            call = self.stub.UpdateBotSession(request, timeout=10)
            answered = asyncio.ensure_future(_answer(call))
            changed = asyncio.ensure_future(self.changed.wait())
            stopped = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({answered, changed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            stopped.cancel()
            if answered not in done:  # a lease of ours finished: the call in flight makes way for its report
                call.cancel()
                await asyncio.gather(answered, return_exceptions=True)
                continue
            try:
                response = answered.result()
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                    continue
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    self.refused += 1  # as a real worker does: call again shortly
                    await asyncio.sleep(0.05)
                    continue
                if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    self.lost += 1  # the server ended the session: its leases are requeued there
                    self.leases.clear()
                    session = await self._create(worker)
                    continue
                raise
            for lease_id, state in sent.items():  # reported COMPLETED: the server has it now
                if state == bots_pb2.COMPLETED:
                    del self.leases[lease_id]
            for lease in response.leases:
                if lease.id in self.leases:
                    if lease.state == bots_pb2.CANCELLED:
                        self.leases[lease.id].state = bots_pb2.COMPLETED
                        self.changed.set()
                    continue
                if lease.state == bots_pb2.PENDING:
                    ours = bots_pb2.Lease(id=lease.id, state=bots_pb2.ACTIVE, payload=lease.payload)
                    self.leases[lease.id] = ours
                    asyncio.ensure_future(self._run(ours))

    async def _create(self, worker: worker_pb2.Worker) -> bots_pb2.BotSession:
        request = bots_pb2.CreateBotSessionRequest(
            parent="", bot_session=bots_pb2.BotSession(bot_id=self.name, status=bots_pb2.OK, worker=worker))
        while True:
            try:
                session: bots_pb2.BotSession = await self.stub.CreateBotSession(request, timeout=60)
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    raise
                self.refused += 1
                await asyncio.sleep(0.05)
                continue
            self.session_name = session.name
            return session

    async def _run(self, lease: bots_pb2.Lease) -> None:
        digest = re_pb2.Digest()
        lease.payload.Unpack(digest)
        seconds = self.durations[digest.hash]
        await asyncio.sleep(seconds)
        self.busy_s += seconds
        result = re_pb2.ActionResult(exit_code=0)
        result.execution_metadata.worker = self.name
        lease.state = bots_pb2.COMPLETED
        lease.status.code = 0
        lease.result.Pack(result)
        self.changed.set()


async def _run_graph(address: str, tasks: list[Task], workers_n: int, inflight: int) -> dict[str, Any]:
    """Run the graph: each task submitted once its deps are done, at most `inflight` Execute streams at once."""
    channels = [connect(address) for _ in range(math.ceil(workers_n / STREAMS_PER_CHANNEL))]
    client = Client(address, math.ceil(inflight / STREAMS_PER_CHANNEL))
    lanes = asyncio.Semaphore(inflight)
    durations: dict[str, float] = {}
    blobs: list[tuple[Digest, bytes]] = []
    for task in tasks:
        digest, task_blobs = action_blobs(["sleep", f"{task.seconds:.6f}"], f"scale-{uuid.uuid4()}")
        task.digest = digest
        durations[digest.hash] = task.seconds
        blobs += task_blobs
    await client.upload(blobs)
    stop = asyncio.Event()
    sims = [SimWorker(channels[n % len(channels)], f"sim-{n}", durations) for n in range(workers_n)]
    sim_tasks = [asyncio.ensure_future(sim.run(stop)) for sim in sims]
    while sum(1 for sim in sims if sim.session_name) < workers_n:  # every session open before the clock starts
        await asyncio.sleep(0.01)
        for t in sim_tasks:
            if t.done():
                t.result()
    build = str(uuid.uuid4())
    dependants: dict[int, list[int]] = {}
    waiting = [len(task.deps) for task in tasks]
    for n, task in enumerate(tasks):
        for d in task.deps:
            dependants.setdefault(d, []).append(n)
    finished = asyncio.Queue[int]()

    async def one(n: int) -> None:
        assert tasks[n].digest is not None
        async with lanes:
            await client.execute(tasks[n].digest, build, tasks[n].name)
        finished.put_nowait(n)

    t0 = time.perf_counter()
    running = {asyncio.ensure_future(one(n)) for n, w in enumerate(waiting) if w == 0}
    done_count = 0
    while done_count < len(tasks):
        n = await finished.get()
        done_count += 1
        for m in dependants.get(n, []):
            waiting[m] -= 1
            if waiting[m] == 0:
                running.add(asyncio.ensure_future(one(m)))
    wall = time.perf_counter() - t0
    await asyncio.gather(*running)
    stop.set()
    await asyncio.gather(*sim_tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    await client.close()
    return {"wall_s": wall, "busy_s": sum(sim.busy_s for sim in sims), "refused": sum(sim.refused for sim in sims),
            "lost": sum(sim.lost for sim in sims)}


def bench_scale(sizes: list[int], per_worker: int, layers: int, time_scale: float, seed: int, tmp: Path,
                serve_args: Iterable[str] = ()) -> list[dict[str, Any]]:
    rows = []
    for workers_n in sizes:
        tasks = scale_graph(workers_n, per_worker, layers, time_scale, seed)
        work = sum(task.seconds for task in tasks)
        path = critical_path(tasks)
        bound_wall = max(path, work / workers_n)
        # the client keeps as many actions in flight as the server's call cap leaves beside the workers' polls
        inflight = min(2 * workers_n, SERVER_CALLS - workers_n - 20)
        serve = start_gaffer_serve(*serve_args, workdir=tmp / f"serve-scale-{workers_n}")
        try:
            measured = asyncio.run(_run_graph(serve.grpc_address, tasks, workers_n, inflight))
            server_cpu = cpu_seconds(serve.proc.pid)
        finally:
            serve.stop()
        efficiency = work / (workers_n * measured["wall_s"])
        best = work / (workers_n * bound_wall)
        rows.append({"workers": workers_n, "actions": len(tasks), "work_s": work, "critical_path_s": path,
                     "bound_wall_s": bound_wall, "wall_s": measured["wall_s"], "efficiency": efficiency,
                     "best_efficiency": best, "of_best": efficiency / best, "server_cpu_s": server_cpu,
                     "time_scale": time_scale, "inflight": inflight, "polls_refused": measured["refused"],
                     "sessions_lost": measured["lost"]})
    return rows


# -- the Go example ---------------------------------------------------------------------------------------------


def bench_example(tmp: Path) -> dict[str, Any]:
    from tests.support import EXAMPLE, go_env

    if shutil.which("go", path=go_env()["PATH"]) is None:
        return {"skipped": "go is not installed (pip install -e '.[example]')"}

    def checkout(name: str) -> Path:
        root = tmp / name
        shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("out", "bin", ".gaffer"))
        return root

    def build(root: Path, env: dict[str, str], *extra: str) -> float:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "gaffer", "run", *extra], cwd=root, env=env, capture_output=True,
                              text=True, timeout=1800, check=False)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"gaffer run {' '.join(extra)} failed:\n{done.stdout}\n{done.stderr}")
        return elapsed

    results: dict[str, Any] = {}
    base = {**go_env(), "GOFLAGS": "-mod=mod"}
    local_env = {**base, "GAFFER_CACHE_DIR": str(tmp / "local-cache"), "GOCACHE": str(tmp / "local-gocache")}
    results["local_cold_s"] = build(checkout("local"), local_env, "-j", "2")
    serve = start_gaffer_serve(workdir=tmp / "serve-example")
    worker_env = {**base, "GOCACHE": ""}
    workers = Workers()
    try:
        for n in range(3):  # each worker its own persistent GOCACHE, passed through to the actions
            one = start_workers(serve.grpc_address, 1, tmp / f"example-worker-{n}",
                                env={**worker_env, "GOCACHE": str(tmp / f"worker-gocache-{n}")},
                                extra=["--env-pass", "GOCACHE", "--name", f"example-{n}"])
            workers.procs += one.procs
            workers.logs += one.logs
        wait_for_workers(serve, 3, workers)
        remote = ["--remote", f"grpc://{serve.grpc_address}", "-j", "6"]
        client_env = {**base, "GAFFER_CACHE_DIR": str(tmp / "remote-cache"), "GOCACHE": str(tmp / "client-gocache")}
        results["remote_cold_s"] = build(checkout("remote"), client_env, *remote)
        second = {**client_env, "GAFFER_CACHE_DIR": str(tmp / "remote-cache-2")}
        results["remote_second_checkout_s"] = build(checkout("remote-2"), second, *remote)
    finally:
        workers.stop()
        serve.stop()
    return results


# -- main ---------------------------------------------------------------------------------------------------------


def report(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = [f"machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"]
    if "latency" in results:
        lines += ["", "latency of one trivial action, Execute to result (1 gaffer worker):",
                  f"{'server':<12} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'runs':>6}"]
        for name, row in results["latency"].items():
            if "skipped" in row:
                lines.append(f"{name:<12} skipped: {row['skipped']}")
            else:
                lines.append(f"{name:<12} {row['median_ms']:>10.1f} {row['p90_ms']:>8.1f} {row['min_ms']:>8.1f} "
                             f"{row['runs']:>6}")
    if "throughput" in results:
        t = results["throughput"]
        share = ", ".join(f"{k} {v:.2f}" for k, v in t["cpu_share"].items())
        lines += ["", (f"throughput: {t['actions']:,} trivial actions over {t['workers']} workers, {t['concurrency']} in "
                      f"flight: {t['wall_s']:.1f} s, {t['actions_per_s']:.0f} actions/s"),
                  f"  CPU (cores busy on average, of {t['cores']}): {share}"]
    if "scale" in results:
        lines += ["", f"scale: simulated workers, sleep actions lognormal median 1 s p99 20 s x {args.time_scale}",
                  (f"{'workers':>8} {'actions':>8} {'work s':>8} {'crit. s':>8} {'wall s':>8} {'bound s':>8} "
                  f"{'effic.':>7} {'best':>6} {'of best':>8}")]
        for r in results["scale"]:
            lines.append(f"{r['workers']:>8} {r['actions']:>8} {r['work_s']:>8.1f} {r['critical_path_s']:>8.1f} "
                         f"{r['wall_s']:>8.1f} {r['bound_wall_s']:>8.1f} {100 * r['efficiency']:>6.1f}% "
                         f"{100 * r['best_efficiency']:>5.1f}% {100 * r['of_best']:>7.1f}%")
    if "example" in results:
        lines += ["", "the Go example: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in results["example"].items())]
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", default="latency,throughput,scale,example",
                        help="comma-separated: latency, throughput, scale, example")
    parser.add_argument("--runs", type=int, default=200, help="latency: actions timed per server")
    parser.add_argument("--count", type=int, default=10_000, help="throughput: actions")
    parser.add_argument("--workers", type=int, default=8, help="throughput: gaffer workers")
    parser.add_argument("--concurrency", type=int, default=64, help="throughput: Execute streams in flight")
    parser.add_argument("--scale-workers", default="10,100,500", help="scale: simulated worker counts")
    parser.add_argument("--per-worker", type=int, default=20, help="scale: actions per simulated worker")
    parser.add_argument("--layers", type=int, default=4, help="scale: layers of the generated graph")
    parser.add_argument("--time-scale", type=float, default=0.1, help="scale: factor on every duration")
    parser.add_argument("--seed", type=int, default=1, help="scale: the graph's random seed")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    chosen = {name.strip() for name in args.only.split(",") if name.strip()}
    results: dict[str, Any] = {}
    steps: dict[str, Callable[[Path], Any]] = {
        "latency": lambda tmp: bench_latency(args.runs, tmp),
        "throughput": lambda tmp: bench_throughput(args.count, args.workers, args.concurrency, tmp),
        "scale": lambda tmp: bench_scale([int(n) for n in args.scale_workers.split(",")], args.per_worker,
                                         args.layers, args.time_scale, args.seed, tmp),
        "example": bench_example,
    }
    unknown = chosen - steps.keys()
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    for name, step in steps.items():
        if name in chosen:
            with tempfile.TemporaryDirectory(prefix=f"bench-remote-{name}-") as tmp:
                results[name] = step(Path(tmp))
            print("\n".join(report({name: results[name]}, args)[1:]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print("\n".join(report(results, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
