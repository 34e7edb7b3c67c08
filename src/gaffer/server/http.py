"""The Bazel HTTP cache protocol of `gaffer serve`, and /metrics.

    GET|HEAD|PUT  [/<instance>]/ac/<sha256>    a serialized ActionResult
    GET|HEAD|PUT  [/<instance>]/cas/<sha256>   a blob; a PUT is verified against the hash (400 if it differs)
    GET           /metrics                     Prometheus text format

Bodies stream in fixed-size chunks both ways (a large GET goes out with sendfile), so memory stays flat.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from google.protobuf.message import DecodeError

from gaffer.digest import Digest
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.server.auth import BearerToken
from gaffer.server.metrics import Metrics
from gaffer.server.store import (
    MAX_ACTION_RESULT,
    SMALL_BLOB,
    BackendUnavailable,
    BadRequest,
    ServerStore,
    check_hash,
    check_instance,
    storage_failure,
)

CHUNK = 1024 * 1024
_STORAGE_STATUS = {"too large": 413, "full": 507, "unavailable": 503, "broken": 500}


class CacheHTTPServer(ThreadingHTTPServer):
    """A thread per connection; `stop()` lets requests in flight finish and closes idle keep-alive connections."""

    daemon_threads = False  # server_close() joins the handler threads: in-flight requests finish

    def __init__(self, address: tuple[str, int], store: ServerStore, metrics: Metrics, token: BearerToken) -> None:
        self.store = store
        self.metrics = metrics
        self.token = token
        self._idle: set[socket.socket] = set()
        self._idle_lock = threading.Lock()
        self.stopping = False
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, CacheHandler)

    def set_idle(self, connection: socket.socket, idle: bool) -> None:
        with self._idle_lock:
            if idle:
                self._idle.add(connection)
            else:
                self._idle.discard(connection)

    def stop(self) -> None:
        """Stop accepting, wake the connections waiting for a next request, and wait for the busy ones."""
        self.shutdown()
        with self._idle_lock:
            self.stopping = True
            for connection in self._idle:
                try:
                    connection.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
        self.server_close()


class CacheHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Bazel sends many small requests on few connections
    # Headers and body go out as separate writes: without TCP_NODELAY the body of a small reply waits ~40 ms
    # for the client's delayed ACK (measured: a 1 KiB GET took 44 ms instead of 1 ms).
    disable_nagle_algorithm = True
    server: CacheHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: /metrics counts requests; an access log of every blob would dwarf the cache's own output."""

    def handle(self) -> None:
        self.close_connection = True
        self._one_request()
        while not self.close_connection:
            self._one_request()

    def _one_request(self) -> None:
        self.server.set_idle(self.connection, True)
        if self.server.stopping:
            self.close_connection = True
            return
        self.handle_one_request()

    def parse_request(self) -> bool:
        self.server.set_idle(self.connection, False)
        return super().parse_request()

    def finish(self) -> None:
        self.server.set_idle(self.connection, False)
        super().finish()

    # -- methods -----------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_PUT(self) -> None:
        route = self._route()
        if route is None:
            return
        instance, kind, key = route
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._reply(411, kind, b"PUT needs a Content-Length\n", close=True)
            return
        size = int(length)
        try:
            if kind == "cas":
                self.server.store.namespace(instance).receive(Digest(key, size), self._body(size))
            else:
                if size > MAX_ACTION_RESULT:
                    self._reply(413, kind, b"action result too large\n", close=True)
                    return
                body = b"".join(self._body(size))
                try:
                    result = re_pb2.ActionResult.FromString(body)
                except DecodeError:
                    raise BadRequest("the body is not a serialized ActionResult") from None
                self.server.store.namespace(instance).put_action(Digest(key, 0), result)
        except BadRequest as e:
            self._reply(400, kind, f"{e}\n".encode(), close=True)
            return
        except ConnectionError:
            self.close_connection = True
            return
        except (OSError, BackendUnavailable) as e:  # the store's disk (full, or failing), or its backend
            self._failed(kind, e)
            return
        self.server.metrics.transferred(received=size)
        self._reply(200, kind, b"")

    # -- internals ---------------------------------------------------------------------------------------------

    def _route(self) -> tuple[str, str, str] | None:
        """(instance, "ac" | "cas", hash) after the token check, or None once an error reply went out."""
        if not self.server.token.allows(self.headers.get("Authorization")):
            self._reply(401, "auth", b"this server requires Authorization: Bearer <token>\n", close=True,
                        headers={"WWW-Authenticate": "Bearer"})
            return None
        segments = urlsplit(self.path).path.strip("/").split("/")
        if len(segments) < 2 or segments[-2] not in ("ac", "cas"):
            self._reply(404, "other", b"not found: use /ac/<sha256>, /cas/<sha256> or /metrics\n", close=True)
            return None
        try:
            return check_instance("/".join(segments[:-2])), segments[-2], check_hash(segments[-1])
        except BadRequest as e:
            self._reply(400, segments[-2], f"{e}\n".encode(), close=True)
            return None

    def _serve(self, head: bool) -> None:
        if urlsplit(self.path).path == "/metrics":
            if not self.server.token.allows(self.headers.get("Authorization")):
                self._reply(401, "metrics", b"this server requires Authorization: Bearer <token>\n")
                return
            text = self.server.metrics.render(self.server.store.total_bytes, self.server.store.max_size)
            self._reply(200, "metrics", text.encode(), head=head, content_type="text/plain; version=0.0.4")
            return
        route = self._route()
        if route is None:
            return
        instance, kind, key = route
        try:
            self._serve_entry(instance, kind, key, head)
        except ConnectionError:
            self.close_connection = True
        except (OSError, BackendUnavailable) as e:
            self._failed(kind, e)

    def _failed(self, kind: str, error: OSError | BackendUnavailable) -> None:
        failure, message = storage_failure(error)
        self._reply(_STORAGE_STATUS[failure], kind, f"{message}\n".encode(), close=True)

    def _serve_entry(self, instance: str, kind: str, key: str, head: bool) -> None:
        if kind == "ac":
            found = self.server.store.namespace(instance).action_result(Digest(key, 0))
            self.server.metrics.lookups("ac", int(found is not None), int(found is None))
            if found is None:
                self._reply(404, kind, b"", head=head)
            else:
                self._reply(200, kind, found[0], head=head)
            return
        self._serve_blob(instance, key, head)

    def _serve_blob(self, instance: str, key: str, head: bool) -> None:
        """HEAD answers from the index; GET checks the content first (a corrupt blob is evicted: 404)."""
        namespace = self.server.store.namespace(instance)
        size = namespace.size_of(key)
        digest = Digest(key, size or 0)
        data = opened = None
        if size is not None and not head:
            if size <= SMALL_BLOB:
                data = namespace.read(digest)
            else:
                opened = namespace.open(digest)
                if opened is not None and opened[1]:  # not checked yet by this process: hash it before sending
                    ok = hashlib.file_digest(opened[0], "sha256").hexdigest() == key
                    namespace.streamed(digest, ok)
                    if not ok:
                        opened[0].close()
                        opened = None
        found = size is not None and (head or data is not None or opened is not None)
        self.server.metrics.lookups("cas", int(found), int(not found))
        if not found:
            self._reply(404, "cas", b"", head=head)
        elif opened is None:
            self._reply(200, "cas", data or b"", head=head, length=size)
        else:
            with opened[0] as f:
                self._reply(200, "cas", b"", head=True, length=size)
                self.connection.sendfile(f, 0, size)
                self.server.metrics.transferred(sent=digest.size_bytes)

    def _body(self, size: int) -> Iterator[bytes]:
        remaining = size
        while remaining > 0:
            chunk = self.rfile.read(min(CHUNK, remaining))
            if not chunk:
                raise ConnectionError("the client closed the connection in the middle of the body")
            remaining -= len(chunk)
            yield chunk

    def _reply(
        self,
        status: int,
        kind: str,
        body: bytes,
        *,
        head: bool = False,
        close: bool = False,
        length: int | None = None,
        content_type: str = "application/octet-stream",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.server.metrics.request("http", self.command, kind, str(status))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            # the request body may be unread: the connection cannot carry another request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not head and body:
            self.wfile.write(body)
            self.server.metrics.transferred(sent=len(body))
