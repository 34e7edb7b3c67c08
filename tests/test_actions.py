"""The actions `gaffer run` stores are complete REAPI actions: the Action, its Command and every input-root
Directory are in the CAS, reading them back gives the task's argv, environment, outputs and inputs, and the
sandboxed executor runs one from the CAS alone as the local executor runs it in the workspace."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gaffer.cache.disk import DiskStore
from gaffer.digest import StatCache, file_system_now
from gaffer.execute.base import task_environment
from gaffer.execute.local import LocalExecutor, ProcessRunner
from gaffer.execute.sandbox import run_action
from gaffer.graph import load_graph
from gaffer.keys import KeyBuilder
from gaffer.plan import make_plan
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.state import STATE_DIR, WorkspaceState
from gaffer.tools import Toolchain
from tests.support import gaffer_env, run_gaffer

GRAPH = {
    "pass_env": ["TMPDIR"],
    "tasks": {
        "gen": {"command": "mkdir -p out && cat src/a.txt > out/a.txt", "inputs": ["src/a.txt"],
                "outputs": ["out/a.txt"]},
        "use": {"command": [["sh", "-c", "cat out/a.txt src/lib/b.sh > out/b.txt"]], "deps": ["gen"],
                "inputs": ["src/lib/b.sh"], "outputs": ["out/b.txt"], "env": ["FLAVOUR"],
                "timeout": 60},
    },
}


def _blob(cache: Path, digest: re_pb2.Digest) -> bytes:
    data = (cache / "cas" / digest.hash[:2] / digest.hash).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest.hash and len(data) == digest.size_bytes
    return data


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _tree(cache: Path, digest: re_pb2.Digest, prefix: str = "") -> dict[str, tuple[str, bool]]:
    """Every file below the Directory `digest`, read from the CAS: path -> (content hash, executable)."""
    directory = re_pb2.Directory.FromString(_blob(cache, digest))
    files = {f"{prefix}{f.name}": (f.digest.hash, f.is_executable) for f in directory.files}
    for d in directory.directories:
        files.update(_tree(cache, d.digest, f"{prefix}{d.name}/"))
    return files


def test_the_cas_holds_a_runnable_action(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "src" / "lib").mkdir(parents=True)
    (ws / "src" / "a.txt").write_text("alpha\n")
    (ws / "src" / "lib" / "b.sh").write_text("echo beta\n")
    (ws / "src" / "lib" / "b.sh").chmod(0o755)
    (ws / "graph.json").write_text(json.dumps(GRAPH))
    cache = tmp_path / "remote"  # what a remote tier receives (a local cache alone needs no Action blobs)
    run_gaffer(["run", "--cache", f"disk://{cache}"], cwd=ws,
               env=gaffer_env(tmp_path / "cache", FLAVOUR="sour", TMPDIR=str(tmp_path)), check=True)

    key = WorkspaceState.load(ws / STATE_DIR).tasks["use"].key
    action_data = (cache / "cas" / key[:2] / key).read_bytes()
    assert hashlib.sha256(action_data).hexdigest() == key  # the key is the Action's digest, and it is stored
    action = re_pb2.Action.FromString(action_data)
    command = re_pb2.Command.FromString(_blob(cache, action.command_digest))
    assert list(command.arguments) == ["sh", "-c", "cat out/a.txt src/lib/b.sh > out/b.txt"]
    assert [(v.name, v.value) for v in command.environment_variables] == [("FLAVOUR", "sour")]  # no TMPDIR, PATH
    assert list(command.output_paths) == ["out/b.txt"] and command.working_directory == ""
    assert action.timeout.seconds == 60
    assert {p.name for p in action.platform.properties} == {"OSFamily", "ISA"}
    assert _tree(cache, action.input_root_digest) == {
        "src/lib/b.sh": (sha("echo beta\n"), True),
        "out/a.txt": (sha("alpha\n"), False),  # a dep's output
    }
    assert _blob(cache, re_pb2.Digest(hash=sha("alpha\n"), size_bytes=6)) == b"alpha\n"  # in the CAS already


def test_a_prepared_action_runs_the_same_from_the_cas_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The key builder's action, stored with its source files, runs on the sandboxed executor reading only the
    CAS and gives the ActionResult a local run in the workspace gives (timestamps aside)."""
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "a.txt").write_text("alpha\n")
    (ws / "graph.json").write_text(json.dumps({"tasks": {"t": {
        "command": "mkdir -p out/d && cat src/a.txt > out/d/a && chmod 640 out/d/a && echo $FLAVOUR > out/f "
                   "&& echo done",
        "inputs": ["src"], "outputs": ["out/d", "out/f"], "env": ["FLAVOUR"]}}}))
    graph = load_graph(ws / "graph.json")
    toolchain = Toolchain(ws, ws / STATE_DIR)
    stat_cache = StatCache()
    stat_cache.moment = file_system_now(ws / STATE_DIR)
    planned = make_plan(graph, ["t"], toolchain).tasks["t"]
    monkeypatch.setenv("FLAVOUR", "sour")
    action = KeyBuilder(ws, graph.platform, stat_cache, toolchain).key(planned, {}).action
    monkeypatch.setenv("FLAVOUR", "sweet")  # the Command's value is what both executors run with
    cas = DiskStore(tmp_path / "cas")
    action.store(cas)
    for source in action.sources:
        assert cas.put_file(ws / source.path) == source.digest

    sandboxed = run_action(action.digest, cas, tmp_path / "work", task_environment((), planned.task.pass_env),
                           ProcessRunner())
    local = LocalExecutor(ws, cas).execute(action, planned.task.pass_env)
    assert sandboxed.failure == local.failure == ""
    from_cas, in_workspace = sandboxed.result, re_pb2.ActionResult.FromString(local.action_result)
    for result in (from_cas, in_workspace):
        result.ClearField("execution_metadata")
    assert from_cas == in_workspace
    assert [d.path for d in from_cas.output_directories] == ["out/d"] and from_cas.output_files[0].path == "out/f"
    assert (ws / "out" / "f").read_text() == "sour\n"


def test_a_tasks_logs_come_back_whole_whatever_their_size(tmp_path: Path) -> None:
    """The local executor's logs (anonymous files, read when the command ends): empty, small and bigger than
    any one read, stdout and stderr apart."""
    ws = tmp_path / "ws"
    ws.mkdir()
    big = 300_000
    graph = {"tasks": {"t": {"command": f"head -c {big} /dev/zero | tr '\\0' x; echo err >&2; touch out",
                             "outputs": ["out"]}}}
    (ws / "graph.json").write_text(json.dumps(graph))
    g = load_graph(ws / "graph.json")
    stat_cache = StatCache()
    stat_cache.moment = file_system_now(ws / STATE_DIR)
    keys = KeyBuilder(ws, g.platform, stat_cache, Toolchain(ws, ws / STATE_DIR))
    plan = make_plan(g, ["t"], keys.toolchain)
    action = keys.key(plan.tasks["t"], {}).action
    result = LocalExecutor(ws, DiskStore(tmp_path / "cache")).execute(action, plan.tasks["t"].task.pass_env)
    assert not result.failure and result.stdout == b"x" * big and result.stderr == b"err\n"
