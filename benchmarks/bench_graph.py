#!/usr/bin/env python3
"""Time gaffer against ninja, make and doit on the synthetic graphs of gen_graph.py.

For each size and each tool, in a fresh copy of the generated tree: a cold build, a no-op build (repeated),
one top-layer input edited then a build, one first-layer input edited then a build. After every build all
out/ files are compared with a reference computed in Python; a wrong output fails the run (exit 1).

    .venv/bin/python benchmarks/bench_graph.py --sizes 1000 10000 --json results.json

See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import dbm
import json
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gen_graph

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("gaffer", "ninja", "make", "doit")
SCENARIOS = ("cold", "noop", "edit-top", "edit-first")
EDIT_LINE = b"edited by bench_graph\n"
# The targets: gaffer's no-op within 2x of ninja's, every scenario 3x faster than doit.
NOOP_TARGET = 2.0
DOIT_TARGET = 3.0
RSS_TARGET_KIB = 4.0  # peak RSS of an edit build beyond ninja's, per task
TIME = "/usr/bin/time"  # GNU time: the edit builds' peak RSS


class BenchError(Exception):
    """A build timed out, failed or produced wrong outputs; `status` names which, for the table and JSON."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


@dataclass
class Toolset:
    """How to invoke each tool: the binary, and the build command run inside a tree."""

    venv: Path
    ninja: str
    jobs: int
    sources: dict[str, Path] = field(default_factory=dict)  # "gaffer-LABEL" -> a checkout whose src/ it runs

    def binary(self, tool: str) -> str:
        if tool in self.sources:
            return str(self.venv / "bin" / "python")
        return {"gaffer": str(self.venv / "bin" / "gaffer"), "ninja": self.ninja, "make": "make",
                "doit": str(self.venv / "bin" / "doit")}[tool]

    def argv(self, tool: str, cache_dir: Path) -> list[str]:
        if tool in self.sources:
            return [self.binary(tool), "-m", "gaffer", *self.gaffer_args(cache_dir)]
        j = str(self.jobs)
        args = {"gaffer": self.gaffer_args(cache_dir), "ninja": ["-j", j], "make": ["-j", j],
                "doit": ["-n", j, "all"]}[tool]
        return [self.binary(tool), *args]

    def env(self, tool: str) -> dict[str, str] | None:
        """A `--gaffer-src` tool runs that checkout's gaffer from the same venv."""
        if tool not in self.sources:
            return None
        return {**os.environ, "PYTHONPATH": str(self.sources[tool] / "src")}

    def gaffer_args(self, cache_dir: Path) -> list[str]:
        return ["run", "all", "--graph", "graph.json", f"-j{self.jobs}", "--cache-dir", str(cache_dir)]

    def version(self, tool: str) -> str:
        """First line of the tool's version output, for the JSON record."""
        try:
            proc = subprocess.run([self.binary(tool), "--version"], capture_output=True, text=True, timeout=30,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        lines = (proc.stdout or proc.stderr).strip().splitlines()
        return lines[0] if proc.returncode == 0 and lines else f"unknown (exit {proc.returncode})"


@dataclass
class Measurement:
    """One scenario of one tool: wall-clock seconds per run, and how many out/ files each run rewrote."""

    status: str = "ok"  # ok | timeout | error | wrong-output | skipped
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # user + system of the tool and everything it ran
    load: list[float] = field(default_factory=list)  # the 1-minute load average as each build ended
    rewritten: list[int] = field(default_factory=list)
    peak_rss_kib: list[int] = field(default_factory=list)  # of the tool's process, edit builds only
    detail: str = ""

    @property
    def best(self) -> float | None:
        return min(self.seconds) if self.status == "ok" else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.status == "ok" else None

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu_seconds) if self.status == "ok" and self.cpu_seconds else None

    def as_json(self) -> dict:
        return {"status": self.status, "seconds": self.seconds, "min": self.best, "median": self.median,
                "cpu_seconds": self.cpu_seconds, "cpu_median": self.cpu_median, "load": self.load,
                "rewritten": self.rewritten, "peak_rss_kib": self.peak_rss_kib, "detail": self.detail}


@dataclass
class SizeSetup:
    """The generated tree of one size, the two edited tasks and the expected outputs after each step."""

    graph: gen_graph.Graph
    tree: Path
    top_task: str
    first_task: str
    expected: dict[str, dict[str, bytes]]  # scenario -> task -> out/<task>.txt content

    def as_json(self) -> dict:
        return {
            "tasks": len(self.graph.tasks), "layers": self.graph.layers, "seed": self.graph.seed,
            "edges": sum(len(t.deps) for t in self.graph.tasks),
            "edit_top": {"task": self.top_task, "affected": len(self.graph.affected_by(self.top_task))},
            "edit_first": {"task": self.first_task, "affected": len(self.graph.affected_by(self.first_task))},
        }


def prepare(size: int, layers: int, seed: int, root: Path) -> SizeSetup:
    """Generate the tree once per size and precompute what out/ must hold after each scenario.

    The first-layer edit uses the layer-0 task whose downstream is the median size, a typical edit rather
    than the best or worst case.
    """
    graph = gen_graph.generate(size, layers, seed)
    tree = root / "generated"
    gen_graph.write_tree(graph, tree)
    by_reach = sorted(graph.layer(0), key=lambda t: (len(graph.affected_by(t.name)), t.name))
    top_task, first_task = graph.top[0].name, by_reach[len(by_reach) // 2].name
    sources = {t.name: gen_graph.source_text(t, seed) for t in graph.tasks}
    expected = {"cold": gen_graph.reference_outputs(graph, sources)}
    expected["noop"] = expected["cold"]
    sources[top_task] += EDIT_LINE
    expected["edit-top"] = gen_graph.reference_outputs(graph, sources)
    sources[first_task] += EDIT_LINE
    expected["edit-first"] = gen_graph.reference_outputs(graph, sources)
    return SizeSetup(graph, tree, top_task, first_task, expected)


def out_mtimes(tree: Path) -> dict[str, int]:
    with os.scandir(tree / "out") as entries:
        return {e.name: e.stat().st_mtime_ns for e in entries}


def check_outputs(tree: Path, expected: dict[str, bytes]) -> None:
    """Every out/<task>.txt must equal the Python reference; anything else is a wrong build."""
    wrong = []
    for name, content in expected.items():
        try:
            if (tree / "out" / f"{name}.txt").read_bytes() != content:
                wrong.append(name)
        except FileNotFoundError:
            wrong.append(name)
    if wrong:
        raise BenchError("wrong-output", f"{len(wrong)} of {len(expected)} out/ files differ from the reference, "
                         f"e.g. out/{wrong[0]}.txt")


def run_build(argv: list[str], tree: Path, log: Path, timeout: float, rss: bool = False,
              env: dict[str, str] | None = None) -> tuple[float, float, int | None]:
    """Run one build in `tree`, output to `log`; return its wall-clock seconds, its CPU seconds (user + system
    of the tool and every process it waited for, from `wait4`) and, with `rss`, its peak RSS in KiB (GNU time's
    report on the tool's process: a child forked from this Python would start with this process's own RSS in
    its maximum).

    The build runs in its own session so a timeout kills the whole process group (make's and doit's
    workers too), not just the top process.
    """
    rss_file = log.with_suffix(".rss")
    if rss:
        argv = [TIME, "-f", "%M", "-o", str(rss_file), *argv]
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=tree, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
        deadline = start + timeout
        while (reaped := os.wait4(proc.pid, os.WNOHANG))[0] == 0:
            if time.perf_counter() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
                raise BenchError("timeout", f"no result after {timeout:g}s (log {log})")
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
    _pid, status, usage = reaped
    returncode = os.waitstatus_to_exitcode(status)
    proc.returncode = returncode  # reaped here, with its rusage
    if returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise BenchError("error", f"exit status {returncode} (log {log}): {' | '.join(tail)}")
    return elapsed, usage.ru_utime + usage.ru_stime, int(rss_file.read_text().split()[-1]) if rss else None


def measure(argv: list[str], tree: Path, log: Path, timeout: float, expected: dict[str, bytes],
            result: Measurement, rss: bool = False, env: dict[str, str] | None = None) -> None:
    """One timed build, then the correctness check and the count of out/ files it rewrote."""
    before = out_mtimes(tree)
    seconds, cpu, peak_kib = run_build(argv, tree, log, timeout, rss, env)
    result.seconds.append(seconds)
    result.cpu_seconds.append(cpu)
    result.load.append(os.getloadavg()[0])
    if peak_kib is not None:
        result.peak_rss_kib.append(peak_kib)
    after = out_mtimes(tree)
    result.rewritten.append(sum(1 for name, mtime in after.items() if before.get(name) != mtime))
    check_outputs(tree, expected)


def bench_tool(tool: str, tools: Toolset, setup: SizeSetup, root: Path, repeat: int,
               timeout: float, results: dict[str, Measurement]) -> None:
    """All four scenarios for one tool, in its own fresh copy of the tree (and a fresh gaffer cache); the
    measurements are added to `results` (one round of several)."""
    tree = root / tool
    for old in (tree, root / f"{tool}-cache"):  # an earlier round's
        shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(setup.tree, tree, symlinks=True)
    argv = tools.argv(tool, root / f"{tool}-cache")
    log = root / f"{tool}.log"
    edits = {"edit-top": setup.top_task, "edit-first": setup.first_task}
    if any(m.status != "ok" for m in results.values()):  # failed in an earlier round
        return
    for scenario in SCENARIOS:
        result = results[scenario]
        try:
            if scenario in edits:
                with (tree / "src" / f"{edits[scenario]}.txt").open("ab") as src:
                    src.write(EDIT_LINE)
            for _ in range(repeat if scenario == "noop" else 1):
                measure(argv, tree, log, timeout, setup.expected[scenario], result, rss=scenario in edits,
                        env=tools.env(tool))
        except BenchError as exc:
            result.status, result.detail = exc.status, exc.detail
            print(f"  {tool} {scenario}: {exc}", file=sys.stderr)
            for later in SCENARIOS[SCENARIOS.index(scenario) + 1:]:
                results[later].status = "skipped"
            break
        runs = repeat if scenario == "noop" else 1
        latest = result.seconds[-runs:]
        shown = f"{min(latest):.3f}s" + (f" (median {statistics.median(latest):.3f}s)" if runs > 1 else "")
        print(f"  {tool} {scenario}: {shown}, CPU {result.cpu_seconds[-1]:.3f}s, load {result.load[-1]:.1f}, "
              f"{result.rewritten[-1]} outputs rewritten", file=sys.stderr)


def profile_gaffer(tools: Toolset, root: Path, expected: dict[str, bytes], timeout: float) -> tuple[Path, str]:
    """Run gaffer's no-op under cProfile in its (up-to-date) tree; return the profile file and its top 25."""
    prof = root / "gaffer-noop.prof"
    argv = [str(tools.venv / "bin" / "python"), "-m", "cProfile", "-o", str(prof), "-m", "gaffer",
            *tools.gaffer_args(root / "gaffer-cache")]
    seconds, _cpu, _peak = run_build(argv, root / "gaffer", root / "gaffer-profile.log", timeout)
    check_outputs(root / "gaffer", expected)
    report = root / "gaffer-noop.prof.txt"
    with report.open("w") as out:
        out.write(f"gaffer no-op under cProfile: {seconds:.3f}s wall\n")
        pstats.Stats(str(prof), stream=out).sort_stats("cumulative").print_stats(25)
    return prof, report.read_text()


def doit_backend(root: Path) -> str | None:
    """Which dbm module doit's default dep file ended up in: dbm.dumb makes doit much slower than gdbm."""
    dep_file = root / "doit" / ".doit.db"
    return dbm.whichdb(str(dep_file)) if dep_file.parent.exists() else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def size_ratios(results: dict[str, dict[str, Measurement]]) -> dict[str, dict[str, float | None]]:
    """gaffer/ninja and doit/gaffer per scenario (no-op on the median of its repeats), each `--gaffer-src`
    gaffer against ninja too, and the same on CPU time ("cpu gaffer/ninja")."""
    def value(tool: str, scenario: str, cpu: bool = False) -> float | None:
        m = results.get(tool, {}).get(scenario)
        return (m.cpu_median if cpu else m.median) if m else None

    variants = [t for t in results if t.startswith("gaffer")]
    return {s: {"gaffer/ninja": ratio(value("gaffer", s), value("ninja", s)),
                "doit/gaffer": ratio(value("doit", s), value("gaffer", s)),
                **{f"{t}/ninja": ratio(value(t, s), value("ninja", s)) for t in variants if t != "gaffer"},
                **{f"cpu {t}/ninja": ratio(value(t, s, cpu=True), value("ninja", s, cpu=True)) for t in variants}}
            for s in SCENARIOS}


def targets(size: int, ratios: dict[str, dict[str, float | None]]) -> list[str]:
    """The targets as met/missed/unknown lines (the no-op target is stated for 10,000 tasks)."""
    def verdict(value: float | None, ok: Callable[[float], bool]) -> str:
        return "unknown" if value is None else f"{value:.2f} {'met' if ok(value) else 'MISSED'}"

    lines = []
    if size >= 10000:
        noop = ratios["noop"]["gaffer/ninja"]
        lines.append(f"no-op gaffer/ninja <= {NOOP_TARGET:g}: {verdict(noop, lambda v: v <= NOOP_TARGET)}")
    for scenario in SCENARIOS:
        value = ratios[scenario]["doit/gaffer"]
        lines.append(f"{scenario} doit/gaffer >= {DOIT_TARGET:g}: {verdict(value, lambda v: v >= DOIT_TARGET)}")
    return lines


def table(setup: SizeSetup, results: dict[str, dict[str, Measurement]],
          ratios: dict[str, dict[str, float | None]]) -> str:
    """The per-size table: one row per scenario (no-op as min and median), seconds per tool, ratios."""
    info = setup.as_json()
    tools = list(results)
    ratio_names = ["gaffer/ninja", "doit/gaffer"] if "gaffer" in tools else []
    ratio_names += [f"{t}/ninja" for t in tools if t.startswith("gaffer-") and "ninja" in tools]
    header = ["scenario", *tools, *ratio_names]
    rows = [header]

    def cell(m: Measurement, pick: Callable[[Measurement], float | None]) -> str:
        value = pick(m)
        return f"{value:.3f}" if value is not None else ("-" if m.status == "skipped" else m.status)

    def ratio_cell(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else "n/a"

    def best(m: Measurement) -> float | None:
        return m.best

    def median(m: Measurement) -> float | None:
        return m.median

    # (label, scenario, which value, whether the row carries the ratios: those use the no-op median)
    layout = [("cold", "cold", median, True), ("noop (min)", "noop", best, False),
              ("noop (median)", "noop", median, True), ("edit-top", "edit-top", median, True),
              ("edit-first", "edit-first", median, True)]
    def cpu(m: Measurement) -> float | None:
        return m.cpu_median

    layout += [(f"{scenario} CPU", scenario, cpu, False) for scenario in ("cold", "edit-first")]
    for label, scenario, pick, with_ratios in layout:
        ratio_cells = [ratio_cell(ratios[scenario][r]) if with_ratios else "" for r in ratio_names]
        if pick is cpu:
            ratio_cells = [ratio_cell(ratios[scenario].get(f"cpu {r}")) if r.endswith("/ninja") else ""
                           for r in ratio_names]
        rows.append([label, *(cell(results[t][scenario], pick) for t in tools), *ratio_cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [(f"{info['tasks']} tasks, {info['layers']} layers, {info['edges']} edges, seed {info['seed']}; "
              f"edit-top {info['edit_top']['task']} ({info['edit_top']['affected']} task to rebuild), "
              f"edit-first {info['edit_first']['task']} ({info['edit_first']['affected']} tasks to rebuild); "
              "seconds")]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True)))
              for row in rows]
    loads = [load for r in results.values() for m in r.values() for load in m.load]
    if loads:
        lines.append(f"  load average {min(loads):.1f}-{max(loads):.1f}; medians over "
                     f"{max(len(r['cold'].seconds) for r in results.values())} round(s)")
    if "gaffer" in tools and ratio_names:
        lines += [f"  target: {line}" for line in targets(info["tasks"], ratios)]
    rss = rss_per_task(results, info["tasks"])
    if rss is not None:
        lines.append(f"  peak RSS of the top-layer edit: {rss[0] / 1024:.1f} MiB gaffer, {rss[1] / 1024:.1f} MiB ninja: "
                     f"{rss[2]:.2f} KiB per task beyond ninja's (target <= {RSS_TARGET_KIB:g}: "
                     f"{'met' if rss[2] <= RSS_TARGET_KIB else 'MISSED'})")
    return "\n".join(lines)


def rss_per_task(results: dict[str, dict[str, Measurement]], tasks: int) -> tuple[int, int, float] | None:
    """(gaffer's and ninja's peak RSS of the top-layer edit in KiB, gaffer's excess per task), if both ran."""
    try:
        gaffer, ninja = (results[t]["edit-top"].peak_rss_kib for t in ("gaffer", "ninja"))
    except KeyError:
        return None
    if not gaffer or not ninja:
        return None
    return gaffer[0], ninja[0], (gaffer[0] - ninja[0]) / tasks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="task counts (default 1000 10000)")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="tools to run (default all)")
    parser.add_argument("--repeat", type=int, default=5, help="no-op builds per tool, min and median reported (default 5)")
    parser.add_argument("--layers", type=int, default=10, help="layers per graph (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="graph seed (default 1)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="parallel jobs given to every tool (default 2)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds one build may take before it is killed and recorded as 'timeout' (default 300)")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv", help="venv holding gaffer and doit (default repo .venv)")
    parser.add_argument("--ninja", help="ninja binary (default: the venv's, else ninja on PATH)")
    parser.add_argument("--workdir", type=Path, help="where the trees go (default: a temporary directory, removed)")
    parser.add_argument("--json", type=Path, help="write every measurement to this file")
    parser.add_argument("--profile", action="store_true",
                        help="also run gaffer's no-op under cProfile and print the top 25 cumulative entries")
    parser.add_argument("--gaffer-src", action="append", default=[], metavar="LABEL=DIR",
                        help="also run the gaffer of checkout DIR (its src/, with the venv's packages) as tool "
                             "gaffer-LABEL, e.g. base=../gaffer-base; repeatable")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every tool's scenarios this many times, the tools in turn, each round in fresh "
                             "copies; the tables show the medians (default 1)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.jobs < 1 or args.timeout <= 0 or args.rounds < 1:
        parser.error("--repeat, --rounds and --jobs must be at least 1 and --timeout positive")
    args.sources = {}
    for spec in args.gaffer_src:
        label, _, directory = spec.partition("=")
        if not label or not (Path(directory) / "src" / "gaffer").is_dir():
            parser.error(f"--gaffer-src {spec}: expected LABEL=DIR, DIR a gaffer checkout (with src/gaffer)")
        args.sources[f"gaffer-{label}"] = Path(directory).resolve()
    if any(size < args.layers for size in args.sizes):
        parser.error(f"--sizes {args.sizes}: every size needs at least one task per layer ({args.layers})")
    if args.profile and "gaffer" not in args.tools:
        parser.error("--profile profiles gaffer: add gaffer to --tools")
    if args.workdir and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir}: exists and is not empty")
    args.tools = [t for t in TOOLS if t in args.tools]
    # An installed gaffer has its bytecode compiled; an editable one under PYTHONDONTWRITEBYTECODE (set on the
    # project's machines) would recompile every module at every start and time the compiler, not gaffer.
    for checkout in [REPO, *args.sources.values()]:
        subprocess.run([str(args.venv / "bin" / "python"), "-m", "compileall", "-q", str(checkout / "src" / "gaffer")],
                       check=True, stdout=subprocess.DEVNULL)
    venv_ninja = args.venv / "bin" / "ninja"
    args.ninja = args.ninja or (str(venv_ninja) if venv_ninja.exists() else shutil.which("ninja") or "ninja")
    tools = Toolset(args.venv, args.ninja, args.jobs, args.sources)
    if not os.access(TIME, os.X_OK):
        parser.error(f"{TIME} (GNU time, Debian's 'time' package) is needed for the edit builds' peak RSS")
    for tool in args.tools:
        if not shutil.which(tools.binary(tool)):
            parser.error(f"--tools {tool}: {tools.binary(tool)} is not an executable (see --venv, --ninja)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = Toolset(args.venv, args.ninja, args.jobs, args.sources)
    names = [*args.tools, *args.sources]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gaffer-bench-"))
    record: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "sources"},
        "environment": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                        "versions": {t: tools.version(t) for t in args.tools},
                        "sources": {t: str(path) for t, path in args.sources.items()}},
        "sizes": {},
    }
    failed = False
    try:
        for size in args.sizes:
            root = workdir / str(size)
            print(f"{size} tasks: generating in {root}", file=sys.stderr)
            setup = prepare(size, args.layers, args.seed, root)
            results = {t: {scenario: Measurement() for scenario in SCENARIOS} for t in names}
            for round_ in range(args.rounds):
                if args.rounds > 1:
                    print(f"{size} tasks: round {round_ + 1} of {args.rounds}", file=sys.stderr)
                for t in names:
                    bench_tool(t, tools, setup, root, args.repeat, args.timeout, results[t])
            failed |= any(m.status in ("error", "wrong-output") for r in results.values() for m in r.values())
            ratios = size_ratios(results)
            entry = record["sizes"][str(size)] = {
                "graph": setup.as_json(), "ratios": ratios, "doit_dep_file": doit_backend(root),
                "results": {t: {s: m.as_json() for s, m in r.items()} for t, r in results.items()},
            }
            print(table(setup, results, ratios) + "\n")
            if args.profile and "gaffer" in results and results["gaffer"]["edit-first"].status == "ok":
                try:
                    prof, report = profile_gaffer(tools, root, setup.expected["edit-first"], args.timeout)
                except BenchError as exc:
                    print(f"  gaffer profile: {exc}", file=sys.stderr)
                    failed = True
                else:
                    entry["profile"] = {"file": str(prof) if args.workdir else None, "top25": report}
                    print(report)
    finally:
        if args.json:
            args.json.write_text(json.dumps(record, indent=2) + "\n")
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        print("bench_graph: FAILED: a tool exited non-zero or built wrong outputs (see above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
