"""`gaffer run` end to end on small real graphs: real processes, a real on-disk cache, the real CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import alive, gaffer_env, run_gaffer, summary

CHAIN = {
    "tasks": {
        "gen": {"command": "mkdir -p out && cat src/a.txt > out/a.txt && echo gen-stdout && echo gen-stderr >&2",
                "inputs": ["src/a.txt"], "outputs": ["out/a.txt"]},
        "mid": {"command": ["sh", "-c", "cat out/a.txt src/b.txt > out/b.txt"], "deps": ["gen"],
                "inputs": ["src/b.txt"], "outputs": ["out/b.txt"], "env": ["FLAVOUR"]},
        "top": {"command": ["cat out/b.txt > out/c.txt", ["chmod", "+x", "out/c.txt"]], "deps": ["mid"],
                "inputs": ["src/c/**/*.txt"], "outputs": ["out/c.txt"]},
        "side": {"command": "mkdir -p out/dir/sub && echo x > out/dir/sub/x && ln -sf sub/x out/dir/link",
                 "inputs": ["src/a.txt"], "outputs": ["out/dir"]},
        "all": {"deps": ["top", "side"]},
    }
}


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src" / "c" / "deep").mkdir(parents=True)
    (root / "src" / "a.txt").write_text("alpha\n")
    (root / "src" / "b.txt").write_text("beta\n")
    (root / "src" / "c" / "deep" / "c.txt").write_text("gamma\n")
    (root / "graph.json").write_text(json.dumps(CHAIN))
    return root


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return gaffer_env(tmp_path / "cache")


def build(ws: Path, env: dict[str, str], *args: str, expect: int = 0) -> dict:
    out = ws / "summary.json"
    proc = run_gaffer(["run", *args, "--summary-json", str(out), "-j", "2"], cwd=ws, env=env)
    assert proc.returncode == expect, proc.stderr
    result = summary(out)
    result["stderr"] = proc.stderr
    result["stdout"] = proc.stdout
    return result


def reasons(result: dict) -> dict[str, str]:
    return {t["name"]: t["reason"] for t in result["tasks"]}


def outputs(ws: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ws)): p.read_bytes() for p in sorted((ws / "out").rglob("*")) if p.is_file()}


def test_cold_then_warm_then_restore_byte_identical(ws: Path, env: dict[str, str]) -> None:
    cold = build(ws, env, "all")
    assert cold["executed"] == 4 and cold["cached"] == 0
    assert set(cold["status"].values()) == {"executed"} and "all" not in cold["status"]
    assert "gen-stdout" in cold["stdout"] and "gen-stderr" in cold["stderr"]
    log = cold["stderr"]  # a task's output comes after its start line and before its end line
    assert log.index("Starting gen\n") < log.index("gen-stderr\n") < log.index("Completed gen (")
    made = outputs(ws)

    warm = build(ws, env, "all")
    assert warm["cached"] == 4 and warm["executed"] == 0 and warm["hit_rate"] == 1.0

    for p in sorted((ws / "out").rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
    restored = build(ws, env, "all")
    assert restored["cached"] == 4 and restored["executed"] == 0
    assert outputs(ws) == made
    assert os.access(ws / "out" / "c.txt", os.X_OK)
    assert os.readlink(ws / "out" / "dir" / "link") == "sub/x"
    assert "gen-stdout" in restored["stdout"] and "gen-stderr" in restored["stderr"], "a hit replays the logs"


def test_edit_reruns_only_dependents_and_explains(ws: Path, env: dict[str, str]) -> None:
    build(ws, env, "all")
    (ws / "src" / "b.txt").write_text("beta 2\n")
    result = build(ws, env, "all")
    assert result["status"] == {"gen": "cached", "mid": "executed", "top": "executed", "side": "cached"}
    assert "input src/b.txt changed" in reasons(result)["mid"]
    assert "dependency mid" in reasons(result)["top"]
    assert (ws / "out" / "c.txt").read_text() == "alpha\nbeta 2\n"


def test_the_stat_cache_holds_inputs_only_and_an_edit_rewrites_only_their_shards(ws: Path, env: dict[str, str]) -> None:
    """Outputs are keyed from the build log's records, never read through the stat cache: an edit build that
    re-runs many tasks must not read and write back the stat cache's shards for them."""
    from gaffer.shards import decode, shard_of, shard_path

    stats = ws / ".gaffer" / "stats"

    def entries() -> set[str]:
        return {key for f in stats.iterdir() for key in decode(f.read_bytes()) if key.startswith(f"{ws}/")}  # and tools

    def shard_files() -> dict[str, tuple[int, int]]:
        return {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in stats.iterdir()}

    inputs = {f"{ws}/src/a.txt", f"{ws}/src/b.txt", f"{ws}/src/c/deep/c.txt"}
    build(ws, env, "all")
    assert entries() == inputs
    before = shard_files()
    (ws / "src" / "b.txt").write_text("beta 2\n")
    result = build(ws, env, "all")
    assert result["status"] == {"gen": "cached", "mid": "executed", "top": "executed", "side": "cached"}
    assert entries() == inputs
    after = shard_files()
    assert {name for name in after if after[name] != before.get(name)} == {
        os.path.basename(shard_path(str(stats), shard_of(f"{ws}/src/b.txt")))}


# What a local build has no use for: remote-execution and remote-tier clients, and the standard-library
# modules only some builds need (a remote tier's thread pools and URLs, a mistake's suggestions, --summary-json,
# removing a directory, OpenSSL's SHA-256 for large files).
NOT_FOR_A_LOCAL_BUILD = ("grpc", "google.protobuf", "concurrent.futures", "logging", "dataclasses", "inspect",
                         "difflib", "json", "platform", "tempfile", "textwrap", "shutil", "hashlib", "_hashlib",
                         "gaffer.cache.urls")


@pytest.mark.parametrize("change", ["edit", "none", "outputs-removed"], ids=["one-task-edit", "no-op", "restore"])
def test_a_local_edit_build_imports_only_what_it_uses(ws: Path, env: dict[str, str], change: str) -> None:
    build(ws, env, "all")
    if change == "edit":
        (ws / "src" / "c" / "deep" / "c.txt").write_text("gamma 2\n")  # `top` alone runs again
    elif change == "outputs-removed":
        shutil.rmtree(ws / "out")  # every task is restored from the cache
    code = ("import sys; from gaffer.cli import main; status = main(['run', 'all', '-j', '2']); "
            f"print(status, sorted(m for m in {NOT_FOR_A_LOCAL_BUILD!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ws, env=env, capture_output=True, text=True, timeout=60,
                          check=True)
    assert proc.stdout.splitlines()[-1] == "0 []", proc.stdout + proc.stderr  # after a restored task's own output
    assert ("1 executed" in proc.stderr) == (change == "edit"), proc.stderr
    assert ("Completed top (cached" in proc.stderr) == (change == "outputs-removed"), proc.stderr
    assert (ws / "out" / "c.txt").read_text() == "alpha\nbeta\n"  # `top` copies out/b.txt, which is unchanged


def test_each_action_s_own_blobs_go_where_something_reads_them(ws: Path, env: dict[str, str], tmp_path: Path) -> None:
    """A task run in the workspace reads nothing of its Action, Command and input-root Directories: a build with
    a local cache alone does not store them; with a remote tier every one is uploaded beside the result (an
    executor there can run the action), and `--sandbox`, which runs the action from the CAS, stores them."""
    from gaffer.protos import remote_execution_pb2 as re_pb2

    def keys(cache: Path) -> list[str]:
        return sorted(p.name for p in (cache / "ac").glob("*/*"))

    def blob(cache: Path, blob_hash: str) -> Path:
        return cache / "cas" / blob_hash[:2] / blob_hash

    def action_blobs(cache: Path, key: str) -> list[Path]:
        action = re_pb2.Action.FromString(blob(cache, key).read_bytes())
        found, pending = [blob(cache, key), blob(cache, action.command_digest.hash)], [action.input_root_digest.hash]
        while pending:
            found.append(blob(cache, pending.pop()))
            pending += [d.digest.hash for d in re_pb2.Directory.FromString(found[-1].read_bytes()).directories]
        return found

    build(ws, env, "all")
    local = Path(env["GAFFER_CACHE_DIR"])
    assert len(keys(local)) == 4 and not any(blob(local, key).exists() for key in keys(local))
    remote = tmp_path / "remote"
    run_gaffer(["clean"], cwd=ws, env=env, check=True)
    build(ws, {**env, "GAFFER_CACHE_DIR": str(tmp_path / "other")}, "all", "--cache", f"disk://{remote}")
    assert keys(remote) == keys(local)
    for key in keys(remote):
        assert all(path.is_file() for path in action_blobs(remote, key)), key
    sandboxed = {**env, "GAFFER_CACHE_DIR": str(tmp_path / "sandboxed")}
    run_gaffer(["clean"], cwd=ws, env=env, check=True)
    build(ws, sandboxed, "all", "--sandbox")
    for key in keys(tmp_path / "sandboxed"):
        assert all(path.is_file() for path in action_blobs(tmp_path / "sandboxed", key)), key


def test_new_file_matching_a_glob_reruns(ws: Path, env: dict[str, str]) -> None:
    build(ws, env, "all")
    (ws / "src" / "c" / "new.txt").write_text("new\n")
    result = build(ws, env, "top")
    assert result["status"]["top"] == "executed"
    assert "input src/c/new.txt was added" in reasons(result)["top"]


def test_mtime_only_change_never_reruns(ws: Path, env: dict[str, str]) -> None:
    build(ws, env, "all")
    later = time.time() + 10
    os.utime(ws / "src" / "a.txt", (later, later))
    result = build(ws, env, "all")
    assert result["executed"] == 0 and result["cached"] == 4


def test_declared_env_value_changes_the_key(ws: Path, env: dict[str, str]) -> None:
    build(ws, env, "all")
    result = build(ws, {**env, "FLAVOUR": "spicy"}, "all")
    assert result["status"] == {"gen": "cached", "mid": "executed", "top": "cached", "side": "cached"}
    assert "env FLAVOUR changed (unset -> 'spicy')" in reasons(result)["mid"]
    undeclared = build(ws, {**env, "FLAVOUR": "spicy", "UNDECLARED": "x"}, "all")
    assert undeclared["executed"] == 0
    back = build(ws, env, "all")  # back to unset: the first key again, restored from the cache
    assert back["status"]["mid"] == "cached"


def test_corrupt_blob_is_detected_reported_and_rebuilt(ws: Path, env: dict[str, str], tmp_path: Path) -> None:
    build(ws, env, "gen")
    made = (ws / "out" / "a.txt").read_bytes()
    blobs = [p for p in (tmp_path / "cache" / "cas").rglob("*") if p.is_file() and p.read_bytes() == made]
    assert blobs, "the output is stored as a plain blob file"
    blobs[0].write_bytes(b"corrupted!")
    (ws / "out" / "a.txt").unlink()
    result = build(ws, env, "gen")
    assert "corrupt cache blob" in result["stderr"]
    assert result["status"]["gen"] == "executed"
    assert (ws / "out" / "a.txt").read_bytes() == made
    verify = run_gaffer(["cache", "verify"], cwd=ws, env=env)
    assert verify.returncode == 0 and "0 corrupt" in verify.stdout


def test_failure_stops_build_skips_dependents_and_is_not_cached(tmp_path: Path, env: dict[str, str]) -> None:
    ws = tmp_path / "fail"
    ws.mkdir()
    graph = {"tasks": {
        "bad": {"command": "echo broken >&2; exit 3", "outputs": []},
        "after": {"command": "touch after", "deps": ["bad"], "outputs": ["after"]},
        "other": {"command": "touch other", "outputs": ["other"]},
    }}
    (ws / "graph.json").write_text(json.dumps(graph))
    result = build(ws, env, "-k", expect=1)
    assert result["status"] == {"bad": "failed", "after": "skipped", "other": "executed"}
    assert "exited with status 3" in result["stderr"] and "broken" in result["stderr"]
    again = build(ws, env, "bad", expect=1)
    assert again["status"]["bad"] == "failed", "a failure is never cached"


def test_missing_declared_output_fails_clearly(tmp_path: Path, env: dict[str, str]) -> None:
    ws = tmp_path / "missing"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({"t": {"command": "true", "outputs": ["never/made.txt"]}}))
    result = build(ws, env, expect=1)
    assert result["status"] == {"t": "failed"}
    assert "declared output 'never/made.txt' was not created by the task" in result["stderr"]


def test_a_local_cache_inside_a_declared_output_is_refused(tmp_path: Path) -> None:
    """gaffer removes an output before its task runs: a cache in it would be emptied, then stored as the output."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({"t": {"command": "mkdir -p build && echo x > build/f",
                                                     "outputs": ["build"]}}))
    proc = run_gaffer(["run"], cwd=ws, env=gaffer_env(ws / "build" / "cache"))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr == (f"gaffer: local cache {ws}/build/cache is inside output 'build' of the graph, which gaffer"
                           " removes before its task runs: put the cache elsewhere\n")
    assert not (ws / "build").exists()


def test_a_build_log_that_cannot_be_saved_is_one_line_and_exit_3(tmp_path: Path, env: dict[str, str]) -> None:
    """A task that clobbers .gaffer/ (a `git clean`, a stray `rm`) leaves a log that cannot be saved: one line
    saying so, never a traceback; the next build, with .gaffer/ usable again, checks every task."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({
        "clobber": {"command": "rm -rf .gaffer/log && echo x > .gaffer/log", "cache": False},
        "b": {"command": "echo b > o", "deps": ["clobber"], "outputs": ["o"]}}))
    proc = run_gaffer(["run"], cwd=ws, env=env)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(f"gaffer: cannot save the build log: {ws}/.gaffer/log/"), \
        proc.stderr
    (ws / ".gaffer" / "log").unlink()
    (ws / "graph.json").write_text(json.dumps({"b": {"command": "echo b > o", "outputs": ["o"]}}))
    assert build(ws, env)["status"] == {"b": "cached"}


def test_a_task_killed_by_a_signal_says_which(tmp_path: Path, env: dict[str, str]) -> None:
    ws = tmp_path / "killed"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({"t": {"command": "echo partial > o; kill -KILL $$", "outputs": ["o"]}}))
    result = build(ws, env, expect=1)
    assert result["status"] == {"t": "failed"}
    assert "failed: t: killed by signal 9 (SIGKILL)" in result["stderr"], result["stderr"]


def test_timeout_kills_the_process_group(tmp_path: Path, env: dict[str, str]) -> None:
    ws = tmp_path / "slow"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({"slow": {
        "command": "sleep 30 & echo $! > child.pid; wait", "timeout": "1s", "outputs": []}}))
    started = time.monotonic()
    result = build(ws, env, expect=1)
    assert time.monotonic() - started < 20
    assert "timed out after 1s" in result["stderr"]
    child = int((ws / "child.pid").read_text())
    assert not alive(child), "the task's children are killed with it"



@pytest.mark.parametrize(("signum", "status", "times"), [(signal.SIGTERM, 143, 1), (signal.SIGHUP, 129, 1),
                                                         (signal.SIGHUP, 129, 2)])
def test_sigterm_or_sighup_kills_running_tasks_and_leaves_cache_consistent(
        tmp_path: Path, env: dict[str, str], signum: signal.Signals, status: int, times: int) -> None:
    """SIGHUP is a closed terminal: the tasks, in sessions of their own, would never get it and run on. A closed
    terminal usually sends it twice, back to back: the same stop."""
    ws = tmp_path / "term"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({
        "quick": {"command": "echo ok > quick.txt", "outputs": ["quick.txt"]},
        "long": {"command": "echo started > started; sleep 60 & echo $! > child.pid; wait", "outputs": [],
                 "deps": ["quick"]},
    }))
    proc = subprocess.Popen([sys.executable, "-m", "gaffer", "run", "-j", "2"], cwd=ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (ws / "child.pid").exists() or not (ws / "child.pid").read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None, "the long task never started"
        time.sleep(0.05)
    for _ in range(times):
        os.kill(proc.pid, signum)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == status, err
    assert not alive(int((ws / "child.pid").read_text()))
    assert "Completed quick" in err, "progress lines written before the signal are not lost"
    verify = run_gaffer(["cache", "verify"], cwd=ws, env=env)
    assert verify.returncode == 0, verify.stdout


def test_two_processes_share_one_cache(tmp_path: Path, env: dict[str, str]) -> None:
    workspaces = []
    for i in range(2):
        ws = tmp_path / f"w{i}"
        (ws / "src" / "c").mkdir(parents=True)
        for name in ("a", "b"):
            (ws / "src" / f"{name}.txt").write_text(f"{name}\n")
        (ws / "src" / "c" / "c.txt").write_text("c\n")
        (ws / "graph.json").write_text(json.dumps(CHAIN))
        workspaces.append(ws)
    procs = [subprocess.Popen([sys.executable, "-m", "gaffer", "run", "-j", "2"], cwd=ws, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for ws in workspaces]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert outputs(workspaces[0]) == outputs(workspaces[1])
    verify = run_gaffer(["cache", "verify"], cwd=tmp_path, env=env)
    assert verify.returncode == 0 and " 0 corrupt" in verify.stdout


def test_dry_run_changes_nothing(ws: Path, env: dict[str, str]) -> None:
    proc = run_gaffer(["run", "all", "--dry-run"], cwd=ws, env=env)
    assert proc.returncode == 0
    assert "gen: would run: no previous run recorded" in proc.stdout
    assert not (ws / "out").exists()
    build(ws, env, "all")
    (ws / "src" / "a.txt").write_text("alpha 2\n")
    proc = run_gaffer(["run", "all", "--dry-run"], cwd=ws, env=env)
    assert "gen: would run: input src/a.txt changed" in proc.stdout
    assert (ws / "out" / "a.txt").read_text() == "alpha\n"


def dry_run(ws: Path, env: dict[str, str], *args: str) -> dict[str, str]:
    """`gaffer run --dry-run`'s plan, {task: prediction}; it prints nothing else, on either stream."""
    proc = run_gaffer(["run", "all", "--dry-run", *args], cwd=ws, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    plan = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert set(plan) == {"gen", "mid", "top", "side"}, proc.stdout
    return plan


def test_an_uncached_task_says_it_always_runs(tmp_path: Path, env: dict[str, str]) -> None:
    """`cache: false` after it ran: -v, --dry-run and explain say why it runs, not "no previous run"."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({"deploy": {"command": "true", "cache": False}}))
    reason = "cache: false, so it runs every time"
    for _ in range(2):
        assert reasons(build(ws, env, "-v")) == {"deploy": reason}
    assert run_gaffer(["run", "--dry-run"], cwd=ws, env=env).stdout == f"deploy: would run: {reason}\n"
    assert run_gaffer(["explain", "deploy"], cwd=ws, env=env).stdout == f"deploy: {reason}\n"


def test_dry_run_after_clean_predicts_restores_that_the_build_then_does(ws: Path, env: dict[str, str]) -> None:
    build(ws, env, "all")
    run_gaffer(["clean"], cwd=ws, env=env, check=True)
    assert set(dry_run(ws, env).values()) == {"would restore from the cache"}, "dependents are keyed on restored outputs"
    assert build(ws, env, "all")["cached"] == 4


def test_dry_run_says_a_dependent_waits_on_a_dependency_that_would_run(ws: Path, env: dict[str, str]) -> None:
    build(ws, env, "all")
    (ws / "src" / "b.txt").write_text("beta 2\n")
    plan = dry_run(ws, env)
    assert plan == {"gen": "up to date", "side": "up to date", "mid": "would run: input src/b.txt changed",
                    "top": "would run: dependency mid would run"}
    result = build(ws, env, "all")
    assert {n for n, s in result["status"].items() if s == "executed"} == {"mid", "top"}


def test_a_dry_run_and_cache_status_create_no_cache_directory(ws: Path, tmp_path: Path) -> None:
    """Neither a dry run nor `cache status` changes anything on disk: a cache directory that is absent stays so."""
    cache = tmp_path / "nosuch" / "cache"
    env = gaffer_env(cache)
    assert all(p.startswith("would run: ") for p in dry_run(ws, env).values())
    status = run_gaffer(["cache", "status", "--json", "--cache-dir", str(cache)], cwd=ws, env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["bytes"] == 0 and json.loads(status.stdout)["targets_cached"] == 0
    assert not (tmp_path / "nosuch").exists()
    build(ws, env, "all")
    shutil.rmtree(cache / "tmp")
    assert set(dry_run(ws, env).values()) == {"up to date"}
    assert "Targets cached: 4" in run_gaffer(["cache", "status", "--cache-dir", str(cache)], cwd=ws, env=env).stdout
    assert not (cache / "tmp").exists(), "a dry run or a status made the cache's temp directory"


def test_dry_run_asks_remote_tiers_without_filling_the_local_one(ws: Path, tmp_path: Path) -> None:
    """A `disk://` remote tier stands in for a team cache: the plan sees its entries, the local cache stays empty."""
    team = tmp_path / "team-cache"
    build(ws, gaffer_env(team), "all")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for rel in ("graph.json", "src"):
        subprocess.run(["cp", "-a", str(ws / rel), str(checkout / rel)], check=True)
    env = gaffer_env(tmp_path / "local", GAFFER_CACHE=f"disk://{team}")
    assert set(dry_run(checkout, env).values()) == {"would restore from the cache"}
    local = tmp_path / "local"
    assert not [p for p in local.rglob("*") if p.is_file() and p.parent.name != "tmp"], "dry run filled the cache"
    assert build(checkout, env, "all")["cached"] == 4


def test_tier_hits_count_only_usable_entries_and_the_disk_tier_counts_bytes(
        ws: Path, env: dict[str, str], tmp_path: Path) -> None:
    cold = build(ws, env, "all")
    local_tier = cold["tiers"][0]
    assert local_tier["bytes_up"] > 0 and "0.0 MiB" not in cold["stderr"]
    assert re.search(r"[0-9.]+ (B|KiB) up", cold["stderr"]), "about a KiB prints as such, not as 0.0 MiB"
    made = (ws / "out" / "a.txt").read_bytes()
    blob = next(p for p in (tmp_path / "cache" / "cas").rglob("*") if p.is_file() and p.read_bytes() == made)
    blob.write_bytes(b"corrupted!")
    run_gaffer(["clean"], cwd=ws, env=env, check=True)
    warm = build(ws, env, "all")
    assert warm["status"]["gen"] == "executed" and warm["cached"] == 3
    local_tier = warm["tiers"][0]
    assert (local_tier["hits"], local_tier["misses"]) == (3, 1), "gen's entry named a corrupt blob: no hit"
    assert local_tier["bytes_down"] > 0
    assert "cache disk://" in warm["stderr"] and ": 3 hits, 1 miss," in warm["stderr"]


@pytest.mark.parametrize("jobs", [1, 4])
def test_parallel_efficiency_is_the_share_of_the_job_slots_kept_busy(tmp_path: Path, env: dict[str, str],
                                                                      jobs: int) -> None:
    """Two independent 0.3 s tasks: at -j1 they keep the one slot busy nearly all along; at -j4 they fill at
    most half the slots. Task time over wall time alone would say ~2 (200%) at -j4. Restored from the cache, they
    take no slot: nothing to measure."""
    (tmp_path / "graph.json").write_text(json.dumps({"tasks": {
        name: {"command": ["sh", "-c", f"sleep 0.3; echo {name} > {name}.txt"], "outputs": [f"{name}.txt"]}
        for name in ("a", "b")} | {"all": {"deps": ["a", "b"]}}}))
    out = tmp_path / "summary.json"
    proc = run_gaffer(["run", "all", "-j", str(jobs), "--summary-json", str(out)], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    efficiency = summary(out)["parallel_efficiency"]
    assert (0.5 < efficiency <= 1.0) if jobs == 1 else (0.2 < efficiency <= 0.5), efficiency
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").unlink()
    proc = run_gaffer(["run", "all", "-j", str(jobs), "--summary-json", str(out)], cwd=tmp_path, env=env)
    assert proc.returncode == 0 and summary(out)["cached"] == 2, proc.stderr
    assert summary(out)["parallel_efficiency"] is None  # restores take no slot: no command ran
    assert "parallel efficiency" not in proc.stderr


def test_noop_reports_no_parallel_efficiency(ws: Path, env: dict[str, str]) -> None:
    assert "parallel efficiency" in build(ws, env, "all")["stderr"]
    noop = build(ws, env, "all")
    assert noop["executed"] == 0 and noop["parallel_efficiency"] is None
    assert "parallel efficiency" not in noop["stderr"]


def test_progress_numbers_run_from_1_to_the_total_once_each(tmp_path: Path, env: dict[str, str]) -> None:
    """Skipped groups take no number; `-v`'s up-to-date lines continue the numbering instead of restarting it."""
    ws = tmp_path / "numbers"
    ws.mkdir()
    graph = {"tasks": {
        "one": {"command": "echo 1 > one", "outputs": ["one"]},
        "two": {"command": "echo 2 > two", "outputs": ["two"]},
        "bad": {"command": "test -e go-ahead", "deps": ["one"], "outputs": []},
        "after": {"command": "touch after", "deps": ["bad"], "outputs": ["after"]},
        "group": {"deps": ["after", "two"]},
        "all": {"deps": ["group"]},
    }}
    (ws / "graph.json").write_text(json.dumps(graph))

    def numbers(result: dict) -> list[int]:
        found = [tuple(map(int, m)) for m in re.findall(r"^\[(\d+)/(\d+)\]", result["stderr"], re.MULTILINE)]
        assert found and all(total == 4 for _n, total in found), result["stderr"]
        return sorted({n for n, _total in found})

    failed = build(ws, env, "-k", "-j", "1", expect=1)
    assert numbers(failed) == [1, 2, 3, 4], failed["stderr"]
    assert "Skipped all" not in failed["stderr"] and "Skipped group" not in failed["stderr"]
    assert (failed["executed"], failed["failed"], failed["skipped"]) == (2, 1, 1), "groups are counted nowhere"
    (ws / "go-ahead").touch()
    verbose = build(ws, env, "-v", "-j", "1")
    assert numbers(verbose) == [1, 2, 3, 4], verbose["stderr"]
    assert re.search(r"^\[[12]/4\] (one|two): up to date$", verbose["stderr"], re.MULTILINE), verbose["stderr"]


def test_explain_names_the_change(ws: Path, env: dict[str, str]) -> None:
    first = run_gaffer(["explain", "mid"], cwd=ws, env=env)
    assert first.returncode == 0 and "no recorded run" in first.stdout
    build(ws, env, "all")
    same = run_gaffer(["explain", "mid"], cwd=ws, env=env)
    assert "nothing changed" in same.stdout
    (ws / "src" / "b.txt").write_text("beta 2\n")
    changed = run_gaffer(["explain", "mid"], cwd=ws, env={**env, "FLAVOUR": "x"})
    assert "input src/b.txt changed" in changed.stdout
    assert "env FLAVOUR changed (unset -> 'x')" in changed.stdout


def test_a_task_named_like_an_option_is_built_cleaned_and_explained(tmp_path: Path, env: dict[str, str]) -> None:
    """Any name without control characters is a task name; `--` lets the command line name one starting with -
    (after `gaffer explain --`, a single word is a task: a compile command has arguments)."""
    ws = tmp_path / "odd"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({"-x": {"command": "echo x > x.txt", "outputs": ["x.txt"]}}))
    assert run_gaffer(["run", "--", "-x"], cwd=ws, env=env).returncode == 0
    explained = run_gaffer(["explain", "--", "-x"], cwd=ws, env=env)
    assert explained.returncode == 0 and explained.stdout.startswith("-x: nothing changed"), explained
    assert run_gaffer(["clean", "--", "-x"], cwd=ws, env=env).returncode == 0 and not (ws / "x.txt").exists()


def test_trace_and_summary_files(ws: Path, env: dict[str, str]) -> None:
    trace = ws / "trace.json"
    proc = run_gaffer(["run", "all", "--trace", str(trace)], cwd=ws, env=env)
    assert proc.returncode == 0
    events = json.loads(trace.read_text())["traceEvents"]
    slices = {e["name"]: e for e in events if e.get("ph") == "X"}
    assert set(slices) == {"gen", "mid", "top", "side"}
    assert slices["mid"]["ts"] >= slices["gen"]["ts"] + slices["gen"]["dur"] - 1000, "deps finish first"
    assert "Build completed" in proc.stderr and "parallel efficiency" in proc.stderr
    assert "[4/4] Completed" in proc.stderr or "Completed" in proc.stderr


def test_clean_removes_declared_outputs(ws: Path, env: dict[str, str]) -> None:
    build(ws, env, "all")
    proc = run_gaffer(["clean"], cwd=ws, env=env)
    assert proc.returncode == 0
    assert not (ws / "out" / "a.txt").exists() and not (ws / "out" / "dir").exists()
    assert (ws / "src" / "a.txt").exists()
    result = build(ws, env, "all")
    assert result["cached"] == 4, "clean keeps the cache: everything is restored"


def test_cache_status_gc_and_clean(ws: Path, env: dict[str, str]) -> None:
    build(ws, env, "all")
    build(ws, env, "all")
    status = json.loads(run_gaffer(["cache", "status", "--json"], cwd=ws, env=env).stdout)
    assert status["targets_cached"] == 4 and status["bytes"] > 0
    assert status["hits"] == 4 and status["misses"] == 4 and status["hit_rate"] == 0.5
    text = run_gaffer(["cache", "status"], cwd=ws, env=env).stdout
    assert "Targets cached: 4" in text and "Cache size:" in text
    gc = run_gaffer(["cache", "gc", "--cache-max-size", "1"], cwd=ws, env=env)
    assert gc.returncode == 0 and "removed" in gc.stdout
    assert json.loads(run_gaffer(["cache", "status", "--json"], cwd=ws, env=env).stdout)["bytes"] == 0
    run_gaffer(["cache", "clean"], cwd=ws, env=env, check=True)


def test_local_cache_is_bounded(ws: Path, env: dict[str, str], tmp_path: Path) -> None:
    (ws / "graph.json").write_text(json.dumps({f"t{i}": {
        "command": f"head -c 20000 /dev/urandom > big{i}", "outputs": [f"big{i}"]} for i in range(6)}))
    build(ws, {**env, "GAFFER_CACHE_MAX_SIZE": "60KB"})
    status = json.loads(run_gaffer(["cache", "status", "--json"], cwd=ws, env=env).stdout)
    assert status["bytes"] <= 60_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "-j", "0"], "-j/--jobs: '0' is not a positive number of jobs"),
        (["run", "nosuch"], "unknown target 'nosuch'"),
        (["run", "--graph", "missing.json"], "missing.json: cannot read"),
        (["run", "--bogus"], "unrecognized arguments: --bogus"),
        (["run", "--cache-max-size", "lots"], "--cache-max-size: 'lots' is not a size"),
        (["explain", "nosuch"], "unknown target 'nosuch'"),
        (["run", "--summary-json", ""], "--summary-json: '' is not a path"),
        (["run", "--trace", ""], "--trace: '' is not a path"),
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(ws: Path, env: dict[str, str], args: list[str], message: str) -> None:
    proc = run_gaffer(args, cwd=ws, env=env)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[cache]\nmax_size = 'huge'\n", "[cache] max_size: 'huge' is not a size"),
        ("[cache]\nbogus = 1\n", "[cache] unknown setting 'bogus'"),
        ("[nope]\n", "unknown section [nope]"),
        ("[cache\n", "not valid TOML"),
        ("[run]\njobs = -1\n", "[run] jobs: -1 is not a positive number of jobs"),
    ],
)
def test_bad_gaffer_toml(ws: Path, env: dict[str, str], toml: str, message: str) -> None:
    (ws / "gaffer.toml").write_text(toml)
    proc = run_gaffer(["run"], cwd=ws, env=env)
    assert proc.returncode == 2 and message in proc.stderr and "gaffer.toml" in proc.stderr


def test_settings_precedence_flag_over_env_over_toml(ws: Path, tmp_path: Path) -> None:
    from gaffer.config import load_settings

    (ws / "gaffer.toml").write_text(f"[cache]\ndir = '{tmp_path / 'from-toml'}'\n[run]\njobs = 3\n")
    assert load_settings(ws, {}, env={}).cache_dir == tmp_path / "from-toml"
    assert load_settings(ws, {}, env={}).jobs == 3
    from_env = load_settings(ws, {}, env={"GAFFER_CACHE_DIR": str(tmp_path / "from-env"), "GAFFER_JOBS": "5"})
    assert from_env.cache_dir == tmp_path / "from-env" and from_env.jobs == 5
    from_flag = load_settings(ws, {"cache_dir": str(tmp_path / "flag"), "jobs": "7"},
                              env={"GAFFER_CACHE_DIR": str(tmp_path / "from-env")})
    assert from_flag.cache_dir == tmp_path / "flag" and from_flag.jobs == 7


def test_symlink_output_escaping_the_workspace_fails(tmp_path: Path, env: dict[str, str]) -> None:
    ws = tmp_path / "esc"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({"t": {"command": "ln -sf ../../etc/passwd link", "outputs": ["link"]}}))
    result = build(ws, env, expect=1)
    assert "points outside the workspace" in result["stderr"]


def test_noop_fast_path_notices_every_change(ws: Path, env: dict[str, str]) -> None:
    """After a successful build the next one may be decided from stat calls alone (.gaffer/noop); each kind of
    change must still be seen: a new file under a glob, a deleted output, an env value, the graph file."""
    build(ws, env, "all")
    assert build(ws, env, "all")["cached"] == 4
    assert (ws / ".gaffer" / "noop").exists()
    (ws / "src" / "c" / "deep" / "more.txt").write_text("more\n")
    assert build(ws, env, "all")["status"]["top"] == "executed"
    build(ws, env, "all")
    (ws / "out" / "dir" / "sub" / "x").unlink()
    assert build(ws, env, "all")["status"]["side"] == "cached", "restored from the cache"
    assert (ws / "out" / "dir" / "sub" / "x").exists()
    assert build(ws, {**env, "FLAVOUR": "new"}, "all")["status"]["mid"] == "executed"
    graph = json.loads((ws / "graph.json").read_text())
    graph["tasks"]["gen"]["command"] += " && true"
    (ws / "graph.json").write_text(json.dumps(graph))
    assert build(ws, env, "all")["status"]["gen"] == "executed"


@pytest.mark.parametrize(
    ("variables", "args", "message"),
    [
        ({"GAFFER_JOBS": "many"}, [], "GAFFER_JOBS: 'many' is not a positive number of jobs"),
        ({"GAFFER_CACHE_MAX_SIZE": "big"}, [], "GAFFER_CACHE_MAX_SIZE: 'big' is not a size"),
        ({"GAFFER_CACHE_READ_ONLY": "maybe"}, [], "GAFFER_CACHE_READ_ONLY: 'maybe' is not a boolean"),
        ({"GAFFER_CACHE_TIMEOUT": "soon"}, [], "GAFFER_CACHE_TIMEOUT: 'soon' is not a duration"),
        ({"GAFFER_CACHE": "ftp://nope"}, [], "cache URL ftp://nope: unknown scheme 'ftp'"),
        ({}, ["--cache", "cache.internal:9092"], "cache URL cache.internal:9092: not a URL"),
    ],
)
def test_bad_settings_are_one_line_even_when_nothing_needs_building(
    ws: Path, env: dict[str, str], variables: dict[str, str], args: list[str], message: str
) -> None:
    """Checked on a cold build and on a no-op alike (the no-op fast path opens no tier, but still checks URLs)."""
    for _ in ("cold", "no-op"):
        proc = run_gaffer(["run", *args], cwd=ws, env={**env, **variables})
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        run_gaffer(["run"], cwd=ws, env=env, check=True)  # then build, so the second round is a no-op
