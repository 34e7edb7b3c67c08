#!/usr/bin/env python3
"""gaffer's compiler launcher (the fast client gaffer-cc and its daemon) against ccache, sccache and distcc.

Five measurements, every launcher in the same run, runs interleaved, medians reported:

    (a) hit      one small file compiled N times, every run a cache hit: the per-compile overhead
                 (gaffer-cc hit vs ccache's direct-mode hit vs sccache's client+server hit; plain gcc as floor)
    (b) warm     examples/cproject with CMake + Ninja after `rm -rf build` and a fresh configure, the cache warm
                 (only `ninja` is timed): plain, ccache, sccache, gaffer (its defaults: a direct miss compiles at
                 once, as ccache's depend mode), and gaffer-preprocessor (GAFFER_CC_PREPROCESSOR=1: a direct miss
                 first looks the preprocessed text up, as ccache's default)
    (c) cold     the same build with an empty cache (every compile a miss, the launcher's daemon or server
                 already running): the overhead of a miss over a plain build
    (c') miss    M distinct small files, each compiled once by every launcher, one compile at a time: the same
                 overhead without -j2's scheduling noise
    (d) distcc   the same cold build over 3 local distccd (on 127.0.0.1, started and stopped here) at -j6,
                 against plain at -j6: distcc's per-compile overhead; and gaffer-cc with GAFFER_REMOTE on a
                 local `gaffer serve` with 3 `gaffer worker`s (2 jobs each; a fresh farm and cache per round, so
                 every compile runs on a worker)

Every cache lives in a private temporary directory (CCACHE_DIR, SCCACHE_DIR, GAFFER_CC_DIR, GAFFER_CACHE_DIR);
sccache's server, gaffer's daemon and the distccd are stopped at the end, whatever happens. The outputs of
every launcher's build are compared with the plain build's (objects, libcalc.a, the program): a launcher that
builds something else fails the run.

    .venv/bin/python benchmarks/bench_cc.py --hits 200 --repeats 3 --json benchmarks/out/cc.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "cproject"
LAUNCHERS = ("plain", "ccache", "sccache", "gaffer", "gaffer-preprocessor")
TARGETS = {"hit": 2.0, "warm": 1.5}  # gaffer / ccache
COLD_TARGET = 1.2  # gaffer cold / plain
SOURCES = 34  # compiles in one build of the example
HELLO = '#include <stdio.h>\n#include "hello.h"\nint main(void) { puts(GREETING); return 0; }\n'


def rotated(names: tuple[str, ...], i: int) -> list[str]:
    """The launchers in another order each round, so none always runs first (or right after another)."""
    return [*names[i % len(names):], *names[:i % len(names)]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bench:
    def __init__(self, base: Path, jobs: int) -> None:
        self.base = base
        self.jobs = jobs
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("GAFFER_", "CCACHE_", "SCCACHE_", "DISTCC_"))}
        self.env.update(
            CCACHE_DIR=str(base / "ccache"), SCCACHE_DIR=str(base / "sccache"),
            SCCACHE_SERVER_PORT=str(free_port()), SCCACHE_IDLE_TIMEOUT="0",
            GAFFER_CC_DIR=str(base / "cc"), GAFFER_CACHE_DIR=str(base / "gaffer-cache"), GAFFER_CC_IDLE="30min",
            XDG_CONFIG_HOME=str(base / "xdg-config"), PYTHONPATH=str(REPO / "src"),
        )
        self.gaffer_cc = self._install()
        self.prefix = {"plain": [], "ccache": [shutil.which("ccache") or "ccache"],
                       "sccache": [shutil.which("sccache") or "sccache"], "gaffer": [str(self.gaffer_cc)],
                       "gaffer-preprocessor": [str(self.gaffer_cc)], "distcc": [shutil.which("distcc") or "distcc"]}
        # gaffer with the preprocessor-mode lookup on a direct miss (its own cache: the other's entries would be
        # hits): the daemon serves each configuration the compiles' environment carries
        self.own_env = {"gaffer-preprocessor": {"GAFFER_CC_PREPROCESSOR": "1",
                                                "GAFFER_CACHE_DIR": str(base / "gaffer-cache-preprocessor")}}

    def _install(self) -> Path:
        self.run([sys.executable, "-m", "gaffer", "cc", "--install"], cwd=self.base)
        return self.base / "cc" / "bin" / "gaffer-cc"

    def run(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(args, cwd=cwd, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              check=False, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"bench_cc: {' '.join(args)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def timed(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
        start = time.perf_counter()
        self.run(args, cwd, env)
        return time.perf_counter() - start

    # -- the caches ------------------------------------------------------------------------------------------

    def empty_caches(self) -> None:
        """Every launcher's cache emptied, with its server or daemon running again (a cold build measures misses,
        not a start-up)."""
        self.stop_servers()
        for name in ("ccache", "sccache", "gaffer-cache", "gaffer-cache-preprocessor"):
            shutil.rmtree(self.base / name, ignore_errors=True)
        self.run([*self.prefix["sccache"], "--start-server"], cwd=self.base)
        self.start_gaffer()

    def start_gaffer(self) -> None:
        probe = self.base / "probe"
        probe.mkdir(exist_ok=True)
        (probe / "probe.c").write_text("int probe;\n")
        self.run([str(self.gaffer_cc), "gcc", "-c", "probe.c"], cwd=probe)

    def stop_servers(self) -> None:
        subprocess.run([*self.prefix["sccache"], "--stop-server"], env=self.env, capture_output=True, check=False)
        subprocess.run([sys.executable, "-m", "gaffer", "cc", "--stop-daemon"], env=self.env, capture_output=True,
                       check=False)

    # -- (a) the per-compile hit -----------------------------------------------------------------------------

    def hits(self, n: int) -> dict[str, list[float]]:
        work = self.base / "hit"
        work.mkdir()
        (work / "hello.c").write_text(HELLO)
        (work / "hello.h").write_text('#define GREETING "hello"\n')
        times: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
        for i in range(n + 3):  # three warm-up rounds (the first one fills the caches)
            for name in LAUNCHERS:
                t = self.timed([*self.prefix[name], "gcc", "-O2", "-c", "hello.c", "-o", f"{name}.o"], work,
                               self.own_env.get(name))
                if i >= 3:
                    times[name].append(t)
        reference = (work / "plain.o").read_bytes()
        for name in LAUNCHERS:
            if (work / f"{name}.o").read_bytes() != reference:
                raise SystemExit(f"bench_cc: {name}'s hello.o differs from gcc's")
        return times

    def misses(self, n: int) -> dict[str, list[float]]:
        """`n` distinct small files, each compiled once by every launcher: each one a miss, one at a time."""
        work = self.base / "miss"
        work.mkdir()
        times: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
        for i in range(n):
            (work / f"m{i}.c").write_text(f"#include <stdio.h>\nint m{i}(int x) {{ printf(\"%d\", x); return x * {i}; }}\n")
            for name in rotated(LAUNCHERS, i):
                args = [*self.prefix[name], "gcc", "-O2", "-c", f"m{i}.c", "-o", f"{name}-{i}.o"]
                times[name].append(self.timed(args, work, self.own_env.get(name)))
        return times

    # -- (b), (c), (d): the example with CMake + Ninja --------------------------------------------------------

    def configure(self, name: str, launcher: str, env: dict[str, str] | None = None) -> Path:
        """A fresh build directory of a fresh copy of the example, configured for `launcher`."""
        src = self.base / "src" / name
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(EXAMPLE, src)
        flags = [f"-DCMAKE_C_COMPILER_LAUNCHER={self.prefix[launcher][0]}"] if self.prefix[launcher] else []
        self.run(["cmake", "-G", "Ninja", "-S", ".", "-B", "build", *flags], cwd=src, env=env)
        return src

    def rebuild_dir(self, src: Path, launcher: str, env: dict[str, str] | None = None) -> None:
        shutil.rmtree(src / "build")
        flags = [f"-DCMAKE_C_COMPILER_LAUNCHER={self.prefix[launcher][0]}"] if self.prefix[launcher] else []
        self.run(["cmake", "-G", "Ninja", "-S", ".", "-B", "build", *flags], cwd=src, env=env)

    def ninja(self, src: Path, jobs: int, env: dict[str, str] | None = None) -> float:
        return self.timed(["ninja", "-C", "build", f"-j{jobs}"], cwd=src, env=env)

    def outputs(self, src: Path) -> dict[str, str]:
        build = src / "build"
        files = [p for p in build.rglob("*") if p.suffix in (".o", ".a") or p.name == "calc"]
        return {str(p.relative_to(build)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}

    def builds(self, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        cold: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
        warm: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
        reference = self.check("plain", self.warm_up(), None)
        for i in range(repeats):
            self.empty_caches()
            for name in rotated(LAUNCHERS, i):
                src = self.configure(name, name)
                before = self.gaffer_stats()
                cold[name].append(self.ninja(src, self.jobs, self.own_env.get(name)))
                self.check(name, src, reference)
                if name.startswith("gaffer"):
                    self.expect(before, "misses", "cold")
        for i in range(repeats):
            for name in rotated(LAUNCHERS, i):
                src = self.base / "src" / name
                self.rebuild_dir(src, name)
                before = self.gaffer_stats()
                warm[name].append(self.ninja(src, self.jobs, self.own_env.get(name)))
                self.check(name, src, reference)
                if name.startswith("gaffer"):
                    self.expect(before, "direct_hits", "warm")
        return cold, warm

    def warm_up(self) -> Path:
        """One plain build first: the compiler's own files into the page cache, for every launcher alike."""
        src = self.configure("warm-up", "plain")
        self.ninja(src, self.jobs)
        return src

    def gaffer_stats(self) -> dict[str, int]:
        """gaffer's counters, once the daemon has written those it holds in memory."""
        sys.path.insert(0, str(REPO / "src"))
        from gaffer.cc.daemon import flush_stats

        flush_stats(self.base / "cc")
        path = self.base / "cc" / "stats.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        return {k: v for k, v in data.items() if isinstance(v, int)}

    def expect(self, before: dict[str, int], counter: str, what: str, also: dict[str, int] | None = None) -> None:
        """gaffer's counters moved as the measurement assumes: every compile of the example a miss (cold), a
        direct hit (warm) or a miss run on a worker (distributed), nothing else."""
        after = self.gaffer_stats()
        moved = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        if moved != {counter: SOURCES, **(also or {})}:
            raise SystemExit(f"bench_cc: gaffer's {what} build was not {SOURCES} {counter}: {moved}")

    def check(self, name: str, src: Path, reference: dict[str, str] | None) -> dict[str, str]:
        got = self.outputs(src)
        if reference is not None and got != reference:
            differ = sorted(k for k in set(got) | set(reference) if got.get(k) != reference.get(k))
            raise SystemExit(f"bench_cc: {name}'s build differs from the plain build: {differ[:5]}")
        return got

    def distributed(self, repeats: int, servers: int = 3, jobs: int = 6) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {"plain": [], "distcc": [], "gaffer": []}
        (self.base / "distcc").mkdir(exist_ok=True)
        reference = self.check("plain", self.warm_up(), None)
        with distccd(self.base, servers) as hosts:
            env = {"DISTCC_HOSTS": hosts, "DISTCC_DIR": str(self.base / "distcc"), "DISTCC_FALLBACK": "0"}
            for i in range(repeats):
                for name in ("plain", "distcc"):
                    src = self.configure(f"dist-{name}", name, env)
                    times[name].append(self.ninja(src, jobs, env))
                with gaffer_farm(self.base / f"farm-{i}", servers) as url:
                    src = self.base / "src" / "dist-gaffer"
                    env = {"GAFFER_REMOTE": url, "GAFFER_CC_BASEDIR": str(src),
                           "GAFFER_CACHE_DIR": str(self.base / f"farm-{i}" / "cache")}
                    self.configure("dist-gaffer", "gaffer", env)
                    before = self.gaffer_stats()
                    times["gaffer"].append(self.ninja(src, jobs, env))
                    self.check("gaffer-remote", src, reference)
                    self.expect(before, "remote", "distributed", also={"misses": SOURCES})
        return times


@contextlib.contextmanager
def gaffer_farm(base: Path, count: int) -> Iterator[str]:
    """A `gaffer serve` and `count` `gaffer worker --max-jobs 2` on 127.0.0.1; yields its URL; stops them all."""
    sys.path.insert(0, str(REPO))
    from tests.buildgrid import start_gaffer_serve
    from tests.reapi_client import start_worker

    server = start_gaffer_serve(workdir=base / "serve")
    workers = []
    try:
        for i in range(count):
            workers.append(start_worker(server.grpc_address, f"w{i}", "--max-jobs", "2", directory=base / f"w{i}"))
        yield server.url
    finally:
        for worker in workers:
            worker.stop()
        server.stop()


@contextlib.contextmanager
def distccd(base: Path, count: int) -> Iterator[str]:
    """`count` distccd on 127.0.0.1, each with 2 job slots; yields DISTCC_HOSTS; stops them all."""
    procs: list[subprocess.Popen[bytes]] = []
    hosts = []
    try:
        for i in range(count):
            port = free_port()
            log = base / f"distccd-{i}.log"
            procs.append(subprocess.Popen(
                ["distccd", "--daemon", "--no-detach", "--listen", "127.0.0.1", "--port", str(port),
                 "--allow", "127.0.0.1", "--jobs", "2", "--log-file", str(log)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True))
            hosts.append(f"127.0.0.1:{port}/2")
            wait_listening(port, procs[-1], log)
        yield " ".join(hosts)
    finally:
        for p in procs:  # each one's pre-forked children too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench_cc: distccd exited: {log.read_text() if log.exists() else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise SystemExit("bench_cc: distccd did not listen within 10 s")


def med_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def ratio(times: dict[str, list[float]], name: str, reference: str) -> float:
    """The median of the per-round ratios: runs of one round are adjacent in time, so a loaded machine slows
    both sides of each ratio alike."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference], strict=True))


def report(results: dict[str, dict[str, list[float]]], n_hits: int, repeats: int, jobs: int) -> list[str]:
    hit, cold, warm = results["hit"], results["cold"], results["warm"]
    lines = [f"| per-compile hit ({n_hits} runs) | median ms | / ccache |", "|---|---:|---:|"]
    lines += [f"| {name} | {med_ms(hit[name]):.2f} | {ratio(hit, name, 'ccache'):.2f}x |" for name in LAUNCHERS]
    miss = results["miss"]
    lines += ["", f"| one miss ({len(miss['plain'])} files) | median ms | / plain |", "|---|---:|---:|"]
    lines += [f"| {name} | {med_ms(miss[name]):.2f} | {ratio(miss, name, 'plain'):.2f}x |" for name in LAUNCHERS]
    lines += ["", f"| the example, -j{jobs} ({repeats} rounds) | cold s | / plain | warm s | / ccache |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {statistics.median(cold[name]):.2f} | {ratio(cold, name, 'plain'):.2f}x | "
              f"{statistics.median(warm[name]):.2f} | {ratio(warm, name, 'ccache'):.2f}x |" for name in LAUNCHERS]
    if "distributed" in results:
        d = results["distributed"]
        lines += ["", f"| the example cold, -j6 ({repeats} rounds) | s | / plain | overhead per compile ms |",
                  "|---|---:|---:|---:|", f"| plain | {statistics.median(d['plain']):.2f} | 1.00x | |"]
        for name, what in (("distcc", "distcc, 3 local distccd"), ("gaffer", "gaffer-cc, 3 local gaffer workers")):
            per_compile = statistics.median(a - b for a, b in zip(d[name], d["plain"], strict=True)) / SOURCES
            lines.append(f"| {what} | {statistics.median(d[name]):.2f} | {ratio(d, name, 'plain'):.2f}x | "
                         f"{per_compile * 1000:+.1f} |")
    lines += ["", (f"targets: hit <= {TARGETS['hit']:.1f}x ccache: {ratio(hit, 'gaffer', 'ccache'):.2f}x; "
                  f"warm <= {TARGETS['warm']:.1f}x ccache: {ratio(warm, 'gaffer', 'ccache'):.2f}x; "
                  f"cold <= {COLD_TARGET:.1f}x plain: {ratio(cold, 'gaffer', 'plain'):.2f}x")]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hits", type=int, default=200, help="compiles per launcher in (a) (default 200)")
    parser.add_argument("--misses", type=int, default=40, help="distinct files compiled in (c') (default 40)")
    parser.add_argument("--repeats", type=int, default=3, help="builds per launcher in (b), (c), (d) (default 3)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="ninja's -j in (b) and (c) (default 2)")
    parser.add_argument("--no-distcc", action="store_true", help="skip (d)")
    parser.add_argument("--json", type=Path, help="write the raw times here")
    args = parser.parse_args()
    for tool in ("gcc", "cc", "cmake", "ninja", "ccache", "sccache", *(() if args.no_distcc else ("distcc",
                                                                                                 "distccd"))):
        if shutil.which(tool) is None:
            sys.exit(f"bench_cc: {tool} is not installed")
    with tempfile.TemporaryDirectory(prefix="bench-cc-") as tmp:
        bench = Bench(Path(tmp), args.jobs)
        try:
            results: dict[str, dict[str, list[float]]] = {}
            bench.empty_caches()
            results["hit"] = bench.hits(args.hits)
            results["miss"] = bench.misses(args.misses)
            results["cold"], results["warm"] = bench.builds(args.repeats)
            if not args.no_distcc:
                results["distributed"] = bench.distributed(args.repeats)
        finally:
            bench.stop_servers()
    for line in report(results, args.hits, args.repeats, args.jobs):
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
