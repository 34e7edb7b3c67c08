"""Deadlines on whole requests over plain sockets (the HTTP tier, the light S3, GCS and Azure reads, Redis reads).

A socket timeout bounds each read only: a server that trickles its answer, a byte at a time and each in time,
would hold a build for hours. So each request is watched: one thread for the process shuts down the socket of a
request that is late, and the read blocked on it ends (the caller then says it timed out). A request may take
`--cache-timeout` plus the time its data needs at MIN_RATE, as the gRPC tier's streams may.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress

MIN_RATE = 1024 * 1024  # bytes/s a transfer may fall to before its deadline ends it (as the gRPC tier's streams)
_TICK_S = 0.05  # how often deadlines are checked: a late request ends at most this much after its deadline
_IDLE_S = 1.0  # the thread ends after this long without a request to watch


class Watch:
    """One request's deadline: `sock` is shut down once `deadline` (time.monotonic()) has passed."""

    __slots__ = ("deadline", "expired", "seconds", "sock")

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.sock = sock
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.expired = False



def failure(e: BaseException, watch: Watch | None) -> str:
    """What the failure `e` of a request is called: its type, or that the request ran out of time (then `e` is only
    what the shut-down socket made the read raise)."""
    if watch is not None and watch.expired:
        return f"TimeoutError (no whole answer within {watch.seconds:.3g} s)"
    return type(e).__name__


class Deadlines:
    """The watched requests, and the thread that ends late ones: it runs while there are requests to watch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: set[Watch] = set()
        self._running = False

    def watch(self, sock: socket.socket, seconds: float) -> Watch:
        """Watch a request on `sock` that may take `seconds` from now."""
        watch = Watch(sock, seconds)
        with self._lock:
            self._watched.add(watch)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="gaffer-deadlines", daemon=True).start()
        return watch

    def extend(self, watch: Watch, seconds: float) -> None:
        """A new deadline, `seconds` from now (an answer's headers came: its body's time starts)."""
        with self._lock:
            watch.seconds, watch.deadline = seconds, time.monotonic() + seconds

    def done(self, watch: Watch | None) -> bool:
        """The request is over: stop watching it (before its socket is closed: a descriptor reused then must not
        be shut down). Did its deadline pass, and its socket get shut down?"""
        if watch is None:
            return False
        with self._lock:
            self._watched.discard(watch)
            return watch.expired

    def _run(self) -> None:
        idle = 0.0
        while True:
            time.sleep(_TICK_S)
            now = time.monotonic()
            with self._lock:
                for watch in self._watched:
                    if not watch.expired and now > watch.deadline:
                        watch.expired = True
                        with suppress(OSError):  # the plain socket's shutdown, also under TLS: the read ends
                            socket.socket.shutdown(watch.sock, socket.SHUT_RDWR)
                idle = 0.0 if self._watched else idle + _TICK_S
                if idle >= _IDLE_S:
                    self._running = False
                    return


DEADLINES = Deadlines()
