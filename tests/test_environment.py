"""The environment a task sees: exactly its declared (keyed) variables, its pass-through ones, and gaffer's own;
never the rest of the caller's environment. Through the real CLI, with real processes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import gaffer_env, run_gaffer, summary

SHOW_ENV = "env | sort > seen.txt"  # `env` lists exactly what the task's shell was given (plus what sh sets)


def _workspace(tmp_path: Path, task: dict, top: dict | None = None) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({**(top or {}), "tasks": {"show": {"outputs": ["seen.txt"], **task}}}))
    return ws


def _seen(ws: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (ws / "seen.txt").read_text().splitlines() if "=" in line)


def test_a_task_sees_declared_pass_through_and_gaffers_own_variables_only(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, {"command": SHOW_ENV, "env": ["KEYED"], "pass_env": ["PASSED"]})
    env = gaffer_env(tmp_path / "cache", KEYED="k", PASSED="p", UNDECLARED="u", HOME=str(tmp_path))
    run_gaffer(["run"], cwd=ws, env=env, check=True)
    seen = _seen(ws)
    assert seen["KEYED"] == "k" and seen["PASSED"] == "p"
    assert seen["PATH"] == env["PATH"] and seen["HOME"] == str(tmp_path)  # the default pass-through variables
    assert "UNDECLARED" not in seen
    assert seen["GAFFER_WORKSPACE_LOCK"] and seen["GAFFER_TASK_RUN"]  # gaffer's own, for nested runs
    assert not {"GAFFER_CACHE_DIR", "XDG_CONFIG_HOME"} & seen.keys()  # the caller's, not declared


def test_pass_through_values_are_not_in_the_key(tmp_path: Path) -> None:
    """Another value of a pass-through variable (or of HOME) is the same key: a cache hit, not a re-run; another
    value of a declared one is a new key."""
    ws = _workspace(tmp_path, {"command": "echo $KEYED > seen.txt", "env": ["KEYED"]}, {"pass_env": ["PASSED"]})
    out = tmp_path / "summary.json"
    run = ["run", "--summary-json", str(out)]
    cache = tmp_path / "cache"
    run_gaffer(run, cwd=ws, env=gaffer_env(cache, KEYED="1", PASSED="a", HOME="/one"), check=True)
    (ws / ".gaffer").rename(tmp_path / "state-1")  # forget the workspace state: only the key decides
    run_gaffer(run, cwd=ws, env=gaffer_env(cache, KEYED="1", PASSED="b", HOME="/two"), check=True)
    assert summary(out)["status"] == {"show": "cached"}
    run_gaffer(run, cwd=ws, env=gaffer_env(cache, KEYED="2", PASSED="b", HOME="/two"), check=True)
    assert summary(out)["status"] == {"show": "executed"}


def test_a_variable_both_keyed_and_passed_through_is_a_graph_error(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, {"command": SHOW_ENV, "pass_env": ["CC"]}, {"env": ["CC"]})
    proc = run_gaffer(["run"], cwd=ws, env=gaffer_env(tmp_path / "cache"))
    assert proc.returncode == 2
    assert proc.stderr == ("gaffer: graph.json: task 'show': variable 'CC' is in both 'env' (keyed) and 'pass_env' "
                           "(not keyed); keep it in one\n")
