"""Random workspaces and random user edits, for tests that compare two ways of building the same sources.

`generate(rng)` makes a `Workspace`: source files (contents, executable bits, symlinks) under `src/`, a graph of
tasks with input globs, deps (some through a group task), declared env vars, and outputs that are files of
various modes, symlinks and directories (with empty subdirectories and inner symlinks), all under `out/<task>/`.
`Workspace.write(root)` puts it on disk; `apply_edit(rng, ws)` then changes it as a user would, on disk and in
the model at once, and returns a shell-like line saying what it did (print the lines to reproduce a failure).

Every task is a deterministic `sh` script that reads exactly what gaffer keys: the files its patterns match (their
content and executable bit, never a symlink's target path or other mode bits), its declared env vars, and
everything of its deps' outputs (contents, executable bits, symlink targets, directory listings with empty
directories). So a correct build system gives byte-identical outputs however it got there. Inputs live under
`src/` and outputs under `out/`, so no glob ever matches an output, and a source tree is `root` minus
`out/` and `.gaffer/`.
"""

from __future__ import annotations

import json
import os
import posixpath
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DIRS = ("src/a", "src/a/sub", "src/b", "src/c")
EXTS = (".txt", ".dat")
ENV_NAMES = ("V0", "V1", "V2")
FILE_MODES = (0o644, 0o600, 0o755, 0o700, 0o640)
WORDS = ("alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta")

# Shell helpers every task script starts with. `inp` shows what gaffer keys of an input (content, exec bit);
# `show` and `tree` show everything of a dep's output a dependent can see (symlink targets, directories).
PRELUDE = """set -e
inp() { [ -f "$1" ] || return 0; echo "== $1"; cat "$1"; if [ -x "$1" ]; then echo x; else echo -; fi; }
show() {
  if [ -L "$1" ]; then echo "L $1 -> $(readlink "$1")"; if [ -f "$1" ]; then cat "$1"; fi
  elif [ -d "$1" ]; then echo "D $1"
  elif [ -f "$1" ]; then echo "F $1"; cat "$1"; if [ -x "$1" ]; then echo x; else echo -; fi
  else echo "? $1"; fi
}
tree() { find "$1" | LC_ALL=C sort | while read -r p; do show "$p"; done; }
"""


@dataclass
class Source:
    """A file under src/: a regular file (content, executable) or a symlink (target, relative to its dir)."""

    content: bytes = b""
    executable: bool = False
    target: str | None = None


@dataclass
class TaskSpec:
    """A task; its command is generated from this, so an edit here is an edit of the graph."""

    name: str
    deps: list[str] = field(default_factory=list)
    group: bool = False
    inputs: list[str] = field(default_factory=list)  # inputs[0] only drives the mode/link/empty-dir bits
    env: list[str] = field(default_factory=list)
    tag: int = 0  # printed by the command: changing it changes the command
    main_mode: int = 0o644
    link: bool = False  # outputs t0, t1 and link -> t0 or t1
    directory: bool = False  # outputs d/ (mode dir_mode) holding a, l -> a, s/b (s is 0700), ls -> s, maybe e/
    dir_mode: int = 0o755
    cache: bool = True

    def outputs(self) -> list[str]:
        if self.group:
            return []
        o = f"out/{self.name}"
        outs = [f"{o}/main", f"{o}/flag"]
        if self.link:
            outs += [f"{o}/t0", f"{o}/t1", f"{o}/link"]
        if self.directory:
            outs.append(f"{o}/d")
        return outs


@dataclass
class Workspace:
    sources: dict[str, Source]  # workspace-relative path -> source
    tasks: dict[str, TaskSpec]  # in an order where deps come first
    graph_env: list[str]
    env: dict[str, str]  # values of ENV_NAMES for the build's environment; absent = unset
    root: Path | None = None
    written_graph: str = ""

    # -- the graph -------------------------------------------------------------------------------------------

    def real_deps(self, task: TaskSpec) -> list[str]:
        """Deps with groups flattened: the tasks whose outputs `task` reads."""
        seen: list[str] = []
        stack = list(reversed(task.deps))
        while stack:
            name = stack.pop()
            dep = self.tasks[name]
            if dep.group:
                stack.extend(reversed(dep.deps))
            elif name not in seen:
                seen.append(name)
        return sorted(seen)

    def command(self, task: TaskSpec) -> str:
        o = f"out/{task.name}"
        lines = [PRELUDE, f"o={o}", "mkdir -p $o"]
        lines.append(f"h=$( {{ {_read(task.inputs[0])}; }} | cksum | cut -d' ' -f1)")
        body = [f"echo tag {task.tag}"]
        body += [f'echo "{v}=${{{v}-unset}}"' for v in sorted(set(task.env) | set(self.graph_env))]
        body += [_read(p) for p in task.inputs[1:]]
        for dep_name in self.real_deps(task):
            for out in self.tasks[dep_name].outputs():
                body.append(f"tree {out}" if out.endswith("/d") else f"show {out}")
        lines.append("{ " + "; ".join(body) + "; } > $o/main")
        lines.append(f"chmod {task.main_mode:o} $o/main")
        lines.append("echo flag > $o/flag; if [ $((h % 2)) = 1 ]; then chmod 755 $o/flag; fi")
        if task.link:
            lines.append("echo zero > $o/t0; echo one > $o/t1; ln -s t$((h / 2 % 2)) $o/link")
        if task.directory:
            lines.append("mkdir -p $o/d/s; cp -p $o/main $o/d/a; ln -s a $o/d/l; echo s > $o/d/s/b; chmod 700 $o/d/s")
            lines.append("ln -s s $o/d/ls; if [ $((h / 8 % 2)) = 1 ]; then chmod +x $o/d/s/b; fi")
            lines.append("if [ $((h / 4 % 2)) = 1 ]; then mkdir $o/d/e; fi")
            lines.append(f"chmod {task.dir_mode:o} $o/d")
        return "\n".join(lines)

    def graph(self) -> dict:
        tasks: dict[str, dict] = {}
        for t in self.tasks.values():
            if t.group:
                tasks[t.name] = {"deps": t.deps}
            else:
                tasks[t.name] = {"command": self.command(t), "inputs": t.inputs, "deps": t.deps,
                                 "outputs": t.outputs(), "env": t.env}
                if not t.cache:
                    tasks[t.name]["cache"] = False
        return {"version": 1, "env": self.graph_env, "tasks": tasks}

    def outputs(self) -> list[str]:
        return sorted(out for t in self.tasks.values() for out in t.outputs())

    def describe(self) -> str:
        """The workspace in a few lines (a failure report's starting point; graph.json spells the commands)."""
        lines = [f"env {self.env}, graph env {self.graph_env}"]
        for path, src in sorted(self.sources.items()):
            lines.append(f"{path} -> {src.target}" if src.target is not None else
                         f"{path} {'0755' if src.executable else '0644'} {src.content!r}")
        for t in self.tasks.values():
            if t.group:
                lines.append(f"task {t.name}: group of {t.deps}")
                continue
            extra = (" link" if t.link else "") + (f" dir {t.dir_mode:o}" if t.directory else "") + (
                "" if t.cache else " uncached")
            lines.append(f"task {t.name}: inputs {t.inputs} deps {t.deps} env {t.env} tag {t.tag} "
                         f"main {t.main_mode:o}{extra}")
        return "\n".join(lines)

    # -- on disk ---------------------------------------------------------------------------------------------

    def write(self, root: Path) -> None:
        """Create the workspace at `root` (which must not exist yet)."""
        self.root = root
        root.mkdir(parents=True)
        for path in self.sources:
            self._write_source(path)
        self.write_graph()

    def write_graph(self) -> None:
        """Rewrite graph.json, only if it changed (an unchanged graph keeps its mtime, as in real life)."""
        text = json.dumps(self.graph(), indent=1)
        if text != self.written_graph:
            assert self.root is not None
            (self.root / "graph.json").write_text(text)
            self.written_graph = text

    def _write_source(self, path: str) -> None:
        assert self.root is not None
        src = self.sources[path]
        full = self.root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        if full.is_symlink() or full.exists():
            full.unlink()
        if src.target is not None:
            os.symlink(src.target, full)
        else:
            full.write_bytes(src.content)
            os.chmod(full, 0o755 if src.executable else 0o644)

    # -- what patterns match (gaffer's rules, for the patterns generated here) -----------------------------

    def matched(self, pattern: str) -> list[str]:
        """Files (and symlinks to files) the pattern matches in the model."""
        return [p for p in sorted(self.sources) if self._alive(p) and _matches(pattern, p)]

    def _alive(self, path: str) -> bool:
        src = self.sources[path]
        return src.target is None or posixpath.normpath(posixpath.join(posixpath.dirname(path), src.target)) in {
            p for p, s in self.sources.items() if s.target is None}

    def all_patterns_match(self) -> bool:
        return all(self.matched(p) for t in self.tasks.values() for p in t.inputs)


def _matches(pattern: str, path: str) -> bool:
    if pattern.startswith("src/**/*"):
        return path.endswith(pattern[len("src/**/*"):])
    if pattern.endswith("/**"):
        return path.startswith(pattern[:-2])
    if "/*" in pattern:
        directory, ext = pattern.split("/*")
        return posixpath.dirname(path) == directory and path.endswith(ext)
    return path == pattern or path.startswith(pattern + "/")


def _read(pattern: str) -> str:
    """Shell reading exactly the files gaffer resolves `pattern` to (for the pattern shapes made here)."""
    if pattern.startswith("src/**/*"):
        ext = pattern[len("src/**/*"):]
        return f"find src \\( -type f -o -type l \\) -name '*{ext}' | LC_ALL=C sort | while read -r f; do inp \"$f\"; done"
    if pattern.endswith("/**"):
        pattern = pattern[:-3]
    elif "/*" in pattern:
        return f'for f in {pattern}; do inp "$f"; done'
    if pattern in DIRS:
        return f"find {pattern} \\( -type f -o -type l \\) | LC_ALL=C sort | while read -r f; do inp \"$f\"; done"
    return f"inp {pattern}"


def _content(rng: random.Random) -> bytes:
    return (" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) + "\n").encode()


def _pattern(rng: random.Random, ws: Workspace) -> str:
    """A random input pattern that matches at least one file now."""
    while True:
        kind = rng.choice(["literal", "star", "dstar", "dir", "deep"])
        if kind == "literal":
            candidates = [p for p in ws.sources if ws._alive(p)]
            pattern = rng.choice(candidates)
        elif kind == "star":
            pattern = f"{rng.choice(DIRS)}/*{rng.choice(EXTS)}"
        elif kind == "dstar":
            pattern = f"{rng.choice(DIRS)}/**"
        elif kind == "dir":
            pattern = rng.choice(DIRS)
        else:
            pattern = f"src/**/*{rng.choice(EXTS)}"
        if ws.matched(pattern):
            return pattern


def _new_source_path(rng: random.Random, ws: Workspace, prefix: str) -> str:
    while True:
        path = f"{rng.choice(DIRS)}/{prefix}{rng.randint(0, 99)}{rng.choice(EXTS)}"
        if path not in ws.sources:
            return path


def _symlink_target(rng: random.Random, ws: Workspace, link: str) -> str:
    regular = sorted(p for p, s in ws.sources.items() if s.target is None)
    return posixpath.relpath(rng.choice(regular), posixpath.dirname(link))


def generate(rng: random.Random, uncached: float = 0.1) -> Workspace:
    """A random workspace (not yet on disk: call `write`); `uncached`: each task's chance of `"cache": false`."""
    ws = Workspace(sources={}, tasks={}, graph_env=[], env={})
    for _ in range(rng.randint(4, 9)):
        ws.sources[_new_source_path(rng, ws, "f")] = Source(_content(rng), rng.random() < 0.3)
    for _ in range(rng.randint(0, 3)):
        link = _new_source_path(rng, ws, "l")
        ws.sources[link] = Source(target=_symlink_target(rng, ws, link))
    ws.graph_env = rng.sample(ENV_NAMES, rng.randint(0, 1))
    ws.env = {v: rng.choice(WORDS + ("",)) for v in ENV_NAMES if rng.random() < 0.7}
    for i in range(rng.randint(2, 6)):
        names = list(ws.tasks)
        if names and rng.random() < 0.15:
            ws.tasks[f"g{i}"] = TaskSpec(f"g{i}", deps=rng.sample(names, rng.randint(1, len(names))), group=True)
            continue
        task = TaskSpec(f"t{i}", deps=rng.sample(names, rng.randint(0, min(2, len(names)))))
        task.inputs = [_pattern(rng, ws) for _ in range(rng.randint(1, 3))]
        task.env = rng.sample(ENV_NAMES, rng.randint(0, 2))
        task.main_mode = rng.choice(FILE_MODES)
        task.link = rng.random() < 0.5
        task.directory = rng.random() < 0.5
        task.dir_mode = rng.choice((0o755, 0o700))
        task.cache = rng.random() >= uncached
        ws.tasks[task.name] = task
    return ws


# -- edits -------------------------------------------------------------------------------------------------------
# Each returns a description, or None when it does not apply to this workspace (apply_edit then tries another).


def _regular(ws: Workspace) -> list[str]:
    return sorted(p for p, s in ws.sources.items() if s.target is None)


def _edit_content(rng: random.Random, ws: Workspace) -> str | None:
    path = rng.choice(_regular(ws))
    ws.sources[path].content = _content(rng)
    ws._write_source(path)
    return f"printf %s {ws.sources[path].content.decode()!r} > {path}"


def _edit_same_size_same_mtime(rng: random.Random, ws: Workspace) -> str | None:
    assert ws.root is not None
    path = rng.choice(_regular(ws))
    old = ws.sources[path].content
    new = bytes(reversed(old[:-1])) + b"\n" if old[:-1] != bytes(reversed(old[:-1])) else old.upper()
    if new == old:
        return None
    full = ws.root / path
    st = os.stat(full)
    with open(full, "r+b") as f:  # in place: same inode, same size, same mtime; only ctime tells
        f.write(new)
    os.utime(full, ns=(st.st_atime_ns, st.st_mtime_ns))
    ws.sources[path].content = new
    return f"printf %s {new.decode()!r} > {path} && touch -d @{st.st_mtime_ns / 1e9:.9f} {path}  # same size, mtime"


def _edit_exec_bit(rng: random.Random, ws: Workspace) -> str | None:
    path = rng.choice(_regular(ws))
    src = ws.sources[path]
    src.executable = not src.executable
    os.chmod(ws.root / path, 0o755 if src.executable else 0o644)  # type: ignore[operator]
    return f"chmod {'+' if src.executable else '-'}x {path}"


def _edit_symlink_target(rng: random.Random, ws: Workspace) -> str | None:
    links = sorted(p for p, s in ws.sources.items() if s.target is not None)
    if not links:
        return None
    link = rng.choice(links)
    ws.sources[link].target = _symlink_target(rng, ws, link)
    ws._write_source(link)
    return f"ln -sfn {ws.sources[link].target} {link}"


def _edit_add_file(rng: random.Random, ws: Workspace) -> str | None:
    if rng.random() < 0.3:
        path = _new_source_path(rng, ws, "l")
        ws.sources[path] = Source(target=_symlink_target(rng, ws, path))
        ws._write_source(path)
        return f"ln -s {ws.sources[path].target} {path}"
    path = _new_source_path(rng, ws, "f")
    ws.sources[path] = Source(_content(rng), rng.random() < 0.3)
    ws._write_source(path)
    return f"mkdir -p {posixpath.dirname(path)} && printf %s {ws.sources[path].content.decode()!r} > {path}" + (
        f" && chmod +x {path}" if ws.sources[path].executable else "")


def _edit_remove_file(rng: random.Random, ws: Workspace) -> str | None:
    path = rng.choice(sorted(ws.sources))
    removed = ws.sources.pop(path)
    literal = {p for t in ws.tasks.values() for p in t.inputs}
    if path in literal or not all(ws._alive(p) for p in ws.sources) or not ws.all_patterns_match():
        ws.sources[path] = removed  # it would break the graph (or a symlink): a different edit
        return None
    (ws.root / path).unlink()  # type: ignore[operator]
    return f"rm {path}"


def _edit_env(rng: random.Random, ws: Workspace) -> str | None:
    name = rng.choice(ENV_NAMES)
    if name in ws.env and rng.random() < 0.3:
        del ws.env[name]
        return f"unset {name}"
    ws.env[name] = rng.choice(WORDS + ("",))
    return f"export {name}={ws.env[name]!r}"


def _real_tasks(ws: Workspace) -> list[TaskSpec]:
    return [t for t in ws.tasks.values() if not t.group]


def _edit_command(rng: random.Random, ws: Workspace) -> str | None:
    task = rng.choice(_real_tasks(ws))
    task.tag += 1
    ws.write_graph()
    return f"graph: task {task.name}'s command prints tag {task.tag}"


def _edit_pattern(rng: random.Random, ws: Workspace) -> str | None:
    task = rng.choice(_real_tasks(ws))
    i = rng.randrange(len(task.inputs) + 1)
    pattern = _pattern(rng, ws)
    if i == len(task.inputs):
        task.inputs.append(pattern)
        what = f"graph: task {task.name} gets input {pattern!r}"
    elif len(task.inputs) > 1 and rng.random() < 0.3:
        what = f"graph: task {task.name} loses input {task.inputs.pop(i)!r}"
    else:
        what = f"graph: task {task.name}'s input {task.inputs[i]!r} becomes {pattern!r}"
        task.inputs[i] = pattern
    ws.write_graph()
    return what


def _edit_dep(rng: random.Random, ws: Workspace) -> str | None:
    names = list(ws.tasks)
    i = rng.randrange(1, len(names))
    task = ws.tasks[names[i]]
    if task.deps and rng.random() < 0.5:
        dep = rng.choice(task.deps)
        task.deps.remove(dep)
        what = f"graph: task {task.name} no longer depends on {dep}"
    else:
        candidates = [n for n in names[:i] if n not in task.deps]
        if not candidates:
            return None
        dep = rng.choice(candidates)
        task.deps.append(dep)
        what = f"graph: task {task.name} now depends on {dep}"
    if task.group and not task.deps:
        task.deps.append(dep)
        return None
    ws.write_graph()
    return what


def _edit_outputs(rng: random.Random, ws: Workspace) -> str | None:
    task = rng.choice(_real_tasks(ws))
    what = rng.choice(["link", "directory", "cache", "main_mode", "dir_mode"])
    if what in ("link", "directory", "cache"):
        setattr(task, what, not getattr(task, what))
    elif what == "main_mode":
        task.main_mode = rng.choice([m for m in FILE_MODES if m != task.main_mode])
    else:
        task.dir_mode = 0o700 if task.dir_mode == 0o755 else 0o755
    ws.write_graph()
    value = getattr(task, what)
    if what == "cache":
        return f"graph: task {task.name} {'loses' if value else 'gets'} \"cache\": false"
    return f"graph: task {task.name}'s {what} becomes {value:o}" if "mode" in what else \
        f"graph: task {task.name} {'gets' if value else 'loses'} its {what} output"


def _edit_stray_output(rng: random.Random, ws: Workspace) -> str | None:
    assert ws.root is not None
    dirs = [out for out in ws.outputs() if out.endswith("/d") and (ws.root / out).is_dir()]
    if not dirs:
        return None
    if rng.random() < 0.3:
        path = f"{rng.choice(dirs)}/new"
        (ws.root / path).mkdir()
        return f"mkdir {path}  # a stray empty directory in an output directory"
    path = f"{rng.choice(dirs)}/a.txt~"
    (ws.root / path).write_text("stray\n")
    return f"echo stray > {path}  # an editor's backup file in an output directory"


def _edit_output(rng: random.Random, ws: Workspace) -> str | None:
    assert ws.root is not None
    outs = [out for out in ws.outputs() if os.path.lexists(ws.root / out)]
    if not outs:
        return None
    out = rng.choice(outs)
    full = ws.root / out
    if rng.random() < 0.4:
        shutil.rmtree(full) if full.is_dir() and not full.is_symlink() else full.unlink()
        return f"rm -rf {out}"
    if full.is_symlink():
        target = "t1" if os.readlink(full) == "t0" else "t0"
        full.unlink()
        full.symlink_to(target)
        return f"ln -sfn {target} {out}"
    if full.is_dir():
        return None
    how = rng.choice(["content", "same size and mtime", "mode"])
    st = os.lstat(full)
    if how == "mode":
        os.chmod(full, st.st_mode ^ 0o111)
        return f"chmod {oct(st.st_mode ^ 0o111)[-3:]} {out}"
    old = full.read_bytes()
    new = b"tampered\n" if how == "content" else bytes(b ^ 1 for b in old[:-1]) + old[-1:]
    with open(full, "r+b") as f:
        f.truncate(0)
        f.write(new)
    if how == "content":
        return f"echo tampered > {out}"
    os.utime(full, ns=(st.st_atime_ns, st.st_mtime_ns))
    return f"flip the low bit of every byte but the last in {out}, keeping its size and mtime"


def _edit_state(rng: random.Random, ws: Workspace) -> str | None:
    assert ws.root is not None
    if rng.random() < 0.5:
        shutil.rmtree(ws.root / ".gaffer", ignore_errors=True)
        return "rm -rf .gaffer"
    shutil.rmtree(ws.root / "out", ignore_errors=True)
    return "rm -rf out"


EDITS = (_edit_content, _edit_content, _edit_same_size_same_mtime, _edit_exec_bit, _edit_exec_bit,
         _edit_symlink_target, _edit_add_file, _edit_remove_file, _edit_env, _edit_command, _edit_pattern,
         _edit_dep, _edit_outputs, _edit_stray_output, _edit_output, _edit_state)


# The edits of files alone: the graph, the environment and gaffer's state stay as they were.
FILE_EDITS = (_edit_content, _edit_same_size_same_mtime, _edit_exec_bit, _edit_symlink_target, _edit_add_file,
              _edit_remove_file, _edit_stray_output, _edit_output)


def apply_edit(rng: random.Random, ws: Workspace, edits: tuple[Callable[[random.Random, Workspace], str | None], ...]
               = EDITS) -> str:
    """Make one random edit (of `edits`) to the workspace on disk (and in the model); say what it was."""
    while True:
        what = rng.choice(edits)(rng, ws)
        if what is not None:
            return what


def copy_sources(root: Path, dest: Path) -> None:
    """A fresh checkout of the workspace: everything but gaffer's state and the outputs, modes and symlinks kept."""
    shutil.copytree(root, dest, symlinks=True,
                    ignore=lambda d, names: [n for n in names if Path(d) == root and n in (".gaffer", "out")])


def snapshot(root: Path, outputs: list[str]) -> dict[str, tuple]:
    """Everything a user can see of the declared outputs: kind, full mode, bytes, symlink targets, every entry of
    an output directory (empty subdirectories included)."""
    seen: dict[str, tuple] = {}

    def visit(rel: str) -> None:
        full = root / rel
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            seen[rel] = ("missing",)
            return
        if os.path.islink(full):
            seen[rel] = ("symlink", os.readlink(full))
        elif full.is_dir():
            seen[rel] = ("dir", oct(st.st_mode & 0o7777))
            for name in sorted(os.listdir(full)):
                visit(f"{rel}/{name}")
        else:
            seen[rel] = ("file", oct(st.st_mode & 0o7777), full.read_bytes())

    for out in outputs:
        visit(out)
    return seen
