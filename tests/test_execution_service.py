"""Remote execution on `gaffer serve`, end to end on the real gRPC path: a third-party REAPI client and scripted
bots, both written here from the REAPI / Remote Workers protos with grpcio stubs (none of gaffer's client or worker
code), against `gaffer serve` started as a process.

The bots run nothing: each writes the ActionResult its test scripts (uploading its stdout first). Every test gives
its actions and bots a platform property of its own, so the bots of one test never take another test's actions.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.rpc import code_pb2, error_details_pb2

from gaffer.protos import bots_pb2, bots_pb2_grpc, execution_service_pb2_grpc, worker_pb2
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos import remote_execution_pb2_grpc as re_grpc
from tests.buildgrid import ReapiServer, start_gaffer_serve
from tests.servers import wait_until

TIMEOUT_S = 30.0
Run = Callable[[re_pb2.Digest], "re_pb2.ActionResult | None"]


@pytest.fixture(scope="module")
def serve() -> Iterator[ReapiServer]:
    """`gaffer serve` with a short bot timeout (workers silent for 2 s are gone) and unmatched timeout."""
    server = start_gaffer_serve("--bot-timeout", "2s", "--unmatched-timeout", "1s")
    yield server
    server.stop()


def _digest(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


class Client:
    """A REAPI client: uploads, Execute, WaitExecution, the action cache."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.channel = grpc.insecure_channel(address)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.ac = re_grpc.ActionCacheStub(self.channel)
        self.execution = execution_service_pb2_grpc.ExecutionStub(self.channel)
        self.operations = operations_pb2_grpc.OperationsStub(self.channel)

    def upload(self, *blobs: bytes) -> None:
        requests = [re_pb2.BatchUpdateBlobsRequest.Request(digest=_digest(b), data=b) for b in blobs]
        response = self.cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=requests),
                                             metadata=self.metadata, timeout=TIMEOUT_S)
        assert all(r.status.code == 0 for r in response.responses)

    def action(self, platform: str, argv: list[str], do_not_cache: bool = False, upload: bool = True,
               upload_input: bool = True) -> re_pb2.Digest:
        """An action running `argv` on an input root of one file, for bots with `test=<platform>`."""
        source = f"input of {argv} {uuid.uuid4()}".encode()
        root = re_pb2.Directory(files=[re_pb2.FileNode(name="in.txt", digest=_digest(source))]).SerializeToString()
        properties = [re_pb2.Platform.Property(name="OSFamily", value="linux"),
                      re_pb2.Platform.Property(name="test", value=platform)]
        command = re_pb2.Command(arguments=argv, platform=re_pb2.Platform(properties=properties)).SerializeToString()
        action = re_pb2.Action(command_digest=_digest(command), input_root_digest=_digest(root),
                               do_not_cache=do_not_cache).SerializeToString()
        if upload:
            self.upload(command, root, action, *([source] if upload_input else []))
        return _digest(action)

    def execute(self, action: re_pb2.Digest, skip_cache_lookup: bool = True, build: str = "build-1"
                ) -> Iterator[operations_pb2.Operation]:
        meta = re_pb2.RequestMetadata(tool_invocation_id=build, action_mnemonic="test")
        request = re_pb2.ExecuteRequest(action_digest=action, skip_cache_lookup=skip_cache_lookup)
        return self.execution.Execute(request, timeout=TIMEOUT_S, metadata=[
            *self.metadata, ("build.bazel.remote.execution.v2.requestmetadata-bin", meta.SerializeToString())])

    def cached(self, action: re_pb2.Digest) -> re_pb2.ActionResult | None:
        try:
            return self.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=action), timeout=TIMEOUT_S)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
            return None


def stage(op: operations_pb2.Operation) -> str:
    metadata = re_pb2.ExecuteOperationMetadata()
    assert op.metadata.Unpack(metadata)
    return re_pb2.ExecutionStage.Value.Name(metadata.stage)


def response(op: operations_pb2.Operation) -> re_pb2.ExecuteResponse:
    assert op.done
    result = re_pb2.ExecuteResponse()
    assert op.response.Unpack(result)
    return result


def finish(ops: Iterator[operations_pb2.Operation]) -> tuple[list[str], re_pb2.ExecuteResponse]:
    """Follow an Execute stream to its end: the stages seen and the ExecuteResponse."""
    stages, last = [], None
    for op in ops:
        stages.append(stage(op))
        last = op
    assert last is not None
    return stages, response(last)


class Bot:
    """A scripted bot: a session with `test=<platform>`, each lease answered with `run(action digest)` (None: the
    bot dies there, silently: it never calls again)."""

    def __init__(self, address: str, platform: str, run: Run, max_jobs: int = 1, token: str | None = None) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = bots_pb2_grpc.BotsStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.client = Client(address, token)
        self.bot_id = f"bot-{platform}-{uuid.uuid4().hex[:6]}"
        device = worker_pb2.Device(handle=self.bot_id, properties=[
            worker_pb2.Device.Property(key="OSFamily", value="linux"),
            worker_pb2.Device.Property(key="test", value=platform)])
        self.worker = worker_pb2.Worker(devices=[device], properties=[
            worker_pb2.Worker.Property(key="_gaffer_max_jobs", value=str(max_jobs))])
        self.run = run
        self.received: list[re_pb2.Digest] = []
        self.got_lease = threading.Event()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.session = self.stub.CreateBotSession(bots_pb2.CreateBotSessionRequest(bot_session=bots_pb2.BotSession(
            bot_id=self.bot_id, status=bots_pb2.OK, worker=self.worker)), metadata=self.metadata, timeout=TIMEOUT_S)
        self.thread = threading.Thread(target=self._loop, name=self.bot_id, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        leases: list[bots_pb2.Lease] = []
        try:
            while not self.stop.is_set():
                session = bots_pb2.BotSession(name=self.session.name, bot_id=self.bot_id, status=bots_pb2.OK,
                                              worker=self.worker, leases=leases)
                reply = self.stub.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(
                    name=self.session.name, bot_session=session), metadata=self.metadata, timeout=TIMEOUT_S)
                leases = []
                for lease in reply.leases:
                    if lease.state != bots_pb2.PENDING:
                        if lease.state == bots_pb2.CANCELLED:
                            leases.append(bots_pb2.Lease(id=lease.id, state=bots_pb2.COMPLETED))
                        continue
                    digest = re_pb2.Digest()
                    assert lease.payload.Unpack(digest)
                    self.received.append(digest)
                    self.got_lease.set()
                    result = self.run(digest)
                    if result is None:
                        return  # dead
                    result.execution_metadata.worker = self.bot_id
                    done = bots_pb2.Lease(id=lease.id, state=bots_pb2.COMPLETED)
                    done.result.Pack(result)
                    leases.append(done)
        except BaseException as e:  # noqa: BLE001 - shown by the test that owns the bot
            self.errors.append(e)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(TIMEOUT_S)
        self.channel.close()
        assert not self.errors, self.errors


@pytest.fixture
def bots(serve: ReapiServer) -> Iterator[Callable[..., Bot]]:
    """Start bots on the module's server; all stopped at the end of the test."""
    started: list[Bot] = []

    def start(platform: str, run: Run, max_jobs: int = 1) -> Bot:
        bot = Bot(serve.grpc_address, platform, run, max_jobs)
        started.append(bot)
        return bot

    yield start
    for bot in started:
        bot.close()


def answer(client: Client, exit_code: int = 0, stdout: bytes = b"hello\n") -> Run:
    """A bot's run function: upload `stdout`, return a result with it and `exit_code`."""

    def run(_: re_pb2.Digest) -> re_pb2.ActionResult:
        client.upload(stdout)
        return re_pb2.ActionResult(exit_code=exit_code, stdout_digest=_digest(stdout))

    return run


@pytest.fixture
def client(serve: ReapiServer) -> Client:
    return Client(serve.grpc_address)


def test_single_command_runs_on_a_bot_and_is_cached(client: Client, bots: Callable[..., Bot]) -> None:
    bot = bots("single", answer(client, stdout=b"single\n"))
    action = client.action("single", ["echo", "single"])
    stages, result = finish(client.execute(action))
    assert stages[0] in ("QUEUED", "EXECUTING") and stages[-1] == "COMPLETED", stages
    assert result.status.code == 0 and not result.cached_result
    assert result.result.exit_code == 0 and result.result.stdout_digest == _digest(b"single\n")
    assert result.result.execution_metadata.worker == bot.bot_id
    assert bot.received == [action]
    cached = client.cached(action)
    assert cached is not None and cached.stdout_digest == _digest(b"single\n")
    # asked again with the cache lookup: answered from the action cache, the bot not asked
    stages, again = finish(client.execute(action, skip_cache_lookup=False))
    assert stages == ["COMPLETED"] and again.cached_result and again.result.stdout_digest == _digest(b"single\n")
    assert bot.received == [action]
