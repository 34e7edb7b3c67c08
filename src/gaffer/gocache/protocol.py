"""The GOCACHEPROG wire protocol as Go 1.24+ speaks it (cmd/go/internal/cacheprog), over stdin/stdout.

- The capabilities response (ID 0, KnownCommands) goes out at once, before anything is read: `go` blocks on it,
  so main.py writes it before importing this module or the cache.
- `go` then writes one JSON request per line: {"ID", "Command", "ActionID", "OutputID", "BodySize"}; IDs are
  base64 ([]byte in Go's JSON). A put with BodySize > 0 is followed by its body as the next JSON value, a base64
  JSON string (Go puts it on its own line, after a blank one). Go 1.23 named OutputID "ObjectID"; both are read.
- Go's encoder writes a get's (and a close's) fields in one order, compactly: such a line is read by comparing
  bytes, and every reply is formatted directly; any other line goes through `json`. Both shortcuts are
  pinned against `json` by tests (tests/test_gocache_protocol.py).
- Replies carry the request's ID and may go out in any order; each is a whole line, written and flushed under a
  lock. A get the local tier answers cheaply is answered on the reader thread (handing it to a worker would cost
  more than the lookup); its reply waits until the reader has no whole request left to read, so the replies to the
  requests `go` sent together go back in one write (one wake-up of `go` rather than one each). Remote lookups, big
  untrusted blobs to verify and puts run on a small thread pool, so a slow one never holds up the others.
  `close` is answered after every other reply and after the write-behind uploads are flushed; EOF without
  `close` flushes too and exits 0.
- Anything that is not a well-formed request is one line on stderr and a non-zero exit, never a hang or a guess.
"""

from __future__ import annotations

import binascii
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial

from gaffer.errors import UserError
from gaffer.gocache import KNOWN_COMMANDS
from gaffer.tuples import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # typing, for the annotations only (see gaffer.tuples)
    from typing import BinaryIO, Literal, Protocol

WORKERS = 8
MAX_REQUEST_LINE = 1 << 20  # a request line is ~200 bytes; a longer one is garbage, not a reason to eat memory
MAX_BODY_SIZE = 4 << 30  # far above any object go caches; past it the body would not fit in memory anyway
READ_CHUNK = 1 << 16  # one read of stdin takes whatever `go` wrote, up to this (more for a put's body): below
# malloc's mmap threshold, so a read does not map and unmap a buffer
MAX_BATCH = 16  # replies held back for one write at most (go sends a few requests at once, never this many)

# A get, put or close exactly as Go's encoder writes it: {"ID":<digits>, then one of these (a 32-byte ActionID or
# OutputID is 43 base64 characters and "="; a put's BodySize is left out when it is 0). Only a line json.loads
# reads as the same request is taken (a differential test checks it); any other goes to json.
_GO_ID = b'{"ID":'
_GO_GET = b',"Command":"get","ActionID":"'
_GO_GET_END = b'="}\n'
_GO_CLOSE = b',"Command":"close"}\n'
_GO_PUT = b',"Command":"put","ActionID":"'
_GO_PUT_OUTPUT = b'=","OutputID":"'
_GO_PUT_SIZE = b'=","BodySize":'
_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


class MalformedRequest(UserError):
    """Input that is not the protocol: exit status 2 with this one line, since guessing could corrupt a build."""

    def __init__(self, what: str) -> None:
        super().__init__(f"malformed request on stdin: {what}")


class Request(NamedTuple):
    id: int
    command: str
    action_id: bytes
    output_id: bytes
    body: bytes


DEFER: Deferred = "defer"  # get_local's answer: the pool runs the full get


class Hit(NamedTuple):
    """A get's answer: `disk_path` holds exactly the body that was put and stays there until close."""

    output_id: bytes
    size: int
    put_time_ns: int
    disk_path: str


if TYPE_CHECKING:
    Deferred = Literal["defer"]

    class Handler(Protocol):
        """The cache behind the protocol (store.GoStore), called from several threads at once."""

        def get_local(self, action_id: bytes) -> Hit | None | Deferred:
            """Answer from the local tier alone if that is cheap (no remote, no big blob to verify), else DEFER."""

        def get(self, action_id: bytes) -> Hit | None:
            """The full lookup, through the remote tiers if need be."""

        def put(self, action_id: bytes, output_id: bytes, body: bytes) -> str: ...

        def close(self) -> None: ...


def _excerpt(data: bytes) -> str:
    text = data.strip().decode("utf-8", "replace")
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _b64_field(request: dict[str, object], name: str, where: str) -> bytes:
    import base64
    import json

    value = request.get(name)
    if not isinstance(value, str):
        raise MalformedRequest(f"{where}: {name} must be a base64 string, got {json.dumps(value)[:40]}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedRequest(f"{where}: {name} is not base64: {e}") from None


def _plain_int(digits: bytes) -> bool:
    """A decimal int64 as json.loads reads one (no sign, no leading zero)."""
    return digits.isdigit() and len(digits) <= 18 and (digits[0] != 0x30 or len(digits) == 1)


def _id32(encoded: bytes) -> bytes | None:
    """43 base64 characters (the "=" after them checked by the caller): the 32 bytes, or None."""
    if len(encoded) != 43 or encoded.translate(None, _BASE64):
        return None
    return binascii.a2b_base64(encoded + b"=")


def fast_request(line: bytes) -> tuple[Request, int] | None:
    """The get, put or close in a line of Go's own shape (`_GO_GET`, `_GO_PUT`, `_GO_CLOSE`) and its BodySize, read
    without json (whose import brings `re`), nor a regular expression; None for any other line."""
    if not line.startswith(_GO_ID):
        return None
    comma = line.find(b",", len(_GO_ID))
    digits = line[len(_GO_ID) : comma]
    if comma < 0 or not _plain_int(digits):
        return None
    rest = line[comma:]
    if rest == _GO_CLOSE:
        return Request(int(digits), "close", b"", b"", b""), 0
    if rest.startswith(_GO_GET):
        action_id = _id32(rest[len(_GO_GET) : len(_GO_GET) + 43])
        if action_id is None or rest[len(_GO_GET) + 43 :] != _GO_GET_END:
            return None
        return Request(int(digits), "get", action_id, b"", b""), 0
    if not rest.startswith(_GO_PUT):
        return None
    at = len(_GO_PUT)
    action_id = _id32(rest[at : at + 43])
    at += 43
    if action_id is None or rest[at : at + len(_GO_PUT_OUTPUT)] != _GO_PUT_OUTPUT:
        return None
    at += len(_GO_PUT_OUTPUT)
    output_id = _id32(rest[at : at + 43])
    at += 43
    tail = rest[at:]
    if output_id is None:
        return None
    if tail == _GO_GET_END:
        size = 0
    elif tail.startswith(_GO_PUT_SIZE) and tail.endswith(b"}\n") and _plain_int(tail[len(_GO_PUT_SIZE) : -2]):
        size = int(tail[len(_GO_PUT_SIZE) : -2])
        if size > MAX_BODY_SIZE:
            return None  # json's path says why it is refused
    else:
        return None
    return Request(int(digits), "put", action_id, output_id, b""), size


_SECONDS: dict[int, str] = {}  # formatted whole seconds: a build's entries were put in the same few seconds


def rfc3339(time_ns: int) -> str:
    """Go's time.Time JSON form (RFC 3339 with nanoseconds, UTC)."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    text = _SECONDS.get(seconds)
    if text is None:
        text = _SECONDS[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{nanos:09d}Z"


def parse_line(line: bytes, where: str) -> tuple[Request, int]:
    """A request line read by `json` and checked field by field: the request (no body yet) and its BodySize."""
    import json

    try:
        request = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested garbage
        raise MalformedRequest(f"{where} is not JSON: {_excerpt(line)}") from None
    if not isinstance(request, dict):
        raise MalformedRequest(f"{where}: expected a JSON object, got {_excerpt(line)}")
    request_id, command = request.get("ID"), request.get("Command")
    if not isinstance(request_id, int) or isinstance(request_id, bool) or request_id < 0:
        raise MalformedRequest(f"{where}: ID must be a non-negative integer, got {json.dumps(request_id)[:40]}")
    if not isinstance(command, str):
        raise MalformedRequest(f"{where}: Command must be a string, got {json.dumps(command)[:40]}")
    where = f"{where} (request {request_id}, {command})"
    action_id = output_id = b""
    size = 0
    if command in ("get", "put"):
        action_id = _b64_field(request, "ActionID", where)
    if command == "put":
        alias = "ObjectID" in request and "OutputID" not in request
        output_id = _b64_field(request, "ObjectID" if alias else "OutputID", where)
        size = request.get("BodySize", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise MalformedRequest(f"{where}: BodySize must be a non-negative integer, got {json.dumps(size)[:40]}")
        if size > MAX_BODY_SIZE:
            raise MalformedRequest(f"{where}: BodySize {size} is more than gobuildcache accepts "
                                   f"({MAX_BODY_SIZE >> 30} GiB)")
    return Request(request_id, command, action_id, output_id, b""), size


class RequestReader:
    """Parses requests (and put bodies) from `go`'s side of the pipe, strictly. `stream.read(n)` is one read of
    what is there (an unbuffered file); `on_wait` runs before each, when no whole line is left in hand."""

    def __init__(self, stream: BinaryIO, on_wait: Callable[[], None] = lambda: None) -> None:
        self._stream = stream
        self._on_wait = on_wait
        self._buffer = b""
        self._pos = 0
        self._line_no = 0

    def _readline(self, limit: int) -> bytes:
        """Like a file's readline(limit): up to and including the next newline, at most `limit` bytes."""
        buffer, pos = self._buffer, self._pos
        end = buffer.find(b"\n", pos, pos + limit)
        if end >= 0:
            self._pos = end + 1
            return buffer[pos : end + 1]
        parts = [buffer[pos:]]
        have = len(parts[0])
        while have < limit:
            self._on_wait()
            # a request line fits in one small read; a put's long body line is read in bigger pieces
            chunk = self._stream.read(READ_CHUNK if have < READ_CHUNK else min(limit - have, 1 << 20))
            if not chunk:
                break
            end = chunk.find(b"\n", 0, limit - have)
            if end >= 0:
                parts.append(chunk[: end + 1])
                self._buffer, self._pos = chunk, end + 1
                return b"".join(parts)
            parts.append(chunk)
            have += len(chunk)
        line = b"".join(parts)
        self._buffer, self._pos = line[limit:], 0
        return line[:limit]

    def _next_line(self, limit: int) -> bytes:
        """The next non-blank line (b"" at EOF)."""
        while True:
            line = self._readline(limit)
            if not line:
                return b""
            self._line_no += 1
            if len(line) >= limit and not line.endswith(b"\n"):
                raise MalformedRequest(f"line {self._line_no} is longer than {limit} bytes")
            if line.strip():
                return line

    def read(self) -> Request | None:
        """The next request, or None at EOF."""
        line = self._next_line(MAX_REQUEST_LINE)
        if not line:
            return None
        fast = fast_request(line)
        request, size = fast if fast is not None else parse_line(line, f"line {self._line_no}")
        if size:
            request = request._replace(body=self._read_body(size, f"line {self._line_no} (request {request.id}, put)"))
        return request

    def _read_body(self, size: int, where: str) -> bytes:
        import base64

        encoded_len = 4 * ((size + 2) // 3)
        line = self._next_line(2 * encoded_len + 16).strip()  # room for JSON escapes Go never writes
        if not line:
            raise MalformedRequest(f"{where}: end of input before the {size}-byte body")
        if len(line) < 2 or line[:1] != b'"' or line[-1:] != b'"':
            raise MalformedRequest(f"{where}: the body must be a base64 JSON string, got {_excerpt(line)}")
        encoded = line[1:-1]
        if b"\\" in encoded:
            import json

            try:
                encoded = json.loads(line).encode()
            except (ValueError, UnicodeError):
                raise MalformedRequest(f"{where}: the body is not a JSON string") from None
        try:
            body = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as e:
            raise MalformedRequest(f"{where}: the body is not base64: {e}") from None
        if len(body) != size:
            raise MalformedRequest(f"{where}: BodySize is {size} but the body has {len(body)} bytes")
        return body


class ReplyWriter:
    """Writes whole reply lines under a lock. If `go` went away, replies are dropped (it cannot read them)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.broken = False

    def send(self, lines: bytes) -> None:
        """One or more whole reply lines, in one write."""
        with self._lock:
            if self.broken:
                return
            try:
                self._stream.write(lines)
                self._stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.broken = True


def json_string(text: str) -> str:
    """`text` as json.dumps writes it; a plain path (printable ASCII, no quote or backslash) without json."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    import json

    return json.dumps(text)


def hit_line(request_id: int, hit: Hit | None) -> bytes:
    """A get's reply line: what json.dumps(separators=(",", ":")) writes for it, formatted directly."""
    if hit is None:
        return b'{"ID":%d,"Miss":true}\n' % request_id
    output_id = binascii.b2a_base64(hit.output_id, newline=False).decode()
    return (f'{{"ID":{request_id},"OutputID":"{output_id}","Size":{hit.size},"Time":"{rfc3339(hit.put_time_ns)}",'
            f'"DiskPath":{json_string(hit.disk_path)}}}\n').encode()


def reply_line(request_id: int, *, disk_path: str | None = None, err: str | None = None) -> bytes:
    """A put's or close's reply line (as json.dumps writes it): the DiskPath, or the Err, or the ID alone."""
    if disk_path is not None:
        return f'{{"ID":{request_id},"DiskPath":{json_string(disk_path)}}}\n'.encode()
    if err is not None:
        return f'{{"ID":{request_id},"Err":{json_string(err)}}}\n'.encode()
    return b'{"ID":%d}\n' % request_id


class _Pool:
    """A few worker threads; `join` waits until every submitted job has finished (and so has replied)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._jobs: deque[Callable[[], None]] = deque()
        self._threads = 0
        self._idle = 0
        self._pending = 0
        self._cond = threading.Condition()

    def submit(self, job: Callable[[], None]) -> None:
        with self._cond:
            self._jobs.append(job)
            self._pending += 1
            if len(self._jobs) > self._idle and self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._work, name=f"gocache-{self._threads}", daemon=True).start()
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                while not self._jobs:
                    self._cond.wait()
                self._idle -= 1
                job = self._jobs.popleft()
            try:
                job()
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def join(self) -> None:
        with self._cond:
            while self._pending:
                self._cond.wait()


def log_line(message: str) -> None:
    """One stderr line in one write, so lines from several threads never interleave."""
    os.write(2, f"gobuildcache: {message}\n".encode())


def _outcome(hit: Hit | None) -> str:
    return "miss" if hit is None else f"hit {hit.size} B"


def _log(request: Request, outcome: str, start: float) -> None:
    elapsed_ms = (time.perf_counter() - start) * 1000
    log_line(f"#{request.id} {request.command} {request.action_id.hex()[:16]}: {outcome} ({elapsed_ms:.1f} ms)")


def _answer_at_once(handler: Handler, request: Request, debug: bool) -> bytes | None:
    """The reply to a get that the local tier answers cheaply, made on the reader thread (a hand-off to a worker
    costs more than the lookup itself); None sends the request to the pool."""
    start = time.perf_counter() if debug else 0.0
    try:
        hit = handler.get_local(request.action_id)
        if hit == DEFER:
            return None
        line = hit_line(request.id, hit)
    except Exception:  # noqa: BLE001 - the pool's full get tries again and owns the error
        return None
    if debug:
        _log(request, f"{_outcome(hit)}, local", start)
    return line


def _answer(handler: Handler, request: Request, debug: bool) -> bytes:
    """The reply to one request on the pool. A get that fails is a miss; a put fails only when the local tier
    does."""
    start = time.perf_counter()
    if request.command == "get":
        try:
            hit = handler.get(request.action_id)
            line = hit_line(request.id, hit)
        except Exception as e:  # noqa: BLE001 - a bug or an unexpected fault below costs a rebuild, not the build
            log_line(f"get {request.action_id.hex()[:16]}: {type(e).__name__}: {e}; treated as a miss")
            hit = None
            line = hit_line(request.id, hit)
        outcome = _outcome(hit)
    elif request.command == "put":
        try:
            line = reply_line(request.id, disk_path=handler.put(request.action_id, request.output_id, request.body))
            outcome = f"stored {len(request.body)} B"
        except Exception as e:  # noqa: BLE001 - go reports Err and carries on; a crash would kill the build
            outcome = f"gobuildcache: cannot store the entry locally: {e}"
            line = reply_line(request.id, err=outcome)
    else:
        outcome = f"gobuildcache: unknown command {request.command!r} (known: {', '.join(KNOWN_COMMANDS)})"
        line = reply_line(request.id, err=outcome)
    if debug:
        _log(request, outcome, start)
    return line


def _send_answer(writer: ReplyWriter, handler: Handler, request: Request, debug: bool) -> None:
    """A pool job: answer `request` and send the reply."""
    writer.send(_answer(handler, request, debug))


def serve(
    stdin: BinaryIO,
    stdout: BinaryIO,
    open_handler: Callable[[], Handler],
    *,
    debug: bool = False,
    workers: int = WORKERS,
) -> None:
    """Run one `go` command's session, after the capabilities line. Returns after `close` or EOF; raises
    MalformedRequest on garbage (after finishing the requests already accepted and flushing the cache)."""
    writer = ReplyWriter(stdout)
    held: list[bytes] = []  # replies made on this thread, sent before it next waits for input

    def send_held() -> None:
        if held:
            writer.send(b"".join(held))
            held.clear()

    handler = open_handler()
    reader = RequestReader(stdin, on_wait=send_held)
    pool = _Pool(workers)
    close_id: int | None = None
    try:
        while True:
            request = reader.read()
            if request is None:
                if debug:
                    log_line("end of input without close")
                break
            if request.command == "close":
                close_id = request.id
                break
            if request.command == "get":
                line = _answer_at_once(handler, request, debug)
                if line is not None:
                    held.append(line)
                    if len(held) >= MAX_BATCH:
                        send_held()
                    continue
            pool.submit(partial(_send_answer, writer, handler, request, debug))
    finally:
        send_held()
        pool.join()
        handler.close()
    if close_id is not None:
        if debug:
            log_line(f"#{close_id} close")
        writer.send(reply_line(close_id))
