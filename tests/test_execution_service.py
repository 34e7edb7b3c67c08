"""Remote execution on `gaffer serve`, end to end on the real gRPC path: a third-party REAPI client and scripted
bots, both written here from the REAPI / Remote Workers protos with grpcio stubs (none of gaffer's client or worker
code), against `gaffer serve` started as a process.

The bots run nothing: each writes the ActionResult its test scripts (uploading its stdout first). Every test gives
its actions and bots a platform property of its own, so the bots of one test never take another test's actions.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import wrappers_pb2
from google.rpc import code_pb2, error_details_pb2

from gaffer.protos import (
    bots_pb2,
    bots_pb2_grpc,
    execution_service_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    worker_pb2,
)
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos import remote_execution_pb2_grpc as re_grpc
from tests.buildgrid import ReapiServer, start_gaffer_serve, stop_signal

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
               upload_input: bool = True, also: re_pb2.Digest | None = None) -> re_pb2.Digest:
        """An action running `argv` on an input root of one file (and `also`, a blob already uploaded), for bots
        with `test=<platform>`."""
        source = f"input of {argv} {uuid.uuid4()}".encode()
        files = [re_pb2.FileNode(name="in.txt", digest=_digest(source))]
        if also is not None:
            files.append(re_pb2.FileNode(name="large.bin", digest=also))
        root = re_pb2.Directory(files=files).SerializeToString()
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
        self.most_leases = 0  # the most leases one reply held
        self.got_lease = threading.Event()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.session = self.stub.CreateBotSession(bots_pb2.CreateBotSessionRequest(bot_session=bots_pb2.BotSession(
            bot_id=self.bot_id, status=bots_pb2.OK, worker=self.worker)), metadata=self.metadata, timeout=TIMEOUT_S)
        self.call: grpc.Future | None = None  # the UpdateBotSession in flight (a long poll)
        self.thread = threading.Thread(target=self._loop, name=self.bot_id, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        leases: list[bots_pb2.Lease] = []
        try:
            while not self.stop.is_set():
                session = bots_pb2.BotSession(name=self.session.name, bot_id=self.bot_id, status=bots_pb2.OK,
                                              worker=self.worker, leases=leases)
                self.call = self.stub.UpdateBotSession.future(bots_pb2.UpdateBotSessionRequest(
                    name=self.session.name, bot_session=session), metadata=self.metadata, timeout=TIMEOUT_S)
                if self.stop.is_set():
                    return
                try:
                    reply = self.call.result()
                except grpc.FutureCancelledError:
                    return  # closed
                leases = []
                self.most_leases = max(self.most_leases, len(reply.leases))
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

    def holds(self, *blobs: re_pb2.Digest) -> None:
        """Tell the server this bot holds `blobs` (Inventory.Report, as a worker does after connecting)."""
        inventory_pb2_grpc.InventoryStub(self.channel).Report(inventory_pb2.InventoryReport(
            bot_session=self.session.name, reset=True, added=blobs), metadata=self.metadata, timeout=TIMEOUT_S)

    def close(self) -> None:
        self.stop.set()
        if self.call is not None:
            self.call.cancel()
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


def test_capabilities_announce_execution(client: Client) -> None:
    capabilities = re_grpc.CapabilitiesStub(client.channel).GetCapabilities(re_pb2.GetCapabilitiesRequest(),
                                                                             timeout=TIMEOUT_S)
    assert capabilities.execution_capabilities.exec_enabled
    assert capabilities.execution_capabilities.digest_function == re_pb2.DigestFunction.SHA256


def test_single_command_runs_on_a_bot_and_is_cached(serve: ReapiServer, client: Client,
                                                    bots: Callable[..., Bot]) -> None:
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
    with urllib.request.urlopen(f"{serve.http_url}/metrics", timeout=TIMEOUT_S) as r:
        metrics = r.read().decode()
    started = re.search(r'^gaffer_actions_total\{event="started"\} (\d+)$', metrics, re.MULTILINE)
    assert started and int(started.group(1)) >= 1
    assert re.search(r"^gaffer_workers \d+$", metrics, re.MULTILINE)
    assert re.search(r"^gaffer_queue_to_start_seconds_count [1-9]\d*$", metrics, re.MULTILINE)


def test_missing_inputs_fail_the_precondition_naming_each_blob(client: Client) -> None:
    action = client.action("missing", ["cat", "in.txt"], upload_input=False)
    stages, result = finish(client.execute(action))
    assert stages == ["COMPLETED"] and result.status.code == code_pb2.FAILED_PRECONDITION
    failure = error_details_pb2.PreconditionFailure()
    assert len(result.status.details) == 1 and result.status.details[0].Unpack(failure)
    (violation,) = failure.violations
    assert violation.type == "MISSING" and violation.subject.startswith("blobs/")
    assert client.cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=[re_pb2.Digest(
        hash=violation.subject.split("/")[1], size_bytes=int(violation.subject.split("/")[2]))])).missing_blob_digests
    # an action not uploaded at all: the action itself is named
    absent = client.action("missing", ["true"], upload=False)
    _, result = finish(client.execute(absent))
    failure = error_details_pb2.PreconditionFailure()
    assert result.status.details[0].Unpack(failure)
    assert [v.subject for v in failure.violations] == [f"blobs/{absent.hash}/{absent.size_bytes}"]


def test_an_action_without_a_command_or_input_root_is_refused_naming_the_field(client: Client) -> None:
    """REAPI needs both digests (the empty Directory's for no inputs): a stranger leaving one out was told only
    "'' is not a lowercase hex SHA-256", naming no field."""
    command = re_pb2.Command(arguments=["true"]).SerializeToString()
    for action, field in ((re_pb2.Action(command_digest=_digest(command)), "input_root_digest"),
                          (re_pb2.Action(input_root_digest=_digest(b"")), "command_digest")):
        data = action.SerializeToString()
        client.upload(command, data)
        with pytest.raises(grpc.RpcError) as refused:
            finish(client.execute(_digest(data)))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == (f"action {_digest(data).hash}/{len(data)}: {field}: "
                                           "'' is not a lowercase hex SHA-256"), refused.value.details()


def test_three_concurrent_executes_of_one_action_run_once(client: Client, bots: Callable[..., Bot]) -> None:
    release = threading.Event()
    run = answer(client, stdout=b"shared\n")

    def slow(digest: re_pb2.Digest) -> re_pb2.ActionResult | None:
        assert release.wait(TIMEOUT_S)
        return run(digest)

    bot = bots("shared", slow, max_jobs=3)
    action = client.action("shared", ["echo", "shared"])
    results: list[re_pb2.ExecuteResponse] = []
    following = [threading.Event() for _ in range(3)]

    def build(i: int) -> None:
        ops = client.execute(action, build=f"build-{i}")
        next(ops)
        following[i].set()
        results.append(finish(ops)[1])

    threads = [threading.Thread(target=build, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    assert all(e.wait(TIMEOUT_S) for e in following)
    release.set()
    for t in threads:
        t.join(TIMEOUT_S)
    assert len(results) == 3 and all(r.result.stdout_digest == _digest(b"shared\n") for r in results)
    assert bot.received == [action]


def test_a_failing_command_reaches_the_client_and_is_not_cached(client: Client, bots: Callable[..., Bot]) -> None:
    bots("failing", answer(client, exit_code=3, stdout=b"it broke\n"))
    action = client.action("failing", ["false"])
    _, result = finish(client.execute(action))
    assert result.status.code == 0 and result.result.exit_code == 3
    assert result.result.stdout_digest == _digest(b"it broke\n")
    assert client.cached(action) is None


def test_do_not_cache_actions_are_neither_merged_nor_cached(client: Client, bots: Callable[..., Bot]) -> None:
    release = threading.Event()
    run = answer(client, stdout=b"uncached\n")

    def slow(digest: re_pb2.Digest) -> re_pb2.ActionResult | None:
        assert release.wait(TIMEOUT_S)
        return run(digest)

    bot = bots("uncached", slow, max_jobs=2)
    action = client.action("uncached", ["date"], do_not_cache=True)
    first, second = client.execute(action), client.execute(action)
    next(first), next(second)  # both queued before either completes
    release.set()
    assert finish(first)[1].result.exit_code == 0 and finish(second)[1].result.exit_code == 0
    assert bot.received == [action, action]
    assert client.cached(action) is None


def test_a_bot_that_stops_updating_has_its_action_requeued(client: Client, bots: Callable[..., Bot]) -> None:
    dead = bots("requeue", lambda _: None)
    action = client.action("requeue", ["echo", "again"])
    ops = client.execute(action)
    assert dead.got_lease.wait(TIMEOUT_S)
    alive = bots("requeue", answer(client, stdout=b"again\n"))
    stages, result = finish(ops)
    assert result.result.execution_metadata.worker == alive.bot_id and alive.received == [action]
    assert "EXECUTING" in stages


def test_a_result_naming_blobs_not_in_the_cas_is_retried(client: Client, bots: Callable[..., Bot]) -> None:
    good = answer(client, stdout=b"good\n")
    calls = []

    def corrupt_first(digest: re_pb2.Digest) -> re_pb2.ActionResult | None:
        calls.append(digest)
        if len(calls) == 1:  # its stdout never reached the CAS (a corrupt upload is refused)
            return re_pb2.ActionResult(exit_code=0, stdout_digest=_digest(b"never uploaded " + uuid.uuid4().bytes))
        return good(digest)

    bot = bots("corrupt", corrupt_first)
    action = client.action("corrupt", ["echo", "good"])
    _, result = finish(client.execute(action))
    assert result.result.stdout_digest == _digest(b"good\n")
    assert bot.received == [action, action]
    cached = client.cached(action)
    assert cached is not None and cached.stdout_digest == _digest(b"good\n")


def test_unknown_operations_are_not_found(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as e:
        next(client.execution.WaitExecution(re_pb2.WaitExecutionRequest(name="operations/nonesuch"),
                                            timeout=TIMEOUT_S))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "submit the action again" in (e.value.details() or "")
    with pytest.raises(grpc.RpcError) as e:
        client.operations.GetOperation(operations_pb2.GetOperationRequest(name="operations/nonesuch"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_wait_execution_reattaches_and_an_unmatched_action_says_why(client: Client,
                                                                      bots: Callable[..., Bot]) -> None:
    action = client.action("unmatched", ["true"])
    ops = client.execute(action)
    first = next(ops)
    assert stage(first) == "QUEUED"
    told = next(ops)  # after --unmatched-timeout (1 s) the operation says why it waits, still queued
    metadata = re_pb2.ExecuteOperationMetadata()
    assert told.metadata.Unpack(metadata) and metadata.stage == re_pb2.ExecutionStage.QUEUED
    (note,) = metadata.partial_execution_metadata.auxiliary_metadata
    text = wrappers_pb2.StringValue()
    assert note.Unpack(text) and text.value == "no connected worker matches platform {OSFamily=linux, test=unmatched}"
    ops.cancel()
    again = client.execution.WaitExecution(re_pb2.WaitExecutionRequest(name=first.name), timeout=TIMEOUT_S)
    assert stage(next(again)) == "QUEUED"
    bots("unmatched", answer(client))
    _, result = finish(again)
    assert result.result.exit_code == 0
    done = client.operations.GetOperation(operations_pb2.GetOperationRequest(name=first.name))
    assert done.done and response(done).result.exit_code == 0


def _serve_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "gaffer.server.main", "--dir", "unused", *args]


def test_an_open_executor_off_loopback_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(_serve_argv("--grpc", "0.0.0.0:0"), cwd=tmp_path, capture_output=True, text=True, check=False,
                          timeout=TIMEOUT_S)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("gaffer serve: --grpc 0.0.0.0:0: ") and "--insecure" in done.stderr
    server = start_gaffer_serve("--grpc", "0.0.0.0:0", "--insecure", workdir=tmp_path / "insecure")
    server.stop()


def test_a_token_is_needed_to_execute_and_to_be_a_bot(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("secret\n")
    (tmp_path / "read").write_text("reader\n")
    server = start_gaffer_serve("--token-file", str(tmp_path / "token"), "--read-token-file",
                                str(tmp_path / "read"), "--bot-timeout", "2s", workdir=tmp_path / "serve")
    try:
        writer = Client(server.grpc_address, "secret")
        action = writer.action("token", ["true"])
        for token, code in ((None, grpc.StatusCode.UNAUTHENTICATED), ("reader", grpc.StatusCode.PERMISSION_DENIED)):
            with pytest.raises(grpc.RpcError) as e:
                next(Client(server.grpc_address, token).execute(action))
            assert e.value.code() == code
            with pytest.raises(grpc.RpcError) as e:
                Bot(server.grpc_address, "token", answer(writer), token=token)
            assert e.value.code() == code
        bot = Bot(server.grpc_address, "token", answer(writer), token="secret")
        try:
            _, result = finish(writer.execute(action))
            assert result.result.exit_code == 0 and bot.received == [action]
        finally:
            bot.close()
    finally:
        server.stop()


def test_after_a_restart_bots_learn_their_session_and_leases_are_gone(serve: ReapiServer) -> None:
    """What a worker meets after the server restarted: its session is NOT_FOUND; on its new session, a lease
    it still reports is answered CANCELLED (it drops it)."""
    with grpc.insecure_channel(serve.grpc_address) as channel:
        stub = bots_pb2_grpc.BotsStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(name="bots/from-before-the-restart"),
                                  timeout=TIMEOUT_S)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "create a new one" in (e.value.details() or "")
        worker = worker_pb2.Worker(devices=[worker_pb2.Device(handle="restarted", properties=[
            worker_pb2.Device.Property(key="test", value="restarted")])])
        session = stub.CreateBotSession(bots_pb2.CreateBotSessionRequest(bot_session=bots_pb2.BotSession(
            bot_id="restarted", status=bots_pb2.OK, worker=worker)), timeout=TIMEOUT_S)
        assert session.name and session.expire_time.seconds > 0
        old = bots_pb2.Lease(id="lease-from-before", state=bots_pb2.ACTIVE)
        reply = stub.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=bots_pb2.BotSession(
            name=session.name, bot_id="restarted", status=bots_pb2.OK, worker=worker, leases=[old])), timeout=TIMEOUT_S)
        assert [(lease.id, lease.state) for lease in reply.leases] == [("lease-from-before", bots_pb2.CANCELLED)]


def test_an_action_lands_on_the_bot_holding_its_large_input(client: Client, bots: Callable[..., Bot]) -> None:
    large = uuid.uuid4().bytes * 65536  # 1 MiB
    client.upload(large)
    other = bots("locality", answer(client))  # connected first: without locality, the one woken first
    holder = bots("locality", answer(client))
    holder.holds(_digest(large))
    for i in range(10):
        _, result = finish(client.execute(client.action("locality", ["wc", str(i)], also=_digest(large))))
        assert result.result.exit_code == 0
    # both idle each time: the holder is preferred (any bot may take an action it has not taken within 100 ms)
    assert len(holder.received) >= 8, (len(holder.received), len(other.received))


def test_a_stopping_server_ends_client_streams_and_long_polls_at_once(tmp_path: Path) -> None:
    """SIGTERM with a client following a queued operation and a bot in its long poll: both are answered at
    once (the client UNAVAILABLE: it submits again later), so the stop does not wait out the grace period."""
    server = start_gaffer_serve("--grace", "60s", workdir=tmp_path)
    try:
        client = Client(server.grpc_address)
        ops = client.execute(client.action("stopping", ["true"]))
        assert stage(next(ops)) == "QUEUED"
        bot = Bot(server.grpc_address, "idle", lambda _: None)
        started = time.monotonic()
        assert stop_signal(server, timeout=TIMEOUT_S) == 0
        assert time.monotonic() - started < 10
        with pytest.raises(grpc.RpcError) as e:
            next(ops)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "submit the action again" in (e.value.details() or "")
        bot.stop.set()
        bot.thread.join(TIMEOUT_S)
    finally:
        server.stop()


def test_a_bot_at_capacity_gets_no_more_and_nothing_fails(client: Client, bots: Callable[..., Bot]) -> None:
    actions = [client.action("capacity", ["echo", str(i)]) for i in range(4)]
    streams = [client.execute(action) for action in actions]
    assert all(stage(next(ops)) == "QUEUED" for ops in streams)  # all four wait before the bot asks
    bot = bots("capacity", answer(client), max_jobs=1)
    results = [finish(ops)[1] for ops in streams]
    assert all(r.status.code == 0 and r.result.exit_code == 0 for r in results)
    assert sorted(d.hash for d in bot.received) == sorted(a.hash for a in actions)
    assert bot.most_leases == 1


def test_an_unchanged_operation_is_sent_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream of a long wait is not silent: the operation comes again every RESEND_S (shortened here, on a
    server started in this process)."""
    from gaffer.server import execution
    from gaffer.server.auth import BearerToken
    from gaffer.server.dispatch import Coordinator
    from gaffer.server.metrics import Metrics
    from gaffer.server.reapi import start_grpc
    from gaffer.server.store import ServerStore

    monkeypatch.setattr(execution, "RESEND_S", 0.2)
    store = ServerStore(tmp_path / "store", 1 << 30, report=print, memory=0)
    server, port = start_grpc("127.0.0.1:0", store, Metrics(), BearerToken(None), 2, Coordinator())
    try:
        client = Client(f"127.0.0.1:{port}")
        ops = client.execute(client.action("resent", ["true"]))
        first, again = next(ops), next(ops)
        assert first.name == again.name and stage(first) == stage(again) == "QUEUED"
        ops.cancel()
    finally:
        server.stop(1).result(TIMEOUT_S)
        store.close()


def test_cancel_operation_reaches_the_bot_running_it(serve: ReapiServer, client: Client) -> None:
    action = client.action("cancel", ["sleep", "1000"])
    ops = client.execute(action)
    name = next(ops).name
    with grpc.insecure_channel(serve.grpc_address) as channel:
        stub = bots_pb2_grpc.BotsStub(channel)
        worker = worker_pb2.Worker(devices=[worker_pb2.Device(handle="canceller", properties=[
            worker_pb2.Device.Property(key="OSFamily", value="linux"),
            worker_pb2.Device.Property(key="test", value="cancel")])])
        session = stub.CreateBotSession(bots_pb2.CreateBotSessionRequest(bot_session=bots_pb2.BotSession(
            bot_id="canceller", status=bots_pb2.OK, worker=worker)), timeout=TIMEOUT_S)

        def update(*leases: bots_pb2.Lease) -> bots_pb2.BotSession:
            return stub.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=bots_pb2.BotSession(
                name=session.name, bot_id="canceller", status=bots_pb2.OK, worker=worker, leases=leases)),
                timeout=TIMEOUT_S)

        (lease,) = update().leases
        assert lease.state == bots_pb2.PENDING
        assert stage(next(ops)) == "EXECUTING"
        replies: list[bots_pb2.BotSession] = []
        held = threading.Thread(target=lambda: replies.append(update(bots_pb2.Lease(id=lease.id,
                                                                                    state=bots_pb2.ACTIVE))))
        held.start()  # the long poll: nothing new for this bot until the cancellation
        client.operations.CancelOperation(operations_pb2.CancelOperationRequest(name=name), timeout=TIMEOUT_S)
        _, result = finish(ops)
        assert result.status.code == code_pb2.CANCELLED
        held.join(TIMEOUT_S)
        assert [(got.id, got.state) for got in replies[0].leases] == [(lease.id, bots_pb2.CANCELLED)]
        done = update(bots_pb2.Lease(id=lease.id, state=bots_pb2.COMPLETED))
        assert not done.leases
