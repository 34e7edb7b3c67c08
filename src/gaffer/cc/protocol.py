"""The bytes between the fast client (client.c) and the daemon: one request, one response per connection.

    request:  b"GCC2", u32 kind, u32 umask, u32 len + cwd, u32 argc + argc x (u32 len + arg), u32 envc + envc x (u32 len + KEY=VALUE)
    response: b"GCR1", u32 verdict, i32 exit code, u32 len + stdout, u32 len + stderr

All integers little-endian. A request comes from another process, so every length is checked against what is
left of a bounded budget before anything is read or allocated: a bad or oversized frame is a FrameError, never a
large allocation or a crash.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from gaffer.cc.launch import Request, Response

REQUEST_MAGIC = b"GCC2"
OLD_REQUEST_MAGIC = b"GCC1"  # a client built by an older gaffer: no umask (its files get the daemon's)
RESPONSE_MAGIC = b"GCR1"
MAX_REQUEST = 64 << 20  # the client refuses to send more (client.c's MAX_REQUEST), and runs the compiler itself
MAX_ITEMS = 1 << 20  # arguments or variables: far beyond any kernel's ARG_MAX
KINDS = (0, 1)  # compile, link


class FrameError(Exception):
    """A request that does not follow the protocol: the connection is closed."""


def read_request(read: Callable[[int], bytes]) -> Request:
    """Decode one request; `read(n)` returns at most n bytes, fewer only at the end of the stream."""
    budget = MAX_REQUEST

    def take(n: int) -> bytes:
        nonlocal budget
        if n > budget:
            raise FrameError(f"oversized request (more than {MAX_REQUEST} bytes)")
        budget -= n
        data = read(n)
        if len(data) != n:
            raise FrameError("truncated request")
        return data

    def u32() -> int:
        return int(struct.unpack("<I", take(4))[0])

    def string() -> str:
        return os.fsdecode(take(u32()))

    def items(what: str) -> list[str]:
        count = u32()
        if count > MAX_ITEMS:
            raise FrameError(f"too many {what} ({count})")
        return [string() for _ in range(count)]

    magic = take(4)
    if magic not in (REQUEST_MAGIC, OLD_REQUEST_MAGIC):
        raise FrameError(f"not a gaffer-cc request (starts with {magic!r})")
    kind = u32()
    if kind not in KINDS:
        raise FrameError(f"unknown request kind {kind}")
    umask = u32() if magic == REQUEST_MAGIC else None
    if umask is not None and umask > 0o777:
        raise FrameError(f"umask {umask:#o} is not a file mode mask")
    cwd = string()
    if not os.path.isabs(cwd):
        raise FrameError(f"the working directory {cwd!r} is not absolute")
    argv = items("arguments")
    if not argv or not argv[0]:
        raise FrameError("no compiler in the request")
    env: dict[str, str] = {}
    for entry in items("variables"):
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise FrameError(f"an environment entry without KEY=: {entry[:40]!r}")
        env[key] = value
    return Request(kind=kind, cwd=cwd, argv=argv, env=env, umask=umask)


def encode_request(request: Request) -> bytes:
    """The request as the C client sends it (tests and the benchmark speak to the daemon with it)."""
    umask = request.umask if request.umask is not None else 0o022
    parts = [REQUEST_MAGIC, struct.pack("<II", request.kind, umask), _bytes(os.fsencode(request.cwd)),
             struct.pack("<I", len(request.argv)), *(_bytes(os.fsencode(a)) for a in request.argv),
             struct.pack("<I", len(request.env)),
             *(_bytes(os.fsencode(f"{k}={v}")) for k, v in request.env.items())]
    return b"".join(parts)


def encode_response(response: Response) -> bytes:
    return b"".join((RESPONSE_MAGIC, struct.pack("<Ii", response.verdict, response.exit_code),
                     _bytes(response.stdout), _bytes(response.stderr)))


def _bytes(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data
