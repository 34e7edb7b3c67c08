"""The Bazel HTTP cache protocol of `gaffer serve`, and /metrics, on aiohttp (asyncio, one thread).

    GET|HEAD|PUT  [/<instance>]/ac/<sha256>    a serialized ActionResult
    GET|HEAD|PUT  [/<instance>]/cas/<sha256>   a blob; a PUT is verified against the hash (400 if it differs)
    GET           /metrics                     Prometheus text format
    GET           /status.json                 the status document (server/status.py)
    GET           /status                      the status page that shows it (no token needed: it holds no data)

The server faces untrusted networks, so every resource a client can hold is bounded: connections (beyond the cap,
the oldest connection not inside a request is dropped for the new one), header lines, size and count (aiohttp's
parser, which also refuses ambiguous framing: Transfer-Encoding with Content-Length, two Content-Lengths), time
(a client that sends nothing for `client_timeout` is dropped, idle, mid-headers or mid-body) and uploads in flight
(each holds its room in the store's size bound before its body is read). The token is checked as soon as the
headers are in, before any body is read. The store's disk I/O runs on a bounded thread pool, so a slow disk never
stalls the event loop, and a stalled client holds no thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import json
import logging
import resource
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from google.protobuf.message import DecodeError

from gaffer.digest import Digest
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.server.auth import BearerToken, Refusal
from gaffer.server.metrics import Metrics
from gaffer.server.status import PAGE_POLICY, StatusSource, document, page
from gaffer.server.store import (
    MAX_ACTION_RESULT,
    SMALL_BLOB,
    BackendUnavailable,
    BadRequest,
    BlobFile,
    Namespace,
    ServerStore,
    Upload,
    check_hash,
    check_instance,
    storage_failure,
)

CHUNK = 256 * 1024  # the unit of disk reads and writes: memory per transfer stays near this
MAX_BACKLOG = 1024  # connections the kernel queues before accept (the kernel may cap it: net.core.somaxconn)
DISK_THREADS = 16  # store calls run at once; more wait their turn without blocking the event loop
MAX_HEADERS = 32  # header lines per request (Bazel and gaffer send a handful), each at most 8 KiB
MAX_FIELD = 8190
LINGER_S = 5.0  # how long an unread request body is drained after a refusal before the connection is closed

T = TypeVar("T")
_STORAGE_STATUS = {"too large": 413, "full": 507, "unavailable": 503, "broken": 500}


class _NotOurFault(logging.Filter):
    """aiohttp logs a traceback for each malformed request it answers with a 400 and each client that goes away
    mid-reply: the client's doing, not an error of the server, and an easy way to flood its log."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, (HttpProcessingError, ConnectionError))


_LOG = logging.getLogger("gaffer.serve.http")
_LOG.addFilter(_NotOurFault())


def _quiet_when_out_of_descriptors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio logs a traceback for each failed accept when the process is out of file descriptors (and retries
    a second later): a flood that the connection cap is already handling must not also fill the log."""
    error = context.get("exception")
    if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
        return
    loop.default_exception_handler(context)


def limits() -> tuple[int, int]:
    """(connections, listen backlog) for the file descriptors the process may open. Half go to connections; the
    backlog, which asyncio also accepts in one batch before the cap can act, gets an eighth; the rest stays for
    gRPC and the store."""
    descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(16, descriptors // 2), max(16, min(MAX_BACKLOG, descriptors // 8))


_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _CappedServer(web.Server):
    """aiohttp's server with a cap on connections: beyond it the oldest connection outside a request (idle between
    requests, or still sending its headers) is closed, so stalled connections can never lock out a new client."""

    def __init__(self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], cap: int,
                 busy: set[RequestHandler], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._cap = cap
        self._busy = busy

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        live = [c for c in self.connections if c.transport is not None]  # closed ones may linger a moment
        excess = len(live) - self._cap
        for victim in live:
            if excess <= 0:
                return
            if victim is not handler and victim not in self._busy:
                victim.force_close()
                excess -= 1
        if excess > 0:  # every other connection is inside a request
            transport.write(_BUSY)
            handler.force_close()


class CacheHTTPServer:
    """The HTTP side of `gaffer serve`: its own event loop in a thread, started by `start`, stopped by `stop`."""

    def __init__(self, address: tuple[str, int], store: ServerStore, metrics: Metrics, token: BearerToken,
                 client_timeout: float, coordinator: StatusSource | None = None) -> None:
        self.store = store
        self.coordinator = coordinator  # the execution service's, for /status.json; None: cache statistics only
        self.metrics = metrics
        self.token = token
        self.client_timeout = client_timeout
        self.max_connections, backlog = limits()
        # bind now, in the caller's thread, so a port in use is the caller's OSError
        self._socket = socket.create_server(address, family=socket.AF_INET6 if ":" in address[0] else socket.AF_INET,
                                            backlog=backlog)
        self._backlog = backlog
        self.port: int = self._socket.getsockname()[1]
        self._disk = concurrent.futures.ThreadPoolExecutor(DISK_THREADS, thread_name_prefix="gaffer-http-disk")
        self._busy: set[RequestHandler] = set()  # connections inside a request: never dropped for a newcomer
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._drained = asyncio.Event()  # set when no connection is inside a request
        self._grace = 0.0
        self._thread = threading.Thread(target=self._run, name="gaffer-http")

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float) -> None:
        """Stop accepting, close idle connections, give requests in flight `grace` seconds, then cut them."""
        self._grace = grace
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()
            self._disk.shutdown(wait=True)

    async def _serve(self) -> None:
        self._loop.set_exception_handler(_quiet_when_out_of_descriptors)
        self._web = _CappedServer(
            self._handle,
            self.max_connections,
            self._busy,
            keepalive_timeout=self.client_timeout,  # aiohttp: from the connection's start, and between requests
            max_line_size=MAX_FIELD,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
            lingering_time=LINGER_S,
            access_log=None,
            logger=_LOG,
        )
        listener = await self._loop.create_server(self._web, sock=self._socket, backlog=self._backlog)
        await self._stop.wait()
        listener.close()
        # aiohttp's own shutdown stops reading at once, which would fail the uploads in flight: close the
        # connections outside a request now, give the others the grace period (each closes after its reply)
        for connection in self._web.connections:
            if connection not in self._busy:
                connection.force_close()
        if self._busy:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._grace):
                    await self._drained.wait()
        for connection in self._web.connections:
            connection.force_close()
        await self._web.shutdown(1.0)  # ends the handlers of the connections just cut
        rest = asyncio.all_tasks() - {asyncio.current_task()}
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    async def _disk_io(self, call: Callable[..., T], *args: object) -> T:
        return await self._loop.run_in_executor(self._disk, call, *args)

    # -- requests ----------------------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self._busy.add(request.protocol)
        self._drained.clear()
        try:
            response = await self._route(request)
            if self._stop.is_set():
                response.force_close()  # no next request on this connection: the server is stopping
            return response
        except BadRequest as e:
            return self._reply(request, 400, self._kind(request), f"{e}\n")
        except (ConnectionError, RequestPayloadError):  # the client went away: no one to answer
            request.protocol.force_close()
            return web.Response(status=400)
        except (OSError, BackendUnavailable) as e:  # the store's disk (full, or failing), or its backend
            failure, message = storage_failure(e)
            return self._reply(request, _STORAGE_STATUS[failure], self._kind(request), f"{message}\n")
        finally:
            self._busy.discard(request.protocol)
            if not self._busy:
                self._drained.set()

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        path = urlsplit(request.raw_path).path
        kind = self._kind(request)
        read_only = kind in ("metrics", "status")
        if request.method not in ("GET", "HEAD", "PUT") or (read_only and request.method == "PUT"):
            allowed = "GET, HEAD" if read_only else "GET, HEAD, PUT"
            return self._reply(request, 405, kind, f"use {allowed}\n", headers={"Allow": allowed})
        if path == "/status":
            return self._reply(request, 200, kind, page(), content_type="text/html; charset=utf-8",
                               headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"})
        refusal = self.token.refusal(request.headers.get("Authorization"), write=request.method == "PUT")
        if refusal is not None:
            status, headers = (401, {"WWW-Authenticate": "Bearer"}) if refusal is Refusal.UNAUTHENTICATED else (403, {})
            return self._reply(request, status, "auth", f"{refusal.value}\n", headers=headers)
        if path == "/metrics":
            text = self.metrics.render(self.store.total_bytes, self.store.max_size)
            return self._reply(request, 200, kind, text, content_type="text/plain; version=0.0.4")
        if path == "/status.json":
            shown = await self._disk_io(document, self.coordinator, self.metrics, self.store.total_bytes,
                                        self.store.max_size)
            return self._reply(request, 200, kind, json.dumps(shown, separators=(",", ":")),
                               content_type="application/json", headers={"Cache-Control": "no-store"})
        segments = path.strip("/").split("/")
        if kind == "other":
            return self._reply(request, 404, kind,
                               "not found: use /ac/<sha256>, /cas/<sha256>, /metrics, /status or /status.json\n")
        namespace = await self._disk_io(self.store.namespace, check_instance("/".join(segments[:-2])))
        key = check_hash(segments[-1])
        if request.method == "PUT":
            return await self._put(request, namespace, kind, key)
        if kind == "ac":
            return await self._get_action(request, namespace, key)
        return await self._get_blob(request, namespace, key)

    @staticmethod
    def _kind(request: web.BaseRequest) -> str:
        """"ac", "cas", "metrics", "status" or "other": the label of the request in /metrics."""
        path = urlsplit(request.raw_path).path
        if path == "/metrics":
            return "metrics"
        if path in ("/status", "/status.json"):
            return "status"
        segments = path.strip("/").split("/")
        return segments[-2] if len(segments) >= 2 and segments[-2] in ("ac", "cas") else "other"

    async def _get_action(self, request: web.BaseRequest, namespace: Namespace, key: str) -> web.StreamResponse:
        found = await self._disk_io(namespace.action_result, Digest(key, 0))
        self.metrics.lookups("ac", int(found is not None), int(found is None))
        if found is None:
            return self._reply(request, 404, "ac", b"")
        return self._reply(request, 200, "ac", found[0])

    async def _get_blob(self, request: web.BaseRequest, namespace: Namespace, key: str) -> web.StreamResponse:
        """HEAD answers from the index; GET checks the content first (a corrupt blob is evicted: 404)."""
        head = request.method == "HEAD"
        size = await self._disk_io(namespace.size_of, key)  # with --backend, it may ask the backend
        digest = Digest(key, size or 0)
        data = opened = None
        if size is not None and not head:
            if size <= SMALL_BLOB:
                data = await self._disk_io(namespace.read, digest)
            else:
                opened = await self._disk_io(self._open_checked, namespace, digest)
        found = size is not None and (head or data is not None or opened is not None)
        self.metrics.lookups("cas", int(found), int(not found))
        if not found:
            return self._reply(request, 404, "cas", b"")
        if opened is None:
            return self._reply(request, 200, "cas", data or b"", length=size)
        try:
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = size
            self.metrics.request("http", request.method, "cas", "200")
            await response.prepare(request)
            while chunk := await self._disk_io(opened.read, CHUNK):
                await response.write(chunk)
                self.metrics.transferred(sent=len(chunk))
            await response.write_eof()
            return response
        except ConnectionError:  # the client went away mid-transfer: nothing to report
            request.protocol.force_close()
            return response
        finally:
            await self._disk_io(opened.close)

    @staticmethod
    def _open_checked(namespace: Namespace, digest: Digest) -> BlobFile | None:
        """A large blob's open file, hashed first unless this process has checked it; None if absent or corrupt."""
        opened = namespace.open(digest)
        if opened is None:
            return None
        f, unchecked = opened
        if unchecked:
            ok = hashlib.file_digest(f, "sha256").hexdigest() == digest.hash
            namespace.streamed(digest, ok)
            if not ok:
                f.close()
                return None
            f.seek(0)
        return f

    async def _put(self, request: web.BaseRequest, namespace: Namespace, kind: str, key: str) -> web.StreamResponse:
        size = request.content_length
        if size is None:
            return self._reply(request, 411, kind, "PUT needs a Content-Length\n")
        if kind == "ac" and size > MAX_ACTION_RESULT:
            return self._reply(request, 413, kind, f"an action result of {size} bytes is more than this server "
                                                   f"stores ({MAX_ACTION_RESULT} bytes)\n")
        digest = Digest(key, size)
        # a blob streams to a temp file: its room in the size bound is taken now, before the body is read (413 if
        # it can never fit, 507 while the uploads in flight fill the bound)
        upload = await self._disk_io(namespace.upload, digest) if kind == "cas" else None
        try:
            if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # checks passed: send the body
            if upload is not None:
                await self._receive(request, upload)
            else:
                body = await self._read(request, size)
                try:
                    result = re_pb2.ActionResult.FromString(body)
                except DecodeError:
                    raise BadRequest("the body is not a serialized ActionResult") from None
                await self._disk_io(namespace.put_action, Digest(key, 0), result)
        except TimeoutError:
            request.protocol.force_close()
            return self._reply(request, 408, kind, "the body stopped arriving\n")
        finally:
            if upload is not None:
                await self._disk_io(upload.close)
        self.metrics.transferred(received=size)
        return self._reply(request, 200, kind, b"")

    async def _read(self, request: web.BaseRequest, size: int) -> bytes:
        """The next `size` bytes of the body; TimeoutError when it stalls for client_timeout."""
        data = bytearray()
        while len(data) < size:
            async with asyncio.timeout(self.client_timeout):
                chunk = await request.content.read(size - len(data))
            if not chunk:
                raise RequestPayloadError("the body ended before its Content-Length")
            data += chunk
        return bytes(data)

    async def _receive(self, request: web.BaseRequest, upload: Upload) -> None:
        """A blob's body, read in CHUNKs on the event loop, each hashed and written on the disk pool."""
        remaining = upload.digest.size_bytes
        while remaining:
            chunk = await self._read(request, min(remaining, CHUNK))
            remaining -= len(chunk)
            await self._disk_io(upload.write, chunk)
        await self._disk_io(upload.commit)

    def _reply(self, request: web.BaseRequest, status: int, kind: str, body: bytes | str, *,
               length: int | None = None, content_type: str = "application/octet-stream",
               headers: dict[str, str] | None = None) -> web.StreamResponse:
        self.metrics.request("http", request.method, kind, str(status))
        data = body.encode() if isinstance(body, str) else body
        headers = {"Content-Type": content_type, **(headers or {})}
        if request.method == "HEAD":  # the length of what a GET would send, and no body
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = len(data) if length is None else length
            return response
        self.metrics.transferred(sent=len(data))
        return web.Response(status=status, body=data, headers=headers)
