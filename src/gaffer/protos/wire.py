"""The REAPI messages gaffer writes on its hot paths, in Protocol Buffers' wire format by hand.

Why not the generated `remote_execution_pb2` classes: building a message object field by field costs more than the
bytes it produces (half of a task's key was protobuf objects), and importing the generated module costs well over
100 ms for a program `go` starts on every build (gobuildcache). The bytes written here are exactly what protobuf's
deterministic serializer produces for the same message: fields in number order, proto3 defaults (0, "", b"",
false) omitted, a message-typed field present whenever it was set even if empty, negative integers as ten-byte
varints. tests/test_wire.py checks that against the generated classes on random messages of every shape, so a
key can never change silently. Only the fields gaffer sets are covered.

Reading: the small decoder gobuildcache reads its own entries with, and the messages a cache hit is restored from
(`ActionResult`, `Tree`, `Directory`), so that restoring a hit does not import protobuf either. Every field they
read reads exactly as protobuf reads it, and they are stricter where a difference could hide: a field they read
with the wrong wire type, or a singular one given twice, is an error (protobuf would skip or merge it). Fields
they do not read (inline contents, other timestamps, node properties besides the mode) are skipped unchecked.
tests/test_wire.py checks this on random and damaged messages. An error here makes the entry a miss.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from gaffer.digest import Digest
from gaffer.tuples import NamedTuple


class DecodeError(ValueError):
    """Bytes that are not a well-formed message of the expected shape."""


# -- encoding ----------------------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """A base-128 varint; a negative number as its 64-bit two's complement (what protobuf writes for int32/int64)."""
    if 0 <= n < 0x80:
        return bytes((n,))
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# The one-byte tags of fields 1-15 (every field gaffer writes), by wire type: a key builds hundreds of fields.
_LENGTH_TAGS = tuple(bytes((n << 3 | 2,)) for n in range(16))
_VARINT_TAGS = tuple(bytes((n << 3,)) for n in range(16))
_SMALL = tuple(bytes((n,)) for n in range(0x80))  # the varints of 0-127


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2), written even when empty: a set message, or a repeated string."""
    size = len(payload)
    tag = _LENGTH_TAGS[number] if number < 16 else varint(number << 3 | 2)
    return tag + (_SMALL[size] if size < 0x80 else varint(size)) + payload


def text(number: int, value: str) -> bytes:
    """A singular string field; proto3 omits the empty one."""
    return field(number, value.encode()) if value else b""


def raw(number: int, value: bytes) -> bytes:
    """A singular bytes field; proto3 omits the empty one."""
    return field(number, value) if value else b""


def number(number: int, value: int) -> bytes:
    """A varint field (int32, int64, uint32, bool); proto3 omits the default 0."""
    if not value:
        return b""
    tag = _VARINT_TAGS[number] if number < 16 else varint(number << 3)
    return tag + (_SMALL[value] if 0 < value < 0x80 else varint(int(value)))


def digest(d: Digest) -> bytes:
    """A `Digest` message's content."""
    return text(1, d.hash) + number(2, d.size_bytes)


def _pairs(pairs: Iterable[tuple[str, str]], tag: int) -> bytes:
    """Repeated name/value messages (`EnvironmentVariable`, `Platform.Property`) under field `tag`."""
    return b"".join(field(tag, text(1, name) + text(2, value)) for name, value in pairs)


def _mode(mode: int | None) -> bytes:
    """`NodeProperties` holding only `unix_mode` (a `UInt32Value`, present even when 0), or nothing."""
    return b"" if mode is None else field(3, number(1, mode))


def timestamp(ns: int) -> bytes:
    """A `google.protobuf.Timestamp`'s content: seconds rounded down, nanos in [0, 1e9)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return number(1, seconds) + number(2, nanos)


def duration(ns: int) -> bytes:
    """A `google.protobuf.Duration`'s content: seconds and nanos of the same sign (rounded toward zero)."""
    seconds, nanos = divmod(abs(ns), 1_000_000_000)
    sign = -1 if ns < 0 else 1
    return number(1, sign * seconds) + number(2, sign * nanos)


FileNode = tuple[str, Digest, bool, int | None]  # name (or path), digest, is_executable, unix mode if recorded


def directory(files: Sequence[FileNode], directories: Sequence[tuple[str, Digest]],
              symlinks: Sequence[tuple[str, str]], mode: int | None) -> bytes:
    """A `Directory`, each list already sorted by name as REAPI requires."""
    out = [field(1, text(1, name) + field(2, digest(d)) + number(4, executable) + (field(6, _mode(m)) if m is not None
                                                                                   else b""))
           for name, d, executable, m in files]
    out += [field(2, text(1, name) + field(2, digest(d))) for name, d in directories]
    out += [field(3, text(1, name) + text(2, target)) for name, target in symlinks]
    if mode is not None:
        out.append(field(5, _mode(mode)))
    return b"".join(out)


def tree(root: bytes, children: Iterable[bytes]) -> bytes:
    """A `Tree` of serialized `Directory` messages."""
    return field(1, root) + b"".join(field(2, child) for child in children)


def command(arguments: Sequence[str], env: Iterable[tuple[str, str]], output_paths: Sequence[str],
            working_directory: str) -> bytes:
    """A `Command`: argv, environment variables (sorted by name), output paths (sorted), working directory."""
    return (b"".join(field(1, a.encode()) for a in arguments) + _pairs(env, 2) + text(6, working_directory)
            + b"".join(field(7, p.encode()) for p in output_paths))


def action(command_digest: Digest, input_root: Digest, timeout_ns: int | None, do_not_cache: bool, salt: bytes,
           platform: Sequence[tuple[str, str]]) -> bytes:
    """An `Action`; `timeout_ns` None leaves the timeout unset, the platform (sorted by name) is left out when
    empty."""
    return (field(1, digest(command_digest)) + field(2, digest(input_root))
            + (field(6, duration(timeout_ns)) if timeout_ns is not None else b"") + number(7, do_not_cache)
            + raw(9, salt) + (field(10, _pairs(platform, 1)) if platform else b""))


def action_result(files: Sequence[FileNode], symlinks: Sequence[tuple[str, str]],
                  directories: Sequence[tuple[str, Digest]], exit_code: int, stdout: Digest | None,
                  stderr: Digest | None, worker: str, start_ns: int | None, completed_ns: int | None) -> bytes:
    """An `ActionResult`: output files (by path), symlinks, directories (path, Tree digest), the logs' digests
    and `execution_metadata` (worker, start and completion times; present whenever any of them is)."""
    out = [field(2, text(1, path) + field(2, digest(d)) + number(4, executable) + (field(7, _mode(m)) if m is not None
                                                                                   else b""))
           for path, d, executable, m in files]
    out += [field(3, text(1, path) + field(3, digest(d))) for path, d in directories]
    out.append(number(4, exit_code))
    if stdout is not None:
        out.append(field(6, digest(stdout)))
    if stderr is not None:
        out.append(field(8, digest(stderr)))
    metadata = (text(1, worker) + (field(3, timestamp(start_ns)) if start_ns is not None else b"")
                + (field(4, timestamp(completed_ns)) if completed_ns is not None else b""))
    if metadata or start_ns is not None or completed_ns is not None:
        out.append(field(9, metadata))
    out += [field(12, text(1, path) + text(2, target)) for path, target in symlinks]
    return b"".join(out)


def stream_chunk(data: bytes) -> bytes:
    """A ByteStream `ReadResponse` holding `data`: the chunk copied once, where building the message and
    serializing it copied it twice (`gaffer serve` sends whole build outputs this way)."""
    return _LENGTH_TAGS[10] + varint(len(data)) + data if data else b""


def batch_read_blobs(blobs: Iterable[tuple[Digest, bytes | None, int, str]]) -> bytes:
    """A `BatchReadBlobsResponse`: per blob its digest, its data (None: not sent) and a status code and message
    (code 0, OK, leaves the status out). The blobs' bytes are copied once, by one join of the pieces (protobuf
    copied each three times: into its response, into the reply, then out to bytes)."""
    parts: list[bytes] = []
    for d, data, code, message in blobs:
        head = field(1, digest(d))
        data_head = _LENGTH_TAGS[2] + varint(len(data)) if data else b""
        tail = field(3, number(1, code) + text(2, message)) if code or message else b""
        parts += (_LENGTH_TAGS[1], varint(len(head) + len(data_head) + (len(data) if data else 0) + len(tail)), head,
                  data_head, data or b"", tail)
    return b"".join(parts)


# -- decoding ----------------------------------------------------------------------------------------------------


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    if pos < len(buf) and buf[pos] < 0x80:  # the common one-byte case, without the loop
        return buf[pos], pos + 1
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise DecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes) -> dict[int, int | bytes]:
    """Field number -> last value (protobuf's rule for a repeated singular field); unknown fields are skipped."""
    found: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        tag, wire_type = key >> 3, key & 7
        if wire_type == 0:
            found[tag], pos = read_varint(buf, pos)
        elif wire_type == 2:
            size, pos = read_varint(buf, pos)
            if pos + size > len(buf):
                raise DecodeError("truncated field")
            found[tag] = buf[pos : pos + size]
            pos += size
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")
    if pos != len(buf):
        raise DecodeError("truncated message")
    return found


def message(found: dict[int, int | bytes], tag: int) -> dict[int, int | bytes]:
    value = found.get(tag, b"")
    if not isinstance(value, bytes):
        raise DecodeError(f"field {tag} is not a message")
    return fields(value)


def string(found: dict[int, int | bytes], tag: int) -> str:
    value = found.get(tag, b"")
    if not isinstance(value, bytes):
        raise DecodeError(f"field {tag} is not a string")
    try:
        return value.decode()
    except UnicodeDecodeError as e:
        raise DecodeError(f"field {tag} is not UTF-8") from e


def integer(found: dict[int, int | bytes], tag: int) -> int:
    value = found.get(tag, 0)
    if not isinstance(value, int):
        raise DecodeError(f"field {tag} is not a number")
    return value


# -- decoding the messages a cache hit is restored from ------------------------------------------------------------

Value = int | bytes | memoryview | None  # a varint, a length-delimited payload (a view of a view), or a fixed-width
# value (read by no message here)


def _entries(buf: bytes | memoryview) -> Iterable[tuple[int, Value]]:
    """Every field of a message in order, unknown ones included; a length-delimited one is a slice of `buf` (of a
    memoryview: no copy)."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        tag, wire_type = key >> 3, key & 7
        if not 0 < tag < 1 << 29:
            raise DecodeError(f"field number {tag}")
        value: Value
        if wire_type == 0:
            value, pos = read_varint(buf, pos)
        elif wire_type == 2:
            size, pos = read_varint(buf, pos)
            if pos + size > end:
                raise DecodeError("truncated field")
            value, pos = buf[pos : pos + size], pos + size
        elif wire_type in (1, 5):
            value, pos = None, pos + (8 if wire_type == 1 else 4)
            if pos > end:
                raise DecodeError("truncated field")
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")
        yield tag, value


def _split(buf: bytes | memoryview, singular: Collection[int], repeated: Collection[int] = ()) -> tuple[
        dict[int, Value], dict[int, list[bytes]]]:
    """The known fields of a message: singular ones (each at most once) and repeated message fields."""
    one: dict[int, Value] = {}
    many: dict[int, list[bytes]] = {tag: [] for tag in repeated}
    for tag, value in _entries(buf):
        if tag in many:
            if not isinstance(value, bytes):
                raise DecodeError(f"field {tag} is not a message")
            many[tag].append(value)
        elif tag in singular:
            if tag in one:
                raise DecodeError(f"field {tag} given twice")
            one[tag] = value
    return one, many


def _bytes_field(one: dict[int, Value], tag: int) -> bytes:
    value = one.get(tag, b"")
    if not isinstance(value, bytes):
        raise DecodeError(f"field {tag} is not length-delimited")
    return value


def _str_field(one: dict[int, Value], tag: int) -> str:
    try:
        return _bytes_field(one, tag).decode()
    except UnicodeDecodeError as e:
        raise DecodeError(f"field {tag} is not UTF-8") from e


def _int_field(one: dict[int, Value], tag: int, bits: int = 64, signed: bool = True) -> int:
    """A varint field as protobuf reads it into an int32/int64 (`signed`) or a uint32/bool: its low `bits`."""
    value = one.get(tag, 0)
    if not isinstance(value, int):
        raise DecodeError(f"field {tag} is not a varint")
    value &= (1 << bits) - 1
    return value - (1 << bits) if signed and value >> (bits - 1) else value


def _read_digest(buf: bytes) -> Digest:
    one, _ = _split(buf, (1, 2))
    return Digest(_str_field(one, 1), _int_field(one, 2))


def _read_unix_mode(one: dict[int, Value], tag: int) -> int | None:
    """The `unix_mode` of the `NodeProperties` in field `tag`, None when it is not recorded."""
    if tag not in one:
        return None
    properties, _ = _split(_bytes_field(one, tag), (3,))
    if 3 not in properties:
        return None
    mode, _ = _split(_bytes_field(properties, 3), (1,))
    return _int_field(mode, 1, 32, signed=False)


def _read_timestamp_ns(buf: bytes) -> int:
    """A `google.protobuf.Timestamp` in nanoseconds."""
    one, _ = _split(buf, (1, 2))
    return _int_field(one, 1) * 1_000_000_000 + _int_field(one, 2, 32)


class ReadFile(NamedTuple):
    """A `FileNode` (`name`) or an `OutputFile` (its path in `name`)."""

    name: str
    digest: Digest  # as written: checking it is the reader's job
    executable: bool
    mode: int | None  # `node_properties.unix_mode`, if recorded


def _read_file(buf: bytes, properties_tag: int) -> ReadFile:
    one, _ = _split(buf, (1, 2, 4, properties_tag))
    return ReadFile(_str_field(one, 1), _read_digest(_bytes_field(one, 2)), bool(_int_field(one, 4, signed=False)),
                    _read_unix_mode(one, properties_tag))


def _read_symlink(buf: bytes) -> tuple[str, str]:
    """A `SymlinkNode` / `OutputSymlink`: name (or path) and target."""
    one, _ = _split(buf, (1, 2))
    return _str_field(one, 1), _str_field(one, 2)


class ReadDirectory(NamedTuple):
    files: list[ReadFile]
    directories: list[tuple[str, Digest]]
    symlinks: list[tuple[str, str]]  # name, target
    mode: int | None


EMPTY_DIRECTORY = ReadDirectory([], [], [], None)


def read_directory(buf: bytes) -> ReadDirectory:
    """A `Directory` message."""
    one, many = _split(buf, (5,), (1, 2, 3))
    subdirectories = []
    for node in many[2]:
        fields_, _ = _split(node, (1, 2))
        subdirectories.append((_str_field(fields_, 1), _read_digest(_bytes_field(fields_, 2))))
    return ReadDirectory([_read_file(node, 6) for node in many[1]], subdirectories,
                         [_read_symlink(node) for node in many[3]], _read_unix_mode(one, 5))


def read_tree(buf: bytes) -> tuple[bytes, list[bytes]]:
    """A `Tree`: its root and children as serialized `Directory` messages (a child is found by its digest)."""
    one, many = _split(buf, (1,), (2,))
    return _bytes_field(one, 1), many[2]


class ReadResult(NamedTuple):
    files: list[ReadFile]  # the output files, by path
    directories: list[tuple[str, Digest | None]]  # path, and the digest of its `Tree` (None: not given)
    symlinks: list[tuple[str, str]]  # path, target
    exit_code: int
    stdout: Digest  # Digest("", 0) when not given
    stderr: Digest
    duration_ns: int  # worker_completed_timestamp - worker_start_timestamp


def read_action_result(buf: bytes) -> ReadResult:
    """An `ActionResult`, with what restoring it needs (inline contents and the deprecated symlink fields are
    not read)."""
    one, many = _split(buf, (4, 6, 8, 9), (2, 3, 12))
    directories: list[tuple[str, Digest | None]] = []
    for node in many[3]:
        fields_, _ = _split(node, (1, 3))
        directories.append((_str_field(fields_, 1), _read_digest(_bytes_field(fields_, 3)) if 3 in fields_ else None))
    metadata, _ = _split(_bytes_field(one, 9), (3, 4))
    start = _read_timestamp_ns(_bytes_field(metadata, 3))
    completed = _read_timestamp_ns(_bytes_field(metadata, 4))
    return ReadResult([_read_file(node, 7) for node in many[2]], directories,
                      [_read_symlink(node) for node in many[12]], _int_field(one, 4, 32),
                      _read_digest(_bytes_field(one, 6)), _read_digest(_bytes_field(one, 8)), completed - start)


# -- decoding the replies a remote's blobs arrive in, without copying them -------------------------------------------


def _views(buf: memoryview, singular: Collection[int]) -> dict[int, Value]:
    """`_split`'s singular fields of a message in a memoryview: a length-delimited one is a view of `buf`."""
    return _split(buf, singular)[0]


def _view(one: dict[int, Value], tag: int) -> memoryview:
    value = one.get(tag, memoryview(b""))
    if not isinstance(value, memoryview):
        raise DecodeError(f"field {tag} is not length-delimited")
    return value


def read_stream_chunk(buf: bytes) -> memoryview:
    """A ByteStream `ReadResponse`: its `data` (field 10) as a view of `buf`. A gRPC client's response
    deserializer: a chunk of a streamed blob is not copied out of the message that carried it."""
    return _view(_views(memoryview(buf), (10,)), 10)


class BlobRead(NamedTuple):
    """One response of a `BatchReadBlobsResponse`."""

    digest: Digest  # as the server wrote it: checking the data against it is the reader's job
    data: memoryview  # a view of the whole reply (no copy)
    code: int  # its `status.code` (google.rpc.Code): 0 is OK
    message: str  # its `status.message`


def read_batch_read_blobs(buf: bytes) -> list[BlobRead]:
    """A `BatchReadBlobsResponse`, each blob's data a view of `buf`: a gRPC client's response deserializer that
    copies no blob out of the reply (protobuf's parser and its field access copied each one twice)."""
    blobs = []
    for tag, value in _entries(memoryview(buf)):
        if tag != 1:
            continue
        if not isinstance(value, memoryview):
            raise DecodeError("field 1 is not a message")
        one = _views(value, (1, 2, 3))
        status = _views(_view(one, 3), (1, 2))
        try:
            message = bytes(_view(status, 2)).decode()
        except UnicodeDecodeError as e:
            raise DecodeError("status.message is not UTF-8") from e
        blobs.append(BlobRead(_read_digest(bytes(_view(one, 1))), _view(one, 2), _int_field(status, 1, 32), message))
    return blobs
