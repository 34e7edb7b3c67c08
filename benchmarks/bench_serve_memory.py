#!/usr/bin/env python3
"""`gaffer serve`'s CPU and memory sending blobs of megabytes, under several settings of the C library's allocator.

One `gaffer serve` per setting, each holding the same std-like set of blobs (1,066 blobs, 153 MiB: 43 of 1-3.5 MiB,
the rest between 100 bytes and 500 KB, as a cold `go build std` reads them). In each round, the servers taking
turns, one client fills from each as gobuildcache's prefetch does (groups of blobs, 8 in flight, gaffer's own
GrpcTier): the server's CPU for the fill is read from /proc. Then a burst: several clients at once, each with its
own channel, fill from each server, and the server's resident memory is read `--settle` seconds after the burst
(and its peak). A setting is `default` (glibc's own thresholds) or `MMAP/TRIM[/ARENAS]`, `gaffer.malloc`'s thresholds in
MiB and its most arenas (left out: gaffer's; 0: glibc's own limit, 8 per core), `+trimS` after it a `malloc_trim(0)`
every S seconds (left out: gaffer's; 0: none).

    .venv/bin/python benchmarks/bench_serve_memory.py --settings default 8/64/0+trim0 8/64+trim0 8/64 --clients 8 \
        --settle 12
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_server import _cpu_seconds

from gaffer.cache.grpc import GrpcTier
from gaffer.cache.tiered import read_groups
from gaffer.digest import Digest, digest_bytes
from tests.buildgrid import ReapiServer, start_gaffer_serve
from tests.servers import _terminate

WORKERS = 8  # as gobuildcache's prefetch
BIG_BLOBS = 43
SMALL_BLOBS = 1023


def blob_sizes(seed: int) -> list[int]:
    """std-like sizes: 43 of 1-3.5 MiB (~95 MiB), the rest log-uniform from 100 bytes to 500 KB (~60 MiB)."""
    rng = random.Random(seed)
    big = [rng.randint(1 << 20, 7 << 19) for _ in range(BIG_BLOBS)]
    small = [int(100 * (5_000 ** rng.random())) for _ in range(SMALL_BLOBS)]
    return big + small


def rss_mib(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of `pid`, MiB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def fill(url: str, digests: list[Digest]) -> None:
    """Every blob once, in groups, WORKERS groups in flight, through one channel."""
    tier = GrpcTier.from_url(url, timeout=120)
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            got = sum(len(found) for found in pool.map(tier.read_blobs, read_groups(digests)))
        assert got == len(digests), f"{url}: {got} of {len(digests)} blobs"
    finally:
        tier.close()


def serve_with(setting: str, argv: list[str]) -> int:
    """Run `gaffer serve` with `argv`, the allocator as `setting` says."""
    from gaffer import malloc
    from gaffer.server import main as server

    thresholds, _, trim_every = setting.partition("+trim")
    if thresholds == "default":
        server.keep_big_buffers = lambda long_running=False: None  # type: ignore[assignment]
    else:
        mmap, trim, *arenas = (int(x) for x in thresholds.split("/"))
        malloc.MMAP_THRESHOLD, malloc.TRIM_THRESHOLD = mmap << 20, trim << 20
        if arenas:  # else gaffer's
            malloc.ARENA_MAX = arenas[0] or 8 * (os.cpu_count() or 1)  # 0: glibc's own limit
        if trim_every:  # else gaffer's
            malloc.TRIM_EVERY_S = float(trim_every)
    return server.serve_main(argv)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["default", "8/64/0", "8/64"],
                        help="allocator settings: `default` or MMAP/TRIM[/ARENAS][+trimS] (default: default 8/64/0 "
                             "8/64)")
    parser.add_argument("--rounds", type=int, default=5, help="fills per server, the servers taking turns")
    parser.add_argument("--clients", type=int, default=4, help="clients filling at once in the burst (default 4)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds after the burst before the server's memory is read (default 2)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--serve-with", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_with:
        return serve_with(args.serve_with[0], args.serve_with[1:])
    work = Path(tempfile.mkdtemp(prefix="bench-serve-memory-"))
    servers: dict[str, ReapiServer] = {}
    try:
        for s in args.settings:
            servers[s] = start_gaffer_serve(workdir=work / s.replace("/", "-"), env={"PYTHONPATH": str(REPO / "src")},
                                            command=(sys.executable, __file__, "--serve-with", s))
        blobs = [os.urandom(n) for n in blob_sizes(1)]
        digests = [digest_bytes(b) for b in blobs]
        for server in servers.values():
            tier = GrpcTier.from_url(server.url, timeout=120)
            for group in read_groups(digests):
                tier.write_blobs([(d, blobs[digests.index(d)]) for d in group]) if len(group) > 1 or \
                    tier.batchable(group[0].size_bytes) else tier.write_blob(group[0], blobs[digests.index(group[0])])
            tier.close()
        del blobs
        print(f"{len(digests)} blobs, {sum(d.size_bytes for d in digests) / (1 << 20):.0f} MiB; "
              f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        cpu: dict[str, list[float]] = {s: [] for s in servers}
        wall: dict[str, list[float]] = {s: [] for s in servers}
        before = {s: rss_mib(server.proc.pid)[0] for s, server in servers.items()}
        for _ in range(args.rounds):
            for s, server in servers.items():
                c0, t0 = _cpu_seconds(server.proc.pid), time.perf_counter()
                fill(server.url, digests)
                wall[s].append(time.perf_counter() - t0)
                cpu[s].append(_cpu_seconds(server.proc.pid) - c0)
        after_fills = {s: rss_mib(server.proc.pid)[0] for s, server in servers.items()}
        burst: dict[str, tuple[float, float, float]] = {}
        failed: dict[str, list[str]] = {}
        for s, server in servers.items():
            c0 = _cpu_seconds(server.proc.pid)
            with ThreadPoolExecutor(args.clients) as pool:
                fills = [pool.submit(fill, server.url, digests) for _ in range(args.clients)]
            failed[s] = [str(f.exception()) for f in fills if f.exception()]
            time.sleep(args.settle)
            burst[s] = (_cpu_seconds(server.proc.pid) - c0, *rss_mib(server.proc.pid))
        print(f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"{'setting':>8} {'fill cpu s':>10} {'(min-max)':>11} {'wall s':>6} {'rss MiB':>7} {'after fills':>11} "
              f"{'burst cpu s':>11} {'after burst':>11} {'peak':>5} {'failed':>6}")
        results = {}
        for s in servers:
            results[s] = {"fill_cpu_s": cpu[s], "fill_wall_s": wall[s], "rss_start_mib": before[s],
                          "rss_after_fills_mib": after_fills[s], "burst_cpu_s": burst[s][0],
                          "rss_after_burst_mib": burst[s][1], "rss_peak_mib": burst[s][2],
                          "burst_failures": failed[s]}
            print(f"{s:>8} {statistics.median(cpu[s]):10.3f} {min(cpu[s]):5.2f}-{max(cpu[s]):<5.2f} "
                  f"{statistics.median(wall[s]):6.2f} {before[s]:7.0f} {after_fills[s]:11.0f} {burst[s][0]:11.2f} "
                  f"{burst[s][1]:11.0f} {burst[s][2]:5.0f} {len(failed[s]):6}")
            for error in failed[s]:
                print(f"  {s}: a client of the burst failed: {error}")
        if args.json:
            args.json.write_text(json.dumps({"clients": args.clients, "rounds": args.rounds, "results": results,
                                             "load": os.getloadavg()}, indent=1))
    finally:
        for server in servers.values():
            _terminate(server.proc)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
