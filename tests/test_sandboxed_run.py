"""`gaffer run --sandbox` and `"sandbox": true` through the real CLI: a task sees only its declared inputs and its
deps' outputs, makes the outputs a workspace run makes, shares its cache key with one, and stops on Ctrl-C
without leaving its exec root behind."""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import NOBODY, alive, gaffer_env, require, run_gaffer, summary, unprivileged, wait_for

# Outputs of every kind: a file with unusual modes, a symlink, a directory with a subdirectory, an empty one, a
# read-only one; the dependent reads the dep's outputs, a declared source and (only when told) an undeclared one.
GRAPH = {
    "tasks": {
        "gen": {"command": "mkdir -p out/d/sub out/d/empty out/ro && cat src/a.txt > out/a && chmod 750 out/a && "
                           "ln -s a out/l && echo x > out/d/sub/x && ln -s sub/x out/d/link && chmod 700 out/d/sub && "
                           "echo r > out/ro/r && chmod 444 out/ro/r && chmod 555 out/ro && echo gen-said",
                "inputs": ["src/a.txt"], "outputs": ["out/a", "out/l", "out/d", "out/ro"]},
        "use": {"command": "cat out/a out/l out/d/link out/ro/r src/b.txt > used && chmod +x used",
                "deps": ["gen"], "inputs": ["src/b.txt"], "outputs": ["used"]},
    }
}


def workspace(root: Path, graph: dict = GRAPH) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.txt").write_text("alpha\n")
    (root / "src" / "b.txt").write_text("beta\n")
    (root / "src" / "secret.txt").write_text("undeclared\n")
    (root / "graph.json").write_text(json.dumps(graph))
    return root


def build(ws: Path, env: dict[str, str], *args: str, expect: int = 0) -> dict:
    out = ws.parent / f"{ws.name}-summary.json"
    proc = run_gaffer(["run", *args, "--summary-json", str(out)], cwd=ws, env=env)
    assert proc.returncode == expect, proc.stderr
    result = summary(out)
    result["reasons"] = {t["name"]: t["reason"] for t in result["tasks"]}
    result["stderr"], result["stdout"] = proc.stderr, proc.stdout
    return result


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every path below `root` (the outputs): its kind, permission bits and content or link target."""
    found: dict[str, tuple[str, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            else:
                found[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return found


def outputs_of(ws: Path) -> dict[str, tuple[str, int, bytes | str]]:
    return {**{f"out/{k}": v for k, v in snapshot(ws / "out").items()},
            "used": ("file", stat.S_IMODE(os.stat(ws / "used").st_mode), (ws / "used").read_bytes())}


def exec_roots(ws: Path) -> list[str]:
    sandbox = ws / ".gaffer" / "sandbox"
    return sorted(os.listdir(sandbox)) if sandbox.exists() else []


def with_secret(graph: dict, **task_fields: object) -> dict:
    """GRAPH whose `use` also reads src/secret.txt without declaring it."""
    tasks = json.loads(json.dumps(graph["tasks"]))
    tasks["use"]["command"] = tasks["use"]["command"].replace("src/b.txt", "src/b.txt src/secret.txt")
    tasks["use"].update(task_fields)
    return {"tasks": tasks}


@pytest.mark.parametrize("how", ["flag", "variable", "gaffer.toml", "task"])
def test_an_undeclared_input_fails_in_the_sandbox_and_not_without(tmp_path: Path, how: str) -> None:
    env = gaffer_env(tmp_path / "cache")
    ws = workspace(tmp_path / "ws", with_secret(GRAPH, **({"sandbox": True} if how == "task" else {})))
    args = ["--sandbox"] if how == "flag" else []
    if how == "variable":
        env["GAFFER_SANDBOX"] = "1"
    if how == "gaffer.toml":
        (ws / "gaffer.toml").write_text("[run]\nsandbox = true\n")
    failed = build(ws, env, *args, expect=1)
    assert failed["status"] == {"gen": "executed", "use": "failed"}
    assert failed["reasons"]["use"] == "exited with status 1"
    assert "src/secret.txt: No such file or directory" in failed["stderr"]
    assert not (ws / "used").exists()
    assert exec_roots(ws) == []  # removed after the failure: nobody asked to keep it

    if how == "task":  # the task itself asks for the sandbox: declare what it reads instead
        (ws / "graph.json").write_text(json.dumps(with_secret(GRAPH, sandbox=True, inputs=["src/*.txt"])))
        assert build(ws, env)["status"]["use"] == "executed"
    else:
        env.pop("GAFFER_SANDBOX", None)
        (ws / "gaffer.toml").unlink(missing_ok=True)
        assert build(ws, env)["status"]["use"] == "executed"
    assert (ws / "used").read_text() == "alpha\nalpha\nx\nr\nbeta\nundeclared\n"


def test_sandboxed_outputs_equal_a_workspace_runs_byte_for_byte(tmp_path: Path) -> None:
    plain, boxed = workspace(tmp_path / "plain"), workspace(tmp_path / "boxed")
    plain_run = build(plain, gaffer_env(tmp_path / "cache-plain"))
    result = build(boxed, gaffer_env(tmp_path / "cache-boxed"), "--sandbox")
    assert result["status"] == plain_run["status"] == {"gen": "executed", "use": "executed"}
    assert result["stdout"] == plain_run["stdout"] == "gen-said\n"  # its log shown as a workspace run's is
    made = outputs_of(boxed)
    assert made == outputs_of(plain)
    assert made["out/a"][1] == 0o750 and made["out/ro"][1] == 0o555 and made["out/d/sub"][1] == 0o700
    assert made["out/l"] == ("link", 0, "a") and made["out/d/empty"][0] == "dir"
    assert exec_roots(boxed) == []


@pytest.mark.parametrize("first,second", [(["--sandbox"], []), ([], ["--sandbox"])], ids=["boxed-then-plain",
                                                                                            "plain-then-boxed"])
def test_the_sandbox_is_not_in_the_key(tmp_path: Path, first: list[str], second: list[str]) -> None:
    env = gaffer_env(tmp_path / "cache")
    ws = workspace(tmp_path / "ws")
    assert build(ws, env, *first)["status"] == {"gen": "executed", "use": "executed"}
    made = outputs_of(ws)
    run_gaffer(["clean"], cwd=ws, env=env, check=True)
    again = build(ws, env, *second)
    assert again["status"] == {"gen": "cached", "use": "cached"}
    assert set(again["reasons"].values()) == {"restored from the cache"}
    assert outputs_of(ws) == made
    assert build(ws, env, *first)["reasons"] == {"gen": "up to date", "use": "up to date"}


def test_a_failed_exec_root_is_kept_when_asked_and_named(tmp_path: Path) -> None:
    env = gaffer_env(tmp_path / "cache", GAFFER_SANDBOX_KEEP="1")
    ws = workspace(tmp_path / "ws", with_secret(GRAPH))
    failed = build(ws, env, "--sandbox", expect=1)
    [kept] = exec_roots(ws)
    root = ws / ".gaffer" / "sandbox" / kept
    assert failed["reasons"]["use"] == f"exited with status 1 (its exec root is kept in {root})"
    assert (root / "src" / "b.txt").read_text() == "beta\n" and (root / "out" / "a").read_text() == "alpha\n"
    assert not (root / "src" / "secret.txt").exists()


def test_a_bad_sandbox_field_is_one_line(tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws", {"tasks": {"t": {"command": "true", "sandbox": "yes"}}})
    proc = run_gaffer(["run"], cwd=ws, env=gaffer_env(tmp_path / "cache"))
    assert proc.returncode == 2
    expected = "gaffer: graph.json: task 't': field 'sandbox' must be true or false, got a string"
    assert proc.stderr.strip().splitlines() == [expected]


def test_ctrl_c_stops_a_sandboxed_task_and_removes_its_exec_root(tmp_path: Path) -> None:
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    ws = workspace(tmp_path / "ws", {"tasks": {
        "long": {"command": f"echo $$ > {fifo}; exec sleep 60", "outputs": ["never"]},  # an absolute path: the host's
    }})
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened first, so the task's write does not block
    try:
        proc = subprocess.Popen([sys.executable, "-m", "gaffer", "run", "--sandbox"], cwd=ws,
                                env=gaffer_env(tmp_path / "cache"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        assert select.select([reader], [], [], 60)[0], "the task never started"
        pid = int(os.read(reader, 100).decode().strip())
    finally:
        os.close(reader)
    assert len(exec_roots(ws)) == 1  # it runs in there now
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "long: interrupted" in err
    assert exec_roots(ws) == []
    assert not Path(f"/proc/{pid}").exists()  # killed with its group, and reaped, before gaffer exits


def test_exec_roots_a_killed_gaffer_left_are_removed_by_the_next_sandboxed_build(tmp_path: Path) -> None:
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    ws = workspace(tmp_path / "ws", {"tasks": {
        "long": {"command": f"echo $$ > {fifo}; exec sleep 60", "outputs": ["never"]},
        "fails": {"command": "echo made > out; false", "outputs": ["out"]},
    }})
    env = gaffer_env(tmp_path / "cache")
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "gaffer", "run", "--sandbox", "long"], cwd=ws, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert select.select([reader], [], [], 60)[0], "the task never started"
        pid = int(os.read(reader, 100).decode().strip())
    finally:
        os.close(reader)
    proc.kill()  # SIGKILL: nothing of gaffer runs to remove the exec root
    proc.communicate(timeout=60)
    os.kill(pid, signal.SIGKILL)  # the task it left running (the next build would wait for it)
    wait_for(lambda: not alive(pid), "the orphaned task to end")  # a zombie if this process is a subreaper
    [left] = exec_roots(ws)

    result = build(ws, {**env, "GAFFER_SANDBOX_KEEP": "1"}, "--sandbox", "fails", expect=1)
    [kept] = exec_roots(ws)
    assert kept != left and f"its exec root is kept in {ws / '.gaffer' / 'sandbox' / kept})" in result["stderr"]
    build(ws, env, "--sandbox", "fails", expect=1)
    assert exec_roots(ws) == [kept], "kept when asked, until the user removes it"


def test_a_leftover_exec_root_that_cannot_be_removed_is_one_warning(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "giving a leftover exec root another user's directory needs root")
    ws = workspace(tmp_path / "ws", {"tasks": {"t": {"command": "echo made > out", "outputs": ["out"]}}})
    for n in (1, 2):
        theirs = ws / ".gaffer" / "sandbox" / f"exec-left{n}" / "theirs"
        theirs.mkdir(parents=True)
        (theirs / "f").write_text("x")
        os.chown(theirs, NOBODY, NOBODY)  # gaffer, as any user, may neither chmod it nor remove what it holds
    proc = subprocess.run([*unprivileged(("dac_override", "dac_read_search", "fowner")), sys.executable, "-m",
                           "gaffer", "run", "--sandbox"], cwd=ws, env=gaffer_env(tmp_path / "cache"),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("gaffer: warning: ")]
    sandbox = ws / ".gaffer" / "sandbox"
    expected = (f"gaffer: warning: cannot remove 2 exec root(s) a killed gaffer left in {sandbox} ({sandbox}"
                "/exec-left1/theirs: Operation not permitted): remove them by hand")
    assert warnings == [expected], proc.stderr
    assert (ws / "out").read_text() == "made\n"
