"""`gaffer run --remote URL`: the Executor that sends a prepared action to a REAPI Execution service.

For each action: FindMissingBlobs over the Action, Command, input-root Directories and every input file, then
upload only what the server lacks (workspace sources through the local CAS, so a file changed since it was keyed
is caught); Execute with skip_cache_lookup=false, so the server's action cache can answer without running
anything; follow the Operation stream (queued, executing on a worker) and re-attach with WaitExecution when it
breaks. An operation the server no longer knows (it restarted) is submitted once more; FAILED_PRECONDITION
(inputs gone from its CAS) uploads again and retries once. A COMPLETED result is validated like any cache entry
(paths inside the declared outputs, symlinks inside the workspace), its blobs fetched and verified into the local
CAS and its outputs written into the workspace exactly as a local run leaves them, so the build records it the
same way. With `--remote-download=minimal` only the requested targets' outputs come back; the others stay on the
remote (recorded by digest) and are fetched when a task running here needs them (`run_here`).

An unreachable remote (UNAVAILABLE at the first call, or a stream that cannot be re-attached) turns remote
execution off for the rest of the build with one warning and the task runs here, unless fallback is off.

Every call carries REAPI's RequestMetadata (tool "gaffer", one invocation id per build, the task's name), on the
cache tier's channel (cache/grpc.py): there is one CAS client. Imported only when a remote is configured.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from google.longrunning import operations_pb2
from google.protobuf import wrappers_pb2

from gaffer import __version__, actions
from gaffer.cache.base import TierError
from gaffer.digest import EMPTY_DIGEST, Digest, is_valid_hash
from gaffer.errors import EnvironmentProblem, UserError
from gaffer.execute.base import ExecuteResult
from gaffer.protos import execution_service_pb2_grpc
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos.digests import from_proto, to_proto

if TYPE_CHECKING:
    from gaffer.actions import PreparedAction
    from gaffer.cache.disk import DiskStore
    from gaffer.cache.grpc import GrpcTier
    from gaffer.execute.base import Executor

Entry = actions.FileEntry | actions.SymlinkEntry | actions.DirectoryEntry
METADATA_HEADER = "build.bazel.remote.execution.v2.requestmetadata-bin"
REATTACH_S = 60.0  # how long a broken Operation stream is re-attached (a server restarting) before giving up
UPLOAD_BATCH_BYTES = 16 * 1024 * 1024  # small blobs read into memory at once for BatchUpdateBlobs
SMALL_BLOB = 1024 * 1024  # larger ones are streamed from their file
# A broken stream (server gone, connection reset, proxy timeout): re-attach to the operation by name.
_REATTACH = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                       grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED})
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


class Unreachable(Exception):
    """The remote cannot be reached: run here (fallback) or fail the build's remote tasks."""


class RemoteFailure(Exception):
    """The remote answered, but the action cannot be run there as asked: the task fails with this reason."""


class LostInputs(RemoteFailure):
    """Inputs left on the remote by `--remote-download=minimal` are gone from it and from here."""


class RemoteExecutor:
    """An `execute.base.Executor` on a REAPI Execution service (gaffer serve with workers, BuildGrid, ...)."""

    def __init__(self, root: Path, store: DiskStore, local: Executor, tier: GrpcTier, *, fallback: bool,
                 minimal: bool, wanted: Collection[str], on_stage: Callable[[str, str], None],
                 warn: Callable[[str], None]) -> None:
        self.root = root
        self.store = store  # the local CAS: sources go up through it, results come down into it
        self.local = local  # runs a task here when the remote is unreachable (fallback)
        self.tier = tier
        self.fallback = fallback
        self.minimal = minimal
        self.wanted = frozenset(wanted)  # tasks whose outputs come back even with minimal: the requested targets
        self.on_stage = on_stage  # (task, "queued" / "executing on worker W"): the progress display's hook
        self.warn = warn
        self.invocation = str(uuid.uuid4())  # RequestMetadata.tool_invocation_id: one per build
        self._execution = execution_service_pb2_grpc.ExecutionStub(tier.channel)
        self._down = ""  # why remote execution is off for the rest of the build ("" while it is on)
        self._cancelled = threading.Event()
        self._calls: set[grpc.RpcContext] = set()  # the Execute and WaitExecution streams in progress
        self._lock = threading.Lock()  # guards _calls, _down and _left
        self._left: dict[str, Entry] = {}  # outputs left on the remote, by workspace path
        self._here_slots = threading.BoundedSemaphore(os.cpu_count() or 1)

    # -- set-up --------------------------------------------------------------------------------------------------

    def connect(self) -> None:
        """Ask the server's Capabilities now, so a wrong URL is one line before the build. Unreachable: one
        warning and every task runs here (EnvironmentProblem without fallback); no execution service: UserError."""
        from gaffer.protos import remote_execution_pb2_grpc as re_grpc

        request = re_pb2.GetCapabilitiesRequest(instance_name=self.tier.instance)
        try:
            caps = re_grpc.CapabilitiesStub(self.tier.channel).GetCapabilities(
                request, timeout=self.tier.timeout, metadata=self.tier.with_headers(self._headers("")).metadata)
            self.tier.check()
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise UserError(f"remote {self.tier.name}: {e.code().name}: {e.details()} (its token_file?)") from None
            self._unreachable(f"{e.code().name}: {e.details()}", at_start=True)
            return
        except TierError as e:
            self._unreachable(str(e), at_start=True)
            return
        if caps.HasField("execution_capabilities") and not caps.execution_capabilities.exec_enabled:
            raise UserError(f"remote {self.tier.name}: the server offers no remote execution (only a cache: "
                            "use it with --cache)")

    def remember_remote(self, outputs: actions.Outputs) -> None:
        """Outputs left on the remote, by this build or an earlier one (the workspace state's records without
        stat signatures): what `run_here` writes here first when a task running here needs them."""
        with self._lock:
            self._left.update((e.path, e) for e in _entries(outputs))

    # -- the Executor interface ----------------------------------------------------------------------------------

    def cancel_all(self) -> None:
        self._cancelled.set()
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.cancel()
        self.local.cancel_all()

    def execute(self, action: PreparedAction, pass_env: Sequence[str], name: str = "") -> ExecuteResult:
        if self._down:
            return self._here(action, pass_env, name)
        actions.remove_outputs(self.root, action.output_paths)  # as a local run: no stale output survives a failure
        start = time.perf_counter()
        view = self.tier.with_headers(self._headers(name))
        try:
            return self._remote(view, action, name, start)
        except Unreachable as e:
            if not self._unreachable(str(e)):
                return ExecuteResult(time.perf_counter() - start, b"", b"",
                                     failure=f"remote {self.tier.name} unreachable: {e}")
            return self._here(action, pass_env, name)
        except RemoteFailure as e:
            return ExecuteResult(time.perf_counter() - start, b"", b"", failure=str(e))

    def run_here(self, executor: Executor, action: PreparedAction, pass_env: Sequence[str],
                 name: str) -> ExecuteResult:
        """Run a task on this machine during a remote build (`"remote": false`, `"cache": false`, a fallback): its
        inputs left on the remote written here first, and at most one such task per core (`-j` counts the farm's
        slots, not this machine's)."""
        problem = self._materialise(action)
        if problem:
            return ExecuteResult(0.0, b"", b"", failure=problem)
        with self._here_slots:
            return executor.execute(action, pass_env, name)

    def _materialise(self, action: PreparedAction) -> str:
        """Write into the workspace every input of `action` that an earlier task left on the remote, before the
        action runs here; "" when done, else why it cannot run."""
        try:
            tree = action.input_tree()
        except actions.BadCacheEntry as e:
            return f"input root: {e}"
        with self._lock:
            wanted = actions.Outputs([f for f in tree.files if self._left.get(f.path) == f],
                                     [s for s in tree.symlinks if self._left.get(s.path) == s],
                                     [d for d in tree.directories if self._left.get(d.path) == d])
        if not _entries(wanted):
            return ""
        view = self.tier.with_headers(self._headers(""))
        try:
            fetched = self._fetch(view, [f.digest for f in wanted.files])
        except Unreachable as e:
            return f"cannot fetch the inputs left on the remote: {e}"
        if not fetched:
            return "inputs left on the remote are gone from it; the tasks that made them run again next build"
        try:
            actions.restore_outputs(self.root, actions.CachedResult(wanted, EMPTY_DIGEST, EMPTY_DIGEST, 0.0),
                                    self.store)
        except (actions.BadCacheEntry, OSError) as e:
            return f"cannot write an input left on the remote: {e}"
        with self._lock:
            for entry in _entries(wanted):
                self._left.pop(entry.path, None)
        return ""

    def keeps_remote(self, name: str) -> bool:
        """Are the task's outputs left on the remote (`--remote-download=minimal`, not a requested target)?"""
        return self.minimal and name not in self.wanted

    def holds(self, digests: Sequence[Digest]) -> bool:
        """Does the remote still hold these blobs (outputs an earlier build left there)? No when unreachable."""
        if self._down:
            return False
        try:
            return not self.tier.with_headers(self._headers("")).find_missing(list(digests))
        except TierError:
            return False

    # -- one remote execution ----------------------------------------------------------------------------------

    def _remote(self, view: GrpcTier, action: PreparedAction, name: str, start: float) -> ExecuteResult:
        self._upload(view, action)
        response = self._execute(view, action, name)
        if response.status.code == _FAILED_PRECONDITION:  # inputs evicted from its CAS since: upload, once more
            self._upload(view, action)
            response = self._execute(view, action, name)
        status, result = response.status, response.result
        where = "" if response.cached_result else f"worker {result.execution_metadata.worker or '?'}"
        if status.code not in (0, _DEADLINE_EXCEEDED):
            message = status.message or response.message
            # a result beside a failure (an output the worker could not store): the command's logs
            stdout, stderr = self._logs(view, result) if response.HasField("result") else (b"", b"")
            return ExecuteResult(time.perf_counter() - start, stdout, stderr, where=where,
                                 failure=f"remote execution failed: {_CODE_NAMES.get(status.code, status.code)}: "
                                         f"{message}")
        if status.code == _DEADLINE_EXCEEDED or result.exit_code != 0:
            stdout, stderr = self._logs(view, result)
            failure = (f"timed out after {action.timeout:g}s" if status.code == _DEADLINE_EXCEEDED and action.timeout
                       else f"exited with status {result.exit_code}")
            return ExecuteResult(time.perf_counter() - start, stdout, stderr, failure=failure, where=where)
        data = result.SerializeToString(deterministic=True)
        try:
            cached = actions.parse_result(data, action.output_paths)
        except actions.BadCacheEntry as e:
            stdout, stderr = self._logs(view, result)
            missing = [p for p in action.output_paths if p not in _named_outputs(result)]
            failure = (f"declared output '{missing[0]}' was not created by the task" if missing
                       else f"the remote's result is unusable: {e}")
            return ExecuteResult(time.perf_counter() - start, stdout, stderr, failure=failure, where=where)
        keep_remote = self.keeps_remote(name)
        try:
            if not actions.fetch_result(cached, lambda digests: self._fetch(view, digests), self.store,
                                        files=not keep_remote):
                raise Unreachable("cannot download the result's blobs")
            if not keep_remote:
                actions.restore_outputs(self.root, cached, self.store)
        except actions.BadCacheEntry as e:
            return ExecuteResult(time.perf_counter() - start, b"", b"", where=where,
                                 failure=f"the remote's result is unusable: {e}")
        except OSError as e:
            return ExecuteResult(time.perf_counter() - start, b"", b"", where=where,
                                 failure=f"cannot write its outputs: {e}")
        if keep_remote:
            self.remember_remote(cached.outputs)
        stdout = self.store.read_blob(cached.stdout) or b""
        stderr = self.store.read_blob(cached.stderr) or b""
        blobs = [*cached.outputs.trees.values(), cached.stdout, cached.stderr]
        if not keep_remote:
            blobs.extend(f.digest for f in cached.outputs.files)
        return ExecuteResult(cached.duration_s or time.perf_counter() - start, stdout, stderr,
                             outputs=cached.outputs, action_result=data, blobs=blobs, where=where,
                             cached=response.cached_result, remote_only=keep_remote)

    def _upload(self, view: GrpcTier, action: PreparedAction) -> None:
        """Upload what the server lacks of the action: its messages from memory, input files from the local CAS
        (a workspace source is put there first and must still have the digest it was keyed with)."""
        try:
            files = action.input_tree().files
        except actions.BadCacheEntry as e:
            raise RemoteFailure(f"input root: {e}") from None
        paths = {f.digest: f.path for f in files}
        try:
            missing = view.find_missing([*action.blobs, *paths])
            batch: list[tuple[Digest, bytes]] = []
            size = 0
            for digest in missing:
                if digest in action.blobs:
                    data = action.blobs[digest]
                elif digest.size_bytes == 0:  # REAPI: always present; a server that says otherwise gets it
                    data = b""
                else:
                    blob = self._local_blob(digest, paths[digest])
                    if digest.size_bytes > SMALL_BLOB:
                        view.upload_blob(digest, blob)
                        continue
                    data = blob.read_bytes()
                batch.append((digest, data))
                size += len(data)
                if size >= UPLOAD_BATCH_BYTES:
                    view.write_blobs(batch)
                    batch, size = [], 0
            if batch:
                view.write_blobs(batch)
        except TierError as e:
            if e.transient:
                raise Unreachable(str(e)) from None
            raise RemoteFailure(f"cannot upload its inputs: {e}") from None

    def _local_blob(self, digest: Digest, path: str) -> Path:
        """The local CAS file of an input: a dep's output is there; a source is put there from the workspace."""
        if not self.store.has_blob(digest):
            with self._lock:
                left_remote = path in self._left
            try:
                if left_remote or self.store.put_file(self.root / path) != digest:
                    raise RemoteFailure(f"input {path} changed since the task was keyed")
            except FileNotFoundError:
                left_remote = True
            if left_remote:
                raise LostInputs(f"input {path}, left on the remote by an earlier task, is gone from it; the "
                                 "task that made it runs again in the next build")
        return self.store.blob_path(digest)

    def _execute(self, view: GrpcTier, action: PreparedAction, name: str) -> re_pb2.ExecuteResponse:
        """Execute, following the Operation stream to its end: re-attached with WaitExecution when it breaks,
        submitted once more if the server has forgotten the operation (a restart)."""
        request = re_pb2.ExecuteRequest(instance_name=view.instance, action_digest=to_proto(action.digest),
                                        skip_cache_lookup=False)
        call = self._execution.Execute(request, metadata=view.metadata)
        operation = ""
        resubmitted = False
        broken_since: float | None = None
        delay = 0.1
        while True:
            with self._lock:
                self._calls.add(call)
            try:
                for op in call:
                    operation = op.name or operation
                    broken_since, delay = None, 0.1
                    if op.done:
                        return _response(op)
                    self._stage(name, op)
                why = "the operation stream ended before the operation was done"
                if not operation:
                    raise RemoteFailure(f"remote execution failed: {why}")
            except grpc.RpcError as e:
                if self._cancelled.is_set():
                    raise RemoteFailure("interrupted") from None
                code = e.code()
                why = f"{code.name}: {e.details()}"
                if code == grpc.StatusCode.FAILED_PRECONDITION:  # as an RPC error rather than in the response
                    response = re_pb2.ExecuteResponse()
                    response.status.code, response.status.message = code.value[0], e.details() or ""
                    return response
                if code == grpc.StatusCode.NOT_FOUND and operation and not resubmitted:
                    resubmitted, operation = True, ""  # the server restarted without it: submit it once more
                    call = self._execution.Execute(request, metadata=view.metadata)
                    continue
                if not operation and code == grpc.StatusCode.UNAVAILABLE:
                    raise Unreachable(why) from None
                if not operation or code not in _REATTACH:
                    raise RemoteFailure(f"remote execution failed: {why}") from None
            finally:
                with self._lock:
                    self._calls.discard(call)
            now = time.monotonic()
            broken_since = broken_since or now
            if now - broken_since > REATTACH_S:
                raise Unreachable(f"operation {operation}: {why} (for {REATTACH_S:g}s)")
            if self._down:  # another task found the remote gone for good: run here now rather than wait
                raise Unreachable(self._down)
            if self._cancelled.wait(delay):
                raise RemoteFailure("interrupted")
            delay = min(delay * 2, 5.0)
            call = self._execution.WaitExecution(re_pb2.WaitExecutionRequest(name=operation), metadata=view.metadata)

    def _stage(self, name: str, op: operations_pb2.Operation) -> None:
        meta = re_pb2.ExecuteOperationMetadata()
        if not op.metadata.Unpack(meta):
            return
        if meta.stage == re_pb2.ExecutionStage.QUEUED:
            why = wrappers_pb2.StringValue()  # gaffer serve says why an action waits long (no capable worker)
            said = [why.value for extra in meta.partial_execution_metadata.auxiliary_metadata if extra.Unpack(why)]
            self.on_stage(name, f"queued: {said[-1]}" if said else "queued")
        elif meta.stage == re_pb2.ExecutionStage.EXECUTING:
            worker = meta.partial_execution_metadata.worker
            self.on_stage(name, f"executing on {worker}" if worker else "executing")

    def _fetch(self, view: GrpcTier, digests: Sequence[Digest]) -> bool:
        """Blobs into the local CAS, verified, through a tiered cache over the remote (retries, parallel reads)."""
        from gaffer.cache.tiered import TieredCache

        problems: list[str] = []
        if TieredCache(self.store, [view], read_only=True, report=problems.append).ensure_local(digests):
            return True
        if problems:
            raise Unreachable(problems[0])
        return False

    def _logs(self, view: GrpcTier, result: re_pb2.ActionResult) -> tuple[bytes, bytes]:
        """A failed action's stdout and stderr (inline or by digest, verified); what cannot be had is empty."""
        logs = []
        for raw, digest in ((result.stdout_raw, result.stdout_digest), (result.stderr_raw, result.stderr_digest)):
            if raw or not is_valid_hash(digest.hash) or digest.size_bytes < 0:  # a malformed one names no blob
                logs.append(raw)
                continue
            d = from_proto(digest)
            try:
                logs.append((self.store.read_blob(d) if self._fetch(view, [d]) else None) or b"")
            except Unreachable:
                logs.append(b"")
        return logs[0], logs[1]

    # -- fallback ------------------------------------------------------------------------------------------------

    def _unreachable(self, why: str, at_start: bool = False) -> bool:
        """Turn remote execution off for the build, with the one warning; False (and no warning) without
        fallback, where a task fails instead (at start: EnvironmentProblem, exit 3)."""
        if not self.fallback:
            if at_start:
                raise EnvironmentProblem(f"remote {self.tier.name} is unreachable: {why} (--no-remote-fallback)")
            return False
        with self._lock:
            first = not self._down
            self._down = self._down or why
        if first:
            self.warn(f"remote {self.tier.name} is unreachable ({why}): running tasks here for the rest of the build")
        return True

    def _here(self, action: PreparedAction, pass_env: Sequence[str], name: str) -> ExecuteResult:
        return self.run_here(self.local, action, pass_env, name)

    def _headers(self, name: str) -> list[tuple[str, str | bytes]]:
        metadata = re_pb2.RequestMetadata(tool_details=re_pb2.ToolDetails(tool_name="gaffer", tool_version=__version__),
                                          tool_invocation_id=self.invocation, action_mnemonic=name, target_id=name)
        return [(METADATA_HEADER, metadata.SerializeToString())]


def _response(op: operations_pb2.Operation) -> re_pb2.ExecuteResponse:
    """The ExecuteResponse of a done Operation (an `error` becomes its status); a malformed one is a failure."""
    response = re_pb2.ExecuteResponse()
    if op.HasField("error"):
        response.status.CopyFrom(op.error)
        if response.status.code == 0:
            response.status.code = grpc.StatusCode.UNKNOWN.value[0]
        return response
    if not op.response.Unpack(response):
        raise RemoteFailure(f"operation {op.name}: its response is not an ExecuteResponse")
    if response.status.code == 0 and not response.HasField("result"):
        raise RemoteFailure(f"operation {op.name}: done without a result")
    return response


def _entries(outputs: actions.Outputs) -> list[Entry]:
    return [*outputs.files, *outputs.symlinks, *outputs.directories]


def _named_outputs(result: re_pb2.ActionResult) -> set[str]:
    return {*(f.path for f in result.output_files), *(s.path for s in result.output_symlinks),
            *(d.path for d in result.output_directories)}


def open_remote(url: str, timeout: float) -> GrpcTier:
    """The gRPC tier of the remote URL (already checked by the settings), with its token and TLS."""
    from gaffer.cache.grpc import GrpcTier

    return GrpcTier.from_url(url, timeout=timeout)

