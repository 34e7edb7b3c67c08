#!/usr/bin/env python3
"""Generate a synthetic layered build graph in gaffer, ninja, make and doit form.

Every task `cat`s its own input file and its deps' outputs into its output file, so the four build
descriptions do exactly the same work and the result can be checked by plain concatenation
(`reference_outputs`). Layer 0 tasks have no deps; a task of layer L > 0 depends on 1 to 3 tasks of
layer L - 1, and every task below the top layer is a dep of at least one task of the next layer, so the
group target `all` (every top-layer task) builds all N tasks in every tool.

    gen_graph.py --tasks 1000 --layers 10 --seed 1 --out /tmp/g1000

The same seed always gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path


@dataclass(frozen=True)
class Task:
    """One generated task; `deps` are names in the previous layer, in the order they are `cat`ed."""

    name: str
    layer: int
    deps: tuple[str, ...]

    @property
    def src(self) -> str:
        return f"src/{self.name}.txt"

    @property
    def out(self) -> str:
        return f"out/{self.name}.txt"

    @property
    def cat_inputs(self) -> list[str]:
        """The files `cat` reads, in order: the task's own input, then each dep's output."""
        return [self.src] + [f"out/{dep}.txt" for dep in self.deps]

    @property
    def command(self) -> str:
        return f"cat {' '.join(self.cat_inputs)} > {self.out}"


@dataclass(frozen=True)
class Graph:
    """A generated graph: tasks in layer order (deps always come before their dependents)."""

    tasks: tuple[Task, ...]
    layers: int
    seed: int

    def layer(self, index: int) -> list[Task]:
        return [t for t in self.tasks if t.layer == index]

    @property
    def top(self) -> list[Task]:
        return self.layer(self.layers - 1)

    @cached_property
    def dependents(self) -> dict[str, list[str]]:
        """For each task, the tasks that list it as a dep."""
        result: dict[str, list[str]] = {t.name: [] for t in self.tasks}
        for task in self.tasks:
            for dep in task.deps:
                result[dep].append(task.name)
        return result

    def affected_by(self, name: str) -> set[str]:
        """Every task whose output changes when `name`'s input changes (including `name`)."""
        affected, todo = {name}, [name]
        while todo:
            for dependent in self.dependents[todo.pop()]:
                if dependent not in affected:
                    affected.add(dependent)
                    todo.append(dependent)
        return affected


def layer_sizes(tasks: int, layers: int) -> list[int]:
    """Split `tasks` into `layers` near-equal layers, the remainder going to the lowest layers."""
    base, extra = divmod(tasks, layers)
    return [base + (1 if i < extra else 0) for i in range(layers)]


def generate(tasks: int, layers: int, seed: int) -> Graph:
    """Build the graph deterministically from `seed`.

    Each previous-layer task is first handed to one task of the layer (a shuffled round-robin), so none
    is left out of `all`; each task then draws extra random deps up to a random target of 1 to 3.
    """
    if layers < 1 or tasks < layers:
        raise ValueError("need at least one layer and at least one task per layer")
    rng = random.Random(seed)
    sizes = layer_sizes(tasks, layers)
    width = len(str(max(sizes) - 1))
    names = [[f"L{layer}_{i:0{width}d}" for i in range(size)] for layer, size in enumerate(sizes)]
    result: list[Task] = [Task(name, 0, ()) for name in names[0]]
    for layer in range(1, layers):
        prev, here = names[layer - 1], names[layer]
        chosen: list[list[int]] = [[] for _ in here]
        cover = list(range(len(prev)))
        rng.shuffle(cover)
        for slot, dep in enumerate(cover):
            chosen[slot % len(here)].append(dep)
        for i, name in enumerate(here):
            target = min(max(rng.randint(1, 3), len(chosen[i])), len(prev))
            while len(chosen[i]) < target:
                dep = rng.randrange(len(prev))
                if dep not in chosen[i]:
                    chosen[i].append(dep)
            result.append(Task(name, layer, tuple(prev[d] for d in sorted(chosen[i]))))
    return Graph(tuple(result), layers, seed)


def source_text(task: Task, seed: int) -> bytes:
    """The initial content of a task's input file: small and distinct per task."""
    return f"{task.name} seed={seed}\n".encode()


def reference_outputs(graph: Graph, sources: dict[str, bytes]) -> dict[str, bytes]:
    """What every out/<task>.txt must hold, given each task's current input file content."""
    outputs: dict[str, bytes] = {}
    for task in graph.tasks:
        outputs[task.name] = sources[task.name] + b"".join(outputs[d] for d in task.deps)
    return outputs


def gaffer_json(graph: Graph) -> str:
    """graph.json with one task per line, so a 10,000-task file stays readable and diffable."""
    tasks: dict[str, dict] = {
        t.name: {"command": t.command, "deps": list(t.deps), "inputs": [t.src], "outputs": [t.out]}
        for t in graph.tasks
    }
    tasks["all"] = {"deps": [t.name for t in graph.top]}
    lines = [f" {json.dumps(name)}: {json.dumps(task)}" for name, task in tasks.items()]
    return '{"tasks": {\n' + ",\n".join(lines) + "\n}}\n"


def ninja_file(graph: Graph) -> str:
    lines = ["rule cat", "  command = cat $in > $out", ""]
    lines += [f"build {t.out}: cat {' '.join(t.cat_inputs)}" for t in graph.tasks]
    lines += ["", f"build all: phony {' '.join(t.out for t in graph.top)}", "default all", ""]
    return "\n".join(lines)


def makefile(graph: Graph) -> str:
    # No built-in implicit rules: with them make would search for ways to remake every .txt file, which
    # measures make's rule search rather than its up-to-date check.
    lines = ["MAKEFLAGS += --no-builtin-rules", ".SUFFIXES:", ".PHONY: all", ""]
    lines.append(f"all: {' '.join(t.out for t in graph.top)}")
    for t in graph.tasks:
        lines += ["", f"{t.out}: {' '.join(t.cat_inputs)}", f"\t{t.command}"]
    lines.append("")
    return "\n".join(lines)


DODO_TEMPLATE = '''"""doit form of the synthetic graph (generated by benchmarks/gen_graph.py; do not edit)."""

# (name, deps) in layer order; each task cats src/<name>.txt and its deps' outputs into out/<name>.txt.
TASKS = [
{tasks}
]
TOP = {top!r}


def task_build():
    for name, deps in TASKS:
        inputs = ["src/%s.txt" % name] + ["out/%s.txt" % d for d in deps]
        yield {{
            "name": name,
            "actions": ["cat %s > out/%s.txt" % (" ".join(inputs), name)],
            "file_dep": inputs,
            "targets": ["out/%s.txt" % name],
        }}


def task_all():
    return {{"actions": None, "task_dep": ["build:%s" % name for name in TOP]}}
'''


def dodo_file(graph: Graph) -> str:
    tasks = "\n".join(f"    ({t.name!r}, {list(t.deps)!r})," for t in graph.tasks)
    return DODO_TEMPLATE.format(tasks=tasks, top=[t.name for t in graph.top])


def write_tree(graph: Graph, out: Path) -> None:
    """Write src/, an empty out/ and the four build descriptions into `out`."""
    (out / "src").mkdir(parents=True)
    (out / "out").mkdir()  # make and doit run `cat ... > out/x.txt` without creating the directory
    for task in graph.tasks:
        (out / task.src).write_bytes(source_text(task, graph.seed))
    (out / "graph.json").write_text(gaffer_json(graph))
    (out / "build.ninja").write_text(ninja_file(graph))
    (out / "Makefile").write_text(makefile(graph))
    (out / "dodo.py").write_text(dodo_file(graph))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, required=True, help="number of tasks, e.g. 10000")
    parser.add_argument("--layers", type=int, default=10, help="number of layers (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--out", type=Path, required=True, help="directory to create (must not exist or be empty)")
    args = parser.parse_args(argv)
    if args.layers < 1 or args.tasks < args.layers:
        parser.error(f"--tasks {args.tasks} --layers {args.layers}: need at least one task per layer")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.error(f"--out {args.out}: exists and is not an empty directory")
    graph = generate(args.tasks, args.layers, args.seed)
    write_tree(graph, args.out)
    print(f"{args.out}: {len(graph.tasks)} tasks in {graph.layers} layers, "
          f"{sum(len(t.deps) for t in graph.tasks)} edges (seed {graph.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
