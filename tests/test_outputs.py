"""What a task's outputs are to gaffer: everything a dependent sees is keyed, a restore is exactly what the task
made (modes, empty directories, long names, directories as REAPI Trees), and a damaged entry is a miss."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gaffer.cache.disk import DiskStore
from gaffer.digest import Digest, digest_bytes
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.state import WorkspaceState
from tests.support import NOBODY, gaffer_env, run_gaffer, summary, unprivileged


def workspace(root: Path, tasks: dict) -> Path:
    root.mkdir(parents=True)
    (root / "graph.json").write_text(json.dumps({"tasks": tasks}))
    return root


def build(ws: Path, env: dict[str, str], *targets: str) -> dict:
    out = ws.parent / f"{ws.name}-summary.json"
    proc = run_gaffer(["run", *targets, "--summary-json", str(out)], cwd=ws, env=env)
    assert proc.returncode == 0, proc.stderr
    result = summary(out)
    result["stderr"] = proc.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def action_entries(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "ac").rglob("*") if p.is_file())


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return gaffer_env(tmp_path / "cache")


# -- rule: a dependent's key covers everything it sees of its deps' outputs ---------------------------------------

LIBS = {
    "lib": {"command": "mkdir -p lib && echo one > lib/libfoo.so.1 && echo two > lib/libfoo.so.2 && "
                       "ln -sfn $TARGET lib/libfoo.so",
            "env": ["TARGET"], "outputs": ["lib/libfoo.so.1", "lib/libfoo.so.2", "lib/libfoo.so"]},
    "app": {"command": "cat lib/libfoo.so > app.txt", "deps": ["lib"], "outputs": ["app.txt"]},
}


def test_retargeting_a_dep_output_symlink_reruns_the_dependent(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", LIBS)
    build(ws, {**env, "TARGET": "libfoo.so.1"}, "app")
    assert (ws / "app.txt").read_text() == "one\n"
    result = build(ws, {**env, "TARGET": "libfoo.so.2"}, "app")
    assert result["status"] == {"lib": "executed", "app": "executed"}
    assert (ws / "app.txt").read_text() == "two\n"

    fresh = workspace(tmp_path / "fresh", LIBS)  # another checkout sharing the cache: its key must differ too
    build(fresh, {**env, "TARGET": "libfoo.so.1"}, "app")
    assert (fresh / "app.txt").read_text() == "one\n"


def test_a_dep_output_losing_its_executable_bit_reruns_the_dependent(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {
        "tool": {"command": "echo 'echo hi' > tool.sh && chmod $MODE tool.sh", "env": ["MODE"], "outputs": ["tool.sh"]},
        "use": {"command": "if test -x tool.sh; then echo runnable; else echo plain; fi > use.txt",
                "deps": ["tool"], "outputs": ["use.txt"]},
    })
    build(ws, {**env, "MODE": "755"}, "use")
    assert (ws / "use.txt").read_text() == "runnable\n"
    result = build(ws, {**env, "MODE": "644"}, "use")
    assert result["status"] == {"tool": "executed", "use": "executed"}
    assert (ws / "use.txt").read_text() == "plain\n"


def test_a_stray_file_in_a_dep_output_directory_is_removed_and_never_read(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {
        "gen": {"command": "mkdir -p out/dir && echo a > out/dir/a.txt", "outputs": ["out/dir"]},
        "cat": {"command": "cat out/dir/* > all.txt", "deps": ["gen"], "outputs": ["all.txt"]},
    })
    build(ws, env, "cat")
    build(ws, env, "cat")  # a recorded no-op, so the next build would take the fast path if it could
    (ws / "out" / "dir" / "a.txt~").write_text("editor backup\n")
    (ws / "out" / "dir" / "junk").mkdir()
    result = build(ws, env, "cat")
    assert not (ws / "out" / "dir" / "a.txt~").exists() and not (ws / "out" / "dir" / "junk").exists()
    assert "removed out/dir/a.txt~" in result["stderr"] and "removed out/dir/junk" in result["stderr"]
    assert result["status"] == {"gen": "cached", "cat": "cached"}, "what the dependent sees is unchanged"
    assert (ws / "all.txt").read_text() == "a\n"
    again = build(ws, env, "cat")
    assert "removed" not in again["stderr"]


# -- rule: a restore is exactly what the task produced ------------------------------------------------------------

MODES = {
    "make": {"command": "mkdir -p out/private/empty out/empty && echo s > out/secret && chmod 600 out/secret && "
                        "echo p > out/private/p && chmod 640 out/private/p && chmod 700 out/private && "
                        "chmod 750 out/private/empty",
             "outputs": ["out/secret", "out/private", "out/empty"]},
}


def test_restore_keeps_modes_and_empty_directories(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", MODES)
    build(ws, env, "make")
    shutil.rmtree(ws / "out")
    shutil.rmtree(ws / ".gaffer")
    result = build(ws, env, "make")
    assert result["status"] == {"make": "cached"}
    assert mode(ws / "out" / "secret") == 0o600
    assert mode(ws / "out" / "private") == 0o700
    assert mode(ws / "out" / "private" / "p") == 0o640
    assert mode(ws / "out" / "private" / "empty") == 0o750 and not list((ws / "out" / "private" / "empty").iterdir())
    assert (ws / "out" / "empty").is_dir() and not list((ws / "out" / "empty").iterdir())


def test_an_output_name_of_240_bytes_builds_and_restores(tmp_path: Path, env: dict[str, str]) -> None:
    name = "n" * 240
    ws = workspace(tmp_path / "ws", {"long": {"command": f"echo long > {name}", "outputs": [name]}})
    build(ws, env, "long")
    (ws / name).unlink()
    result = build(ws, env, "long")
    assert result["status"] == {"long": "cached"}, result["stderr"]
    assert (ws / name).read_text() == "long\n"
    assert [p.name for p in ws.iterdir() if p.name.startswith(".gaffer-")] == [], "no temp file left behind"


def test_an_output_directory_is_stored_as_a_reapi_tree(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {
        "dir": {"command": "mkdir -p out/sub/empty && echo x > out/sub/x && chmod 700 out/sub && ln -s sub/x out/l",
                "outputs": ["out"]},
    })
    build(ws, env, "dir")
    store = DiskStore(tmp_path / "cache")
    [entry] = action_entries(tmp_path / "cache")
    result = re_pb2.ActionResult.FromString(store.read_action(Digest(entry.name, 0)) or b"")
    [directory] = result.output_directories
    assert directory.path == "out" and directory.HasField("tree_digest")
    tree = re_pb2.Tree.FromString(store.read_blob(Digest(directory.tree_digest.hash,
                                                         directory.tree_digest.size_bytes)) or b"")
    assert [s.name for s in tree.root.symlinks] == ["l"] and tree.root.symlinks[0].target == "sub/x"
    [sub_node] = tree.root.directories
    children = {digest_bytes(c.SerializeToString(deterministic=True)).hash: c for c in tree.children}
    sub = children[sub_node.digest.hash]
    assert sub.node_properties.unix_mode.value == 0o700
    assert [f.name for f in sub.files] == ["x"] and [d.name for d in sub.directories] == ["empty"]


# -- rule: a damaged action-cache entry is a miss -----------------------------------------------------------------

DAMAGE = {
    "truncated": lambda data: data[:-9],
    "bit-flipped": lambda data: data[:-20] + bytes([data[-20] ^ 0x04]) + data[-19:],
}
LINKED = {
    "link": {"command": "echo data > data.txt && ln -sfn data.txt link", "outputs": ["data.txt", "link"]},
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_action_entry_is_a_miss_and_cache_verify_evicts_it(tmp_path: Path, env: dict[str, str],
                                                                      damage: str) -> None:
    ws = workspace(tmp_path / "ws", LINKED)
    build(ws, env, "link")
    [entry] = action_entries(tmp_path / "cache")
    good = entry.read_bytes()

    entry.write_bytes(DAMAGE[damage](good))
    verify = run_gaffer(["cache", "verify"], cwd=ws, env=env)
    assert verify.returncode == 1 and f"evicted: {entry.name[:12]}" in verify.stdout, verify.stdout
    assert not entry.exists()

    entry.write_bytes(DAMAGE[damage](good))
    shutil.rmtree(ws / ".gaffer")
    (ws / "data.txt").unlink()
    (ws / "link").unlink()
    result = build(ws, env, "link")
    assert result["status"] == {"link": "executed"}
    assert "corrupt cache action result" in result["stderr"]
    assert (ws / "data.txt").read_text() == "data\n" and os.readlink(ws / "link") == "data.txt"
    assert run_gaffer(["cache", "verify"], cwd=ws, env=env).returncode == 0


def test_an_entry_not_accounting_for_a_declared_output_is_a_miss(tmp_path: Path, env: dict[str, str]) -> None:
    """An entry from any tier (here written through the store, so its checksum is fine) must name every output."""
    ws = workspace(tmp_path / "ws", LINKED)
    build(ws, env, "link")
    store = DiskStore(tmp_path / "cache")
    [entry] = action_entries(tmp_path / "cache")
    key = Digest(entry.name, 0)
    result = re_pb2.ActionResult.FromString(store.read_action(key) or b"")
    del result.output_symlinks[:]
    store.write_action(key, result.SerializeToString())
    shutil.rmtree(ws / ".gaffer")
    (ws / "link").unlink()
    rerun = build(ws, env, "link")
    assert rerun["status"] == {"link": "executed"}
    assert "does not account for the declared output 'link'" in rerun["stderr"]
    assert os.readlink(ws / "link") == "data.txt"


def test_an_entry_from_before_checksums_is_a_quiet_miss(tmp_path: Path, env: dict[str, str]) -> None:
    """A local entry written by an older gaffer (a bare ActionResult, no checksum header) is not trusted, but it
    is no damage either: a miss, replaced by the re-run, without a warning per entry (a Go cache holds thousands)."""
    ws = workspace(tmp_path / "ws", LINKED)
    build(ws, env, "link")
    [entry] = action_entries(tmp_path / "cache")
    bare = DiskStore(tmp_path / "cache").read_action(Digest(entry.name, 0))
    assert bare is not None
    entry.write_bytes(bare)
    shutil.rmtree(ws / ".gaffer")
    (ws / "link").unlink()
    rerun = build(ws, env, "link")
    assert rerun["status"] == {"link": "executed"}
    assert "corrupt" not in rerun["stderr"]
    assert os.readlink(ws / "link") == "data.txt"
    assert entry.read_bytes() != bare  # replaced by a checksummed entry
    assert run_gaffer(["cache", "verify"], cwd=ws, env=env).returncode == 0


# -- rule: outputs below a symlinked directory are the graph's; .git, .gaffer and the workspace are never removed --

def test_a_build_directory_symlinked_to_another_disk_builds_and_is_cleaned(tmp_path: Path,
                                                                           env: dict[str, str]) -> None:
    fast = tmp_path / "fast" / "build"
    fast.mkdir(parents=True)
    (fast / "stale").write_text("old")
    (fast / "mine").write_text("not declared")
    ws = workspace(tmp_path / "ws", {"t": {"command": "test ! -e build/stale && echo made > build/stale",
                                           "outputs": ["build/stale"]}})
    (ws / "build").symlink_to(fast)
    assert build(ws, env)["status"] == {"t": "executed"}
    assert (fast / "stale").read_text() == "made\n", "removed first, then made, through the symlink"
    assert build(ws, env)["status"] == {"t": "cached"}
    proc = run_gaffer(["clean"], cwd=ws, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "removed 1 declared output\n"
    assert sorted(p.name for p in fast.iterdir()) == ["mine"]
    assert build(ws, env)["status"] == {"t": "executed"}, "never restored through a symlink out of the workspace"
    assert (fast / "stale").read_text() == "made\n"


def test_hits_refused_by_a_symlinked_build_directory_are_no_remote_tier_s_fault(tmp_path: Path,
                                                                                  env: dict[str, str]) -> None:
    """A symlinked build directory's hits are not restored through the symlink, wherever they came from: that is
    the workspace's doing, said once per build, not an error of the remote tier that served them (it was
    counted in its errors and used up its one warning, as if it served garbage)."""
    fast = tmp_path / "fast" / "build"
    fast.mkdir(parents=True)
    ws = workspace(tmp_path / "ws", {"t": {"command": "echo t > build/t", "outputs": ["build/t"]},
                                     "u": {"command": "echo u > build/u", "outputs": ["build/u"]}})
    (ws / "build").symlink_to(fast)
    remote = f"disk://{tmp_path / 'remote'}"
    out = tmp_path / "summary.json"

    def run() -> tuple[dict, str]:
        proc = run_gaffer(["run", "--cache", remote, "--summary-json", str(out)], cwd=ws, env=env)
        assert proc.returncode == 0, proc.stderr
        return summary(out), proc.stderr

    assert run()[0]["status"] == {"t": "executed", "u": "executed"}
    assert run_gaffer(["clean"], cwd=ws, env=env).returncode == 0
    shutil.rmtree(tmp_path / "cache")  # the hits now come from the remote tier
    result, stderr = run()
    assert result["status"] == {"t": "executed", "u": "executed"}
    assert "cache tier" not in stderr, stderr
    refused = [line for line in stderr.splitlines() if "through a symlink" in line]
    assert len(refused) == 1, stderr
    [tier] = [t for t in result["tiers"] if t["name"] == remote]
    assert tier["errors"] == 0, tier


def test_an_output_that_holds_the_workspace_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"a": {"command": "true", "outputs": ["up/ws"]}})
    (ws / "up").symlink_to("..")
    for args in (["run"], ["clean"]):
        proc = run_gaffer(args, cwd=ws, env=env)
        assert proc.returncode != 0, proc.stderr
        assert f"output 'up/ws' is the workspace or holds it ({ws})" in proc.stderr, proc.stderr
        assert (ws / "graph.json").exists()


def test_an_output_through_a_symlink_into_git_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"a": {"command": "true", "outputs": ["g/config"]}})
    (ws / ".git").mkdir()
    (ws / ".git" / "config").write_text("precious")
    (ws / "g").symlink_to(".git")
    for args in (["run"], ["clean"]):
        proc = run_gaffer(args, cwd=ws, env=env)
        assert proc.returncode != 0, proc.stderr
        assert f"output 'g/config' leads into .git ({ws / '.git' / 'config'})" in proc.stderr, proc.stderr
        assert "through a symlink" not in proc.stderr
        assert (ws / ".git" / "config").read_text() == "precious"


@pytest.mark.parametrize(("link", "target", "output"), [("self", ".", "self/.git"), ("up", "..", "up/ws/.gaffer")])
def test_an_output_naming_git_through_a_symlink_to_the_workspace_is_refused(
        tmp_path: Path, env: dict[str, str], link: str, target: str, output: str) -> None:
    """A symlink back to the workspace (or above it) puts the output's own name at .git or .gaffer: the check
    looked only at where its directory really is (the workspace itself: fine) and `gaffer clean` deleted .git."""
    ws = workspace(tmp_path / "ws", {"a": {"command": "true", "outputs": [output]}})
    (ws / ".git").mkdir()
    (ws / ".git" / "config").write_text("precious")
    (ws / link).symlink_to(target)
    for args in (["clean"], ["run"]):
        proc = run_gaffer(args, cwd=ws, env=env)
        assert proc.returncode != 0 and "leads into" in proc.stderr, proc.stderr
        assert (ws / ".git" / "config").read_text() == "precious"
        assert (ws / ".gaffer").is_dir() or args == ["clean"]


def test_clean_refusing_one_output_removes_none(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"a": {"command": "echo a > a.txt", "outputs": ["a.txt"]},
                                     "b": {"command": "true", "outputs": ["g/config"]}})
    (ws / ".git").mkdir()
    (ws / "g").symlink_to(".git")
    assert run_gaffer(["run", "a"], cwd=ws, env=env).returncode == 0
    proc = run_gaffer(["clean"], cwd=ws, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("gaffer: task 'b': output 'g/config' leads into .git"), proc.stderr
    assert (ws / "a.txt").read_text() == "a\n", "nothing removed, so nothing left unrecorded"
    assert build(ws, env, "a")["status"] == {"a": "cached"}


# -- rule: outputs whose modes deny reading are refused clearly, and removed whatever their modes -----------------

def as_a_user(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI bound by file modes as any user is: as root, without the capabilities that override them."""
    return subprocess.run([*unprivileged(), sys.executable, "-m", "gaffer", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_an_output_directory_holding_an_unreadable_one_fails_its_task_and_is_not_half_cached(
        tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "mkdir -p d/sub && echo x > d/sub/f && chmod 000 d/sub",
                                           "outputs": ["d"]}})
    proc = as_a_user(["run"], cwd=ws, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "failed: t: output d/sub cannot be read (Permission denied)" in proc.stderr
    assert "internal error" not in proc.stderr
    assert action_entries(tmp_path / "cache") == [], "never cached without d/sub/f"


def test_an_output_deeper_than_the_system_can_name_fails_its_task_in_one_short_line(tmp_path: Path,
                                                                                     env: dict[str, str]) -> None:
    make = "import os\nos.mkdir('d'); os.chdir('d')\nfor _ in range(250): os.mkdir('a' * 24); os.chdir('a' * 24)\n"
    ws = workspace(tmp_path / "ws", {"t": {"command": ["python3", "make.py"], "inputs": ["make.py"],
                                           "outputs": ["d"]}})
    (ws / "make.py").write_text(make)
    proc = run_gaffer(["run"], cwd=ws, env=env)
    assert proc.returncode == 1, proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("  failed: t: ")]
    assert len(failed) == 1 and failed[0].endswith("cannot be read (File name too long)") and len(failed[0]) < 300
    assert run_gaffer(["clean"], cwd=ws, env=env).returncode == 0 and not (ws / "d").exists()


def test_an_output_directory_left_unreadable_is_removed_before_its_task_runs(tmp_path: Path,
                                                                             env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "mkdir -p d && echo new > d/f", "outputs": ["d"]}})
    for sub in ("none", "write-only", "read-only"):
        (ws / "d" / sub).mkdir(parents=True)
        (ws / "d" / sub / "old").write_text("stale")
    (ws / "d" / "none").chmod(0o000)
    (ws / "d" / "write-only").chmod(0o300)
    (ws / "d" / "read-only").chmod(0o400)
    (ws / "d").chmod(0o500)
    proc = as_a_user(["run"], cwd=ws, env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (ws / "d").iterdir()) == ["f"]


# -- rule: a restore killed midway leaves nothing behind that outlives the output ------------------------------

def test_a_restore_killed_midway_leaves_no_temp_file_for_good(tmp_path: Path, env: dict[str, str]) -> None:
    """A file is restored into a temp file beside it, then renamed. After a SIGKILL in between, the next restore
    of the output reuses that temp, and `gaffer clean` (or a run of the task) removes it with the output."""
    from gaffer.actions import restore_temp

    ws = workspace(tmp_path / "ws", {"t": {"command": "mkdir -p bin && echo made > bin/tool", "env": ["V"],
                                           "outputs": ["bin/tool"]}})
    build(ws, {**env, "V": "1"})
    left = restore_temp(ws / "bin" / "tool")
    assert left.parent == ws / "bin" and left.name.startswith(".gaffer-") and len(left.name) < 40
    left.write_text("half a file a killed gaffer left")
    (ws / "bin" / "tool").unlink()
    assert build(ws, {**env, "V": "1"})["status"] == {"t": "cached"}
    assert sorted(p.name for p in (ws / "bin").iterdir()) == ["tool"]

    left.write_text("half a file a killed gaffer left")
    assert run_gaffer(["clean"], cwd=ws, env=env).returncode == 0
    assert sorted(p.name for p in (ws / "bin").iterdir()) == []

    left.symlink_to(tmp_path / "elsewhere")  # one planted in a checkout: never written through
    (tmp_path / "elsewhere").write_text("theirs")
    build(ws, {**env, "V": "1"})
    assert (tmp_path / "elsewhere").read_text() == "theirs" and (ws / "bin" / "tool").read_text() == "made\n"


def test_removing_an_unopenable_output_directory_leaves_the_modes_around_it(tmp_path: Path,
                                                                            env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "mkdir -p d out/d && echo new > d/f",
                                           "outputs": ["d", "out/d"]}})
    for d in (ws / "d", ws / "out" / "d"):
        (d / "sub").mkdir(parents=True)
        d.chmod(0o000)
    ws.chmod(0o755)  # a checkout shared with a group: gaffer must not take its access away
    (ws / "out").chmod(0o775)
    proc = as_a_user(["run"], cwd=ws, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (mode(ws), mode(ws / "out")) == (0o755, 0o775)
    assert (ws / "d" / "f").read_text() == "new\n"


def test_clean_stopped_by_an_output_it_cannot_remove_forgets_what_it_removed(tmp_path: Path,
                                                                              env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"a": {"command": "echo a > a.txt", "outputs": ["a.txt"]},
                                     "b": {"command": "mkdir -p d/theirs && echo b > d/theirs/f", "outputs": ["d"]}})
    assert as_a_user(["run"], cwd=ws, env=env).returncode == 0
    if os.geteuid() == 0:  # another user's directory, which gaffer (without CAP_FOWNER) may not make writable
        os.chown(ws / "d" / "theirs", NOBODY, NOBODY)
    (ws / "d" / "theirs").chmod(0o555)
    proc = subprocess.run([*unprivileged(("dac_override", "dac_read_search", "fowner")), sys.executable, "-m",
                           "gaffer", "clean"], cwd=ws, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert not (ws / "a.txt").exists()
    assert "a" not in WorkspaceState.load(ws / ".gaffer").tasks, "a.txt is gone: a's last run is forgotten"
