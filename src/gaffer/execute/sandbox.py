"""Run a REAPI Action in a fresh exec root built from the CAS alone: the sandboxed local executor
(`SandboxExecutor`), and the code a remote worker runs (`run_action`).

The Action, its Command and its input root's Directory tree are read from the local CAS (every blob verified),
never from a workspace, so a task that reads a file it did not declare fails here as it would on a worker. Files
are materialised by copy (`copy_file_range`: a reflink where the file system has one), never by a hardlink into
the CAS: a task writing an input in place must not change a cached blob, and one inode cannot carry two modes.
Permission bits, symlinks and empty directories come out as the Directory messages say; a name that could
escape the exec root or clash is refused before anything is written.

The Command runs with exactly its own environment plus the pass-through variables the executor supplies (PATH,
HOME, ...), through the local runner (execute/local.py: its own process group, the Action's timeout,
cancellation, and the kill of whatever it left running). Its output paths are then stored in the CAS and
described by an ActionResult the way a local run describes them: files by content and mode, directories as
Trees, symlinks only if they stay inside the exec root.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from google.protobuf.message import Message

from gaffer import actions
from gaffer.cache.disk import DiskStore
from gaffer.digest import EMPTY_DIGEST, Digest, digest_file, is_valid_hash
from gaffer.execute.base import ExecuteResult, task_environment
from gaffer.execute.local import ProcessResult, ProcessRunner
from gaffer.graph.load import MAX_TIMEOUT_S
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos import wire
from gaffer.state import STATE_DIR

if TYPE_CHECKING:
    from gaffer.actions import PreparedAction
    from gaffer.execute.local import LocalExecutor

_M = TypeVar("_M", bound=Message)


class BadAction(Exception):
    """The Action cannot be run as stored: a malformed message, an unsafe name or path, a missing blob."""


class MissingBlobs(BadAction):
    """Blobs the Action needs are not in the CAS (a REAPI worker answers FAILED_PRECONDITION, naming them)."""

    def __init__(self, action: Digest, missing: Sequence[tuple[str, Digest]]) -> None:
        self.digests = [digest for _what, digest in missing]
        shown = ", ".join(f"{what} {digest}" for what, digest in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        super().__init__(f"action {action}: not in the cache: {shown}{more}")


@dataclass
class SandboxResult:
    """One run of an Action: what a REAPI Execute answers, and what the executor needs to report and store it."""

    result: re_pb2.ActionResult  # also for a failed command: its exit code, logs and whatever outputs it made
    process: ProcessResult
    failure: str  # why the action failed (a task's reason); "" when it exited 0 with every declared output
    blobs: list[Digest]  # every CAS blob the result names (files, trees, stdout, stderr)
    unstorable: str = ""  # why its outputs could not be stored (then the result names none): the action's fault
    kept: Path | None = None  # the exec root, left for debugging a failure when asked to


def run_action(
    action_digest: Digest,
    cas: DiskStore,
    work_parent: Path,
    passthrough_env: Mapping[str, str],
    runner: ProcessRunner,
    keep_failed: bool = False,
    cancel: threading.Event | None = None,
) -> SandboxResult:
    """Run the Action stored in `cas` under `action_digest` in a fresh directory below `work_parent`, removed
    afterwards (kept when it failed and `keep_failed`). Raises BadAction (MissingBlobs) before running anything
    if the Action cannot be materialised as stored. `cancel`: this run's own stop switch (`runner.cancel_run`)."""
    fetch_start = time.time()
    action = _message(cas, action_digest, action_digest, re_pb2.Action, "Action")
    command = _message(cas, action_digest, _digest(action_digest, action.command_digest, "command"),
                       re_pb2.Command, "Command")
    inputs = _input_root(cas, action_digest, _digest(action_digest, action.input_root_digest, "input root"))
    argv = list(command.arguments)
    if not argv:
        raise BadAction(f"action {action_digest}: its Command has no arguments")
    _check_strings(action_digest, argv, command.environment_variables)
    working = _relative(action_digest, "working directory", command.working_directory, empty_ok=True)
    if working not in {d.path for d in inputs.directories}:
        raise BadAction(f"action {action_digest}: working directory {working!r} is not a directory of the input root")
    declared = [_relative(action_digest, "output path", path) for path in
                (command.output_paths or [*command.output_files, *command.output_directories])]
    if len(set(declared)) != len(declared):
        raise BadAction(f"action {action_digest}: an output path is named twice")
    needed = {f.digest: f.path for f in inputs.files}
    missing = cas.find_missing(list(needed))
    if missing:
        raise MissingBlobs(action_digest, [(f"file {needed[d]}", d) for d in missing])
    timeout = _timeout(action_digest, action)
    env = {**passthrough_env, **{v.name: v.value for v in command.environment_variables}}

    work_parent.mkdir(parents=True, exist_ok=True)
    exec_root = Path(tempfile.mkdtemp(prefix="exec-", dir=work_parent))
    try:
        cwd = exec_root / working
        _materialise(exec_root, inputs, cas, action_digest)
        for out in declared:
            _prepare_output(cwd, out, action_digest)
        for d in sorted(inputs.directories, key=lambda d: d.path.count("/") + bool(d.path), reverse=True):
            os.chmod(exec_root / d.path, d.mode)  # last: a read-only directory is filled first
        fetched = time.time()
        done = _execute(argv, cwd, env, timeout or None, declared, cas, runner, cancel)
    except BaseException:
        _remove_tree(exec_root)
        raise
    done.result.execution_metadata.input_fetch_start_timestamp.FromNanoseconds(int(fetch_start * 1e9))
    done.result.execution_metadata.input_fetch_completed_timestamp.FromNanoseconds(int(fetched * 1e9))
    if done.failure and keep_failed:
        done.kept = exec_root
    else:
        _remove_tree(exec_root)
    return done


def _execute(argv: list[str], cwd: Path, env: Mapping[str, str], timeout: float | None, declared: Sequence[str],
             cas: DiskStore, runner: ProcessRunner, cancel: threading.Event | None) -> SandboxResult:
    """Run the command in the materialised exec root, then store its logs and outputs in the CAS."""
    stdout_path, stderr_path = cas.temp_path(), cas.temp_path()
    started = time.time()
    process = runner.run(argv, cwd, env, stdout_path, stderr_path, timeout, cancel)
    finished = time.time()
    stdout, stderr = _store_log(cas, stdout_path), _store_log(cas, stderr_path)
    failure, unstorable = process.failure(timeout), ""
    outputs = actions.Outputs(files=[], symlinks=[], directories=[])
    if not process.error and not process.cancelled:  # a failed command's outputs too, as REAPI reports them
        present = [out for out in declared if os.path.lexists(cwd / out)]
        absent = [out for out in declared if out not in present]
        try:
            outputs = actions.collect_outputs(cwd, present, cas)
        except actions.MissingOutput as e:  # gone since: removed by a process that escaped the task's group
            absent.insert(0, str(e))
        except actions.BadCacheEntry as e:
            unstorable = str(e)
            failure = failure or unstorable
        if absent and not failure:
            failure = f"declared output '{absent[0]}' was not created by the task"
    collected = time.time()
    result = re_pb2.ActionResult.FromString(
        actions.make_result(outputs, process.exit_code, stdout, stderr, started, finished))
    meta = result.execution_metadata
    meta.execution_start_timestamp.FromNanoseconds(int(started * 1e9))
    meta.execution_completed_timestamp.FromNanoseconds(int(finished * 1e9))
    meta.output_upload_start_timestamp.FromNanoseconds(int(finished * 1e9))
    meta.output_upload_completed_timestamp.FromNanoseconds(int(collected * 1e9))
    return SandboxResult(result, process, failure, [*outputs.blobs(), stdout, stderr], unstorable=unstorable)


def _message(cas: DiskStore, action: Digest, digest: Digest, cls: type[_M], what: str) -> _M:
    """A verified blob parsed as `cls`; MissingBlobs if the CAS lacks it, BadAction if it does not parse."""
    data = cas.read_blob(digest)
    if data is None:
        raise MissingBlobs(action, [(what, digest)])
    try:
        return cls.FromString(data)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError, or anything a damaged message makes it raise
        raise BadAction(f"action {action}: blob {digest} is not a {what} message") from None


def _digest(action: Digest, d: re_pb2.Digest, what: str) -> Digest:
    if not is_valid_hash(d.hash) or d.size_bytes < 0:
        raise BadAction(f"action {action}: malformed {what} digest {d.hash[:70]!r}")
    return Digest(d.hash, d.size_bytes)


def _input_root(cas: DiskStore, action: Digest, root_digest: Digest) -> actions.Outputs:
    """Every file, symlink and directory of the input root (paths relative to it; the root itself is "")."""
    missing: list[tuple[str, Digest]] = []

    def child(digest: Digest) -> wire.ReadDirectory:
        data = cas.read_blob(digest)
        if data is not None:
            try:
                return wire.read_directory(data)
            except wire.DecodeError:
                raise actions.BadCacheEntry(f"blob {digest} is not a Directory message") from None
        missing.append(("Directory", digest))
        return wire.EMPTY_DIRECTORY  # go on, to name every missing Directory at once

    try:
        root = child(root_digest)
    except actions.BadCacheEntry:
        raise BadAction(f"action {action}: blob {root_digest} is not a Directory message") from None
    if missing:
        raise MissingBlobs(action, missing)
    tree = actions.Outputs(files=[], symlinks=[], directories=[])
    try:
        actions.expand_directory("", root, child, tree)
    except actions.BadCacheEntry as e:
        raise BadAction(f"action {action}: input root: {e}") from None
    if missing:
        raise MissingBlobs(action, missing)
    return tree


def _timeout(action: Digest, message: re_pb2.Action) -> float | None:
    """The Action's timeout in seconds (None: none); as REAPI says, one that is negative or longer than this
    executor allows is refused, not run (the clocks it would reach cannot hold it)."""
    if not message.HasField("timeout"):
        return None
    seconds = message.timeout.seconds + message.timeout.nanos / 1e9
    if seconds < 0:
        raise BadAction(f"action {action}: negative timeout {seconds:g}s")
    if seconds > MAX_TIMEOUT_S:
        raise BadAction(f"action {action}: timeout longer than {MAX_TIMEOUT_S}s (a year): {seconds:g}s")
    return seconds or None


def _check_strings(action: Digest, argv: Sequence[str], env: Sequence[re_pb2.Command.EnvironmentVariable]) -> None:
    """Refuse what no process can be given: a NUL byte in an argument or variable, a variable named '' or 'A=B'."""
    for arg in argv:
        if "\0" in arg:
            raise BadAction(f"action {action}: argument {arg[:100]!r} holds a NUL byte")
    for var in env:
        if not var.name or "=" in var.name or "\0" in var.name or "\0" in var.value:
            raise BadAction(f"action {action}: environment variable {var.name[:100]!r} cannot be set "
                            "(an empty name, '=' in the name, or a NUL byte)")


def _relative(action: Digest, what: str, path: str, empty_ok: bool = False) -> str:
    """A path the Command names, which must stay inside the exec root: relative, normalized, no "..", no NUL."""
    if not path and empty_ok:
        return ""
    if (not path or os.path.isabs(path) or os.path.normpath(path) != path or path in (".", "..")
            or path.startswith("../") or "\0" in path):
        raise BadAction(f"action {action}: unsafe {what} {path[:200]!r}")
    return path


def _materialise(exec_root: Path, inputs: actions.Outputs, cas: DiskStore, action: Digest) -> None:
    """Write the input root into `exec_root`: directories (parents first), copied files with their modes,
    symlinks. Directories get their modes later, once everything that goes in them is there."""
    for d in inputs.directories:
        (exec_root / d.path).mkdir(exist_ok=not d.path)
    for f in inputs.files:
        dest = exec_root / f.path
        if not cas.fetch_blob(f.digest, dest):  # evicted or found corrupt since `find_missing`
            raise MissingBlobs(action, [(f"file {f.path}", f.digest)])
        os.chmod(dest, f.mode if f.mode is not None else 0o755 if f.executable else 0o644)
    for s in inputs.symlinks:
        os.symlink(s.target, exec_root / s.path)


def _prepare_output(cwd: Path, out: str, action: Digest) -> None:
    """Make an output path's parent directories (a REAPI worker's duty) and remove whatever the input root holds
    at the path itself, as a local run does, so nothing stale can pass for an output. A parent that the input
    root holds as a file or symlink is refused: nothing is created or removed through a symlink."""
    parent = cwd
    for part in out.split("/")[:-1]:
        parent = parent / part
        try:
            st = os.lstat(parent)
        except FileNotFoundError:
            parent.mkdir()
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise BadAction(f"action {action}: output path {out!r} lies below {parent.relative_to(cwd)}, "
                            "which the input root holds as a file or symlink")
    actions.remove_outputs(cwd, [out], in_workspace=False)


def _store_log(cas: DiskStore, path: Path) -> Digest:
    """Move a finished command's stdout or stderr file into the CAS (its writers are dead: hashed once)."""
    try:
        digest = digest_file(path)
    except FileNotFoundError:  # cancelled before it started: nothing was written
        cas.write_blob(EMPTY_DIGEST, b"")
        return EMPTY_DIGEST
    cas.adopt(digest, path)
    return digest


def _remove_tree(root: Path) -> None:
    """Remove an exec root whatever modes the task left in it (a 0500 or 0000 directory), never following a
    symlink out of it."""
    try:
        os.chmod(root, 0o700)
    except FileNotFoundError:
        return
    for dirpath, dirnames, _files in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
    shutil.rmtree(root)


class SandboxExecutor:
    """`gaffer run --sandbox` (and `"sandbox": true`): an `execute.base.Executor` that runs each action with
    `run_action` in an exec root under `.gaffer/sandbox`, then restores its outputs into the workspace from the
    ActionResult exactly as a cache hit does. It shares the local executor's process runner, so one Ctrl-C
    cancels sandboxed and workspace runs alike."""

    def __init__(self, root: Path, store: DiskStore, local: LocalExecutor, warn: Callable[[str], None],
                 keep_failed: bool = False) -> None:
        self.root = root
        self.warn = warn  # what could not be tidied (a leftover exec root, a kept one's rename): no task fails
        self.store = store  # the local CAS the input root is read from and the outputs go to
        self.local = local
        self.keep_failed = keep_failed
        self.work_parent = root / STATE_DIR / "sandbox"
        self._lock = threading.Lock()
        self._cleared = False  # the exec roots a killed gaffer left: removed before this build makes its own

    def cancel_all(self) -> None:
        self.local.cancel_all()

    def execute(self, action: PreparedAction, pass_env: Sequence[str], name: str = "") -> ExecuteResult:
        actions.remove_outputs(self.root, action.output_paths)  # as a workspace run: no stale output survives a failure
        with self._lock:
            if not self._cleared:
                self._remove_leftovers()
                self._cleared = True
        try:
            self._store_inputs(action)
            done = run_action(action.digest, self.store, self.work_parent, task_environment((), pass_env),
                              self.local.runner, keep_failed=self.keep_failed)
        except BadAction as e:
            return ExecuteResult(0.0, b"", b"", failure=str(e))
        except OSError as e:
            return ExecuteResult(0.0, b"", b"", failure=f"cannot read an input: {e}")
        stdout = self.store.read_blob(_digest(action.digest, done.result.stdout_digest, "stdout")) or b""
        stderr = self.store.read_blob(_digest(action.digest, done.result.stderr_digest, "stderr")) or b""
        duration = done.process.duration_s
        if done.failure:
            kept = ""
            if done.kept:  # renamed so that it is not taken for one a killed gaffer left
                renamed = done.kept.with_name(f"kept-{done.kept.name}")
                try:
                    os.rename(done.kept, renamed)
                except OSError as e:
                    self.warn(f"cannot rename {done.kept} to {renamed.name} ({e.strerror}): the next sandboxed"
                              " build removes it")
                    renamed = done.kept
                kept = f" (its exec root is kept in {renamed})"
            return ExecuteResult(duration, stdout, stderr, failure=done.failure + kept)
        data = done.result.SerializeToString(deterministic=True)
        try:
            cached = actions.parse_result(data, action.output_paths)
            actions.read_trees(cached.outputs, self.store)
            actions.restore_outputs(self.root, cached, self.store)
        except (actions.BadCacheEntry, OSError) as e:
            return ExecuteResult(duration, stdout, stderr, failure=f"cannot restore its outputs: {e}")
        return ExecuteResult(duration, stdout, stderr, outputs=cached.outputs, action_result=data, blobs=done.blobs)

    def _remove_leftovers(self) -> None:
        """Remove the exec roots a gaffer killed mid-build left (this build holds the workspace: no other build
        uses them); those kept on purpose (`kept-*`) stay. Best effort: one that cannot be removed (another
        user's files in it, a mount) is one warning, and the build goes on."""
        try:
            names = sorted(os.listdir(self.work_parent))
        except OSError:
            return
        failed: list[OSError] = []
        for name in names:
            if name.startswith("exec-"):
                try:
                    _remove_tree(self.work_parent / name)
                except OSError as e:
                    failed.append(e)
        if failed:
            first = failed[0]
            self.warn(f"cannot remove {len(failed)} exec root(s) a killed gaffer left in {self.work_parent}"
                      f" ({first.filename}: {first.strerror}): remove them by hand")

    def _store_inputs(self, action: PreparedAction) -> None:
        """Put every input file the local CAS lacks (a workspace source; a dep's output evicted since) into it
        from the workspace; BadAction if one no longer has the digest the task was keyed with."""
        try:
            tree = action.input_tree()
        except actions.BadCacheEntry as e:
            raise BadAction(f"action {action.digest}: input root: {e}") from None
        wanted = {f.digest: f.path for f in tree.files}
        for digest in self.store.find_missing(list(wanted)):
            if self.store.put_file(self.root / wanted[digest]) != digest:
                raise BadAction(f"input {wanted[digest]} changed since the task was keyed")
