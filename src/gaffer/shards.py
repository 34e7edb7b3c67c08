"""A map of str -> bytes kept in shard files, each read when a key in it is first touched and written back only
when it changed: the build log and the stat cache of a 10,000-task workspace hold megabytes, of which an edit
build reads and changes a few entries.

A key's shard is fixed by its CRC-32 (the same in every process, unlike `hash`). Each shard file is a magic
number, the CRC-32 of the rest and the entries marshalled (marshal: fast, cannot run code); a shard that is
missing, truncated, damaged or of another format holds nothing. Files are replaced whole (gaffer.atomic), so
a concurrent reader sees a shard as it was or as it is, never half of each. Kept free of imports beyond the
standard library: loading it must stay cheap.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import zlib
from collections.abc import Iterator

SHARDS = 256
_MAGIC = b"GSH1"  # the format of a shard file: a change makes every older shard read as empty


class ShardedMap:
    """str -> bytes in `SHARDS` files named 00..ff under `directory`. Safe to use from several threads: a
    shard loaded twice at once is published once (`setdefault`), and every change goes to the published dict."""

    def __init__(self, directory: str | None, fresh: bool = False) -> None:
        """Read from `directory` (None: in memory until saved); `fresh`: start empty, what the files hold
        belonging to another format or build (removed on save)."""
        self.directory = directory
        self._shards: dict[int, dict[str, bytes]] = {}
        self._changed: set[int] = set()
        self._ignore_files = False  # every shard not loaded yet is empty (clear)
        if fresh or directory is None:
            self.clear()

    def _shard(self, key: str) -> dict[str, bytes]:
        index = shard_of(key)
        shard = self._shards.get(index)
        if shard is None:
            shard = self._shards.setdefault(index, {} if self._ignore_files else self._read(index))
        return shard

    def _read(self, index: int) -> dict[str, bytes]:
        """A shard file's entries. Through `os.open` and `os.read`: `open()` adds an ioctl, two seeks and a
        second fstat to each of the hundreds of shards an edit build reads."""
        try:
            fd = os.open(self._path(index), os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size + 1  # the file is replaced, never written in place: one read, one EOF
                chunks = []
                while chunk := os.read(fd, size):
                    chunks.append(chunk)
            finally:
                os.close(fd)
        except OSError:
            return {}
        return decode(b"".join(chunks))

    def _path(self, index: int) -> str:
        return shard_path(str(self.directory), index)

    def get(self, key: str) -> bytes | None:
        return self._shard(key).get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._shard(key)

    def set(self, key: str, value: bytes) -> None:
        self._shard(key)[key] = value
        self._changed.add(shard_of(key))

    def pop(self, key: str) -> bytes | None:
        shard = self._shard(key)
        value = shard.pop(key, None)
        if value is not None:
            self._changed.add(shard_of(key))
        return value

    def load_all(self) -> None:
        """Read every shard (iterating over the whole map needs them all)."""
        for index in range(SHARDS):
            if index not in self._shards:
                self._shards.setdefault(index, {} if self._ignore_files else self._read(index))

    def keys(self) -> Iterator[str]:
        self.load_all()
        for shard in list(self._shards.values()):
            yield from list(shard)

    def __len__(self) -> int:
        self.load_all()
        return sum(len(shard) for shard in self._shards.values())

    def clear(self) -> None:
        """Empty the map: every shard file goes on save."""
        self._ignore_files = True
        self._shards.clear()
        self._changed.update(range(SHARDS))

    @property
    def changed(self) -> bool:
        return bool(self._changed)

    def save(self, directory: str) -> None:
        """Write the shards that changed to `directory`, the one read from (an empty one is removed there);
        raises OSError naming the file."""
        from gaffer.atomic import save_bytes

        self.directory = directory
        for index in sorted(self._changed):
            shard = self._shards.get(index, {})
            if shard:
                save_bytes(self._path(index), encode(shard))
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(index))
            self._changed.discard(index)


def shard_of(key: str) -> int:
    """The shard a key is kept in: the same in every process and on every machine."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % SHARDS


def shard_path(directory: str, index: int) -> str:
    return f"{directory}/{index:02x}"


def encode(entries: dict[str, bytes]) -> bytes:
    payload = marshal.dumps(entries)
    return _MAGIC + zlib.crc32(payload).to_bytes(4, "little") + payload


def decode(data: bytes) -> dict[str, bytes]:
    """A shard file's entries; empty when it is not one intact shard of this format."""
    if data[:4] != _MAGIC or int.from_bytes(data[4:8], "little") != zlib.crc32(memoryview(data)[8:]):
        return {}
    try:
        entries = marshal.loads(memoryview(data)[8:])
    except (EOFError, ValueError, TypeError):
        return {}
    if type(entries) is not dict or not all(type(k) is str and type(v) is bytes for k, v in entries.items()):
        return {}
    return entries
