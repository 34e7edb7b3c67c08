#!/usr/bin/env python3
"""Time `gaffer serve` against BuildGrid 0.4.4 (blobs on disk) under the same client load.

The client is gaffer's own GrpcTier, one process, one channel per server, on loopback. The operations:
  find-missing    FindMissingBlobs of 10,000 digests (half of them present)
  batch-update    BatchUpdateBlobs of 1,000 fresh 1 KiB blobs
  batch-read      BatchReadBlobs of those 1,000 blobs
  bytestream-write / bytestream-read   one fresh 64 MiB blob through ByteStream
  ac-update / ac-get                   1,000 UpdateActionResult / GetActionResult calls, one at a time
Each is repeated (fresh data each time), the servers taking turns, and the median kept; AC ops report the
mean latency per call. gaffer serve runs with its defaults (so small blobs also sit in its memory cache);
`--gaffer-args='--memory 0'` measures it without.

    .venv/bin/python benchmarks/bench_server.py --json /tmp/bench_server.json
    .venv/bin/python benchmarks/bench_server.py --base /work/base --only batch-update,bytestream-write,ac-update

`--base CHECKOUT` adds a fourth server, gaffer serve from another checkout's src/ (an older commit), taking its
turn with the others: before and after in one run. Beside each wall time, the server process's own CPU time
(user + system, read from /proc, threads and child processes included) is reported: steadier than wall time on a
busy machine. `--base . --base-args=''` with `--gaffer-args=--fsync` measures what a setting costs.

A third server, the "floor" (dicts in memory, no checks, same Python), shows how much of each time is the client
and the transport: no server can beat it, so BuildGrid / floor is the best ratio any server could show here.

Needs BuildGrid in .venv-buildgrid (scripts/install-buildgrid.sh). The target: gaffer >= 3x BuildGrid on each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))  # this checkout's client, not an installed gaffer's

from gaffer.cache.grpc import GrpcTier
from gaffer.digest import Digest, digest_bytes, digest_file
from gaffer.protos import remote_execution_pb2 as re_pb2
from tests.buildgrid import (
    ReapiServer,
    buildgrid_installed,
    grpc_answers,
    start_buildgrid,
    start_gaffer_serve,
)
from tests.servers import _spawn, free_port, wait_until

TARGET = 3.0
FIND_MISSING_DIGESTS = 10_000
BATCH_BLOBS = 1_000
BATCH_BLOB_SIZE = 1024
STREAM_SIZE = 64 * 1024 * 1024
AC_OPS = 1_000
# (name, unit, what it measures); lower is better for every one
METRICS = [
    ("find-missing", "ms", "FindMissingBlobs, 10,000 digests"),
    ("batch-update", "ms", "BatchUpdateBlobs, 1,000 x 1 KiB"),
    ("batch-read", "ms", "BatchReadBlobs, 1,000 x 1 KiB"),
    ("bytestream-write", "ms", "ByteStream Write, 64 MiB"),
    ("bytestream-read", "ms", "ByteStream Read, 64 MiB"),
    ("ac-update", "ms/op", "UpdateActionResult, mean of 1,000"),
    ("ac-get", "ms/op", "GetActionResult, mean of 1,000"),
]


def _blobs(n: int, size: int) -> list[tuple[Digest, bytes]]:
    out = []
    for _ in range(n):
        data = os.urandom(size)
        out.append((digest_bytes(data), data))
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` and its descendants so far (Linux /proc; 0 elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


class Client:
    """The client load against one server; every `op_*` method runs one timed operation and returns seconds."""

    def __init__(self, server: ReapiServer, scratch: Path) -> None:
        self.server = server
        self.scratch = scratch
        self.tier = GrpcTier.from_url(server.url, timeout=120)
        self.tier.check()
        present = _blobs(FIND_MISSING_DIGESTS // 2, 100)
        self.tier.write_blobs(present)
        self.probe = [d for d, _ in present] + [d for d, _ in _blobs(FIND_MISSING_DIGESTS // 2, 100)]
        self.batch: list[Digest] = []
        self.big: Digest | None = None
        self.keys: list[Digest] = []

    def op_find_missing(self) -> float:
        t0 = time.perf_counter()
        missing = self.tier.find_missing(self.probe)
        elapsed = time.perf_counter() - t0
        assert len(missing) == FIND_MISSING_DIGESTS // 2, f"{self.server.name}: {len(missing)} missing"
        return elapsed

    def op_batch_update(self) -> float:
        blobs = _blobs(BATCH_BLOBS, BATCH_BLOB_SIZE)
        t0 = time.perf_counter()
        self.tier.write_blobs(blobs)
        elapsed = time.perf_counter() - t0
        self.batch = [d for d, _ in blobs]
        return elapsed

    def op_batch_read(self) -> float:
        t0 = time.perf_counter()
        found = self.tier.read_blobs(self.batch)
        elapsed = time.perf_counter() - t0
        assert len(found) == BATCH_BLOBS
        return elapsed

    def op_bytestream_write(self) -> float:
        path = self.scratch / "upload"
        with open(path, "wb") as f:
            f.writelines(os.urandom(1 << 20) for _ in range(STREAM_SIZE // (1 << 20)))
        digest = digest_file(path)
        t0 = time.perf_counter()
        self.tier.upload_blob(digest, path)
        elapsed = time.perf_counter() - t0
        path.unlink()
        self.big = digest
        return elapsed

    def op_bytestream_read(self) -> float:
        assert self.big is not None
        dest = self.scratch / "download"
        t0 = time.perf_counter()
        assert self.tier.fetch_blob(self.big, dest)
        elapsed = time.perf_counter() - t0
        assert digest_file(dest) == self.big
        dest.unlink()
        return elapsed

    def op_ac_update(self) -> float:
        """AC_OPS updates of fresh keys, each result naming two present blobs; the mean seconds per call."""
        self.keys = [d for d, _ in _blobs(AC_OPS, 16)]
        results = [re_pb2.ActionResult(
            stdout_digest=_pb(self.batch[0]), output_files=[re_pb2.OutputFile(path="out.o", digest=_pb(d))],
            execution_metadata=re_pb2.ExecutedActionMetadata(worker="bench"),
        ).SerializeToString(deterministic=True) for d in self.batch[:AC_OPS]]
        t0 = time.perf_counter()
        for key, result in zip(self.keys, results, strict=True):
            self.tier.write_action(key, result)
        return (time.perf_counter() - t0) / AC_OPS

    def op_ac_get(self) -> float:
        t0 = time.perf_counter()
        hits = sum(self.tier.read_action(key) is not None for key in self.keys)
        elapsed = time.perf_counter() - t0
        assert hits == AC_OPS, f"{self.server.name}: {hits} of {AC_OPS} action results found"
        return elapsed / AC_OPS


def _pb(d: Digest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=d.hash, size_bytes=d.size_bytes)


# an operation needs the one before it to have run (it reads what that one wrote)
NEEDS = {"batch-read": "batch-update", "bytestream-read": "bytestream-write", "ac-get": "ac-update",
         "ac-update": "batch-update"}


def measure(clients: list[Client], repeats: int, only: set[str]) -> tuple[dict[str, dict[str, float]],
                                                                         dict[str, dict[str, float]]]:
    """Median milliseconds of each operation per server, and the median CPU milliseconds the server process
    spent on it (per call for the AC operations). The servers take turns on every repeat, so a change in the
    machine's load during the run hits all alike."""
    names = [c.server.name for c in clients]
    samples: dict[str, dict[str, list[float]]] = {n: {m: [] for m, _, _ in METRICS} for n in names}
    cpu: dict[str, dict[str, list[float]]] = {n: {m: [] for m, _, _ in METRICS} for n in names}
    for metric, _, _ in METRICS:
        if metric not in only:
            continue
        op = "op_" + metric.replace("-", "_")
        per_call = AC_OPS if metric.startswith("ac-") else 1
        runs = repeats if not metric.startswith("bytestream") else max(2, repeats // 2)
        for _ in range(runs):
            for client in clients:
                before = _cpu_seconds(client.server.proc.pid)
                samples[client.server.name][metric].append(getattr(client, op)() * 1000)
                cpu[client.server.name][metric].append(
                    (_cpu_seconds(client.server.proc.pid) - before) * 1000 / per_call)
    return ({n: {m: statistics.median(v) for m, v in by.items() if v} for n, by in samples.items()},
            {n: {m: statistics.median(v) for m, v in by.items() if v} for n, by in cpu.items()})


def profile_batch(rounds: int) -> None:
    """The BatchUpdateBlobs handler of gaffer serve in this process, on a store in a temp directory: its CPU time
    per batch of 1,000 x 1 KiB (parsing the request's bytes, the handler, serializing the reply; no gRPC), then
    cProfile's top entries over `rounds` more batches."""
    import cProfile
    import pstats
    from concurrent.futures import ThreadPoolExecutor

    from gaffer.server.metrics import Metrics
    from gaffer.server.reapi import ContentAddressableStorage
    from gaffer.server.store import ServerStore

    def request() -> bytes:
        return re_pb2.BatchUpdateBlobsRequest(requests=[
            re_pb2.BatchUpdateBlobsRequest.Request(digest=_pb(d), data=data)
            for d, data in _blobs(BATCH_BLOBS, BATCH_BLOB_SIZE)]).SerializeToString()

    with tempfile.TemporaryDirectory(prefix="bench-server-profile-") as tmp, ThreadPoolExecutor(1) as io:
        store = ServerStore(Path(tmp), 10 * 1024**3, print, 256 * 1024 * 1024)
        handler = ContentAddressableStorage.BatchUpdateBlobs.__wrapped__  # type: ignore[attr-defined]
        cas = ContentAddressableStorage(store, Metrics(), io)

        def one(raw: bytes) -> None:
            handler(cas, re_pb2.BatchUpdateBlobsRequest.FromString(raw)).SerializeToString()

        cpu = []
        for raw in [request() for _ in range(rounds)]:
            t0 = time.process_time()
            one(raw)
            cpu.append((time.process_time() - t0) * 1000)
        print(f"BatchUpdateBlobs handler, CPU per batch of {BATCH_BLOBS:,}: median {statistics.median(cpu):.2f} ms, "
              f"min {min(cpu):.2f} ms")
        profile = cProfile.Profile(time.process_time)
        for raw in [request() for _ in range(rounds)]:
            profile.runcall(one, raw)
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
        store.close()


def serve_floor(port: int) -> None:
    """The floor: a gRPC server in this same Python that keeps blobs and results in dicts and checks nothing.

    No real cache is faster per call with this client, so its times show how much of each operation is client and
    transport rather than server; an operation whose floor is above BuildGrid's time / 3 cannot reach the target."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from google.rpc import code_pb2, status_pb2

    from gaffer.protos import bytestream_pb2, bytestream_pb2_grpc
    from gaffer.protos import remote_execution_pb2_grpc as re_grpc

    blobs: dict[str, bytes] = {}
    streamed: dict[str, list[bytes]] = {}  # ByteStream uploads, as their chunks
    actions: dict[str, bytes] = {}
    batch = re_pb2.BatchReadBlobsResponse.Response

    class Floor(re_grpc.CapabilitiesServicer, re_grpc.ContentAddressableStorageServicer, re_grpc.ActionCacheServicer,
                bytestream_pb2_grpc.ByteStreamServicer):
        def GetCapabilities(self, request: re_pb2.GetCapabilitiesRequest, context: grpc.ServicerContext) -> re_pb2.ServerCapabilities:
            return re_pb2.ServerCapabilities(cache_capabilities=re_pb2.CacheCapabilities(
                digest_functions=[re_pb2.DigestFunction.SHA256], max_batch_total_size_bytes=4 * 1024 * 1024))

        def FindMissingBlobs(self, request: re_pb2.FindMissingBlobsRequest, context: grpc.ServicerContext) -> re_pb2.FindMissingBlobsResponse:
            missing = [d for d in request.blob_digests if d.hash not in blobs]
            return re_pb2.FindMissingBlobsResponse(missing_blob_digests=missing)

        def BatchUpdateBlobs(self, request: re_pb2.BatchUpdateBlobsRequest, context: grpc.ServicerContext) -> re_pb2.BatchUpdateBlobsResponse:
            blobs.update((r.digest.hash, r.data) for r in request.requests)
            return re_pb2.BatchUpdateBlobsResponse(
                responses=[re_pb2.BatchUpdateBlobsResponse.Response(digest=r.digest) for r in request.requests])

        def BatchReadBlobs(self, request: re_pb2.BatchReadBlobsRequest, context: grpc.ServicerContext) -> re_pb2.BatchReadBlobsResponse:
            return re_pb2.BatchReadBlobsResponse(responses=[
                batch(digest=d, data=blobs[d.hash]) if d.hash in blobs
                else batch(digest=d, status=status_pb2.Status(code=code_pb2.NOT_FOUND)) for d in request.digests])

        def Read(self, request: bytestream_pb2.ReadRequest, context: grpc.ServicerContext) -> Iterator[bytestream_pb2.ReadResponse]:
            for chunk in streamed[request.resource_name.split("/")[-2]]:
                yield bytestream_pb2.ReadResponse(data=chunk)

        def Write(
            self, requests: Iterator[bytestream_pb2.WriteRequest], context: grpc.ServicerContext
        ) -> bytestream_pb2.WriteResponse:
            first = next(requests)
            chunks = [first.data, *(r.data for r in requests)]  # not joined: a floor copies nothing
            streamed[first.resource_name.split("/")[-2]] = chunks
            return bytestream_pb2.WriteResponse(committed_size=sum(map(len, chunks)))

        def GetActionResult(self, request: re_pb2.GetActionResultRequest, context: grpc.ServicerContext) -> re_pb2.ActionResult:
            if request.action_digest.hash not in actions:
                context.abort(grpc.StatusCode.NOT_FOUND, "no")
            return re_pb2.ActionResult.FromString(actions[request.action_digest.hash])

        def UpdateActionResult(self, request: re_pb2.UpdateActionResultRequest, context: grpc.ServicerContext) -> re_pb2.ActionResult:
            actions[request.action_digest.hash] = request.action_result.SerializeToString()
            return request.action_result

    server = grpc.server(ThreadPoolExecutor(32), options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)])
    floor = Floor()
    re_grpc.add_CapabilitiesServicer_to_server(floor, server)
    re_grpc.add_ContentAddressableStorageServicer_to_server(floor, server)
    re_grpc.add_ActionCacheServicer_to_server(floor, server)
    bytestream_pb2_grpc.add_ByteStreamServicer_to_server(floor, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def start_floor(workdir: Path) -> ReapiServer:
    port = free_port()
    log = workdir / "floor.log"
    t0 = time.perf_counter()
    proc = _spawn([sys.executable, __file__, "--serve-floor", str(port)], log)
    address = f"127.0.0.1:{port}"
    wait_until(grpc_answers(address), "the floor server", 30, proc, log)
    return ReapiServer("floor", address, workdir, proc, log, started_in_s=time.perf_counter() - t0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each operation (median kept)")
    parser.add_argument("--gaffer-args", default="", help="extra flags for gaffer serve, e.g. '--memory 0'")
    parser.add_argument("--base", type=Path, metavar="CHECKOUT",
                        help="also run gaffer serve from CHECKOUT/src (e.g. a worktree of an older commit)")
    parser.add_argument("--base-args", default=None, metavar="ARGS",
                        help="extra flags for the --base server (default: --gaffer-args); with --base . this "
                             "compares two settings, e.g. --gaffer-args=--fsync --base-args=''")
    parser.add_argument("--only", default="", metavar="OPS",
                        help="comma-separated operations to time (and those they need), e.g. batch-update")
    parser.add_argument("--profile-batch", action="store_true",
                        help="profile gaffer serve's BatchUpdateBlobs handler in this process instead (no servers)")
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return 0
    if args.profile_batch:
        profile_batch(args.repeats * 4)
        return 0
    if not buildgrid_installed():
        print("bench_server: BuildGrid is not installed: run scripts/install-buildgrid.sh", file=sys.stderr)
        return 2
    only = {m for m, _, _ in METRICS} if not args.only else set(args.only.split(","))
    if unknown := only - {m for m, _, _ in METRICS}:
        print(f"bench_server: --only: unknown operation(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    while needed := {NEEDS[m] for m in only if m in NEEDS} - only:
        only |= needed
    servers: list[ReapiServer] = []
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        try:
            if args.base:
                base_args = args.gaffer_args if args.base_args is None else args.base_args
                base = start_gaffer_serve(*base_args.split(),
                                          env={"PYTHONPATH": str(args.base.resolve() / "src")})
                base.name = "base"
                servers.append(base)
            servers.append(start_gaffer_serve(*args.gaffer_args.split(), env={"PYTHONPATH": str(REPO / "src")}))
            servers.append(start_buildgrid("disk"))
            floor_dir = Path(tmp) / "floor-server"
            floor_dir.mkdir()
            servers.append(start_floor(floor_dir))
            clients = []
            for server in servers:
                scratch = Path(tmp) / server.name
                scratch.mkdir()
                clients.append(Client(server, scratch))
            results, cpu = measure(clients, args.repeats, only)
            for client in clients:
                client.tier.close()
        finally:
            for server in servers:
                server.stop()
    started = {server.name: server.started_in_s for server in servers}
    timed = [(m, u, w) for m, u, w in METRICS if m in only]
    ratios = {m: results["buildgrid"][m] / results["gaffer"][m] for m, _, _ in timed}
    best = {m: results["buildgrid"][m] / results["floor"][m] for m, _, _ in timed}
    cpu_ratios = {m: cpu["buildgrid"][m] / max(cpu["gaffer"][m], 1e-3) for m, _, _ in timed}
    base_ratios = {m: results["buildgrid"][m] / results["base"][m] for m, _, _ in timed} if args.base else {}
    head = f"{'operation':<40} {'gaffer':>9} {'BuildGrid':>9} {'ratio':>6}   {'floor':>9} {'best ratio':>10}"
    print(head + (f" {'base':>9} {'ratio':>6}" if args.base else ""))
    for metric, unit, what in timed:
        mark = "" if ratios[metric] >= TARGET else "  < 3x"
        line = (f"{what + ' (' + unit + ')':<40} {results['gaffer'][metric]:>9.2f} {results['buildgrid'][metric]:>9.2f} "
                f"{ratios[metric]:>5.1f}x   {results['floor'][metric]:>9.2f} {best[metric]:>9.1f}x")
        if args.base:
            line += f" {results['base'][metric]:>9.2f} {base_ratios[metric]:>5.1f}x"
        print(line + mark)
    print("server CPU (ms, per call for AC operations):")
    for metric, _, what in timed:
        line = (f"  {what:<38} {cpu['gaffer'][metric]:>9.2f} {cpu['buildgrid'][metric]:>9.2f} "
                f"{cpu_ratios[metric]:>5.1f}x   {cpu['floor'][metric]:>9.2f}")
        if args.base:
            line += f"   base {cpu['base'][metric]:>9.2f}"
        print(line)
    print("ratio: BuildGrid time / gaffer time. floor: the same client against a do-nothing in-memory server; "
          "best ratio: BuildGrid / floor, the most any server could reach with this client. base: gaffer serve "
          "from --base, its ratio BuildGrid / base.")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"start-up (s): gaffer {started['gaffer']:.2f}, BuildGrid {started['buildgrid']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "system": platform.platform(),
                        "load_average": os.getloadavg()},
            "units": {m: u for m, u, _ in METRICS},
            "gaffer": results["gaffer"], "buildgrid": results["buildgrid"], "floor": results["floor"],
            "base": results.get("base"), "server_cpu_ms": cpu, "ratio_buildgrid_over_base": base_ratios,
            "ratio_buildgrid_over_gaffer": ratios, "ratio_buildgrid_over_floor": best,
            "ratio_cpu_buildgrid_over_gaffer": cpu_ratios,
            "startup_s": started, "target_ratio": TARGET, "gaffer_args": args.gaffer_args,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
