"""Run one lease: its Action from the server's CAS, through the local blob cache, in a fresh exec root.

The input root is materialised by `execute/sandbox.py`'s `run_action`, the code `gaffer run --sandbox` uses,
from the worker's local blob store. It copies each file out of the store (`copy_file_range`: a reflink where the
file system has one) rather than hardlinking it: an action that writes an input in place must not change a cached
blob that later actions get as their input, and one inode cannot carry the different modes two actions may give
the same content. The copy is what keeps the cache correct; a hardlink would save little for the small inputs
actions have, and a reflink saves the same where it matters.

The outcome is what the lease reports: status OK with the ActionResult whenever the command ran (a non-zero
exit code too; DEADLINE_EXCEEDED after a timeout, CANCELLED when the server dropped the lease), or
FAILED_PRECONDITION naming the missing blobs, INVALID_ARGUMENT for an action that cannot run as stored (an output
path escaping the exec root, a malformed message) or whose outputs cannot be stored, UNAVAILABLE when the server's CAS could not be reached.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gaffer.cache.base import TierError
from gaffer.digest import Digest, digest_bytes, is_valid_hash
from gaffer.execute.local import ProcessRunner
from gaffer.execute.sandbox import BadAction, MissingBlobs, SandboxResult, run_action
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos.digests import from_proto
from gaffer.worker.blobs import BlobCache

_M = TypeVar("_M", re_pb2.Action, re_pb2.Directory)


@dataclass
class Outcome:
    """What a finished lease reports: its status, and the ActionResult when the command ran."""

    status: status_pb2.Status
    result: re_pb2.ActionResult | None = None


@dataclass
class Job:
    """One lease being run: what the session needs to follow it and to cancel it."""

    lease_id: str
    payload: any_pb2.Any
    cancel: threading.Event


def run_lease(job: Job, blobs: BlobCache, exec_dir: Path, env: Mapping[str, str], runner: ProcessRunner,
              bot_id: str) -> Outcome:
    """Fetch, run and upload one lease's action; never raises for a problem of the action or the network."""
    started = time.time()
    try:
        action = _action_digest(job.payload, blobs)

        def attempt() -> SandboxResult:
            _fetch_inputs(action, blobs)
            return run_action(action, blobs.local, exec_dir, env, runner, cancel=job.cancel)

        try:
            done = attempt()
        except MissingBlobs as e:
            if blobs.server.find_missing(e.digests):
                raise
            done = attempt()  # the server has them: the local cache evicted them meanwhile, for another lease
        blobs.produced(done.blobs)
        blobs.upload(done.blobs)
    except MissingBlobs as e:
        return Outcome(_missing(e))
    except BadAction as e:
        return Outcome(_status(code_pb2.INVALID_ARGUMENT, str(e)))
    except TierError as e:
        return Outcome(_status(code_pb2.UNAVAILABLE, f"the server's CAS: {e}"))
    except OSError as e:
        return Outcome(_status(code_pb2.INTERNAL, f"worker {bot_id}: {e}"))
    meta = done.result.execution_metadata
    meta.worker = bot_id
    meta.worker_start_timestamp.FromNanoseconds(int(started * 1e9))
    meta.worker_completed_timestamp.FromNanoseconds(time.time_ns())
    process = done.process
    if process.cancelled:
        return Outcome(_status(code_pb2.CANCELLED, "cancelled by the server"), done.result)
    if process.timed_out:
        return Outcome(_status(code_pb2.DEADLINE_EXCEEDED, done.failure), done.result)
    if done.unstorable:  # a result missing outputs the command made must not pass for a success, nor be cached;
        # it names none, but its exit code and logs (uploaded above) are the command's errors
        return Outcome(_status(code_pb2.INVALID_ARGUMENT, f"action {action}: {done.unstorable}"), done.result)
    if process.error:
        return Outcome(_status(code_pb2.INVALID_ARGUMENT, process.error), done.result)
    return Outcome(status_pb2.Status(code=code_pb2.OK), done.result)


def _action_digest(payload: any_pb2.Any, blobs: BlobCache) -> Digest:
    """The Action's digest from a lease payload: a REAPI Digest (gaffer serve), or the Action itself (BuildGrid
    sends the Action when it has it), which is then put in the local store under its own digest."""
    d = re_pb2.Digest()
    if payload.Unpack(d):  # false, and `d` untouched, for another message type
        if not is_valid_hash(d.hash) or d.size_bytes < 0:
            raise BadAction(f"lease payload: malformed action digest {d.hash[:70]!r}")
        return from_proto(d)
    if payload.TypeName() == re_pb2.Action.DESCRIPTOR.full_name:
        digest = digest_bytes(payload.value)
        blobs.local.write_blob(digest, payload.value)
        return digest
    raise BadAction(f"lease payload: expected a REAPI Digest or Action, got {payload.type_url[:100]!r}")


def _fetch_inputs(action_digest: Digest, blobs: BlobCache) -> None:
    """Bring the Action, its Command and its input root (Directory messages level by level, then the files) into
    the local store. What the server lacks stays absent, for `run_action` to name as missing."""
    blobs.fetch([action_digest])
    action = _parse(blobs, action_digest, re_pb2.Action)
    if action is None:
        return
    roots = [d for d in (action.command_digest, action.input_root_digest) if _valid(d)]
    blobs.fetch(from_proto(d) for d in roots)
    level = [from_proto(action.input_root_digest)] if _valid(action.input_root_digest) else []
    files: list[Digest] = []
    seen: set[Digest] = set()
    while level:
        children: list[Digest] = []
        for digest in level:
            directory = _parse(blobs, digest, re_pb2.Directory)
            if directory is None:
                continue
            files.extend(from_proto(f.digest) for f in directory.files if _valid(f.digest))
            children.extend(from_proto(d.digest) for d in directory.directories if _valid(d.digest))
        level = [d for d in dict.fromkeys(children) if d not in seen]
        seen.update(level)
        blobs.fetch(level)
    blobs.fetch(files)


def _valid(d: re_pb2.Digest) -> bool:
    return is_valid_hash(d.hash) and d.size_bytes >= 0


def _parse(blobs: BlobCache, digest: Digest, cls: type[_M]) -> _M | None:
    """A message from the local store; None when absent or not parseable (`run_action` says which, precisely)."""
    data = blobs.local.read_blob(digest)
    if data is None:
        return None
    try:
        return cls.FromString(data)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError, or whatever a damaged message makes it raise
        return None


def _status(code: int, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message)


def _missing(e: MissingBlobs) -> status_pb2.Status:
    """FAILED_PRECONDITION with a PreconditionFailure naming each missing blob, as REAPI's Execute answers."""
    failure = error_details_pb2.PreconditionFailure(violations=[
        error_details_pb2.PreconditionFailure.Violation(type="MISSING", subject=f"blobs/{d.hash}/{d.size_bytes}")
        for d in e.digests])
    status = _status(code_pb2.FAILED_PRECONDITION, str(e))
    status.details.add().Pack(failure)
    return status
