"""Packs: the small blobs of one BatchUpdateBlobs call in one file, so a batch of 1,000 is one file created (a
temp file renamed into `packs/`, as files.py makes every entry) rather than 1,000.

A file costs the kernel ~20-25 µs of CPU to create and rename on ext4, which bounded a batch of 1,000 small
blobs; writing the same bytes as one file costs about 1 µs a blob. The format is self-describing, so the
server's index is rebuilt from the packs at start with one read of each pack's tail:

    blob data, back to back | table: per blob its SHA-256 (32 bytes) and size (8, little-endian) | count (8) | MAGIC

A pack is immutable once renamed into place. Its blobs are indexed one by one (their own places in the LRU
order), but evicted together: when an eviction pass meets a packed blob, it evicts the blob's whole pack and
unlinks it, so the room it counts as freed is exactly what the disk gets back, for one unlink and no write. A
blob dropped on its own (found corrupt, missing, or indexed in a newer copy) leaves its bytes in the pack; the
server's background pass rewrites the pack without it (its live blobs into a new pack, then the old one
unlinked) once that is worth it: at once if it held a corrupt blob, else once less than half of it is live.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

MAGIC = b"gafpack1"
ENTRY = 40  # a table entry: SHA-256 and size
TAIL = 16  # count and MAGIC
PACKS = "packs"  # the directory of an instance's packs, beside cas/ and ac/


@dataclass(eq=False)
class Pack:
    """One pack file as the index sees it: the blobs indexed in it (`keys`, the index's own key tuples: evicting
    the pack evicts those still indexed here), how many are live, and their bytes. Where each blob is in it is
    the blob's index entry."""

    path: str
    instance: str
    cost: int  # what the file takes on disk (whole blocks and an inode), counted until it is unlinked
    size: int  # the file's length
    touched: float  # its mtime: when one of its blobs was last read from it (refreshed at most hourly)
    keys: list[tuple[str, str, str]] = field(default_factory=list)
    live: int = 0
    live_bytes: int = 0
    queued: bool = False  # waiting for the background pass to rewrite it
    damaged: bool = False  # held a corrupt blob: rewritten without it however much of it is live

    def add(self, key: tuple[str, str, str], size: int) -> None:
        self.keys.append(key)
        self.live += 1
        self.live_bytes += size

    def remove(self, size: int) -> None:
        self.live -= 1
        self.live_bytes -= size

    def worth_rewriting(self) -> bool:
        """Does a rewrite without its dropped blobs pay: it held a corrupt one, or less than half of it is live?"""
        return self.live > 0 and (self.damaged or 2 * (self.live_bytes + ENTRY * self.live) < self.size)


def encode(blobs: Sequence[tuple[str, bytes]]) -> tuple[bytes, list[int]]:
    """A pack of `(hash, data)` blobs (its whole content, written at once), and each blob's offset."""
    offsets, position = [], 0
    for _hash, data in blobs:
        offsets.append(position)
        position += len(data)
    table = b"".join(bytes.fromhex(hash_) + len(data).to_bytes(8, "little") for hash_, data in blobs)
    return b"".join([*(data for _hash, data in blobs), table, len(blobs).to_bytes(8, "little"), MAGIC]), offsets


class BadPack(Exception):
    """Not a whole pack (a torn file: a crash of the machine without --fsync, or a file that is not a pack)."""


def read_table(path: str) -> list[tuple[str, int, int]]:
    """The `(hash, offset, size)` of every blob in a pack, from its tail; BadPack unless the table accounts for
    the file's length exactly."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        length = os.fstat(fd).st_size
        tail = os.pread(fd, TAIL, length - TAIL) if length >= TAIL else b""
        if len(tail) != TAIL or tail[8:] != MAGIC:
            raise BadPack("no pack table at its end")
        count = int.from_bytes(tail[:8], "little")
        start = length - TAIL - count * ENTRY
        if start < 0:
            raise BadPack("a table longer than the file")
        table = os.pread(fd, count * ENTRY, start)
    finally:
        os.close(fd)
    entries, offset = [], 0
    for i in range(0, len(table), ENTRY):
        size = int.from_bytes(table[i + 32:i + ENTRY], "little")
        entries.append((table[i:i + 32].hex(), offset, size))
        offset += size
    if len(table) != count * ENTRY or offset != start:
        raise BadPack("its table does not account for its length")
    return entries


def read_blob(path: str, offset: int, size: int) -> bytes:
    """A blob's bytes from its pack (FileNotFoundError if the pack is gone: evicted or rewritten meanwhile)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)
