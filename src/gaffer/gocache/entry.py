"""A Go cache entry stored as a REAPI `ActionResult`, so it lives in the same action cache as every other entry.

The action-cache key is the digest of `KEY_PREFIX + ActionID` (the ActionID `go` sends is already a complete key;
the prefix keeps Go keys apart from gaffer's own action digests). The ActionResult names one output file:

    output_files[0].path   = "go-output/<OutputID as lowercase hex>"
    output_files[0].digest = the CAS digest of the body
    execution_metadata.worker = "gobuildcache"
    execution_metadata.worker_completed_timestamp = the put time (Go's `Entry.Time`, used by `go clean -testcache`)

Why a hand-written codec for four fields instead of the generated `remote_execution_pb2`: `go` starts this program
for every build and waits on it, and importing the generated module costs well over 100 ms (it pulls in protobuf,
google.longrunning and through it grpc). The bytes written are exactly what protobuf's deterministic serializer
produces for the same message (fields in number order, proto3 defaults omitted); tests/test_gocache_protocol.py
checks that against the generated classes in both directions.
"""

from __future__ import annotations

from typing import NamedTuple

from gaffer.digest import Digest, digest_bytes, is_valid_hash

KEY_PREFIX = b"gaffer-go-v1\0"
OUTPUT_DIR = "go-output/"
WORKER = "gobuildcache"


class GoEntry(NamedTuple):
    """What `go` stored under an ActionID: its OutputID, the body's CAS digest and the put time."""

    output_id: bytes
    body: Digest
    put_time_ns: int


class CorruptEntry(ValueError):
    """The stored bytes are not an entry this program wrote: treated as a miss, never as an error."""


def action_key(action_id: bytes) -> Digest:
    return digest_bytes(KEY_PREFIX + action_id)


# -- encoding ----------------------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    """A varint field (wire type 0); proto3 omits the default 0."""
    return _varint(number << 3) + _varint(value) if value else b""


def encode_entry(entry: GoEntry) -> bytes:
    """The serialized ActionResult for `entry`, byte-identical to protobuf's deterministic output."""
    digest = _field(1, entry.body.hash.encode()) + _int_field(2, entry.body.size_bytes)
    output_file = _field(1, (OUTPUT_DIR + entry.output_id.hex()).encode()) + _field(2, digest)
    seconds, nanos = divmod(entry.put_time_ns, 1_000_000_000)
    timestamp = _int_field(1, seconds) + _int_field(2, nanos)
    metadata = _field(1, WORKER.encode()) + _field(4, timestamp)
    return _field(2, output_file) + _field(9, metadata)


# -- decoding ----------------------------------------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    if pos < len(buf) and buf[pos] < 0x80:  # the common one-byte case, without the loop
        return buf[pos], pos + 1
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CorruptEntry("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> dict[int, int | bytes]:
    """Field number -> last value (protobuf's rule for a repeated singular field); unknown fields are skipped."""
    fields: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            fields[number], pos = _read_varint(buf, pos)
        elif wire_type == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise CorruptEntry("truncated field")
            fields[number] = buf[pos : pos + size]
            pos += size
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise CorruptEntry(f"unsupported wire type {wire_type}")
    if pos != len(buf):
        raise CorruptEntry("truncated message")
    return fields


def _message(fields: dict[int, int | bytes], number: int) -> dict[int, int | bytes]:
    value = fields.get(number, b"")
    if not isinstance(value, bytes):
        raise CorruptEntry(f"field {number} is not a message")
    return _fields(value)


def _text(fields: dict[int, int | bytes], number: int) -> str:
    value = fields.get(number, b"")
    if not isinstance(value, bytes):
        raise CorruptEntry(f"field {number} is not a string")
    try:
        return value.decode()
    except UnicodeDecodeError as e:
        raise CorruptEntry(f"field {number} is not UTF-8") from e


def _number(fields: dict[int, int | bytes], number: int) -> int:
    value = fields.get(number, 0)
    if not isinstance(value, int):
        raise CorruptEntry(f"field {number} is not a number")
    return value


_CANONICAL_OUTPUT = b"\x0a"  # output_files[0].path's tag, then its one-byte length, then OUTPUT_DIR
_CANONICAL_WORKER = b"\x0a" + bytes([len(WORKER)]) + WORKER.encode() + b"\x22"  # worker, then the timestamp's tag


def _decode_canonical(data: bytes) -> GoEntry | None:
    """The entry in the exact layout `encode_entry` writes, read by position (a get's hot path: a third of the
    general parser's time); None when the bytes are laid out in any other way, for `decode_entry` to judge."""
    try:
        if data[0] != 0x12:
            return None
        length, p = _read_varint(data, 1)
        output_end = p + length
        path_end = p + 2 + data[p + 1]
        if data[p : p + 1] != _CANONICAL_OUTPUT or data[p + 1] > 0x7F or data[p + 2 : p + 12] != b"go-output/":
            return None
        hex_id = data[p + 12 : path_end]
        output_id = bytes.fromhex(hex_id.decode("ascii"))
        if output_id.hex().encode() != hex_id or data[path_end : path_end + 3] != b"\x12" + bytes([output_end - path_end - 2]) + b"\x0a":
            return None
        q = path_end + 3
        if data[q] != 0x40:
            return None
        body_hash = data[q + 1 : q + 65].decode("ascii")
        q += 65
        size = 0
        if q < output_end:
            if data[q] != 0x10:
                return None
            size, q = _read_varint(data, q + 1)
        if q != output_end or data[q] != 0x4A:
            return None
        length, m = _read_varint(data, q + 1)
        if m + length != len(data) or data[m : m + len(_CANONICAL_WORKER)] != _CANONICAL_WORKER:
            return None
        t = m + len(_CANONICAL_WORKER)
        if data[t] != len(data) - t - 1:
            return None
        t += 1
        seconds = nanos = 0
        if t < len(data) and data[t] == 0x08:
            seconds, t = _read_varint(data, t + 1)
        if t < len(data) and data[t] == 0x10:
            nanos, t = _read_varint(data, t + 1)
        if t != len(data) or not is_valid_hash(body_hash):
            return None
        return GoEntry(output_id, Digest(body_hash, size), seconds * 1_000_000_000 + nanos)
    except (IndexError, ValueError, CorruptEntry):  # ValueError: also UnicodeDecodeError
        return None


def decode_entry(data: bytes) -> GoEntry:
    """Parse an ActionResult written by `encode_entry`; raise CorruptEntry for anything else."""
    canonical = _decode_canonical(data)
    if canonical is not None:
        return canonical
    result = _fields(data)
    if _number(result, 4) != 0:  # exit_code
        raise CorruptEntry("non-zero exit code")
    output_file = _message(result, 2)  # a Go entry has exactly one output file, so "last" is "the"
    path = _text(output_file, 1)
    digest = _message(output_file, 2)
    body = Digest(_text(digest, 1), _number(digest, 2))
    if not path.startswith(OUTPUT_DIR) or not is_valid_hash(body.hash):
        raise CorruptEntry("not a Go cache entry")
    try:
        output_id = bytes.fromhex(path[len(OUTPUT_DIR) :])
    except ValueError as e:
        raise CorruptEntry("OutputID is not hex") from e
    timestamp = _message(_message(result, 9), 4)
    put_time_ns = _number(timestamp, 1) * 1_000_000_000 + _number(timestamp, 2)
    return GoEntry(output_id, body, put_time_ns)
