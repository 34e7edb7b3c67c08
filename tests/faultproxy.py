"""A loopback TCP proxy that tests place between a client and a real server to make the server misbehave.

Modes, switchable while the proxy runs (`set_mode`):
  PASS     forward bytes both ways
  REFUSE   nothing listens on the port: connect() fails with ECONNREFUSED
  RESET    accept, then close at once with a TCP reset
  HANG     accept and read, never answer (a stuck server: only the client's timeout ends the wait)
  HTTP_503 answer every request "503 Service Unavailable" and close
  TRICKLE  forward, but the server's bytes one at a time, TRICKLE_S apart: a server that keeps answering, too
           slowly for any read to time out (only a bound on the whole request ends it)
Switching mode cuts every open connection, so a client's pooled keep-alive connections see the new behaviour
too. Everything is bounded: at most `max_connections` at once (more are reset), and `stop()` closes every
socket and joins every thread.
"""

from __future__ import annotations

import enum
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Self

_CHUNK = 1 << 16
_RESPONSE_503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_MAX_HEADER_BYTES = 1 << 16


class Fault(enum.Enum):
    PASS = "pass"
    REFUSE = "refuse"
    RESET = "reset"
    HANG = "hang"
    HTTP_503 = "http503"
    TRICKLE = "trickle"


TRICKLE_S = 0.05  # between two bytes of a trickled answer: 20 bytes/s, a blob's headers alone take seconds


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0): the peer sees 'connection reset by peer'."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _shutdown(sock: socket.socket) -> None:
    """Wake a thread blocked in select()/recv() on `sock` (it then sees EOF and cleans up)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class FaultProxy:
    """Listens on 127.0.0.1:`port` and forwards to `target` (host, port) unless told to fail."""

    def __init__(self, target: tuple[str, int], mode: Fault = Fault.PASS, max_connections: int = 64) -> None:
        self.target = target
        self.max_connections = max_connections
        self._mode = mode
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()  # client and upstream sockets of open connections
        self._threads: set[threading.Thread] = set()
        self._applied = threading.Event()
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._listener: socket.socket | None = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        if mode is Fault.REFUSE:
            self._listener.close()
            self._listener = None
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"faultproxy:{self.port}", daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def mode(self) -> Fault:
        return self._mode

    def set_mode(self, mode: Fault) -> None:
        """Switch behaviour; returns once new connections get it and old ones are cut."""
        with self._lock:
            self._mode = mode
            self._applied.clear()
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            _shutdown(sock)
        self._wake_w.send(b"m")
        if not self._applied.wait(30):  # a bound for a loaded machine, not a wait for time to pass
            raise RuntimeError("faultproxy: the accept thread did not apply the new mode")

    def stop(self) -> None:
        """Close everything and join all threads."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._wake_w.send(b"s")
        self._acceptor.join(5)
        with self._lock:  # no new connections from here on
            open_sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in open_sockets:
            _shutdown(sock)
        for t in threads:
            t.join(5)
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- accept thread -----------------------------------------------------------------------------------------

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        return sock

    def _accept_loop(self) -> None:
        try:
            while True:
                watched = [self._wake_r] + ([self._listener] if self._listener else [])
                readable, _, _ = select.select(watched, [], [])
                if self._wake_r in readable:
                    self._wake_r.recv(64)
                    if self._stopping:
                        return
                    self._apply_mode()
                elif self._listener in readable:
                    try:
                        client, _ = self._listener.accept()
                    except OSError:  # the client gave up before it was accepted (ECONNABORTED): not ours to end on
                        continue
                    try:
                        self._handle(client)
                    except (OSError, RuntimeError):  # no thread could be started for it: refused, the proxy goes on
                        _reset(client)
        finally:
            if self._listener:
                self._listener.close()

    def _apply_mode(self) -> None:
        """Open or close the listening socket to match the mode (only this thread touches it)."""
        if self._mode is Fault.REFUSE and self._listener:
            self._listener.close()
            self._listener = None
        elif self._mode is not Fault.REFUSE and not self._listener:
            self._listener = self._listen(self.port)
        self._applied.set()

    def _handle(self, client: socket.socket) -> None:
        mode = self._mode
        with self._lock:
            self._threads = {t for t in self._threads if t.is_alive()}
            full = len(self._threads) >= self.max_connections
        if mode is Fault.RESET or full:
            _reset(client)
            return
        worker = {Fault.PASS: self._pipe, Fault.HANG: self._hang, Fault.HTTP_503: self._answer_503,
                  Fault.TRICKLE: self._trickle}[mode]
        thread = threading.Thread(target=self._run, args=(worker, client), daemon=True)
        with self._lock:
            self._threads.add(thread)
            self._sockets.add(client)
        thread.start()

    # -- connection threads ------------------------------------------------------------------------------------

    def _run(self, worker: Callable[[socket.socket], None], client: socket.socket) -> None:
        try:
            worker(client)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(client)
            client.close()

    def _trickle(self, client: socket.socket) -> None:
        self._pipe(client, trickle=True)

    def _pipe(self, client: socket.socket, trickle: bool = False) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if self._stopping:
                upstream.close()
                return
            self._sockets.add(upstream)
        try:
            peer = {client: upstream, upstream: client}
            while True:
                readable, _, _ = select.select([client, upstream], [], [])
                for sock in readable:
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    if trickle and sock is upstream:
                        for i in range(len(data)):
                            client.sendall(data[i:i + 1])
                            time.sleep(TRICKLE_S)  # the fault itself (a slow server), not a wait for anything
                    else:
                        peer[sock].sendall(data)
        finally:
            with self._lock:
                self._sockets.discard(upstream)
            upstream.close()

    def _hang(self, client: socket.socket) -> None:
        while client.recv(_CHUNK):
            pass

    def _answer_503(self, client: socket.socket) -> None:
        received = b""
        while b"\r\n\r\n" not in received and len(received) < _MAX_HEADER_BYTES:
            data = client.recv(_CHUNK)
            if not data:
                return
            received += data
        client.sendall(_RESPONSE_503)
