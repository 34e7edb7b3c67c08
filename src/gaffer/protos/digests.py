"""`Digest` <-> the REAPI `Digest` message: the one conversion every module that speaks protobuf uses.

Kept out of `gaffer.digest` so that module stays free of protobuf (the CLI's no-op path imports it)."""

from __future__ import annotations

from gaffer.digest import Digest
from gaffer.protos import remote_execution_pb2 as re_pb2


def to_proto(digest: Digest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=digest.hash, size_bytes=digest.size_bytes)


def from_proto(message: re_pb2.Digest) -> Digest:
    return Digest(message.hash, message.size_bytes)
