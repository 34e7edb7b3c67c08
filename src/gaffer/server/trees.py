"""Read the file digests of a REAPI `Tree` blob as a stream, so a tree of any size costs bounded memory.

A peer chooses what its action results name: a `Tree` of hundreds of MiB parsed whole would take several times
its size in memory per lookup. Here the wire format is walked field by field: each `Directory` small enough is
parsed whole (the C parser is fast), a bigger one one `FileNode` at a time; nothing else is kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import BinaryIO

from google.protobuf.message import DecodeError

from gaffer.protos import remote_execution_pb2 as re_pb2

WHOLE_DIRECTORY = 1024 * 1024  # a Directory up to this size is parsed in one piece
MAX_NODE = 1024 * 1024  # a FileNode larger than this is not a real one: the tree is refused
_SKIP_CHUNK = 1024 * 1024

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_TREE_DIRECTORIES = (1, 2)  # Tree.root, Tree.children
_DIRECTORY_FILES = 1  # Directory.files


class BadTree(Exception):
    """The blob is not a well-formed Tree (truncated, or a field the reader cannot skip)."""


class HashingReader:
    """Reads a blob's file once, hashing every byte, so the caller learns at the end whether it was intact."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._sha = hashlib.sha256()
        self.remaining = size

    def read(self, n: int) -> bytes:
        if n > self.remaining:
            raise BadTree("a field runs past the end of the blob")
        data = self._f.read(n)
        if len(data) != n:
            raise BadTree("the blob is shorter than its size")
        self.remaining -= n
        self._sha.update(data)
        return data

    def skip(self, n: int) -> None:
        while n > 0:
            n -= len(self.read(min(n, _SKIP_CHUNK)))

    def varint(self) -> int:
        value = shift = 0
        while shift < 64:
            byte = self.read(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise BadTree("a varint longer than 10 bytes")

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _fields(reader: HashingReader, length: int) -> Iterator[tuple[int, int, int]]:
    """(field number, wire type, length of a length-delimited field) for the next `length` bytes; the caller
    reads or skips a length-delimited field's payload, other fields are skipped here."""
    end = reader.remaining - length
    while reader.remaining > end:
        key = reader.varint()
        number, wire = key >> 3, key & 7
        if wire == _LEN:
            size = reader.varint()
            if size > reader.remaining - end:
                raise BadTree("a field runs past the end of its message")
            yield number, wire, size
        elif wire == _VARINT:
            reader.varint()
        elif wire in (_I64, _I32):
            reader.skip(8 if wire == _I64 else 4)
        else:
            raise BadTree(f"unsupported wire type {wire}")
    if reader.remaining != end:
        raise BadTree("a field runs past the end of its message")


def file_digests(reader: HashingReader) -> Iterator[re_pb2.Digest]:
    """The digest of every file in every Directory of the Tree `reader` holds (BadTree if it is not one)."""
    for number, _, size in _fields(reader, reader.remaining):
        if number not in _TREE_DIRECTORIES:
            reader.skip(size)
        elif size <= WHOLE_DIRECTORY:
            try:
                directory = re_pb2.Directory.FromString(reader.read(size))
            except DecodeError:
                raise BadTree("a Directory that does not parse") from None
            yield from (f.digest for f in directory.files)
        else:
            yield from _large_directory(reader, size)


def _large_directory(reader: HashingReader, size: int) -> Iterator[re_pb2.Digest]:
    for number, _, node_size in _fields(reader, size):
        if number != _DIRECTORY_FILES:
            reader.skip(node_size)
            continue
        if node_size > MAX_NODE:
            raise BadTree("a FileNode larger than 1 MiB")
        try:
            yield re_pb2.FileNode.FromString(reader.read(node_size)).digest
        except DecodeError:
            raise BadTree("a FileNode that does not parse") from None
