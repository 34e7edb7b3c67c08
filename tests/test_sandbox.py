"""The sandboxed executor: an Action run from the CAS alone in a fresh exec root gives the ActionResult a local
run gives, sees nothing it did not declare, cannot change a cached blob, and refuses an unsafe or incomplete
Action before running anything."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from gaffer import actions
from gaffer.cache.disk import DiskStore
from gaffer.digest import Digest, digest_bytes
from gaffer.execute.local import ProcessRunner
from gaffer.execute.sandbox import BadAction, MissingBlobs, SandboxResult, run_action
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.state import WorkspaceState
from tests.support import NOBODY, REPO, alive, gaffer_env, require, run_gaffer

PASS = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}


@pytest.fixture(scope="module")
def runner() -> ProcessRunner:
    return ProcessRunner()


@pytest.fixture
def store(tmp_path: Path) -> DiskStore:
    return DiskStore(tmp_path / "cache")


def put(store: DiskStore, data: bytes) -> Digest:
    digest = digest_bytes(data)
    store.write_blob(digest, data)
    return digest


def input_files(store: DiskStore, files: Mapping[str, tuple[bytes, int | None]]) -> list[actions.FileEntry]:
    """Store each file's content; its entry keeps a mode only where one is given (a dep's output records it)."""
    return [actions.FileEntry(path, put(store, data), bool((mode or 0) & 0o100), mode)
            for path, (data, mode) in files.items()]


def store_action(store: DiskStore, argv: Sequence[str], files: Iterable[actions.FileEntry] = (),
                 symlinks: Iterable[actions.SymlinkEntry] = (), directories: Iterable[actions.DirectoryEntry] = (),
                 outputs: Sequence[str] = (), env: Mapping[str, str] | None = None, timeout: float | None = None,
                 platform: Mapping[str, str] | None = None, salt: bytes = b"", working_directory: str = "") -> Digest:
    """Store an Action, its Command and its input root's Directory blobs, built as gaffer builds a task's key."""
    root, blobs = actions.input_root(files, symlinks, directories)
    for digest, data in blobs.items():
        store.write_blob(digest, data)
    command = re_pb2.Command(arguments=list(argv), output_paths=sorted(outputs), working_directory=working_directory)
    for name, value in sorted((env or {}).items()):
        command.environment_variables.add(name=name, value=value)
    command_digest = put(store, command.SerializeToString(deterministic=True))
    action = re_pb2.Action(command_digest=re_pb2.Digest(hash=command_digest.hash, size_bytes=command_digest.size_bytes),
                           input_root_digest=re_pb2.Digest(hash=root.hash, size_bytes=root.size_bytes), salt=salt)
    if timeout:
        action.timeout.FromNanoseconds(int(timeout * 1e9))
    for name, value in sorted((platform or {}).items()):
        action.platform.properties.add(name=name, value=value)
    return put(store, action.SerializeToString(deterministic=True))


def run(store: DiskStore, action: Digest, work: Path, runner: ProcessRunner, **kwargs: bool) -> SandboxResult:
    return run_action(action, store, work, PASS, runner, **kwargs)


def stdout(store: DiskStore, done: SandboxResult) -> str:
    data = store.read_blob(Digest(done.result.stdout_digest.hash, done.result.stdout_digest.size_bytes))
    assert data is not None
    return data.decode()


def restored(store: DiskStore, done: SandboxResult, declared: Sequence[str]) -> dict[str, tuple]:
    """What gaffer would restore from the result: every path with its kind, content digest or target, and mode."""
    cached = actions.parse_result(done.result.SerializeToString(), declared)
    actions.read_trees(cached.outputs, store)
    return {**{f.path: ("file", f.digest.hash, f.mode) for f in cached.outputs.files},
            **{s.path: ("symlink", s.target) for s in cached.outputs.symlinks},
            **{d.path: ("dir", d.mode) for d in cached.outputs.directories}}


# -- rule: outputs come back by content and mode, as the ActionResult of a local run names them ------------------

def test_outputs_come_back_with_modes_empty_dirs_and_symlinks(tmp_path: Path, store: DiskStore,
                                                              runner: ProcessRunner) -> None:
    script = ("umask 022; cp in.txt secret.txt && chmod 600 secret.txt && printf '#!/bin/sh\\necho hi\\n' > tool"
              " && chmod 755 tool && mkdir -p d/empty && printf x > d/f && ln -s d/f link && echo done")
    outputs = ["d", "link", "secret.txt", "tool"]
    action = store_action(store, ["sh", "-c", script], input_files(store, {"in.txt": (b"secret", None)}),
                          outputs=outputs)
    done = run(store, action, tmp_path / "work", runner)
    assert done.failure == "" and done.result.exit_code == 0
    assert stdout(store, done) == "done\n"
    assert restored(store, done, outputs) == {
        "secret.txt": ("file", digest_bytes(b"secret").hash, 0o600),
        "tool": ("file", digest_bytes(b"#!/bin/sh\necho hi\n").hash, 0o755),
        "d": ("dir", 0o755), "d/empty": ("dir", 0o755), "d/f": ("file", digest_bytes(b"x").hash, 0o644),
        "link": ("symlink", "d/f"),
    }
    assert [f.is_executable for f in done.result.output_files] == [False, True]
    assert store.find_missing(done.blobs) == []
    assert list((tmp_path / "work").iterdir()) == [], "the exec root is removed"


def test_a_symlink_output_that_escapes_fails_the_action(tmp_path: Path, store: DiskStore,
                                                        runner: ProcessRunner) -> None:
    action = store_action(store, ["sh", "-c", "ln -s ../../etc/passwd out"], outputs=["out"])
    done = run(store, action, tmp_path / "work", runner)
    assert "symlink out points outside the workspace" in done.failure
    assert not done.result.output_symlinks


def test_a_missing_declared_output_fails_the_action(tmp_path: Path, store: DiskStore, runner: ProcessRunner) -> None:
    action = store_action(store, ["sh", "-c", "echo made > made.txt"], outputs=["made.txt", "sub/never.txt"])
    done = run(store, action, tmp_path / "work", runner)
    assert done.failure == "declared output 'sub/never.txt' was not created by the task"
    assert [f.path for f in done.result.output_files] == ["made.txt"], "what was made is reported, as REAPI does"


def test_a_working_directory_runs_the_command_there_with_outputs_relative_to_it(
        tmp_path: Path, store: DiskStore, runner: ProcessRunner) -> None:
    files = input_files(store, {"pkg/in.txt": (b"in\n", None)})
    action = store_action(store, ["sh", "-c", "cat in.txt > gen/out.txt"], files, outputs=["gen/out.txt"],
                          working_directory="pkg")
    done = run(store, action, tmp_path / "work", runner)
    assert done.failure == ""
    assert [(f.path, f.digest.hash) for f in done.result.output_files] == [("gen/out.txt", digest_bytes(b"in\n").hash)]
    with pytest.raises(BadAction, match="working directory 'nowhere' is not a directory of the input root"):
        run(store, store_action(store, ["true"], files, working_directory="nowhere"), tmp_path / "work", runner)


def test_an_output_in_git_or_gaffer_is_the_actions_own(tmp_path: Path, store: DiskStore,
                                                      runner: ProcessRunner) -> None:
    """An exec root is no workspace: a REAPI action may make `.git/x` (gaffer refuses that only in a workspace)."""
    action = store_action(store, ["sh", "-c", "echo x > .git/x && echo y > .gaffer/y"], outputs=[".git/x", ".gaffer/y"])
    done = run(store, action, tmp_path / "work", runner)
    assert done.failure == "" and done.result.exit_code == 0
    assert restored(store, done, [".git/x", ".gaffer/y"]) == {
        ".git/x": ("file", digest_bytes(b"x\n").hash, 0o644), ".gaffer/y": ("file", digest_bytes(b"y\n").hash, 0o644)}


def test_a_command_that_cannot_start_fails_clearly(tmp_path: Path, store: DiskStore, runner: ProcessRunner) -> None:
    done = run(store, store_action(store, ["no-such-program-gaffer"]), tmp_path / "work", runner)
    assert done.failure.startswith("cannot run 'no-such-program-gaffer'")
    assert not (tmp_path / "work").exists() or list((tmp_path / "work").iterdir()) == []


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory user nobody can reach: root ignores permission bits (and CI runs as root)."""
    require(os.geteuid() == 0 and shutil.which("setpriv") is not None, "running as nobody needs root and setpriv")
    path = Path(tempfile.mkdtemp(prefix="gaffer-test-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["chmod", "-R", "u+rwx", str(path)], check=False)  # whatever a failed run left locked
    shutil.rmtree(path)


RUN_AS_NOBODY = """
import os, sys
from pathlib import Path
from gaffer.cache.disk import DiskStore
from gaffer.digest import Digest
from gaffer.execute.local import ProcessRunner
from gaffer.execute.sandbox import run_action
done = run_action(Digest(sys.argv[2], int(sys.argv[3])), DiskStore(sys.argv[1]), Path(sys.argv[4]),
                  {"PATH": os.environ["PATH"]}, ProcessRunner())
print(done.failure or "ok")
"""


def test_the_exec_root_is_removed_whatever_modes_the_task_left(shared: Path) -> None:
    store = DiskStore(shared / "cache")
    outside, work = shared / "outside", shared / "work"
    outside.mkdir(mode=0o500)
    work.mkdir()
    script = f"mkdir -p locked/inner && touch locked/inner/f && chmod 000 locked/inner && chmod 500 locked && " \
             f"ln -s {outside} out-link"
    action = store_action(store, ["sh", "-c", script])
    for path in (outside, work, shared / "cache", *(shared / "cache").rglob("*")):
        os.chown(path, NOBODY, NOBODY)
    proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c",
                           RUN_AS_NOBODY, str(shared / "cache"), action.hash, str(action.size_bytes), str(work)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert (proc.returncode, proc.stdout) == (0, "ok\n"), proc.stderr
    assert list(work.iterdir()) == []
    assert stat.S_IMODE(outside.stat().st_mode) == 0o500, "a symlink out of the exec root is not followed"


# -- rule: the exec root holds the declared inputs and nothing else ----------------------------------------------

def test_the_exec_root_holds_exactly_the_declared_inputs(tmp_path: Path, store: DiskStore,
                                                         runner: ProcessRunner) -> None:
    files = input_files(store, {"a.txt": (b"a", None), "bin/tool": (b"#!/bin/sh\n", 0o755),
                                "lib/ro.txt": (b"ro", 0o444)})
    links = [actions.SymlinkEntry("lib/link", "../a.txt")]
    dirs = [actions.DirectoryEntry("lib", 0o750), actions.DirectoryEntry("lib/empty", 0o700)]
    action = store_action(store, ["sh", "-c", "find . -mindepth 1 -printf '%p %y %m\\n' | LC_ALL=C sort"],
                          files, links, dirs)
    done = run(store, action, tmp_path / "work", runner)
    assert done.failure == ""
    assert stdout(store, done).splitlines() == [
        "./a.txt f 644", "./bin d 755", "./bin/tool f 755", "./lib d 750", "./lib/empty d 700",
        "./lib/link l 777", "./lib/ro.txt f 444",
    ]


def test_an_undeclared_input_is_not_there(tmp_path: Path, store: DiskStore, runner: ProcessRunner) -> None:
    ws = tmp_path / "ws"
    (ws / ".gaffer").mkdir(parents=True)
    (ws / "undeclared.txt").write_text("here in the workspace\n")
    action = store_action(store, ["sh", "-c", "cat declared.txt undeclared.txt > out.txt"],
                          input_files(store, {"declared.txt": (b"declared\n", None)}), outputs=["out.txt"])
    done = run(store, action, ws / ".gaffer" / "sandbox", runner)
    assert done.failure == "exited with status 1"
    assert "undeclared.txt: No such file or directory" in store.read_blob(  # type: ignore[operator]
        Digest(done.result.stderr_digest.hash, done.result.stderr_digest.size_bytes)).decode()


def test_the_command_sees_its_own_environment_and_the_pass_through_variables(
        tmp_path: Path, store: DiskStore, runner: ProcessRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAFFER_TEST_LEAK", "from the parent")
    action = store_action(store, ["sh", "-c", "echo \"$DECLARED|${GAFFER_TEST_LEAK-unset}|$HOME\""],
                          env={"DECLARED": "yes", "HOME": "/declared/home"})
    done = run_action(action, store, tmp_path / "work", {"PATH": os.environ["PATH"], "HOME": "/pass"}, runner)
    assert stdout(store, done) == "yes|unset|/declared/home\n", "the Command's own value wins over a pass-through"


# -- rule: materialised by copy: a task's in-place write never reaches the CAS -----------------------------------

def test_an_in_place_write_to_an_input_leaves_the_cas_blob_alone(tmp_path: Path, store: DiskStore,
                                                                 runner: ProcessRunner) -> None:
    files = input_files(store, {"data.txt": (b"original\n", None), "ro.txt": (b"read-only\n", 0o444)})
    script = "stat -c %h data.txt ro.txt; echo changed >> data.txt; chmod 600 ro.txt; echo changed >> ro.txt"
    action = store_action(store, ["sh", "-c", script], files)
    done = run(store, action, tmp_path / "work", runner)
    assert done.failure == ""
    assert stdout(store, done) == "1\n1\n", "never a hardlink into the CAS"
    for entry, data in zip(files, (b"original\n", b"read-only\n"), strict=True):
        assert store.read_blob(entry.digest) == data
        assert stat.S_IMODE(os.stat(store.blob_path(entry.digest)).st_mode) & 0o222, "the blob's mode is untouched"


# -- rule: an Action that cannot be materialised as stored is refused before anything runs ------------------------

def test_a_missing_blob_is_a_clear_error(tmp_path: Path, store: DiskStore, runner: ProcessRunner) -> None:
    absent = actions.FileEntry("src/a.txt", digest_bytes(b"never stored"), False)
    marker = tmp_path / "ran"
    action = store_action(store, ["touch", str(marker)], [absent])
    with pytest.raises(MissingBlobs, match=f"not in the cache: file src/a.txt {digest_bytes(b'never stored')}"):
        run(store, action, tmp_path / "work", runner)
    assert not marker.exists()
    with pytest.raises(MissingBlobs, match="not in the cache: Action"):
        run(store, digest_bytes(b"no such action"), tmp_path / "work", runner)
    assert not (tmp_path / "work").exists(), "refused before an exec root is made"


def test_a_missing_directory_blob_is_named(tmp_path: Path, store: DiskStore, runner: ProcessRunner) -> None:
    files = input_files(store, {"sub/a.txt": (b"a", None), "top.txt": (b"t", None)})
    action = store_action(store, ["true"], files)
    root, blobs = actions.input_root(files)
    (sub,) = set(blobs) - {root}
    store.blob_path(sub).write_bytes(b"damaged")  # a corrupt blob is as good as missing
    with pytest.raises(MissingBlobs, match=f"not in the cache: Directory {sub}$") as caught:
        run(store, action, tmp_path / "work", runner)
    assert caught.value.digests == [sub]


def test_an_output_below_an_input_symlink_is_refused(tmp_path: Path, store: DiskStore,
                                                     runner: ProcessRunner) -> None:
    action = store_action(store, ["true"], input_files(store, {"real/a.txt": (b"a", None)}),
                          [actions.SymlinkEntry("link", "real")], outputs=["link/out.txt"])
    with pytest.raises(BadAction, match="output path 'link/out.txt' lies below link, which the input root holds as "
                                        "a file or symlink"):
        run(store, action, tmp_path / "work", runner)


@pytest.mark.parametrize("names", [["../x"], ["a/b"], [".."], [""], ["same", "same"]])
def test_an_unsafe_or_repeated_name_in_a_directory_is_refused(tmp_path: Path, store: DiskStore,
                                                               runner: ProcessRunner, names: list[str]) -> None:
    blob = put(store, b"payload")
    root = re_pb2.Directory()
    for name in names:
        root.files.add(name=name, digest=re_pb2.Digest(hash=blob.hash, size_bytes=blob.size_bytes))
    sub = put(store, root.SerializeToString(deterministic=True))
    top = re_pb2.Directory()
    top.directories.add(name="sub", digest=re_pb2.Digest(hash=sub.hash, size_bytes=sub.size_bytes))
    top_digest = put(store, top.SerializeToString(deterministic=True))
    command = put(store, re_pb2.Command(arguments=["true"]).SerializeToString())
    action = put(store, re_pb2.Action(
        command_digest=re_pb2.Digest(hash=command.hash, size_bytes=command.size_bytes),
        input_root_digest=re_pb2.Digest(hash=top_digest.hash, size_bytes=top_digest.size_bytes)).SerializeToString())
    with pytest.raises(BadAction, match=f"input root: unsafe or repeated name {names[-1]!r} in sub"):
        run(store, action, tmp_path / "work", runner)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "x").exists()


def test_an_output_path_that_climbs_out_is_refused(tmp_path: Path, store: DiskStore, runner: ProcessRunner) -> None:
    action = store_action(store, ["true"], outputs=["../x"])
    with pytest.raises(BadAction, match="unsafe output path '../x'"):
        run(store, action, tmp_path / "work", runner)


# -- rule: the local runner's process handling: timeout, leftovers killed ----------------------------------------

def test_a_timeout_kills_the_process_group(tmp_path: Path, store: DiskStore, runner: ProcessRunner) -> None:
    pid_file = tmp_path / "child.pid"
    action = store_action(store, ["sh", "-c", "sleep 30 & echo $! > \"$PID_FILE\"; wait"],
                          env={"PID_FILE": str(pid_file)}, timeout=0.5)
    started = time.monotonic()
    done = run(store, action, tmp_path / "work", runner, keep_failed=True)
    assert time.monotonic() - started < 20
    assert done.process.timed_out and done.failure == "timed out after 0.5s"
    assert done.kept is not None and done.kept.is_dir(), "kept for debugging, as asked"
    assert not alive(int(pid_file.read_text()))


def test_cancel_kills_the_running_action_and_removes_its_exec_root(tmp_path: Path, store: DiskStore) -> None:
    runner = ProcessRunner()  # its own: a cancelled runner starts nothing more
    started = tmp_path / "started"
    action = store_action(store, ["sh", "-c", "sleep 30 & echo $! > \"$STARTED\"; wait"], env={"STARTED": str(started)})
    outcome: list[SandboxResult] = []
    thread = threading.Thread(target=lambda: outcome.append(run(store, action, tmp_path / "work", runner)))
    thread.start()
    deadline = time.monotonic() + 30
    while not (started.exists() and started.read_text().strip()):
        assert time.monotonic() < deadline and thread.is_alive(), "the action never started"
        time.sleep(0.02)
    runner.cancel_all()
    thread.join(30)
    assert outcome and outcome[0].failure == "interrupted"
    assert not alive(int(started.read_text()))
    assert list((tmp_path / "work").iterdir()) == []



# -- rule: the same task gives the same outputs run by `gaffer run` and by the sandbox ----------------------------

GRAPH = {
    "gen": {"command": "mkdir -p out/empty && cp src/a.txt out/a.txt && chmod 600 out/a.txt && "
                       "ln -s a.txt out/link && ./tool.sh > tool.out && chmod 750 out",
            "inputs": ["src/a.txt", "tool.sh"], "outputs": ["out", "tool.out"]},
    "use": {"command": "cat out/link tool.out > use.txt && ls -A out > listing.txt && cp tool.sh run.sh",
            "inputs": ["tool.sh"], "deps": ["gen"], "outputs": ["listing.txt", "run.sh", "use.txt"]},
}


def test_gaffer_run_and_the_sandbox_give_the_same_outputs(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "graph.json").write_text(json.dumps({"tasks": GRAPH}))
    (ws / "src" / "a.txt").write_text("a\n")
    (ws / "tool.sh").write_text("#!/bin/sh\necho tool ran\n")
    os.chmod(ws / "tool.sh", 0o755)
    run_gaffer(["run", "use"], cwd=ws, env=gaffer_env(tmp_path / "cache"), check=True)
    store = DiskStore(tmp_path / "cache")
    state = WorkspaceState.load(ws / ".gaffer")
    keyed = {}
    for name in ("gen", "use"):
        task = state.tasks[name]
        m = task.manifest
        files = [actions.FileEntry(path, store.put_file(ws / path), bool(os.stat(ws / path).st_mode & 0o100))
                 for path, _hash in m.inputs]
        symlinks, directories = [], []
        for dep in GRAPH[name].get("deps", ()):
            records = state.tasks[dep].outputs
            files += [actions.FileEntry(f.path, Digest(f.hash, f.size), bool(f.mode & 0o100), f.mode)
                      for f in records.files]
            symlinks += [actions.SymlinkEntry(s.path, s.target) for s in records.symlinks]
            directories += [actions.DirectoryEntry(d.path, d.mode) for d in records.directories]
        salt = actions.KEY_FORMAT + "".join(f"\ntool {spec} {v} {h}" for spec, v, h in m.tools).encode()
        keyed[name] = store_action(store, m.argv, files, symlinks, directories, m.outputs, dict(m.env), m.timeout,
                                   dict(m.platform), salt)
        assert keyed[name].hash == task.key, "the Action built here is the one gaffer run keyed"
    ws.rename(tmp_path / "elsewhere")  # the sandbox reads the CAS only

    runner = ProcessRunner()
    for action in keyed.values():
        stored = store.read_action(action)
        assert stored is not None
        local = re_pb2.ActionResult.FromString(stored)
        done = run_action(action, store, tmp_path / "sandbox", PASS, runner)
        assert done.failure == ""
        assert list(done.result.output_files) == list(local.output_files)  # path, digest, executable bit, mode
        assert list(done.result.output_symlinks) == list(local.output_symlinks)
        assert list(done.result.output_directories) == list(local.output_directories)  # Trees: content and modes
        assert done.result.stdout_digest == local.stdout_digest
        assert len(local.output_files) + len(local.output_directories) > 0
