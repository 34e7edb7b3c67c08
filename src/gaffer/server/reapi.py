"""The REAPI v2 gRPC services of `gaffer serve`: Capabilities, ContentAddressableStorage, ByteStream, ActionCache
(and, added from execution.py and bots.py, remote execution's).

Each service is a thin adapter over `ServerStore` (the bazel-remote shape): parse and validate the request, call
the store, map failures to gRPC status codes and count them in the metrics.

The server is grpc.aio: a call waiting on its peer (a stalled upload, a client that stopped reading) holds a
coroutine, not a thread, and is dropped after STALL_S. The store's blocking disk work runs in a bounded thread
pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import logging
import socket
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from io import BytesIO
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2

from gaffer.digest import EMPTY_DIGEST, Digest, digest_bytes
from gaffer.protos import bytestream_pb2, bytestream_pb2_grpc, semver_pb2, wire
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos import remote_execution_pb2_grpc as re_grpc
from gaffer.server.auth import GRPC_WRITES, BearerToken, Refusal
from gaffer.server.dispatch import Coordinator
from gaffer.server.metrics import Metrics
from gaffer.server.store import (
    BackendUnavailable,
    BadRequest,
    ServerStore,
    SlowCheck,
    Upload,
    check_digest,
    check_hash,
    check_instance,
    storage_failure,
)

MAX_BATCH_BYTES = 4 * 1024 * 1024  # announced in Capabilities: the total blob bytes one batch call may carry
MAX_MESSAGE_BYTES = MAX_BATCH_BYTES + 1024 * 1024  # what the server accepts: a full batch plus its framing
READ_CHUNK = 1024 * 1024
TREE_PAGE = 1000
TREE_PAGE_BYTES = 3 * 1024 * 1024  # a GetTree page stays under the 4 MiB a gRPC client accepts by default
PAGE_ENTRY_BYTES = 16  # the framing of one Directory in a page, at most
STALL_S = 60.0  # a stream whose peer neither sends nor takes a message for this long is dropped
MAX_CALLS = 1000  # calls in progress at once; more are refused with RESOURCE_EXHAUSTED
MAX_STREAMS_PER_CONNECTION = 100
KEEPALIVE_S = 60  # ping an idle connection this often; one that does not answer in KEEPALIVE_TIMEOUT_S is closed
KEEPALIVE_TIMEOUT_S = 20
IDLE_CONNECTION_S = 600  # a connection without calls for this long is closed (clients reconnect as needed)
TICK_S = 0.5  # how often the coordinator expires silent workers, cancels abandoned jobs and spots unmatched ones
CALLS_END_S = 5.0  # at stop, how long grpc's own per-call tasks get to see their call's end before being cancelled

Context = grpc.aio.ServicerContext[Any, Any]
Request = TypeVar("Request")
Response = TypeVar("Response")
T = TypeVar("T")


class Failure(Exception):
    """Ends an RPC with a status code other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


_STORAGE_CODES = {"too large": grpc.StatusCode.RESOURCE_EXHAUSTED, "full": grpc.StatusCode.RESOURCE_EXHAUSTED,
                  "unavailable": grpc.StatusCode.UNAVAILABLE, "broken": grpc.StatusCode.INTERNAL}


def _status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code and message a handler's exception ends the RPC with (never a path of the server's)."""
    if isinstance(error, Failure):
        return error.code, str(error)
    if isinstance(error, BadRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    assert isinstance(error, (OSError, BackendUnavailable))
    kind, message = storage_failure(error)
    return _STORAGE_CODES[kind], message


_HANDLED = (Failure, BadRequest, OSError, BackendUnavailable)


class _Service:
    """Base of the servicers: the shared store, metrics and I/O threads; `kind` labels the service in the metrics."""

    kind = ""

    def __init__(self, store: ServerStore, metrics: Metrics, io: ThreadPoolExecutor) -> None:
        self.store = store
        self.metrics = metrics
        self.io = io

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`fn(*args)` on an I/O thread: the event loop never waits on the disk."""
        return asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    async def fail(self, method: str, error: Exception, context: Context) -> NoReturn:
        code, message = _status_of(error)
        self.metrics.request("grpc", method, self.kind, code.name)
        await context.abort(code, message)
        raise AssertionError("grpc's abort() raises")  # what the type checker cannot know

    async def stream(self, responses: Generator[Response, None, None], context: Context) -> None:
        """Send what a blocking generator yields, each step of it on an I/O thread; a peer that takes no message
        for STALL_S is dropped."""
        try:
            while (response := await self.run(next, responses, None)) is not None:
                try:
                    await asyncio.wait_for(context.write(response), STALL_S)
                except TimeoutError:
                    raise Failure(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"the client took no data for {STALL_S:g}s") from None
        finally:
            self.io.submit(responses.close)  # its file, closed on an I/O thread after any step still running


Service = TypeVar("Service", bound=_Service)
Handler = Callable[[Service, Request, Context], Awaitable[Response]]


def counted(fn: Callable[[Service, Request], Response]) -> Handler[Service, Request, Response]:
    """A blocking handler with one response, run on an I/O thread: count it, and turn Failure/BadRequest/OSError
    into the RPC's status."""

    @functools.wraps(fn)
    async def handler(self: Service, request: Request, context: Context) -> Response:
        try:
            response = await self.run(fn, self, request)
        except _HANDLED as e:
            await self.fail(fn.__name__, e, context)
        self.metrics.request("grpc", fn.__name__, self.kind, "OK")
        return response

    return handler


def counted_quick(
    fn: Callable[[Service, Request, bool], Response],
) -> Handler[Service, Request, Response]:
    """`counted` for a handler that is usually quick (index lookups, one small read): it runs on the event loop,
    saving the two thread hops (~0.6 ms a call on two busy cores); when it raises SlowCheck (a backend to ask,
    output trees to read) it runs again on an I/O thread. `fn(self, request, quick)`."""

    @functools.wraps(fn)
    async def handler(self: Service, request: Request, context: Context) -> Response:
        try:
            try:
                response = fn(self, request, True)
            except SlowCheck:
                response = await self.run(fn, self, request, False)
        except _HANDLED as e:
            await self.fail(fn.__name__, e, context)
        self.metrics.request("grpc", fn.__name__, self.kind, "OK")
        return response

    return handler


def counted_stream(
    fn: Callable[[Service, Request], Generator[Response, None, None]],
) -> Handler[Service, Request, None]:
    """`counted` for blocking generators of responses: each step runs on an I/O thread (Service.stream)."""

    @functools.wraps(fn)
    async def handler(self: Service, request: Request, context: Context) -> None:
        try:
            await self.stream(fn(self, request), context)
        except _HANDLED as e:
            await self.fail(fn.__name__, e, context)
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
            execution_capabilities=re_pb2.ExecutionCapabilities(  # served by execution.py, on workers
                digest_function=re_pb2.DigestFunction.SHA256, digest_functions=[re_pb2.DigestFunction.SHA256],
                exec_enabled=True,
                execution_priority_capabilities=re_pb2.PriorityCapabilities(
                    priorities=[re_pb2.PriorityCapabilities.PriorityRange(min_priority=0, max_priority=0)]
                ),
            ),
            low_api_version=semver_pb2.SemVer(major=2),
            high_api_version=semver_pb2.SemVer(major=2, minor=3),
        )


class ContentAddressableStorage(_Service, re_grpc.ContentAddressableStorageServicer):
    kind = "cas"

    @counted_quick
    def FindMissingBlobs(self, request: re_pb2.FindMissingBlobsRequest, quick: bool) -> re_pb2.FindMissingBlobsResponse:
        if quick and not self.store.local:
            raise SlowCheck  # the backend is asked, over the network
        missing = self.store.namespace(request.instance_name).missing(request.blob_digests)
        return re_pb2.FindMissingBlobsResponse(missing_blob_digests=missing)

    @counted
    def BatchUpdateBlobs(self, request: re_pb2.BatchUpdateBlobsRequest) -> re_pb2.BatchUpdateBlobsResponse:
        """Each blob checked on its own (a bad one gets its own status), then the good ones written together on
        this one thread: the small ones as one pack, any large one as a file, then their index entries
        (Namespace.put_checked). One thread per batch rather than a pool per blob: the pool's hand-offs cost more
        than the writes."""
        namespace = self.store.namespace(request.instance_name)
        if sum(len(r.data) for r in request.requests) > MAX_BATCH_BYTES:
            raise BadRequest(f"batch larger than max_batch_total_size_bytes ({MAX_BATCH_BYTES}); use ByteStream")
        refused: dict[int, str] = {}
        good = []
        sha256, identity = hashlib.sha256, re_pb2.Compressor.IDENTITY
        for i, r in enumerate(request.requests):
            d, data = r.digest, r.data
            # the usual case first: data matching its digest (a hash equal to a SHA-256 is a valid one)
            if r.compressor == identity and len(data) == d.size_bytes and sha256(data).hexdigest() == d.hash:
                good.append((Digest(d.hash, d.size_bytes), data))
                continue
            try:
                if r.compressor != identity:
                    raise BadRequest("compressed blobs are not supported (Capabilities lists no compressor)")
                digest = check_digest(d)
                if digest_bytes(data) != digest:
                    raise BadRequest(f"the data does not match digest {digest}")
            except BadRequest as e:
                refused[i] = str(e)
                continue
            good.append((digest, data))
        namespace.put_checked(good)
        self.metrics.transferred(received=sum(len(data) for _, data in good))
        response = re_pb2.BatchUpdateBlobsResponse()
        add = response.responses.add  # in place: a third cheaper than building 1,000 messages and copying them
        for i, r in enumerate(request.requests):
            if i in refused:
                add(digest=r.digest, status=_status(code_pb2.INVALID_ARGUMENT, refused[i]))
            else:
                add(digest=r.digest)  # status unset: OK
        return response

    @counted
    def BatchReadBlobs(self, request: re_pb2.BatchReadBlobsRequest) -> bytes:
        """The reply already serialized (`wire.batch_read_blobs`: each blob copied once; see `_add_services`)."""
        namespace = self.store.namespace(request.instance_name)
        digests = [check_digest(d) for d in request.digests]
        if sum(d.size_bytes for d in digests) > MAX_BATCH_BYTES:
            raise BadRequest(f"batch larger than max_batch_total_size_bytes ({MAX_BATCH_BYTES}); use ByteStream")
        responses: list[tuple[Digest, bytes | None, int, str]] = []
        sent = hits = 0
        for d, digest in zip(request.digests, digests, strict=True):
            data = namespace.read(digest)
            if data is None:
                responses.append((Digest(d.hash, d.size_bytes), None, code_pb2.NOT_FOUND, f"blob {digest} not found"))
            else:
                responses.append((Digest(d.hash, d.size_bytes), data, code_pb2.OK, ""))
                hits += 1
                sent += len(data)
        self.metrics.lookups("cas", hits, len(digests) - hits)
        self.metrics.transferred(sent=sent)
        return wire.batch_read_blobs(responses)

    @counted_stream
    def GetTree(self, request: re_pb2.GetTreeRequest) -> Generator[re_pb2.GetTreeResponse, None, None]:
        """Every Directory below the root, breadth first, in pages of at most TREE_PAGE directories and
        TREE_PAGE_BYTES; missing subtrees are left out (REAPI). A Directory too large for any page is refused
        unread."""
        if request.page_token:
            raise BadRequest("GetTree page tokens are not supported; read the whole stream")
        namespace = self.store.namespace(request.instance_name)
        root = check_digest(request.root_digest)
        page_size = min(request.page_size, TREE_PAGE) if request.page_size > 0 else TREE_PAGE
        queue, seen = deque([root]), {root}
        page: list[re_pb2.Directory] = []
        page_bytes = 0
        first = True
        while queue:
            digest = queue.popleft()
            if digest.size_bytes + PAGE_ENTRY_BYTES > TREE_PAGE_BYTES:
                raise Failure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"directory {digest} is larger than a GetTree page ({TREE_PAGE_BYTES} bytes)")
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
            if page and page_bytes + digest.size_bytes + PAGE_ENTRY_BYTES > TREE_PAGE_BYTES:
                yield re_pb2.GetTreeResponse(directories=page)
                page, page_bytes = [], 0
            page.append(directory)
            page_bytes += digest.size_bytes + PAGE_ENTRY_BYTES
            for child in directory.directories:
                d = check_digest(child.digest)
                if d not in seen:
                    seen.add(d)
                    queue.append(d)
            if len(page) == page_size:
                yield re_pb2.GetTreeResponse(directories=page)
                page, page_bytes = [], 0
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
    def Read(self, request: bytestream_pb2.ReadRequest) -> Generator[bytes, None, None]:
        """The blob in ReadResponse messages already serialized (`wire.stream_chunk`; see `_add_services`)."""
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
        remaining = digest.size_bytes - offset if limit == 0 else min(limit, digest.size_bytes - offset)
        # A blob this process has not checked yet is hashed before any of it is sent, so a client never receives
        # corrupt data; a corrupt blob is evicted: DATA_LOSS.
        with f:
            if check:
                actual = hashlib.file_digest(f, "sha256").hexdigest()
                namespace.streamed(digest, actual == digest.hash)
                if actual != digest.hash:
                    raise Failure(grpc.StatusCode.DATA_LOSS, f"blob {digest} was corrupt in the cache and is evicted")
            if isinstance(f, BytesIO):  # a packed blob: small, in hand
                yield from self._chunks(f.getvalue()[offset:offset + remaining])
                return
        path, position = namespace.server.path(namespace.key(digest)), offset
        while remaining > 0:
            try:  # opened for each chunk, so a client that stopped reading holds no file descriptor
                with open(path, "rb") as f:
                    f.seek(position)
                    chunk = f.read(min(READ_CHUNK, remaining))
            except FileNotFoundError:
                raise Failure(grpc.StatusCode.UNAVAILABLE, f"blob {digest} was evicted while being read") from None
            if not chunk:
                break
            position += len(chunk)
            remaining -= len(chunk)
            self.metrics.transferred(sent=len(chunk))
            yield wire.stream_chunk(chunk)

    def _chunks(self, data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), READ_CHUNK):
            chunk = data[start:start + READ_CHUNK]
            self.metrics.transferred(sent=len(chunk))
            yield wire.stream_chunk(chunk)

    async def Write(self, requests: object, context: Context) -> bytestream_pb2.WriteResponse:
        """Stream into a temp file of the store, verify against the digest, then install atomically. The chunks
        are awaited on the event loop and hashed and written on an I/O thread, one chunk written while the next
        is received: a stalled upload holds no thread."""
        try:
            response = await self._write(context)
        except _HANDLED as e:
            await self.fail("Write", e, context)
        self.metrics.request("grpc", "Write", self.kind, "OK")
        return response

    async def _write(self, context: Context) -> bytestream_pb2.WriteResponse:
        request = await _next_request(context)
        if request is None:
            raise BadRequest("Write without any request")
        resource = request.resource_name
        instance, digest = _parse_resource(resource, upload=True)
        if request.write_offset != 0:
            raise BadRequest("this server does not resume uploads: write_offset must start at 0")
        upload = await self.run(self._start_upload, instance, digest)
        if upload is None:
            return bytestream_pb2.WriteResponse(committed_size=digest.size_bytes)  # REAPI: finish early
        written: asyncio.Future[None] | None = None  # the previous chunk's write, running while this one arrived
        try:
            offset = 0
            while True:
                if request.write_offset != offset:
                    raise BadRequest(f"write_offset {request.write_offset} where {offset} was expected")
                if request.resource_name and request.resource_name != resource:
                    raise BadRequest("resource_name changed in the middle of a Write")
                if written is not None:
                    await written
                written = self.run(upload.write, request.data)  # started now, awaited before the next
                offset += len(request.data)
                self.metrics.transferred(received=len(request.data))
                if request.finish_write:
                    break
                request = await _next_request(context)
                if request is None:
                    raise BadRequest("the Write stream ended without finish_write")
            await written
            written = None
            await self.run(upload.commit)
        finally:
            if written is not None:  # the call failed with a write still running: its outcome no longer matters
                written.add_done_callback(lambda f: f.cancelled() or f.exception())
            # on an I/O thread, after a write still running there (a cancelled call); shielded: it happens anyway
            await asyncio.shield(self.run(upload.close))
        return bytestream_pb2.WriteResponse(committed_size=digest.size_bytes)

    def _start_upload(self, instance: str, digest: Digest) -> Upload | None:
        """The Upload of a Write (NoSpace / TooLarge when the store cannot take it), or None when the blob is
        already stored; in one hop to an I/O thread."""
        namespace = self.store.namespace(instance)
        return None if namespace.has(digest) else namespace.upload(digest)

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

    @counted_quick
    def GetActionResult(self, request: re_pb2.GetActionResultRequest, quick: bool) -> re_pb2.ActionResult:
        key = check_digest(request.action_digest)
        if quick and not self.store.local:
            raise SlowCheck  # the backend is asked, over the network
        found = self.store.namespace(request.instance_name).action_result(key, trees=not quick)
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


async def _next_request(context: Context) -> bytestream_pb2.WriteRequest | None:
    """The peer's next message of a request stream, None at its end; a peer silent for STALL_S is dropped."""
    try:
        message = await asyncio.wait_for(context.read(), STALL_S)
    except TimeoutError:
        raise Failure(grpc.StatusCode.DEADLINE_EXCEEDED, f"the client sent no data for {STALL_S:g}s") from None
    return None if message is grpc.aio.EOF else message


class _RequireToken(grpc.aio.ServerInterceptor):
    """Refuse every call whose token may not make it (UNAUTHENTICATED, or PERMISSION_DENIED for a read-only token
    writing), before the request is parsed."""

    def __init__(self, token: BearerToken, metrics: Metrics) -> None:
        self._token = token
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        header = next((v for k, v in details.invocation_metadata if k == "authorization"), None)
        handler = await continuation(details)
        refusal = self._token.refusal(header if isinstance(header, str) else None, details.method in GRPC_WRITES)
        if handler is None or refusal is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        code = (grpc.StatusCode.UNAUTHENTICATED if refusal is Refusal.UNAUTHENTICATED
                else grpc.StatusCode.PERMISSION_DENIED)
        message = refusal.value

        async def deny(_request: object, context: Context) -> None:
            self._metrics.request("grpc", method, "auth", code.name)
            await context.abort(code, message)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


class GrpcServer:
    """The grpc.aio server on an event loop of its own thread, and the I/O threads its calls use."""

    def __init__(self, store: ServerStore, metrics: Metrics, token: BearerToken, threads: int,
                 coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        self._io = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gaffer-grpc-io")
        self._services = (store, metrics, token)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gaffer-grpc")
        self._server: grpc.aio.Server | None = None

    def start(self, address: str) -> int:
        """Listen on `address` and serve; the port bound. OSError when it cannot listen there."""
        self._thread.start()
        try:
            return asyncio.run_coroutine_threadsafe(self._start(address), self._loop).result()
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            raise

    async def _start(self, address: str) -> int:
        store, metrics, token = self._services
        server = grpc.aio.server(
            interceptors=[_RequireToken(token, metrics)] if token.required else [],
            maximum_concurrent_rpcs=MAX_CALLS,
            options=[
                ("grpc.so_reuseport", 0),  # a port already taken must be an error, not a silently shared port
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
                ("grpc.keepalive_time_ms", KEEPALIVE_S * 1000),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
                ("grpc.max_connection_idle_ms", IDLE_CONNECTION_S * 1000),
            ],
        )
        re_grpc.add_CapabilitiesServicer_to_server(Capabilities(store, metrics, self._io), server)
        _add_services(server, re_grpc.add_ContentAddressableStorageServicer_to_server,
                      ContentAddressableStorage(store, metrics, self._io), serialized={"BatchReadBlobs"})
        re_grpc.add_ActionCacheServicer_to_server(ActionCache(store, metrics, self._io), server)
        _add_services(server, bytestream_pb2_grpc.add_ByteStreamServicer_to_server,
                      ByteStream(store, metrics, self._io), serialized={"Read"})
        _add_execution(server, store, metrics, self._io, self._coordinator)
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
        await server.start()
        self._server = server
        return port

    def stop(self, grace: float) -> Future[None]:
        """Refuse new calls, give those in progress `grace` seconds, then cancel them; done when all have ended
        and the threads are gone (disk work already running finishes: it is short)."""
        done: Future[None] = Future()

        async def stop() -> None:
            self._coordinator.stop()  # clients following operations and workers' long polls return now
            if self._server is not None:
                await self._server.stop(grace)
            # grpc has ended the calls; what their handlers still await ends here, so their clean-ups run
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            calls = {task for task in tasks if _is_grpc_call(task)}
            await _cancel(tasks - calls)
            # grpc's own task per call ends once the call's end has reached the loop; cancelled, grpc prints a
            # traceback, so it is cancelled only when it has not ended in time
            if calls:
                _, stuck = await asyncio.wait(calls, timeout=CALLS_END_S)
                await _cancel(stuck)
            self._loop.stop()

        def finish() -> None:
            self._thread.join()
            self._io.shutdown(wait=True)  # the clean-ups cancelled calls left (temp files, open files)
            self._loop.close()
            done.set_result(None)

        asyncio.run_coroutine_threadsafe(stop(), self._loop)
        threading.Thread(target=finish, name="gaffer-grpc-stop").start()
        return done


class _Handlers:
    """Stands in for the server while a generated `add_*Servicer_to_server` registers a service: keeps its
    method handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass  # the same handlers come to add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        self.service, self.handlers = service, handlers


def _add_services(server: grpc.aio.Server, add: Callable[[Any, Any], None], servicer: object,
                  serialized: set[str]) -> None:
    """Register a service as its generated `add` does, except that the methods in `serialized` return their
    replies already in protobuf's wire format (gaffer.protos.wire), sent as they are: the blobs a cache sends
    are copied once on the way rather than three times."""
    found = _Handlers()
    add(servicer, found)
    handlers = dict(found.handlers)
    for name in serialized:  # grpc's handlers are named tuples; a serializer of None sends the bytes as they are
        handlers[name] = handlers[name]._replace(response_serializer=None)  # type: ignore[attr-defined]
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(found.service, handlers),))
    server.add_registered_method_handlers(found.service, handlers)


def _is_grpc_call(task: asyncio.Task[object]) -> bool:
    """Whether the task is grpc.aio's own for one call (it waits for the call's end from the core)."""
    return getattr(task.get_coro(), "__name__", "") == "_schedule_rpc_coro"


async def _cancel(tasks: set[asyncio.Task[object]]) -> None:
    """Cancel the tasks and wait until each has ended (its clean-ups run)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _CancelledAtStop(logging.Filter):
    """grpc.aio logs a traceback for each call it cancels when the server stops (a stalled stream after the grace
    period): the cancel is the stop doing its job, not a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


logging.getLogger("grpc._cython.cygrpc").addFilter(_CancelledAtStop())


def _add_execution(server: grpc.aio.Server, store: ServerStore, metrics: Metrics, io: ThreadPoolExecutor,
                   coordinator: Coordinator) -> None:
    """Remote execution's services (Execution, Operations, Bots, Inventory), and the coordinator's clock tick."""
    from google.longrunning import operations_pb2_grpc

    from gaffer.protos import bots_pb2_grpc, execution_service_pb2_grpc, inventory_pb2_grpc
    from gaffer.server.bots import Bots, Inventory
    from gaffer.server.execution import Execution, Operations

    execution_service_pb2_grpc.add_ExecutionServicer_to_server(Execution(store, metrics, io, coordinator), server)
    operations_pb2_grpc.add_OperationsServicer_to_server(Operations(coordinator), server)
    bots_pb2_grpc.add_BotsServicer_to_server(Bots(store, metrics, io, coordinator), server)
    inventory_pb2_grpc.add_InventoryServicer_to_server(Inventory(store, metrics, io, coordinator), server)

    async def tick() -> None:
        while True:
            await asyncio.sleep(TICK_S)
            coordinator.tick()

    _TICKERS.add(asyncio.get_running_loop().create_task(tick()))  # cancelled with the other tasks at stop


_TICKERS: set[asyncio.Task[None]] = set()  # a reference, so the task is not collected


def start_grpc(address: str, store: ServerStore, metrics: Metrics, token: BearerToken, threads: int,
               coordinator: Coordinator) -> tuple[GrpcServer, int]:
    """Start the gRPC server on `address` (HOST:PORT, port 0 for any); return it and the port it got.

    Raises OSError when it cannot listen there."""
    server = GrpcServer(store, metrics, token, threads, coordinator)
    return server, server.start(address)
