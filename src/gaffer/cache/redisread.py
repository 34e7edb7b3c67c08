"""Redis reads without redis-py: GET, EXISTS (pipelined) and PING over plain sockets, in RESP2.

A CI machine with an empty local cache only reads, and importing redis-py (which loads asyncio) costs ~0.14 s of
CPU. These three commands, after AUTH and SELECT on each new connection, are all a restore sends; writes, `clear`
and TLS (`rediss://`) stay with redis-py, imported on first use. Errors are classified as redis-py classifies them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO, cast

from gaffer.cache.deadlines import DEADLINES, MIN_RATE, failure
from gaffer.cache.httpconn import Unreachable

#: redis-py's AuthenticationError/NoPermissionError: by code, or by an ERR reply's text
_AUTH_CODES = frozenset({"NOAUTH", "WRONGPASS", "NOPERM"})
_AUTH_ERR = ("invalid password", "AUTH <password> called without any password configured",
             "Client sent AUTH, but no password is set", "wrong number of arguments for 'auth' command",
             "wrong number of arguments for 'AUTH' command")
#: redis-py's ConnectionError family: worth a retry
_TRANSIENT_CODES = frozenset({"LOADING", "MASTERDOWN", "TRYAGAIN"})
_IDLE = 16


class ReplyError(Exception):
    """An error reply: its code ("ERR", "WRONGPASS"...) and message (the text after the code)."""

    def __init__(self, reply: str) -> None:
        code, _, message = reply.partition(" ")
        super().__init__(message or code)
        self.code = code
        self.message = message or code

    @property
    def authentication(self) -> bool:
        return self.code in _AUTH_CODES or self.code == "ERR" and self.message.startswith(_AUTH_ERR)

    @property
    def transient(self) -> bool:
        return self.code in _TRANSIENT_CODES or self.message.startswith("max number of clients reached")


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = cast(BinaryIO, sock.makefile("rb", buffering=1 << 16))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class RedisReader:
    """GET, EXISTS and PING on one database over kept-alive connections. Thread-safe."""

    def __init__(self, host: str, port: int, db: int, username: str | None, password: str | None,
                 timeout: float) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def get(self, key: str, size: int = 0) -> bytes | None:
        """The value of `key`, or None; `size`: the bytes it is expected to hold (its request's deadline)."""
        reply = self._call([[b"GET", key.encode()]], size)[0]
        if reply is not None and not isinstance(reply, bytes):
            raise ReplyError(f"ERR GET answered {type(reply).__name__}")
        return reply

    def exists(self, keys: Sequence[str]) -> list[bool]:
        """One EXISTS per key, pipelined: which are there."""
        return [bool(n) for n in self._call([[b"EXISTS", k.encode()] for k in keys])]

    def ping(self) -> None:
        self._call([[b"PING"]])

    def _call(self, commands: list[list[bytes]], size: int = 0) -> list[object]:
        """Send the commands in one write and read their replies; an error reply raises ReplyError (the
        connection stays usable). A kept-alive connection the server closed is replaced once. The whole exchange
        may take the timeout plus `size` bytes' time at MIN_RATE (a server trickling its reply is cut off)."""
        for attempt in (1, 2):
            try:
                with self._connection() as (conn, reused):
                    watch = DEADLINES.watch(conn.sock, self.timeout + size / MIN_RATE)
                    try:
                        conn.sock.sendall(b"".join(_encode(c) for c in commands))
                        replies = [_read(conn.file) for _ in commands]
                    except (OSError, ValueError, _Closed) as e:
                        stale = isinstance(e, (ConnectionResetError, BrokenPipeError, _Closed))
                        if DEADLINES.done(watch) or not stale:  # late: its socket was shut down, not stale
                            raise Unreachable(failure(e, watch)) from e
                        raise _Stale(reused) from e
                    finally:
                        DEADLINES.done(watch)  # before the connection is closed or pooled
            except _Stale as e:
                if e.reused and attempt == 1:
                    continue  # that connection is closed now: once more, on a new one
                raise Unreachable(type(e.__cause__).__name__) from e.__cause__
            for reply in replies:
                if isinstance(reply, ReplyError):
                    raise reply
            return replies
        raise AssertionError("unreachable")  # the loop returns or raises

    @contextmanager
    def _connection(self) -> Iterator[tuple[_Connection, bool]]:
        """A connection, back to the pool if the block ended normally, else closed."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        reused = conn is not None
        if conn is None:
            conn = self._connect()
        try:
            yield conn, reused
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if len(self._idle) < _IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self) -> _Connection:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            raise Unreachable(type(e).__name__) from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(sock)
        setup = []
        if self.password is not None:
            auth = [self.username.encode(), self.password.encode()] if self.username else [self.password.encode()]
            setup.append([b"AUTH", *auth])
        if self.db:
            setup.append([b"SELECT", str(self.db).encode()])
        try:
            if setup:
                sock.sendall(b"".join(_encode(c) for c in setup))
                for reply in [_read(conn.file) for _ in setup]:
                    if isinstance(reply, ReplyError):
                        raise reply
        except (OSError, ValueError, _Closed) as e:
            conn.close()
            raise Unreachable(type(e).__name__) from e
        except ReplyError:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Closed(Exception):
    """The server closed the connection before a whole reply arrived."""


class _Stale(Exception):
    """A connection failed at once: `reused` says whether it had served before (the server may have closed it)."""

    def __init__(self, reused: bool) -> None:
        super().__init__()
        self.reused = reused


def _encode(command: list[bytes]) -> bytes:
    return b"".join([b"*%d\r\n" % len(command), *(b"$%d\r\n%s\r\n" % (len(a), a) for a in command)])


def _read(f: BinaryIO) -> object:
    """One RESP2 reply: bytes, int, str (status), None, a list of those, or a ReplyError (returned, not raised,
    so that the replies after it are still read)."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise _Closed()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode("utf-8", "replace")
    if kind == b"-":
        return ReplyError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = f.read(size + 2)
        if len(data) != size + 2:
            raise _Closed()
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read(f) for _ in range(count)]
    raise ValueError(f"not a RESP2 reply: {line[:20]!r}")
