"""A small REAPI client written from the protos alone (not gaffer's own client code), and `gaffer worker`
processes, for the remote-execution tests: what any third-party client and any fleet of workers would do.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc

from gaffer.actions import host_properties
from gaffer.protos import execution_service_pb2_grpc as exec_grpc
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos import remote_execution_pb2_grpc as re_grpc
from tests import servers


def digest_of(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


@dataclass
class Submitted:
    action: re_pb2.Action
    action_digest: re_pb2.Digest
    blobs: dict[str, bytes]  # hash -> data: everything uploaded for it


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds the same metadata (a token, RequestMetadata) to every call of a channel."""

    def __init__(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.metadata = list(metadata)

    def _add(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return details._replace(metadata=[*(details.metadata or ()), *self.metadata])  # type: ignore[attr-defined]

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._add(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._add(details), request)


class Client:
    """CAS upload, Execute, and blob reads on one instance of a REAPI server; with `token`, as a bearer token on
    every call, with `build`, as the RequestMetadata's tool_invocation_id (the build the server shows)."""

    def __init__(self, address: str, instance: str = "", token: str | None = None, build: str | None = None) -> None:
        self.channel = grpc.insecure_channel(address)
        metadata: list[tuple[str, str | bytes]] = [("authorization", f"Bearer {token}")] if token else []
        if build:
            request = re_pb2.RequestMetadata(tool_details=re_pb2.ToolDetails(tool_name="tests"),
                                             tool_invocation_id=build, action_mnemonic="test")
            metadata.append(("build.bazel.remote.execution.v2.requestmetadata-bin", request.SerializeToString()))
        if metadata:
            self.channel = grpc.intercept_channel(self.channel, _Metadata(metadata))
        self.instance = instance
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.execution = exec_grpc.ExecutionStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def action(self, argv: Sequence[str], files: dict[str, bytes] | None = None, outputs: Sequence[str] = (),
               platform: dict[str, str] | None = None, timeout_s: float = 0, upload: bool = True,
               env: dict[str, str] | None = None) -> Submitted:
        """An Action running `argv` in an input root holding `files` (flat names), uploaded unless not `upload`."""
        blobs: dict[str, bytes] = {}

        def put(data: bytes) -> re_pb2.Digest:
            d = digest_of(data)
            blobs[d.hash] = data
            return d

        root = re_pb2.Directory(files=[re_pb2.FileNode(name=name, digest=put(data))
                                       for name, data in sorted((files or {}).items())])
        props = {**host_properties(), **(platform or {})}
        command = re_pb2.Command(
            arguments=list(argv), output_paths=sorted(outputs),
            environment_variables=[re_pb2.Command.EnvironmentVariable(name=k, value=v)
                                   for k, v in sorted((env or {}).items())],
            platform=re_pb2.Platform(properties=[re_pb2.Platform.Property(name=k, value=v)
                                                 for k, v in sorted(props.items())]))
        action = re_pb2.Action(command_digest=put(command.SerializeToString(deterministic=True)),
                               input_root_digest=put(root.SerializeToString(deterministic=True)))
        if timeout_s:
            action.timeout.FromNanoseconds(int(timeout_s * 1e9))
        action_digest = put(action.SerializeToString(deterministic=True))
        if upload:
            self.upload(blobs.values())
        return Submitted(action, action_digest, blobs)

    def upload(self, blobs: Iterable[bytes]) -> None:
        requests = [re_pb2.BatchUpdateBlobsRequest.Request(digest=digest_of(data), data=data) for data in blobs]
        request = re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance, requests=requests)
        response = self.cas.BatchUpdateBlobs(request, timeout=30)
        assert all(r.status.code == 0 for r in response.responses), response

    def start(self, submitted: Submitted, skip_cache_lookup: bool = True,
              timeout: float = 60) -> Iterator[operations_pb2.Operation]:
        """Execute: the stream of Operations."""
        request = re_pb2.ExecuteRequest(instance_name=self.instance, action_digest=submitted.action_digest,
                                        skip_cache_lookup=skip_cache_lookup)
        stream: Iterator[operations_pb2.Operation] = self.execution.Execute(request, timeout=timeout)
        return stream

    def cancel(self, operation: str) -> None:
        operations_pb2_grpc.OperationsStub(self.channel).CancelOperation(
            operations_pb2.CancelOperationRequest(name=operation), timeout=30)

    def execute(self, submitted: Submitted, skip_cache_lookup: bool = True,
                timeout: float = 60) -> re_pb2.ExecuteResponse:
        """Execute and follow the Operation stream to its end; the ExecuteResponse."""
        last: operations_pb2.Operation | None = None
        for operation in self.start(submitted, skip_cache_lookup, timeout):
            last = operation
        assert last is not None and last.done, last
        response = re_pb2.ExecuteResponse()
        last.response.Unpack(response)
        return response

    def read(self, digest: re_pb2.Digest) -> bytes:
        request = re_pb2.BatchReadBlobsRequest(instance_name=self.instance, digests=[digest])
        response = self.cas.BatchReadBlobs(request, timeout=30)
        (entry,) = response.responses
        assert entry.status.code == 0, entry.status
        return entry.data


@dataclass
class Worker:
    """A `gaffer worker` process and its log."""

    proc: subprocess.Popen[bytes]
    log: Path
    name: str

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30) -> re.Match[str]:
        """The `count`-th match of `pattern` in the log, waiting for it to appear."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            matches = list(re.finditer(pattern, self.text()))
            if len(matches) >= count:
                found.append(matches[count - 1])
            return bool(found)

        servers.wait_until(seen, f"worker {self.name}: {pattern!r}", timeout, self.proc, self.log)
        return found[0]

    def stop(self) -> int:
        servers._terminate(self.proc)
        return self.proc.returncode


def start_worker(address: str, name: str, *args: str, directory: Path | None = None,
                 env: dict[str, str] | None = None) -> Worker:
    """`gaffer worker --server ADDRESS --name NAME --dir DIR *args` in `env` (default: this process's), returned
    once its session is open."""
    directory = directory or Path(tempfile.mkdtemp(prefix=f"gaffer-worker-{name}-"))
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "worker.log"
    env = {k: v for k, v in (os.environ if env is None else env).items() if not k.startswith("GAFFER_")}
    env["PYTHONFAULTHANDLER"] = "1"
    argv = [sys.executable, "-m", "gaffer", "worker", "--server", address, "--name", name, "--dir", str(directory),
            *args]
    worker = Worker(servers._spawn(argv, log, env), log, name)
    try:
        worker.wait_for(r"session \S+ opened", timeout=30)
    except BaseException:
        worker.stop()
        raise
    return worker
