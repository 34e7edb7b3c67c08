"""Kept-alive HTTP/1.1 connections on http.client, for the tiers that speak plain HTTP: the Bazel HTTP cache and
S3's signed reads. No client library to import before the first request (httpx costs ~0.1 s of CPU, botocore
~0.2 s: a cold CI machine's whole restore from a warm local cache is ~0.2 s).

A `Pool` holds idle connections to one origin; `request` yields the response and takes the connection back only
when the body was read to its end. Network trouble (refused, reset, timed out, a body cut short) is raised as
`Unreachable`, so callers tell it apart from their own file errors (OSError). Proxies from the environment
(`HTTP(S)_PROXY`, `ALL_PROXY`, `NO_PROXY`) are honoured as httpx honours them: absolute-form requests for http://,
a CONNECT tunnel for https://. TLS trusts the CA file or directory the caller names, else certifi's bundle (as
httpx and botocore do).
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from gaffer.cache.deadlines import DEADLINES, MIN_RATE, failure

if TYPE_CHECKING:
    import ssl

CHUNK = 1024 * 1024
_IDLE = 16


class Unreachable(Exception):
    """The request or its answer did not get through: worth a retry. The message names the failure's type."""


class Pool:
    """Connections to `scheme://netloc`, several threads at once. `netloc` may carry a port."""

    def __init__(self, scheme: str, netloc: str, timeout: float, cafile: str | None = None,
                 capath: str | None = None) -> None:
        self.scheme = scheme
        self.netloc = netloc
        self.timeout = timeout
        self.cafile, self.capath = cafile, capath
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        self._proxy, self._proxy_headers = _proxy_for(scheme, netloc)

    @contextmanager
    def request(self, method: str, path: str, headers: dict[str, str],
                body: bytes | IO[bytes] | None = None, expect: int = 0) -> Iterator[http.client.HTTPResponse]:
        """Send the request (once more on a fresh connection if a kept-alive one turns out closed); yield the
        response, whatever its status. A body the caller leaves unread closes the connection.

        The timeout bounds each read, and a deadline the whole exchange: the timeout plus the time the request's
        body takes at MIN_RATE until the answer's headers, then the timeout plus its body at MIN_RATE, the
        larger of its Content-Length and `expect` (the size the caller knows it holds, as a blob's digest
        does: a chunked answer has no Content-Length). A server that trickles its answer, each read getting a
        byte in time, is cut off there."""
        target = f"{self.scheme}://{self.netloc}{path}" if self._proxy and self.scheme == "http" else path
        start = body.tell() if body is not None and not isinstance(body, bytes) else 0
        sent = len(body) if isinstance(body, bytes) else int(headers.get("Content-Length", 0)) if body else 0
        for attempt in (1, 2):
            conn, reused = self._connection()
            watch = None
            try:
                if conn.sock is None:
                    conn.connect()
                watch = DEADLINES.watch(conn.sock, self.timeout + sent / MIN_RATE)
                conn.request(method, target, body=body,
                             headers={**headers, **self._proxy_headers} if self.scheme == "http" else headers)
                response = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                expired = DEADLINES.done(watch)  # before the socket closes: its descriptor may be reused then
                conn.close()  # a kept-alive connection the server had closed: once more, on a new one
                if expired or not reused or attempt == 2:
                    raise Unreachable(failure(e, watch)) from e
                if body is not None and not isinstance(body, bytes):
                    body.seek(start)
            except (OSError, http.client.HTTPException) as e:
                DEADLINES.done(watch)
                conn.close()
                raise Unreachable(failure(e, watch)) from e
            except BaseException:
                DEADLINES.done(watch)
                conn.close()
                raise
        assert watch is not None
        DEADLINES.extend(watch, self.timeout + max(response.length or 0, expect) / MIN_RATE)
        try:
            try:
                yield response
                if not response.isclosed():
                    if response.length is None or response.length > CHUNK:
                        DEADLINES.done(watch)
                        conn.close()  # a big body left unread: cheaper to reconnect than to drain
                        return
                    response.read()  # a small one (an error document): drained, the connection is reusable
            finally:
                DEADLINES.done(watch)
        except (OSError, http.client.HTTPException, Unreachable) as e:
            conn.close()
            if isinstance(e, Unreachable) and not watch.expired:
                raise
            raise Unreachable(failure(e, watch)) from e
        except BaseException:
            conn.close()
            raise
        if response.will_close or watch.expired:
            conn.close()
        else:
            self._release(conn)

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        host, tunnel = (self._proxy, self.netloc) if self._proxy else (self.netloc, None)
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(host, timeout=self.timeout, context=self._tls(), blocksize=CHUNK)
        else:
            conn = _Connection(host, timeout=self.timeout, blocksize=CHUNK)
        if tunnel and self.scheme == "https":
            conn.set_tunnel(tunnel, headers=self._proxy_headers)
        return conn, False

    def _tls(self) -> ssl.SSLContext:
        """Built on first use, and only for https: loading a CA bundle costs tens of milliseconds."""
        import ssl

        with self._lock:
            if self._context is None:
                cafile = self.cafile or (None if self.capath else _certifi())
                self._context = ssl.create_default_context(cafile=cafile, capath=self.capath)
            return self._context

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < _IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Connection(http.client.HTTPConnection):
    """Plain HTTP with Nagle off: a small request goes out at once (loopback servers answer in under 1 ms)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def chunks(response: http.client.HTTPResponse, limit: int | None = None) -> Iterator[bytes]:
    """The body in pieces, checked against Content-Length: a connection cut short is Unreachable, not a short
    body. With a `limit` (the size a blob's digest gives), no more than one byte past it is read: a body that
    runs on (chunked, without a Content-Length) is Unreachable there, never read to its end."""
    expected = response.length
    got = 0
    while True:
        try:
            chunk = response.read(CHUNK if limit is None else min(CHUNK, limit + 1 - got))
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(type(e).__name__) from e
        if not chunk:
            break
        got += len(chunk)
        if limit is not None and got > limit:
            raise Unreachable(f"the body is longer than {limit} bytes")
        yield chunk
    if expected is not None and got != expected:
        raise Unreachable(f"IncompleteRead ({got} of {expected} bytes)")


def read_small(response: http.client.HTTPResponse, limit: int = 64 * 1024) -> bytes:
    """Up to `limit` bytes of a small body (an error document)."""
    try:
        return response.read(limit)
    except (OSError, http.client.HTTPException) as e:
        raise Unreachable(type(e).__name__) from e


def requests_trust() -> tuple[str | None, str | None]:
    """The (cafile, capath) requests would trust from the environment (REQUESTS_CA_BUNDLE, else CURL_CA_BUNDLE): for
    the light reads of the tiers whose client library runs on requests, so both trust the same."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
    return (None, bundle) if bundle and os.path.isdir(bundle) else (bundle, None)


def _certifi() -> str | None:
    try:
        import certifi
    except ImportError:
        return None  # the system's trust store
    return str(certifi.where())


def _proxy_for(scheme: str, netloc: str) -> tuple[str | None, dict[str, str]]:
    """The proxy's host[:port] for this origin from the environment and the headers it needs (its credentials),
    or None (the usual case, and then nothing is imported)."""
    if not any(k.lower() in ("http_proxy", "https_proxy", "all_proxy") and v for k, v in os.environ.items()):
        return None, {}
    from urllib.request import (  # type: ignore[attr-defined]  # proxy_bypass_environment: not in typeshed
        getproxies_environment,
        proxy_bypass_environment,
    )

    proxies = getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or proxy_bypass_environment(netloc.rpartition("@")[2], proxies):
        return None, {}
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    headers = {}
    if parts.username is not None:
        headers["Proxy-Authorization"] = basic_auth(unquote(parts.username), unquote(parts.password or ""))
    return parts.netloc.rpartition("@")[2] or None, headers


def basic_auth(user: str, password: str) -> str:
    """An HTTP Basic credentials header value (UTF-8, as httpx sends it)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
