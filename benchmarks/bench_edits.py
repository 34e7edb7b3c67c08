#!/usr/bin/env python3
"""The edit-rebuild loop, interleaved: gaffer before a change ("base", another checkout's src/), gaffer from
this checkout ("new") and ninja, each in a tree of gen_graph.py's that is built cold once and kept (a
100,000-task cold build takes many minutes), then a top-layer edit, a first-layer edit and a no-op, in rounds,
the three tools in turn within each round so that a busy machine slows them alike. Every build is timed by
wall clock and by CPU (user + system of the tool and all it ran, from wait4), its peak RSS taken by GNU time,
the load average noted; after an edit every output it reaches must be its inputs' concatenation.

    .venv/bin/python benchmarks/bench_edits.py --base /path/to/other/checkout/src --sizes 10000 --workdir /tmp/e

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gen_graph
from bench_graph import EDIT_LINE, REPO, RSS_TARGET_KIB, TIME, BenchError, Toolset, run_build

INTERLEAVED = ("edit-top", "edit-first", "noop")
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)$", re.MULTILINE)  # -X importtime


@dataclass
class Sample:
    """One build of the interleaved comparison: wall and CPU seconds (the tool and its children, by wait4 on
    GNU time), peak RSS in KiB, and the load average when it started."""

    wall: float
    cpu: float
    rss_kib: int
    load: float


def timed_build(argv: list[str], tree: Path, env: dict[str, str], log: Path, timeout: float) -> Sample:
    """One build under GNU time (its peak RSS is the tool's own, not this Python's), its CPU time from wait4."""
    load = os.getloadavg()[0]
    wall, cpu, rss_kib = run_build(argv, tree, log, timeout, rss=True, env=env)
    assert rss_kib is not None
    return Sample(wall, cpu, rss_kib, load)


def check_rebuilt(tree: Path, graph: gen_graph.Graph, names: set[str]) -> None:
    """Each of `names` (what an edit reaches) holds its input followed by its deps' outputs as they now are."""
    tasks = {t.name: t for t in graph.tasks}
    for name in names:
        task = tasks[name]
        expected = b"".join((tree / path).read_bytes() for path in task.cat_inputs)
        if (tree / task.out).read_bytes() != expected:
            raise BenchError("wrong-output", f"{tree}/{task.out} is not the concatenation of its inputs")


def _edited_task(graph: gen_graph.Graph, edit: str) -> str:
    """The task whose input an edit changes: the first top-layer task, or the first-layer task of median reach."""
    if edit == "top":
        return graph.top[0].name
    by_reach = sorted(graph.layer(0), key=lambda t: (len(graph.affected_by(t.name)), t.name))
    return by_reach[len(by_reach) // 2].name


def interleave(args: argparse.Namespace, tools: Toolset) -> int:
    """gaffer from --base ("base"), gaffer from this checkout ("new") and ninja, each in its own tree under
    --workdir (built cold once and kept for later runs; then built once more untimed, which settles a tree an
    interrupted run left), then every scenario in rounds, the three in turn within each round."""
    contestants = {"base": Path(args.base).resolve(), "new": REPO / "src", "ninja": None}
    status = 0
    for size in args.sizes:
        root = args.workdir / str(size)
        graph = gen_graph.generate(size, args.layers, args.seed)
        if not (root / "generated").exists():
            gen_graph.write_tree(graph, root / "generated")
        edits = {"edit-top": _edited_task(graph, "top"), "edit-first": _edited_task(graph, "first"), "noop": None}
        runs: dict[str, tuple[list[str], dict[str, str]]] = {}
        for name, src in contestants.items():
            env = dict(os.environ)
            if src is None:
                argv = tools.argv("ninja", root)
            else:
                env["PYTHONPATH"] = str(src)
                argv = tools.argv("gaffer", root / f"{name}-cache")
            runs[name] = (argv, env)
            tree = root / name
            if not (tree / ".bench-built").exists():
                shutil.rmtree(tree, ignore_errors=True)
                shutil.copytree(root / "generated", tree, symlinks=True)
                print(f"{size} tasks: cold build of {name} (kept for later runs)", file=sys.stderr)
                timed_build(argv, tree, env, root / f"{name}.log", args.timeout)
                (tree / ".bench-built").touch()
            timed_build(argv, tree, env, root / f"{name}.log", args.timeout)
        samples: dict[str, dict[str, list[Sample]]] = {s: {n: [] for n in contestants} for s in args.scenarios}
        try:
            for scenario in args.scenarios:
                rounds = args.rounds if scenario != "edit-first" else max(1, args.rounds // 2)
                for r in range(rounds):
                    for name, (argv, env) in runs.items():
                        tree = root / name
                        edited = edits[scenario]
                        if edited is not None:
                            with (tree / "src" / f"{edited}.txt").open("ab") as f:
                                f.write(EDIT_LINE)
                        sample = timed_build(argv, tree, env, root / f"{name}.log", args.timeout)
                        if edited is not None:
                            check_rebuilt(tree, graph, graph.affected_by(edited))
                        samples[scenario][name].append(sample)
                        print(f"  {size} {scenario} round {r + 1} {name}: {sample.wall:.3f}s wall, {sample.cpu:.3f}s "
                              f"CPU, {sample.rss_kib / 1024:.1f} MiB, load {sample.load:.1f}", file=sys.stderr)
        except BenchError as exc:
            print(f"  {size}: {exc}", file=sys.stderr)
            status = 1
        print(interleaved_table(size, edits, graph, samples))
    return status


def import_profile(args: argparse.Namespace, tools: Toolset) -> int:
    """`--importtime N`: what a top-layer edit's process imports, and at what cost (`python -X importtime`, the
    median of N edit builds each), base and new side by side: the fixed cost an edit pays before any work. Uses
    the trees the interleaved comparison keeps (run it first)."""
    status = 0
    for size in args.sizes:
        root = args.workdir / str(size)
        graph = gen_graph.generate(size, args.layers, args.seed)
        edited = graph.top[0].name
        times: dict[str, dict[str, list[tuple[int, int]]]] = {"base": {}, "new": {}}
        depth: dict[str, int] = {}
        for name, src, tree in _edited_kept_trees(args, root, edited, args.importtime):
            argv = [str(args.venv / "bin" / "python"), "-X", "importtime",
                    *tools.argv("gaffer", root / f"{name}-cache")]
            proc = subprocess.run(argv, cwd=tree, env={**os.environ, "PYTHONPATH": str(src)}, text=True,
                                  capture_output=True, timeout=args.timeout, check=False)
            if proc.returncode != 0:
                print(f"  {size} {name}: exit status {proc.returncode}", file=sys.stderr)
                status = 1
                continue
            check_rebuilt(tree, graph, graph.affected_by(edited))
            for m in IMPORT_LINE.finditer(proc.stderr):
                module = m.group(4)
                depth.setdefault(module, len(m.group(3)) // 2)
                times[name].setdefault(module, []).append((int(m.group(1)), int(m.group(2))))
        print(import_table(size, args.importtime, times, depth))
    return status


# `--phases`: run as `python -c PHASES_WRAPPER gaffer-args...`; times (process CPU, all threads) the parts of an
# edit build by wrapping the functions that do them, and prints them as the last line of stderr.

def _edited_kept_trees(args: argparse.Namespace, root: Path, edited: str,
                       rounds: int) -> Iterator[tuple[str, Path, Path]]:
    """`rounds` times, base then new: append a line to the edited input of the kept tree, then (name, sources,
    tree) to build it with. Exits if the interleaved comparison has not kept the tree."""
    for _ in range(rounds):
        for name, src in (("base", Path(args.base).resolve()), ("new", REPO / "src")):
            tree = root / name
            if not (tree / ".bench-built").exists():
                raise SystemExit(f"{root.name} tasks: no kept tree {tree}: run the interleaved comparison first")
            with (tree / "src" / f"{edited}.txt").open("ab") as f:
                f.write(EDIT_LINE)
            yield name, src, tree

PHASES_WRAPPER = """
import json, sys, time
start = time.process_time()
import gaffer.build, gaffer.cli, gaffer.graph, gaffer.noop
imported = time.process_time()
spent = {}
def timed(owner, name, label):
    function = getattr(owner, name, None)
    if function is None:
        return
    def wrapper(*args, **kwargs):
        begun = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.process_time() - begun
    setattr(owner, name, wrapper)
timed(gaffer.cli, "build_parser", "argument parser")
timed(gaffer.noop, "check", "record check")
timed(gaffer.graph, "load_graph", "graph load")
timed(gaffer.build.Build, "_settle_unchanged", "settling")
timed(gaffer.noop, "write_record", "new record")
timed(gaffer.build.Build, "run", "build")
status = gaffer.cli.main(sys.argv[1:])
done = time.process_time()
spent["build"] -= spent.get("settling", 0.0) + spent.get("new record", 0.0)
spent["the rest of gaffer run"] = done - imported - sum(spent.values())
print("PHASES " + json.dumps({"interpreter start": start, "imports (cli, noop, graph, build)": imported - start,
                              **spent}), file=sys.stderr)
sys.exit(status)
"""


# `--phases N --edit first`: the same for an edit that re-runs hundreds of tasks on several threads: each part's
# CPU is that of the thread running it (thread_time), summed over the main thread and over the task threads
# apart, beside each kind of thread's whole CPU; the task threads' parts nest (a part's time includes its parts').
THREADS_WRAPPER = """
import json, sys, threading, time
import gaffer.actions, gaffer.build, gaffer.cli, gaffer.keys, gaffer.noop, gaffer.records, gaffer.scheduler
import gaffer.cache.tiered, gaffer.execute.local, gaffer.state, gaffer.digest, gaffer.ui.progress
spent, lock = {}, threading.Lock()
def add(label, seconds):
    where = "main" if threading.current_thread() is threading.main_thread() else "tasks"
    with lock:
        spent[f"{where}: {label}"] = spent.get(f"{where}: {label}", 0.0) + seconds
def timed(owner, name, label):
    function = getattr(owner, name, None)
    if function is None:
        return
    def wrapper(*args, **kwargs):
        begun = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            add(label, time.thread_time() - begun)
    setattr(owner, name, wrapper)
serve = gaffer.scheduler._Pool._serve
def _serve(self):
    try:
        serve(self)
    finally:
        add("the whole thread", time.thread_time())
gaffer.scheduler._Pool._serve = _serve
for owner, name, label in (
        (gaffer.noop, "check", "record check"), (gaffer.build.Build, "_settle_unchanged", "settling"),
        (gaffer.build, "make_plan", "plan"), (gaffer.build.Build, "quick", "up-to-date check (quick)"),
        (gaffer.keys.KeyBuilder, "fingerprint", "fingerprint"), (gaffer.noop, "write_record", "new record"),
        (gaffer.state.WorkspaceState, "save", "build log save"), (gaffer.digest.StatCache, "save", "stat cache save"),
        (gaffer.ui.progress.Progress, "task_started", "progress: started"),
        (gaffer.ui.progress.Progress, "task_finished", "progress: finished"),
        (gaffer.build.Build, "work", "work"), (gaffer.keys.KeyBuilder, "key", "key"),
        (gaffer.actions, "prepare_action", "key: prepare_action"), (gaffer.build.Build, "_restore", "cache lookup"),
        (gaffer.execute.local.ProcessRunner, "run", "runner (spawn, wait, reap)"),
        (gaffer.actions, "remove_outputs", "removing old outputs"), (gaffer.actions, "collect_outputs", "storing outputs"),
        (gaffer.actions, "make_result", "ActionResult"), (gaffer.cache.tiered.TieredCache, "put_action", "action cache write"),
        (gaffer.records, "on_disk", "output records"), (gaffer.keys.KeyBuilder, "input_changed", "inputs re-checked"),
        (gaffer.build.Build, "_record", "build log entry")):
    timed(owner, name, label)
status = gaffer.cli.main(sys.argv[1:])
add("the whole thread", time.thread_time())
print("PHASES " + json.dumps({"process": time.process_time(), **spent}), file=sys.stderr)
sys.exit(status)
"""

def phase_profile(args: argparse.Namespace, tools: Toolset) -> int:
    """`--phases N`: where an edit's process spends its CPU, part by part (PHASES_WRAPPER for the top-layer edit,
    THREADS_WRAPPER per kind of thread for the first-layer one), the median of N edit builds per gaffer, base and
    new in turn. Uses the trees the interleaved comparison keeps."""
    status = 0
    wrapper = PHASES_WRAPPER if args.edit == "top" else THREADS_WRAPPER
    for size in args.sizes:
        root = args.workdir / str(size)
        graph = gen_graph.generate(size, args.layers, args.seed)
        edited = _edited_task(graph, args.edit)
        spent: dict[str, dict[str, list[float]]] = {"base": {}, "new": {}}
        for name, src, tree in _edited_kept_trees(args, root, edited, args.phases):
            gaffer_args = tools.argv("gaffer", root / f"{name}-cache")[1:]
            proc = subprocess.run([str(args.venv / "bin" / "python"), "-c", wrapper, *gaffer_args],
                                  cwd=tree, env={**os.environ, "PYTHONPATH": str(src)}, text=True,
                                  capture_output=True, timeout=args.timeout, check=False)
            last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
            if proc.returncode != 0 or not last.startswith("PHASES "):
                print(f"  {size} {name}: exit status {proc.returncode}", file=sys.stderr)
                status = 1
                continue
            check_rebuilt(tree, graph, graph.affected_by(edited))
            for phase, seconds in json.loads(last[len("PHASES "):]).items():
                spent[name].setdefault(phase, []).append(seconds)
        reach = len(graph.affected_by(edited))
        print(f"{size} tasks, {args.edit}-layer edit ({reach} tasks run), CPU by part ({args.phases} runs each; "
              "medians, ms)")
        phases = list(spent["new"])
        if args.edit == "first":  # per kind of thread, costliest first
            phases.sort(key=lambda p: (p.split(":")[0], -statistics.median(spent["new"][p])))
        for phase in phases:
            cells = [f"{statistics.median(spent[n][phase]) * 1000:6.1f}" if phase in spent[n] else "     -"
                     for n in ("base", "new")]
            print(f"  {phase:40s} base {cells[0]}  new {cells[1]}")
    return status


# `--floor N`: the least a gaffer of this design pays per task, measured: a Python process that runs the commands
# an edit reaches as gaffer does (twice -j threads, -j command slots, os.posix_spawn, a dependency count on the
# main thread, a progress line per finish) and stores each output and an action-cache entry as the disk tier does
# (a temp file written and renamed into place each), with no key, build log, stat cache or checks. Run as
# `python -c FLOOR_RUNNER JOBS STORE TASKS...` in the tree, each task `name:out:dep,dep:command`.
FLOOR_RUNNER = """
import os, sys, threading, hashlib
from queue import SimpleQueue
jobs, store = int(sys.argv[1]), sys.argv[2]
tasks = {}
for spec in sys.argv[3:]:
    name, out, deps, command = spec.split(":", 3)
    tasks[name] = (out, [d for d in deps.split(",") if d], command)
for sub in ("tmp", "cas", "ac"):
    os.makedirs(f"{store}/{sub}", exist_ok=True)
waiting = {n: sum(d in tasks for d in deps) for n, (_o, deps, _c) in tasks.items()}
dependents = {n: [] for n in tasks}
for n, (_o, deps, _c) in tasks.items():
    for d in deps:
        if d in tasks:
            dependents[d].append(n)
todo, done, slots = SimpleQueue(), SimpleQueue(), threading.BoundedSemaphore(jobs)
devnull = os.open(os.devnull, os.O_RDONLY)
serial = iter(range(1 << 62))
def put(directory, name, data):
    tmp = f"{store}/tmp/{os.getpid()}-{next(serial)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.write(fd, data)
    os.close(fd)
    os.replace(tmp, f"{store}/{directory}/{name}")
def serve():
    while (name := todo.get()) is not None:
        out, _deps, command = tasks[name]
        with slots:
            pid = os.posix_spawn("/bin/sh", ["sh", "-c", command], os.environ,
                                 file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0)], setsid=True)
            status = os.waitpid(pid, 0)[1]
        with open(out, "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        put("cas", digest, data)
        put("ac", hashlib.sha256(command.encode()).hexdigest(), digest.encode())
        done.put((name, status))
threads = [threading.Thread(target=serve, daemon=True) for _ in range(2 * jobs)]
for t in threads:
    t.start()
ready = [n for n, count in waiting.items() if count == 0]
running = finished = 0
while ready or running:
    while ready:
        todo.put(ready.pop())
        running += 1
    name, status = done.get()
    running -= 1
    finished += 1
    if status != 0:
        sys.exit(f"{name} failed")
    print(f"[{finished}/{len(tasks)}] {name}", file=sys.stderr, flush=True)
    for child in dependents[name]:
        waiting[child] -= 1
        if waiting[child] == 0:
            ready.append(child)
for t in threads:
    todo.put(None)
usage = __import__("resource").getrusage(__import__("resource").RUSAGE_SELF)
print(f"FLOOR self {usage.ru_utime + usage.ru_stime:.4f}", file=sys.stderr)
"""


def floor_profile(args: argparse.Namespace, tools: Toolset) -> int:
    """`--floor N`: N rounds of the first-layer edit in ninja's kept tree: ninja builds it, then FLOOR_RUNNER runs
    the same commands again there (they rewrite the same outputs); both timed alike (wall, CPU from wait4)."""
    status = 0
    for size in args.sizes:
        root = args.workdir / str(size)
        tree = root / "ninja"
        if not (tree / ".bench-built").exists():
            raise SystemExit(f"{size} tasks: no kept tree {tree}: run the interleaved comparison first")
        graph = gen_graph.generate(size, args.layers, args.seed)
        edited = _edited_task(graph, "first")
        reached = graph.affected_by(edited)
        specs = [f"{t.name}:{t.out}:{','.join(t.deps)}:{t.command}" for t in graph.tasks if t.name in reached]
        floor_argv = [str(args.venv / "bin" / "python"), "-c", FLOOR_RUNNER, str(args.jobs),
                      str(root / "floor-store"), *specs]
        samples: dict[str, list[Sample]] = {"ninja": [], "floor": []}
        own: list[float] = []  # the floor runner's own CPU, without the commands'
        log = root / "floor.log"
        for r in range(args.floor):
            with (tree / "src" / f"{edited}.txt").open("ab") as f:
                f.write(EDIT_LINE)
            for name, argv in (("ninja", tools.argv("ninja", root)), ("floor", floor_argv)):
                try:
                    sample = timed_build(argv, tree, dict(os.environ), root / f"{name}.log", args.timeout)
                    check_rebuilt(tree, graph, reached)
                    if name == "floor":
                        own.append(float(log.read_text().rsplit("FLOOR self ", 1)[1].split()[0]))
                except BenchError as exc:
                    print(f"  {size} {name}: {exc}", file=sys.stderr)
                    return 1
                samples[name].append(sample)
                print(f"  {size} floor round {r + 1} {name}: {sample.wall:.3f}s wall, {sample.cpu:.3f}s CPU, "
                      f"load {sample.load:.1f}", file=sys.stderr)
        med = {n: (statistics.median(s.wall for s in v), statistics.median(s.cpu for s in v)) for n, v in samples.items()}
        print(f"{size} tasks, first-layer edit ({len(reached)} tasks), {args.floor} rounds (medians): ninja "
              f"{med['ninja'][1]:.3f}s CPU {med['ninja'][0]:.3f}s wall; floor {med['floor'][1]:.3f}s CPU "
              f"{med['floor'][0]:.3f}s wall: {med['floor'][1] / med['ninja'][1]:.2f}x ninja's CPU, "
              f"{med['floor'][0] / med['ninja'][0]:.2f}x its wall; the runner's own CPU {statistics.median(own):.3f}s "
              f"({statistics.median(own) / len(reached) * 1e6:.0f} us a task)")
    return status

def import_table(size: int, runs: int, times: dict[str, dict[str, list[tuple[int, int]]]],
                 depth: dict[str, int]) -> str:
    """Per gaffer: the imports' total (top-level modules' cumulative times), the modules only one of them loads,
    and the new one's costliest modules by their own time; milliseconds, medians over the runs."""
    def med(name: str, module: str, which: int) -> float:
        found = times[name].get(module)
        return statistics.median(t[which] for t in found) / 1000 if found else 0.0

    title = (f"{size} tasks, top-layer edit under python -X importtime ({runs} runs each; medians, ms; "
             "importtime's own overhead included)")
    lines = [title]
    for name in ("base", "new"):
        top = sum(med(name, m, 1) for m in times[name] if depth[m] == 0)
        lines.append(f"  {name}: {len(times[name])} modules, {top:.1f} ms of imports")
    for name, other in (("base", "new"), ("new", "base")):
        only = sorted((m for m in times[name] if m not in times[other]), key=lambda m: -med(name, m, 1))
        lines.append(f"  only {name} imports: " + (", ".join(f"{m} {med(name, m, 1):.1f}" for m in only[:25]) or "-"))
    costly = sorted(times["new"], key=lambda m: -med("new", m, 0))[:20]
    lines.append("  new, by own time: " + ", ".join(f"{m} {med('new', m, 0):.1f}" for m in costly))
    return "\n".join(lines)


def interleaved_table(size: int, edits: dict[str, str | None], graph: gen_graph.Graph,
                      samples: dict[str, dict[str, list[Sample]]]) -> str:
    lines = [f"{size} tasks, interleaved (medians; ratios against ninja in the same rounds)",
             ("scenario     rounds  base wall  new wall  ninja wall  base CPU  new CPU  ninja CPU  "
              "new/ninja wall  new/ninja CPU  base/ninja CPU  new peak RSS  ninja peak RSS  load")]
    for scenario, by_tool in samples.items():
        if not all(by_tool.values()):
            continue
        med = {n: (statistics.median(s.wall for s in v), statistics.median(s.cpu for s in v),
                   max(s.rss_kib for s in v)) for n, v in by_tool.items()}
        load = statistics.median(s.load for v in by_tool.values() for s in v)
        edited = edits[scenario]
        reach = f" ({len(graph.affected_by(edited))})" if edited else ""
        lines.append(f"{scenario + reach:12s} {len(by_tool['new']):6d}  {med['base'][0]:9.3f}  {med['new'][0]:8.3f}  "
                     f"{med['ninja'][0]:10.3f}  {med['base'][1]:8.3f}  {med['new'][1]:7.3f}  {med['ninja'][1]:9.3f}  "
                     f"{med['new'][0] / med['ninja'][0]:14.2f}  {med['new'][1] / med['ninja'][1]:13.2f}  "
                     f"{med['base'][1] / med['ninja'][1]:14.2f}  {med['new'][2] / 1024:9.1f} MiB  "
                     f"{med['ninja'][2] / 1024:11.1f} MiB  {load:4.1f}")
        if scenario == "edit-top":
            lines.append(f"  peak RSS beyond ninja's per task: base {(med['base'][2] - med['ninja'][2]) / size:.2f} KiB, "
                         f"new {(med['new'][2] - med['ninja'][2]) / size:.2f} KiB (target <= {RSS_TARGET_KIB:g})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, metavar="SRC",
                        help="the src/ directory of the gaffer checkout to compare with (e.g. a git worktree of main)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000], help="task counts (default 10000)")
    parser.add_argument("--workdir", type=Path, required=True,
                        help="where the trees are built and kept (reused by later runs of the same sizes)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of each scenario; the first-layer edit gets half (default 5)")
    parser.add_argument("--scenarios", nargs="+", choices=INTERLEAVED, default=list(INTERLEAVED),
                        help="which scenarios to run, in this order (default: all)")
    parser.add_argument("--layers", type=int, default=10, help="layers per graph (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="graph seed (default 1)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="parallel jobs given to every tool (default 2)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one build may take (default 3600)")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv", help="venv holding gaffer (default repo .venv)")
    parser.add_argument("--ninja", help="ninja binary (default: the venv's, else ninja on PATH)")
    parser.add_argument("--phases", type=int, default=0, metavar="N",
                        help="instead of the comparison: N top-layer edits per gaffer in the kept trees, each one's "
                             "CPU time split by part (record check, graph load, settling, new record...)")
    parser.add_argument("--edit", choices=("top", "first"), default="top",
                        help="which edit --phases profiles: a top-layer input (one task runs, the default) or a "
                             "first-layer one (hundreds run; each part's CPU per kind of thread)")
    parser.add_argument("--floor", type=int, default=0, metavar="N",
                        help="instead of the comparison: N first-layer edits in ninja's kept tree, each built by ninja "
                             "and then by a minimal Python runner of gaffer's design (threads, posix_spawn, a stored "
                             "output and action-cache entry per task, nothing else): the floor of gaffer's CPU")
    parser.add_argument("--importtime", type=int, default=0, metavar="N",
                        help="instead of the comparison: N top-layer edits per gaffer under python -X importtime, "
                             "in the kept trees (what each imports, and its cost)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.jobs < 1 or args.timeout <= 0:
        parser.error("--rounds and --jobs must be at least 1 and --timeout positive")
    if not (Path(args.base) / "gaffer").is_dir():
        parser.error(f"--base {args.base}: no gaffer package there")
    if not os.access(TIME, os.X_OK):
        parser.error(f"{TIME} (GNU time, Debian's 'time' package) is needed for the peak RSS")
    venv_ninja = args.venv / "bin" / "ninja"
    args.ninja = args.ninja or (str(venv_ninja) if venv_ninja.exists() else shutil.which("ninja") or "ninja")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = Toolset(args.venv, args.ninja, args.jobs)
    for src in (Path(args.base).resolve(), REPO / "src"):  # as installed: no module compiled at every start
        subprocess.run([str(args.venv / "bin" / "python"), "-m", "compileall", "-q", str(src / "gaffer")],
                       check=True, stdout=subprocess.DEVNULL)
    if args.phases > 0:
        return phase_profile(args, tools)
    if args.floor > 0:
        return floor_profile(args, tools)
    return import_profile(args, tools) if args.importtime > 0 else interleave(args, tools)


if __name__ == "__main__":
    sys.exit(main())
