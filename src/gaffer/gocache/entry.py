"""A Go cache entry stored as a REAPI `ActionResult`, so it lives in the same action cache as every other entry.

The action-cache key is the digest of `KEY_PREFIX + ActionID` (the ActionID `go` sends is already a complete key;
the prefix keeps Go keys apart from gaffer's own action digests). The ActionResult names one output file:

    output_files[0].path   = "go-output/<OutputID as lowercase hex>"
    output_files[0].digest = the CAS digest of the body
    execution_metadata.worker = "gobuildcache"
    execution_metadata.worker_completed_timestamp = the put time (Go's `Entry.Time`, used by `go clean -testcache`)

Written and read with gaffer's hand-written codec (gaffer.protos.wire), not the generated `remote_execution_pb2`:
`go` starts this program for every build and waits on it, and importing the generated module costs well over
100 ms (it pulls in protobuf, google.longrunning and through it grpc). tests/test_gocache_protocol.py checks the
entries against the generated classes in both directions.
"""

from __future__ import annotations

from gaffer.digest import Digest, digest_bytes, is_valid_hash
from gaffer.protos import wire
from gaffer.tuples import NamedTuple

KEY_PREFIX = b"gaffer-go-v1\0"
MAX_PUT_TIME_NS = 253_402_300_800 * 1_000_000_000  # year 10000: go reads only four-digit years (RFC 3339)
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


def encode_entry(entry: GoEntry) -> bytes:
    """The serialized ActionResult for `entry`, byte-identical to protobuf's deterministic output."""
    path = OUTPUT_DIR + entry.output_id.hex()
    return wire.action_result([(path, entry.body, False, None)], [], [], 0, None, None, WORKER, None,
                              entry.put_time_ns)


_CANONICAL_OUTPUT = b"\x0a"  # output_files[0].path's tag, then its one-byte length, then OUTPUT_DIR
_CANONICAL_WORKER = b"\x0a" + bytes([len(WORKER)]) + WORKER.encode() + b"\x22"  # worker, then the timestamp's tag


def _decode_canonical(data: bytes) -> GoEntry | None:
    """The entry in the exact layout `encode_entry` writes, read by position (a get's hot path: a third of the
    general parser's time); None when the bytes are laid out in any other way, for `decode_entry` to judge."""
    try:
        if data[0] != 0x12:
            return None
        length, p = wire.read_varint(data, 1)
        output_end = p + length
        path_end = p + 2 + data[p + 1]
        if data[p : p + 1] != _CANONICAL_OUTPUT or data[p + 1] > 0x7F or data[p + 2 : p + 12] != b"go-output/":
            return None
        hex_id = data[p + 12 : path_end]
        output_id = bytes.fromhex(hex_id.decode("ascii"))
        digest_head = b"\x12" + bytes([output_end - path_end - 2]) + b"\x0a"
        if output_id.hex().encode() != hex_id or data[path_end : path_end + 3] != digest_head:
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
            size, q = wire.read_varint(data, q + 1)
        if q != output_end or data[q] != 0x4A:
            return None
        length, m = wire.read_varint(data, q + 1)
        if m + length != len(data) or data[m : m + len(_CANONICAL_WORKER)] != _CANONICAL_WORKER:
            return None
        t = m + len(_CANONICAL_WORKER)
        if data[t] != len(data) - t - 1:
            return None
        t += 1
        seconds = nanos = 0
        if t < len(data) and data[t] == 0x08:
            seconds, t = wire.read_varint(data, t + 1)
        if t < len(data) and data[t] == 0x10:
            nanos, t = wire.read_varint(data, t + 1)
        put_time_ns = seconds * 1_000_000_000 + nanos
        if t != len(data) or not is_valid_hash(body_hash) or put_time_ns >= MAX_PUT_TIME_NS:
            return None
        return GoEntry(output_id, Digest(body_hash, size), put_time_ns)
    except (IndexError, ValueError, CorruptEntry):  # ValueError: also UnicodeDecodeError and wire.DecodeError
        return None


def decode_entry(data: bytes) -> GoEntry:
    """Parse an ActionResult written by `encode_entry`; raise CorruptEntry for anything else."""
    canonical = _decode_canonical(data)
    if canonical is not None:
        return canonical
    try:
        return _decode(data)
    except wire.DecodeError as e:
        raise CorruptEntry(str(e)) from e


def _decode(data: bytes) -> GoEntry:
    result = wire.fields(data)
    if wire.integer(result, 4) != 0:  # exit_code
        raise CorruptEntry("non-zero exit code")
    output_file = wire.message(result, 2)  # a Go entry has exactly one output file, so "last" is "the"
    path = wire.string(output_file, 1)
    digest = wire.message(output_file, 2)
    body = Digest(wire.string(digest, 1), wire.integer(digest, 2))
    if not path.startswith(OUTPUT_DIR) or not is_valid_hash(body.hash):
        raise CorruptEntry("not a Go cache entry")
    try:
        output_id = bytes.fromhex(path[len(OUTPUT_DIR) :])
    except ValueError as e:
        raise CorruptEntry("OutputID is not hex") from e
    timestamp = wire.message(wire.message(result, 9), 4)
    put_time_ns = wire.integer(timestamp, 1) * 1_000_000_000 + wire.integer(timestamp, 2)
    if put_time_ns >= MAX_PUT_TIME_NS:  # written by a peer (a shared remote): its reply would be no time go reads
        raise CorruptEntry("put time out of range")
    return GoEntry(output_id, body, put_time_ns)
