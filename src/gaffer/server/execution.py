"""The REAPI Execution service of `gaffer serve` (and google.longrunning's Operations): clients' actions in,
Operations out, over the coordinator (dispatch.py).

Execute answers from the action cache unless told to skip it, then checks that the Action, its Command, its input
tree and every input file are in the CAS (missing ones: the operation completes with FAILED_PRECONDITION naming
them, as REAPI asks, so the client uploads them and tries again), then queues the action and streams its
Operation through QUEUED, EXECUTING and COMPLETED. The input tree is read once per action, here: its files are
what the coordinator's locality counts.

Operations live in this process only: after a server restart, WaitExecution on an earlier name fails with
NOT_FOUND and the client submits the action again (Execute is idempotent; a result cached meanwhile is answered
from the action cache).
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2, wrappers_pb2
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from gaffer.digest import Digest
from gaffer.protos import execution_service_pb2_grpc as exec_grpc
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.server.dispatch import COMPLETED, EXECUTING, FAILED_PRECONDITION, Coordinator, Operation, Outcome
from gaffer.server.metrics import Metrics
from gaffer.server.reapi import _HANDLED, STALL_S, Context, Failure, _Service
from gaffer.server.store import BadRequest, Namespace, ServerStore, check_digest, check_instance

METADATA_KEY = "build.bazel.remote.execution.v2.requestmetadata-bin"
RESEND_S = 30.0  # an operation that has not changed for this long is sent again (long actions: the stream lives)
MAX_INPUT_DIRECTORIES = 1_000_000  # an input tree larger than this is refused (a peer chooses its size)

_STAGES = {"QUEUED": re_pb2.ExecutionStage.QUEUED, EXECUTING: re_pb2.ExecutionStage.EXECUTING,
           COMPLETED: re_pb2.ExecutionStage.COMPLETED}


def request_metadata(context: Context) -> tuple[str, str]:
    """The build (tool_invocation_id) and task (action_mnemonic, else target_id) a call says it belongs to."""
    for key, value in context.invocation_metadata() or ():
        if key == METADATA_KEY and isinstance(value, bytes):
            try:
                meta = re_pb2.RequestMetadata.FromString(value)
            except DecodeError:
                break
            return meta.tool_invocation_id, meta.action_mnemonic or meta.target_id
    return "", ""


def operation_proto(op: Operation) -> operations_pb2.Operation:
    """`op` as REAPI shows it: ExecuteOperationMetadata, and when done an ExecuteResponse."""
    hash_, _, size = op.action.partition("/")
    metadata = re_pb2.ExecuteOperationMetadata(stage=_STAGES[op.stage],
                                               action_digest=re_pb2.Digest(hash=hash_, size_bytes=int(size)))
    if op.running_on:
        metadata.partial_execution_metadata.worker = op.running_on
    if op.waiting_for:  # e.g. no connected worker matches the platform: said, while the action stays queued
        metadata.partial_execution_metadata.auxiliary_metadata.add().Pack(wrappers_pb2.StringValue(value=op.waiting_for))
    proto = operations_pb2.Operation(name=op.name)
    proto.metadata.Pack(metadata)
    outcome = op.outcome
    if outcome is not None:
        proto.done = True
        status = status_pb2.Status(code=outcome.code, message=outcome.message)
        for detail in outcome.details:
            assert isinstance(detail, AnyProto)
            status.details.append(detail)
        response = re_pb2.ExecuteResponse(cached_result=outcome.cached, status=status)
        if isinstance(outcome.result, re_pb2.ActionResult):
            response.result.CopyFrom(outcome.result)
        proto.response.Pack(response)
    return proto


def missing_inputs(missing: list[Digest]) -> Outcome:
    """FAILED_PRECONDITION with one PreconditionFailure violation per missing blob (REAPI's form)."""
    failure = error_details_pb2.PreconditionFailure()
    for digest in missing:
        failure.violations.add(type="MISSING", subject=f"blobs/{digest.hash}/{digest.size_bytes}")
    detail = AnyProto()
    detail.Pack(failure)
    shown = ", ".join(map(str, missing[:3])) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return Outcome(FAILED_PRECONDITION, f"missing from the CAS: {shown}", details=[detail], label="failed")


class Checked:
    """An action whose blobs are all in the CAS: what the coordinator needs of it."""

    def __init__(self, action: re_pb2.Action, platform: list[tuple[str, str]], inputs: dict[str, int]) -> None:
        self.action, self.platform, self.inputs = action, platform, inputs


def check_action(namespace: Namespace, key: Digest) -> Checked | Outcome:
    """Read the Action, its Command and input tree from the CAS (blocking: on an I/O thread); the missing blobs
    as an Outcome."""
    data = namespace.read(key)
    if data is None:
        return missing_inputs([key])
    try:
        action = re_pb2.Action.FromString(data)
    except DecodeError:
        raise BadRequest(f"blob {key} is not an Action") from None
    missing: list[Digest] = []
    command_digest = _field(key, "command_digest", action.command_digest)
    command_data = namespace.read(command_digest)
    if command_data is None:
        missing.append(command_digest)
        command = re_pb2.Command()
    else:
        try:
            command = re_pb2.Command.FromString(command_data)
        except DecodeError:
            raise BadRequest(f"blob {command_digest} is not a Command") from None
    inputs: dict[str, int] = {}
    files: list[Digest] = []
    root = _field(key, "input_root_digest", action.input_root_digest)
    queue, seen = deque([root]), {root}
    while queue:
        digest = queue.popleft()
        data = namespace.read(digest)
        if data is None:
            missing.append(digest)
            continue
        try:
            directory = re_pb2.Directory.FromString(data)
        except DecodeError:
            raise BadRequest(f"input directory {digest} is not a Directory") from None
        for node in directory.files:
            file = check_digest(node.digest)
            if file.hash not in inputs:
                inputs[file.hash] = file.size_bytes
                files.append(file)
        for child in directory.directories:
            sub = check_digest(child.digest)
            if sub not in seen:
                if len(seen) >= MAX_INPUT_DIRECTORIES:
                    raise BadRequest(f"input tree {root} has more than {MAX_INPUT_DIRECTORIES} directories")
                seen.add(sub)
                queue.append(sub)
    missing += [f for f in files if not namespace.has(f)]
    if missing:
        return missing_inputs(missing)
    properties = action.platform.properties or command.platform.properties
    return Checked(action, [(p.name, p.value) for p in properties], inputs)


def _field(action: Digest, name: str, digest: re_pb2.Digest) -> Digest:
    """A digest field of the Action, checked; a bad one (often left unset) named in the refusal."""
    try:
        return check_digest(digest)
    except BadRequest as e:
        raise BadRequest(f"action {action}: {name}: {e}") from None


class Execution(_Service, exec_grpc.ExecutionServicer):
    kind = "execution"

    def __init__(self, store: ServerStore, metrics: Metrics, io: ThreadPoolExecutor, coordinator: Coordinator) -> None:
        super().__init__(store, metrics, io)
        self.coordinator = coordinator

    async def Execute(self, request: re_pb2.ExecuteRequest, context: Context) -> None:
        try:
            op = await self._submit(request, context)
        except _HANDLED as e:
            await self.fail("Execute", e, context)
        await follow(self.coordinator, op, context)
        self.metrics.request("grpc", "Execute", self.kind, "OK")

    async def WaitExecution(self, request: re_pb2.WaitExecutionRequest, context: Context) -> None:
        op = self.coordinator.operation(request.name)
        if op is None:
            await self.fail("WaitExecution", unknown(request.name), context)
        await follow(self.coordinator, op, context)
        self.metrics.request("grpc", "WaitExecution", self.kind, "OK")

    async def _submit(self, request: re_pb2.ExecuteRequest, context: Context) -> Operation:
        instance = check_instance(request.instance_name)
        key = check_digest(request.action_digest)
        if request.digest_function not in (re_pb2.DigestFunction.UNKNOWN, re_pb2.DigestFunction.SHA256):
            raise BadRequest("this server hashes with SHA256 only")
        build, task = request_metadata(context)
        namespace = await self.run(self.store.namespace, instance)
        coordinator = self.coordinator
        if not request.skip_cache_lookup:
            found = await self.run(namespace.action_result, key)
            self.metrics.lookups("ac", int(found is not None), int(found is None))
            if found is not None:
                return coordinator.answer(str(key), build, task, Outcome(0, result=found[1], cached=True,
                                                                         label="cached"))
            coordinator.missed()
        op = coordinator.join(instance, str(key), build, task)
        if op is not None:
            return op
        checked = await self.run(check_action, namespace, key)
        if isinstance(checked, Outcome):
            return coordinator.answer(str(key), build, task, checked)
        return coordinator.submit(instance, str(key), checked.platform, checked.inputs, build, task,
                                  cacheable=not checked.action.do_not_cache)


def unknown(name: str) -> Failure:
    return Failure(grpc.StatusCode.NOT_FOUND,
                   f"operation {name[:200]!r} is not known to this server (finished long ago, or the server "
                   "restarted since): submit the action again")


async def follow(coordinator: Coordinator, op: Operation, context: Context) -> None:
    """Stream `op` to the client at each change of stage, worker or reason for waiting (and every RESEND_S),
    until it is done. A client that goes away detaches (its job is cancelled once nobody follows it for a
    while)."""
    changed = asyncio.Event()
    coordinator.attach(op)
    op.listeners.append(changed.set)
    try:
        last: tuple[str, str, str] | None = None
        while True:
            changed.clear()
            state = (op.stage, op.running_on, op.waiting_for)
            if state != last:
                last = state
                try:
                    await asyncio.wait_for(context.write(operation_proto(op)), STALL_S)
                except TimeoutError:
                    return  # the client stopped reading
            if op.outcome is not None:
                return
            if coordinator.stopping:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is stopping: submit the action again "
                                    "once it is back (WaitExecution will not know this operation)")
            try:
                await asyncio.wait_for(changed.wait(), RESEND_S)
            except TimeoutError:
                last = None  # sent again unchanged: the client sees the stream is alive
    finally:
        op.listeners.remove(changed.set)
        coordinator.detach(op)


class Operations(operations_pb2_grpc.OperationsServicer):
    """GetOperation and CancelOperation on execution operations; listing and deleting are not offered."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    async def GetOperation(self, request: operations_pb2.GetOperationRequest, context: Context) -> Any:
        op = self.coordinator.operation(request.name)
        if op is None:
            failure = unknown(request.name)
            await context.abort(failure.code, str(failure))
        return operation_proto(op)

    async def CancelOperation(self, request: operations_pb2.CancelOperationRequest, context: Context) -> Any:
        if not self.coordinator.cancel_operation(request.name) and self.coordinator.operation(request.name) is None:
            failure = unknown(request.name)
            await context.abort(failure.code, str(failure))
        return empty_pb2.Empty()
