"""The REAPI v2 gRPC services of `gaffer serve`: Capabilities, ContentAddressableStorage, ByteStream, ActionCache.

Each service is a thin adapter over `ServerStore` (the bazel-remote shape): parse and validate the request, call
the store, map failures to gRPC status codes and count them in the metrics.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2

from gaffer.digest import EMPTY_DIGEST, Digest
from gaffer.protos import bytestream_pb2, bytestream_pb2_grpc, semver_pb2
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos import remote_execution_pb2_grpc as re_grpc
from gaffer.server.auth import GRPC_WRITES, BearerToken, Refusal
from gaffer.server.metrics import Metrics
from gaffer.server.store import (
    BackendUnavailable,
    BadRequest,
    Namespace,
    ServerStore,
    check_digest,
    check_hash,
    check_instance,
    storage_failure,
)

MAX_BATCH_BYTES = 4 * 1024 * 1024  # announced in Capabilities: the total blob bytes one batch call may carry
MAX_MESSAGE_BYTES = MAX_BATCH_BYTES + 1024 * 1024  # what the server accepts: a full batch plus its framing
READ_CHUNK = 1024 * 1024
TREE_PAGE = 1000
WRITERS = 4  # threads writing the blobs of a BatchUpdateBlobs call (more only fight over the GIL)

Request = TypeVar("Request")
Response = TypeVar("Response")


class Failure(Exception):
    """Ends an RPC with a status code other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


_STORAGE_CODES = {"too large": grpc.StatusCode.RESOURCE_EXHAUSTED, "full": grpc.StatusCode.RESOURCE_EXHAUSTED,
                  "unavailable": grpc.StatusCode.UNAVAILABLE, "broken": grpc.StatusCode.INTERNAL}


def _status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code and message a handler's exception ends the RPC with."""
    if isinstance(error, Failure):
        return error.code, str(error)
    if isinstance(error, BadRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    assert isinstance(error, (OSError, BackendUnavailable))
    kind, message = storage_failure(error)
    return _STORAGE_CODES[kind], message


class _Service:
    """Base of the servicers: the shared store and metrics; `kind` labels the service in the metrics."""

    kind = ""

    def __init__(self, store: ServerStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics

    def fail(self, method: str, error: Exception, context: grpc.ServicerContext) -> NoReturn:
        code, message = _status_of(error)
        self.metrics.request("grpc", method, self.kind, code.name)
        context.abort(code, message)
        raise AssertionError("grpc's abort() raises")  # what the type checker cannot know


Service = TypeVar("Service", bound=_Service)


def counted(fn: Callable[[Service, Request], Response]) -> Callable[[Service, Request, grpc.ServicerContext], Response]:
    """Wrap a handler with one response: count it, and turn Failure/BadRequest/OSError into the RPC's status."""

    @functools.wraps(fn)
    def handler(self: Service, request: Request, context: grpc.ServicerContext) -> Response:
        try:
            response = fn(self, request)
        except (Failure, BadRequest, OSError, BackendUnavailable) as e:
            self.fail(fn.__name__, e, context)
        self.metrics.request("grpc", fn.__name__, self.kind, "OK")
        return response

    return handler


def counted_stream(
    fn: Callable[[Service, Request], Iterator[Response]],
) -> Callable[[Service, Request, grpc.ServicerContext], Iterator[Response]]:
    """`counted` for handlers that stream their responses."""

    @functools.wraps(fn)
    def handler(self: Service, request: Request, context: grpc.ServicerContext) -> Iterator[Response]:
        try:
            yield from fn(self, request)
        except (Failure, BadRequest, OSError, BackendUnavailable) as e:
            self.fail(fn.__name__, e, context)
        self.metrics.request("grpc", fn.__name__, self.kind, "OK")

    return handler


def _status(code: int, message: str = "") -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message)


class Capabilities(_Service, re_grpc.CapabilitiesServicer):
    kind = "capabilities"

    @counted
    def GetCapabilities(self, request: re_pb2.GetCapabilitiesRequest) -> re_pb2.ServerCapabilities:
        check_instance(request.instance_name)
        return re_pb2.ServerCapabilities(
            cache_capabilities=re_pb2.CacheCapabilities(
                digest_functions=[re_pb2.DigestFunction.SHA256],
                action_cache_update_capabilities=re_pb2.ActionCacheUpdateCapabilities(update_enabled=True),
                cache_priority_capabilities=re_pb2.PriorityCapabilities(
                    priorities=[re_pb2.PriorityCapabilities.PriorityRange(min_priority=0, max_priority=0)]
                ),
                max_batch_total_size_bytes=MAX_BATCH_BYTES,
                # a cache stores whatever symlinks a client's actions produced; it resolves none of them
                symlink_absolute_path_strategy=re_pb2.SymlinkAbsolutePathStrategy.ALLOWED,
            ),
            low_api_version=semver_pb2.SemVer(major=2),
            high_api_version=semver_pb2.SemVer(major=2, minor=3),
        )


class ContentAddressableStorage(_Service, re_grpc.ContentAddressableStorageServicer):
    kind = "cas"

    def __init__(self, store: ServerStore, metrics: Metrics, writers: ThreadPoolExecutor) -> None:
        super().__init__(store, metrics)
        self._writers = writers

    @counted
    def FindMissingBlobs(self, request: re_pb2.FindMissingBlobsRequest) -> re_pb2.FindMissingBlobsResponse:
        missing = self.store.namespace(request.instance_name).missing(request.blob_digests)
        return re_pb2.FindMissingBlobsResponse(missing_blob_digests=missing)

    @counted
    def BatchUpdateBlobs(self, request: re_pb2.BatchUpdateBlobsRequest) -> re_pb2.BatchUpdateBlobsResponse:
        """Each blob checked and written on its own; the files are written in parallel, as creating a file is
        mostly waiting for the filesystem (twice the throughput on a busy disk)."""
        namespace = self.store.namespace(request.instance_name)
        if sum(len(r.data) for r in request.requests) > MAX_BATCH_BYTES:
            raise BadRequest(f"batch larger than max_batch_total_size_bytes ({MAX_BATCH_BYTES}); use ByteStream")

        def put(r: re_pb2.BatchUpdateBlobsRequest.Request) -> re_pb2.BatchUpdateBlobsResponse.Response:
            try:
                if r.compressor != re_pb2.Compressor.IDENTITY:
                    raise BadRequest("compressed blobs are not supported (Capabilities lists no compressor)")
                namespace.put(check_digest(r.digest), r.data)
            except BadRequest as e:
                status = _status(code_pb2.INVALID_ARGUMENT, str(e))
                return re_pb2.BatchUpdateBlobsResponse.Response(digest=r.digest, status=status)
            self.metrics.transferred(received=len(r.data))
            return re_pb2.BatchUpdateBlobsResponse.Response(digest=r.digest)  # status unset: OK

        responses = self._writers.map(put, request.requests) if len(request.requests) > 1 else map(put, request.requests)
        return re_pb2.BatchUpdateBlobsResponse(responses=list(responses))

    @counted
    def BatchReadBlobs(self, request: re_pb2.BatchReadBlobsRequest) -> re_pb2.BatchReadBlobsResponse:
        namespace = self.store.namespace(request.instance_name)
        digests = [check_digest(d) for d in request.digests]
        if sum(d.size_bytes for d in digests) > MAX_BATCH_BYTES:
            raise BadRequest(f"batch larger than max_batch_total_size_bytes ({MAX_BATCH_BYTES}); use ByteStream")
        responses = []
        sent = hits = 0
        for d, digest in zip(request.digests, digests):
            data = namespace.read(digest)
            if data is None:
                status = _status(code_pb2.NOT_FOUND, f"blob {digest} not found")
                responses.append(re_pb2.BatchReadBlobsResponse.Response(digest=d, status=status))
            else:  # an unset status is OK (code 0)
                responses.append(re_pb2.BatchReadBlobsResponse.Response(digest=d, data=data))
                hits += 1
                sent += len(data)
        self.metrics.lookups("cas", hits, len(digests) - hits)
        self.metrics.transferred(sent=sent)
        return re_pb2.BatchReadBlobsResponse(responses=responses)

    @counted_stream
    def GetTree(self, request: re_pb2.GetTreeRequest) -> Iterator[re_pb2.GetTreeResponse]:
        """Every Directory below the root, breadth first, in pages; missing subtrees are left out (REAPI)."""
        if request.page_token:
            raise BadRequest("GetTree page tokens are not supported; read the whole stream")
        namespace = self.store.namespace(request.instance_name)
        root = check_digest(request.root_digest)
        page_size = min(request.page_size, TREE_PAGE) if request.page_size > 0 else TREE_PAGE
        queue, seen, page = [root], {root}, []
        first = True
        while queue:
            digest = queue.pop(0)
            data = namespace.read(digest)
            try:
                directory = None if data is None else re_pb2.Directory.FromString(data)
            except DecodeError:
                directory = None
            if directory is None:
                if first:
                    raise Failure(grpc.StatusCode.NOT_FOUND, f"root directory {root} not found")
                continue
            first = False
            page.append(directory)
            for child in directory.directories:
                d = check_digest(child.digest)
                if d not in seen:
                    seen.add(d)
                    queue.append(d)
            if len(page) == page_size:
                yield re_pb2.GetTreeResponse(directories=page)
                page = []
        if page:
            yield re_pb2.GetTreeResponse(directories=page)


def _parse_resource(name: str, upload: bool) -> tuple[str, Digest]:
    """`{instance}/blobs/{hash}/{size}` (read) or `{instance}/uploads/{uuid}/blobs/{hash}/{size}[/...]` (write)."""
    parts = name.split("/")
    try:
        at = parts.index("uploads" if upload else "blobs")
        blobs = parts[at + 2 : at + 5] if upload else parts[at : at + 3]
        if blobs[0] != "blobs" or (not upload and len(parts) != at + 3):
            raise ValueError
        digest = Digest(check_hash(blobs[1]), int(blobs[2]))
    except (ValueError, IndexError):
        form = "{instance}/uploads/{uuid}/blobs/{hash}/{size}" if upload else "{instance}/blobs/{hash}/{size}"
        raise BadRequest(f"resource name {name[:200]!r} is not of the form {form}") from None
    if digest.size_bytes < 0:
        raise BadRequest(f"negative size in resource name {name[:200]!r}")
    return check_instance("/".join(parts[:at])), digest


class ByteStream(_Service, bytestream_pb2_grpc.ByteStreamServicer):
    kind = "bytestream"

    @counted_stream
    def Read(self, request: bytestream_pb2.ReadRequest) -> Iterator[bytestream_pb2.ReadResponse]:
        instance, digest = _parse_resource(request.resource_name, upload=False)
        offset, limit = request.read_offset, request.read_limit
        if offset < 0 or offset > digest.size_bytes:
            raise Failure(grpc.StatusCode.OUT_OF_RANGE, f"read_offset {offset} outside blob {digest}")
        if limit < 0:
            raise BadRequest(f"negative read_limit {limit}")
        if digest == EMPTY_DIGEST:
            self.metrics.lookups("cas", 1, 0)
            return
        namespace = self.store.namespace(instance)
        opened = namespace.open(digest)
        self.metrics.lookups("cas", int(opened is not None), int(opened is None))
        if opened is None:
            raise Failure(grpc.StatusCode.NOT_FOUND, f"blob {digest} not found")
        f, check = opened
        whole = offset == 0 and (limit == 0 or limit >= digest.size_bytes)
        remaining = digest.size_bytes - offset if limit == 0 else min(limit, digest.size_bytes - offset)
        # A blob this process has not checked yet is hashed as it streams (one pass over the file); a partial read
        # cannot be checked that way, so it is checked first. A corrupt blob is evicted: DATA_LOSS.
        with f:
            if check and not whole:
                self._checked(namespace, digest, hashlib.file_digest(f, "sha256").hexdigest())
                check = False
            f.seek(offset)
            sha = hashlib.sha256() if check else None
            while remaining > 0:
                chunk = f.read(min(READ_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                if sha is not None:
                    sha.update(chunk)
                self.metrics.transferred(sent=len(chunk))
                yield bytestream_pb2.ReadResponse(data=chunk)
        if sha is not None:
            self._checked(namespace, digest, sha.hexdigest())

    @staticmethod
    def _checked(namespace: Namespace, digest: Digest, actual: str) -> None:
        namespace.streamed(digest, actual == digest.hash)
        if actual != digest.hash:
            raise Failure(grpc.StatusCode.DATA_LOSS, f"blob {digest} was corrupt in the cache and is evicted")

    @counted
    def Write(self, requests: Iterator[bytestream_pb2.WriteRequest]) -> bytestream_pb2.WriteResponse:
        """Stream into a temp file of the store, verify against the digest, then install atomically."""
        first = next(requests, None)
        if first is None:
            raise BadRequest("Write without any request")
        resource = first.resource_name
        instance, digest = _parse_resource(resource, upload=True)
        if first.write_offset != 0:
            raise BadRequest("this server does not resume uploads: write_offset must start at 0")
        namespace = self.store.namespace(instance)
        if namespace.has(digest):
            return bytestream_pb2.WriteResponse(committed_size=digest.size_bytes)  # REAPI: finish early

        def chunks() -> Iterator[bytes]:
            request, offset = first, 0
            while True:
                if request.write_offset != offset:
                    raise BadRequest(f"write_offset {request.write_offset} where {offset} was expected")
                if request.resource_name and request.resource_name != resource:
                    raise BadRequest("resource_name changed in the middle of a Write")
                yield request.data
                offset += len(request.data)
                self.metrics.transferred(received=len(request.data))
                if request.finish_write:
                    return
                following = next(requests, None)
                if following is None:
                    raise BadRequest("the Write stream ended without finish_write")
                request = following

        namespace.receive(digest, chunks())
        return bytestream_pb2.WriteResponse(committed_size=digest.size_bytes)

    @counted
    def QueryWriteStatus(
        self, request: bytestream_pb2.QueryWriteStatusRequest
    ) -> bytestream_pb2.QueryWriteStatusResponse:
        """Complete if the blob is stored; otherwise 0, since partial uploads are not kept (restart at 0)."""
        instance, digest = _parse_resource(request.resource_name, upload=True)
        if self.store.namespace(instance).has(digest):
            return bytestream_pb2.QueryWriteStatusResponse(committed_size=digest.size_bytes, complete=True)
        return bytestream_pb2.QueryWriteStatusResponse(committed_size=0, complete=False)


class ActionCache(_Service, re_grpc.ActionCacheServicer):
    kind = "ac"

    @counted
    def GetActionResult(self, request: re_pb2.GetActionResultRequest) -> re_pb2.ActionResult:
        key = check_digest(request.action_digest)
        found = self.store.namespace(request.instance_name).action_result(key)
        self.metrics.lookups("ac", int(found is not None), int(found is None))
        if found is None:
            raise Failure(grpc.StatusCode.NOT_FOUND, f"no complete action result for {key}")
        self.metrics.transferred(sent=len(found[0]))
        return found[1]

    @counted
    def UpdateActionResult(self, request: re_pb2.UpdateActionResultRequest) -> re_pb2.ActionResult:
        key = check_digest(request.action_digest)
        self.store.namespace(request.instance_name).put_action(key, request.action_result)
        self.metrics.transferred(received=request.action_result.ByteSize())
        return request.action_result


class _RequireToken(grpc.ServerInterceptor):
    """Refuse every call whose token may not make it (UNAUTHENTICATED, or PERMISSION_DENIED for a read-only token
    writing), before the request is parsed."""

    def __init__(self, token: BearerToken, metrics: Metrics) -> None:
        self._token = token
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        header = next((v for k, v in details.invocation_metadata if k == "authorization"), None)
        handler = continuation(details)
        refusal = self._token.refusal(header if isinstance(header, str) else None, details.method in GRPC_WRITES)
        if handler is None or refusal is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        code = (grpc.StatusCode.UNAUTHENTICATED if refusal is Refusal.UNAUTHENTICATED
                else grpc.StatusCode.PERMISSION_DENIED)

        def deny(_request: object, context: grpc.ServicerContext) -> None:
            self._metrics.request("grpc", method, "auth", code.name)
            context.abort(code, refusal.value)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


def start_grpc(address: str, store: ServerStore, metrics: Metrics, token: BearerToken, threads: int) -> tuple[grpc.Server, int]:
    """Start the gRPC server on `address` (HOST:PORT, port 0 for any); return it and the port it got.

    Raises OSError when it cannot listen there."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gaffer-grpc"),
        interceptors=[_RequireToken(token, metrics)] if token.required else [],
        options=[
            ("grpc.so_reuseport", 0),  # a port already taken must be an error, not a silently shared port
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    re_grpc.add_CapabilitiesServicer_to_server(Capabilities(store, metrics), server)
    writers = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="gaffer-write")
    re_grpc.add_ContentAddressableStorageServicer_to_server(ContentAddressableStorage(store, metrics, writers), server)
    re_grpc.add_ActionCacheServicer_to_server(ActionCache(store, metrics), server)
    bytestream_pb2_grpc.add_ByteStreamServicer_to_server(ByteStream(store, metrics), server)
    host, _, wanted = address.rpartition(":")
    if wanted != "0":
        # bind once ourselves: gRPC would log a multi-line C-core error before reporting the failure
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host.strip("[]"), int(wanted)))
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if not port:
        raise OSError(errno.EADDRINUSE, f"cannot listen on {address}")
    server.start()
    return server, port
