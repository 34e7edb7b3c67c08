#!/usr/bin/env python3
"""Soak `gaffer serve` with honest builds among hostile clients, then check it kept every promise.

For `--seconds N`, on loopback only, against one `gaffer serve` (under a 1024 file-descriptor limit):
  honest builds   rounds of two `gaffer run --cache` builds of a small graph (small outputs and one of ~2.5 MiB,
                  so both batch calls and ByteStream run): a cold one on a fresh machine (fresh workspace and local
                  cache, content unique to the round) that must execute everything and upload without an error,
                  then a warm one on another fresh machine that must be 100% hits. Rounds alternate grpc:// and
                  http:// for each of the two builds.
  honest calls    a prober timing single FindMissingBlobs, GetActionResult and HTTP GET calls (the p99 reported)
  stalled         HTTP connections that send half a request line and stop, PUTs that promise 1 MB and send 10
                  bytes, gRPC connections that send half the HTTP/2 preface, ByteStream writes that stop after
                  one chunk: each kept open, reopened when the server closes it
  garbage         connections sending random bytes or malformed HTTP (bad and double Content-Length, chunked with
                  Content-Length, huge header lines), then closing
Afterwards: SIGTERM must stop the server with status 0, and `gaffer cache verify` must find every instance of its
store clean. Reported: requests served, p50/p99 of the honest calls, peak RSS and peak fds of the server.
Exit status 1 if any check failed (each failure is printed).

    .venv/bin/python benchmarks/bench_soak.py --seconds 600 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))

import grpc
import httpx

from gaffer.cache.grpc import GrpcTier
from gaffer.digest import digest_bytes
from gaffer.protos import bytestream_pb2, bytestream_pb2_grpc
from tests.buildgrid import ReapiServer, start_gaffer_serve

INSTANCE = "soak"
FD_LIMIT = 1024
SMALL_TASKS = 6


def _graph() -> dict:
    tasks = {f"small-{i}": {"command": f"mkdir -p out && cat src/seed.txt src/n{i}.txt > out/s{i}.txt",
                            "inputs": ["src/seed.txt", f"src/n{i}.txt"], "outputs": [f"out/s{i}.txt"]}
             for i in range(SMALL_TASKS)}
    tasks["big"] = {"command": "mkdir -p out && for i in $(seq 40); do cat src/seed.bin; done > out/big.bin",
                    "inputs": ["src/seed.bin"], "outputs": ["out/big.bin"]}
    tasks["all"] = {"deps": sorted(tasks)}
    return {"tasks": tasks}


class Machine:
    """A fresh workspace of the graph (its content unique to `seed`) and an empty local cache."""

    def __init__(self, base: Path, name: str, seed: str) -> None:
        self.root = base / name / "ws"
        (self.root / "src").mkdir(parents=True)
        (self.root / "graph.json").write_text(json.dumps(_graph()))
        (self.root / "src" / "seed.txt").write_text(f"round {seed}\n")
        rng = random.Random(seed)
        (self.root / "src" / "seed.bin").write_bytes(rng.randbytes(64 * 1024))
        for i in range(SMALL_TASKS):
            (self.root / "src" / f"n{i}.txt").write_text(f"{seed} {i}\n" * (i * 300 + 1))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GAFFER_")}
        self.env.update(GAFFER_CACHE_DIR=str(base / name / "cache"), XDG_CONFIG_HOME=str(base / name / "xdg"))

    def build(self, url: str) -> tuple[dict | None, str]:
        out = self.root.parent / "summary.json"
        proc = subprocess.run([sys.executable, "-m", "gaffer", "run", "all", "--cache", url, "--summary-json", str(out)],
                              cwd=self.root, env=self.env, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0 or not out.exists():
            return None, proc.stderr[-2000:]
        return json.loads(out.read_text()), proc.stderr[-2000:]


class Soak:
    def __init__(self, server: ReapiServer, base: Path, seconds: float, stalled: int) -> None:
        self.server = server
        self.base = base
        self.stop = threading.Event()
        self.deadline = time.monotonic() + seconds
        self.stalled = stalled
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self.builds = {"cold": 0, "warm": 0}
        self.hostile = {"stalled_opened": 0, "garbage_sent": 0, "stalled_streams": 0}
        self.peak_fds = 0
        self.peak_rss = 0
        self._lock = threading.Lock()
        host, port = server.http_url.removeprefix("http://").split(":")
        self.http_addr = (host, int(port))
        ghost, gport = server.grpc_address.split(":")
        self.grpc_addr = (ghost, int(gport))

    def fail(self, message: str) -> None:
        with self._lock:
            self.failures.append(message)

    # -- honest ------------------------------------------------------------------------------------------------

    def builds_loop(self) -> None:
        urls = [f"grpc://{self.server.grpc_address}/{INSTANCE}", f"{self.server.http_url}/{INSTANCE}"]
        round_ = 0
        while time.monotonic() < self.deadline:
            seed = f"{round_}-{os.urandom(4).hex()}"
            cold_url, warm_url = urls[round_ % 2], urls[(round_ // 2) % 2]
            cold, log = Machine(self.base / f"r{round_}", "a", seed).build(cold_url)
            if cold is None or cold["executed"] != SMALL_TASKS + 1 or self._tier_errors(cold):
                self.fail(f"round {round_}: the cold build via {cold_url.split(':')[0]} failed or saw errors: "
                          f"{cold and cold.get('tiers')} {log}")
            else:
                self.builds["cold"] += 1
            warm, log = Machine(self.base / f"r{round_}", "b", seed).build(warm_url)
            if warm is None or warm["executed"] != 0 or warm["hit_rate"] != 1.0 or self._tier_errors(warm):
                self.fail(f"round {round_}: the warm build via {warm_url.split(':')[0]} was not 100% hits: "
                          f"{warm and (warm.get('hit_rate'), warm.get('tiers'))} {log}")
            else:
                self.builds["warm"] += 1
            shutil.rmtree(self.base / f"r{round_}", ignore_errors=True)
            round_ += 1

    @staticmethod
    def _tier_errors(summary: dict) -> int:
        return sum(int(t.get("errors", 0)) for t in summary.get("tiers", []))

    def prober(self) -> None:
        """Single honest calls, timed; a failed one is a failure of the soak."""
        tier = GrpcTier.from_url(f"grpc://{self.server.grpc_address}/{INSTANCE}", timeout=30)
        data = os.urandom(4096)
        known = digest_bytes(data)
        tier.write_blob(known, data)
        calls: list[Callable[[], object]] = [
            lambda: tier.find_missing([known, digest_bytes(os.urandom(8))]),
            lambda: tier.read_action(digest_bytes(os.urandom(8))),
        ]
        with httpx.Client(base_url=self.server.http_url, timeout=30) as http:
            calls.append(lambda: http.get(f"/{INSTANCE}/cas/{known.hash}").raise_for_status())
            i = 0
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    calls[i % len(calls)]()
                except Exception as e:  # noqa: BLE001 - any failure of an honest call is reported
                    self.fail(f"honest call {i % len(calls)} failed: {e!r}"[:300])
                self.latencies.append(time.perf_counter() - t0)
                i += 1
                self.stop.wait(0.02)
        tier.close()

    # -- hostile -----------------------------------------------------------------------------------------------

    def _stalled_openers(self) -> Iterator[Callable[[], socket.socket]]:
        half_line = b"GET /cas/"
        promise = f"PUT /{INSTANCE}/cas/{'0' * 64} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".encode() + b"x" * 10
        preface = b"PRI * HTTP/2.0\r\n"
        for payload, addr in ((half_line, self.http_addr), (promise, self.http_addr), (preface, self.grpc_addr)):
            def opener(payload: bytes = payload, addr: tuple[str, int] = addr) -> socket.socket:
                s = socket.create_connection(addr, timeout=5)
                s.sendall(payload)
                s.setblocking(False)
                return s
            yield opener

    def stallers(self) -> None:
        """Keep `stalled` connections open, each sending part of a request; reopen those the server closes."""
        openers = list(self._stalled_openers())
        held: list[tuple[socket.socket, Callable[[], socket.socket]]] = []
        try:
            while not self.stop.is_set():
                alive = []
                for s, opener in held:
                    try:
                        if s.recv(4096) == b"":
                            s.close()
                            continue
                    except BlockingIOError:
                        pass
                    except OSError:
                        s.close()
                        continue
                    alive.append((s, opener))
                held = alive
                while len(held) < self.stalled and not self.stop.is_set():
                    opener = openers[len(held) % len(openers)]
                    try:
                        held.append((opener(), opener))
                        self.hostile["stalled_opened"] += 1
                    except OSError:
                        break
                self.stop.wait(0.5)
        finally:
            for s, _ in held:
                s.close()

    def stalled_streams(self, count: int) -> None:
        """ByteStream writes that send one chunk of a 10 MB blob and then nothing, until the soak ends."""
        channel = grpc.insecure_channel(self.server.grpc_address)
        stub = bytestream_pb2_grpc.ByteStreamStub(channel)

        def requests(n: int) -> Iterator[bytestream_pb2.WriteRequest]:
            name = f"{INSTANCE}/uploads/00000000-0000-4000-8000-{n:012d}/blobs/{'1' * 64}/10000000"
            yield bytestream_pb2.WriteRequest(resource_name=name, data=b"x" * 65536)
            self.stop.wait()

        futures = [stub.Write.future(requests(n)) for n in range(count)]
        self.hostile["stalled_streams"] = count
        self.stop.wait()
        for f in futures:
            f.cancel()
        channel.close()

    def garbage(self) -> None:
        malformed = [
            b"GET /cas/x HTTP/1.1\r\nContent-Length: \xc2\xb2\r\n\r\n",
            b"PUT /cas/" + b"0" * 64 + b" HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            b"PUT /cas/" + b"0" * 64 + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            b"GET /cas/x HTTP/1.1\r\nX-Long: " + b"a" * 60000 + b"\r\n\r\n",
            b"GET /cas/x HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        ]
        rng = random.Random(1)
        while not self.stop.is_set():
            addr = self.http_addr if rng.random() < 0.7 else self.grpc_addr
            payload = rng.choice(malformed) if addr == self.http_addr and rng.random() < 0.6 else rng.randbytes(
                rng.randint(1, 4096))
            try:
                with socket.create_connection(addr, timeout=2) as s:
                    s.sendall(payload)
                    s.recv(1024)
            except OSError:
                pass
            self.hostile["garbage_sent"] += 1
            self.stop.wait(0.05)

    # -- the server --------------------------------------------------------------------------------------------

    def monitor(self) -> None:
        pid = self.server.proc.pid
        while not self.stop.is_set():
            try:
                self.peak_fds = max(self.peak_fds, len(os.listdir(f"/proc/{pid}/fd")))
                self.peak_rss = max(self.peak_rss, _status_kib(pid, "VmHWM:"))
            except OSError:
                self.fail("the server process went away")
                return
            self.stop.wait(0.2)


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _requests_served(server: ReapiServer) -> int:
    text = httpx.get(f"{server.http_url}/metrics", timeout=30).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("gaffer_requests_total{")))


def _verify(store: Path) -> list[str]:
    """`gaffer cache verify` on every instance directory of the store; the complaints."""
    problems = []
    dirs = [store, *sorted((store / "instances").iterdir())] if (store / "instances").is_dir() else [store]
    for d in dirs:
        run = subprocess.run([sys.executable, "-m", "gaffer", "cache", "verify", "--cache-dir", str(d)],
                             capture_output=True, text=True, timeout=600, check=False,
                             env={k: v for k, v in os.environ.items() if not k.startswith("GAFFER_")})
        if run.returncode != 0 or " 0 corrupt" not in run.stdout:
            problems.append(f"gaffer cache verify {d.name}: exit {run.returncode}: {run.stdout.strip()} "
                            f"{run.stderr.strip()}"[:500])
    return problems


def soak(seconds: float, stalled: int, streams: int, workdir: Path) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(FD_LIMIT, hard), hard))  # the server inherits it
    try:
        server = start_gaffer_serve("--max-size", "2GiB", workdir=workdir / "server")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    run = Soak(server, workdir / "machines", seconds, stalled)
    report: dict = {"seconds": seconds}
    try:
        hostile = [threading.Thread(target=run.stallers), threading.Thread(target=run.garbage),
                   threading.Thread(target=run.stalled_streams, args=(streams,)),
                   threading.Thread(target=run.monitor), threading.Thread(target=run.prober)]
        for t in hostile:
            t.start()
        try:
            run.builds_loop()
        finally:
            report["requests_served"] = _requests_served(server)
            run.stop.set()
            for t in hostile:
                t.join()
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            status = server.proc.wait(60)
        except subprocess.TimeoutExpired:
            status = None
        report["shutdown_s"] = round(time.monotonic() - t0, 2)
        if status != 0:
            run.fail(f"SIGTERM: the server exited with {status} (None: still running after 60 s)")
        log = server.log.read_text(errors="replace")
        if "Traceback" in log:
            start = log.rfind("\n", 0, max(0, log.index("Traceback") - 1)) + 1  # with the line that announced it
            shown = "\n".join(log[start:].splitlines()[:25])
            run.fail(f"the server's log holds a traceback:\n{shown}")
        run.failures.extend(_verify(server.workdir / "store"))
    finally:
        server.stop()
    lat = sorted(run.latencies)
    report.update(
        builds=run.builds,
        honest_calls=len(lat),
        p50_ms=round(1000 * statistics.median(lat), 2) if lat else None,
        p99_ms=round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2) if lat else None,
        peak_rss_mib=round(run.peak_rss / 1024, 1),
        peak_fds=run.peak_fds,
        hostile=run.hostile,
        failures=run.failures,
    )
    if run.builds["warm"] == 0:
        run.failures.append("no honest build round completed")
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60, help="how long the honest builds go on (default 60)")
    p.add_argument("--stalled", type=int, default=120, help="stalled connections held open (default 120)")
    p.add_argument("--stalled-streams", type=int, default=8, help="stalled ByteStream writes (default 8)")
    p.add_argument("--workdir", type=Path, help="keep the server's store and logs here (default: a temp dir)")
    p.add_argument("--json", type=Path, help="write the report here too")
    args = p.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gaffer-soak-"))
    try:
        report = soak(args.seconds, args.stalled, args.stalled_streams, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(f"soak {report['seconds']:.0f} s: {report['builds']['cold']} cold + {report['builds']['warm']} warm builds, "
          f"{report['requests_served']} requests served, honest calls p50 {report['p50_ms']} ms / p99 "
          f"{report['p99_ms']} ms ({report['honest_calls']}), server peak RSS {report['peak_rss_mib']} MiB, peak fds "
          f"{report['peak_fds']}, shutdown {report['shutdown_s']} s; hostile: {report['hostile']}")
    for failure in report["failures"]:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
