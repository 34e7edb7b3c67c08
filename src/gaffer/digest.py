"""Content digests (REAPI `Digest`: lowercase hex SHA-256 + size) and the stat cache that avoids rehashing.

A file is re-hashed only when its (size, mtime_ns, inode, ctime_ns) signature changed since it was last hashed.
An entry recorded less than `RACY_WINDOW_NS` after the file's mtime is not trusted ("racily clean", as git
calls it): the file could still change within the same timestamp tick without its signature changing.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import time
from typing import NamedTuple

RACY_WINDOW_NS = 50_000_000  # wider than any kernel timestamp granularity we know of (jiffies: 1-10 ms)
_CHUNK = 1 << 20


class Digest(NamedTuple):
    """A blob's identity: SHA-256 hex and size, exactly REAPI's `Digest` message."""

    hash: str
    size_bytes: int

    def __str__(self) -> str:
        return f"{self.hash}/{self.size_bytes}"


EMPTY_DIGEST = Digest(hashlib.sha256(b"").hexdigest(), 0)


def digest_bytes(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest(), len(data))


def digest_file(path: str | os.PathLike[str]) -> Digest:
    """Hash a file's content: small files in one read (most build outputs and Go cache entries), big ones
    streamed so memory stays flat whatever the size."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size <= _CHUNK:
            data = f.read()
            return Digest(hashlib.sha256(data).hexdigest(), len(data))
        h = hashlib.file_digest(f, "sha256")
        return Digest(h.hexdigest(), f.tell())


_HEX = frozenset("0123456789abcdef")


def is_valid_hash(text: str) -> bool:
    """True for a 64-character lowercase hex SHA-256, the only form accepted from peers and cache entries."""
    return len(text) == 64 and _HEX.issuperset(text)


StatSignature = tuple[int, int, int, int]  # size, mtime_ns, inode, ctime_ns


def stat_signature(st: os.stat_result) -> StatSignature:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class StatCache:
    """Maps a path to the digest of its content, trusted while its stat signature is unchanged.

    Persisted with `marshal` (fast to load, cannot execute code). A damaged or foreign file is ignored.
    """

    _FORMAT = 1

    def __init__(self) -> None:
        # path -> (signature, recorded_at_ns, hash)
        self._entries: dict[str, tuple[StatSignature, int, str]] = {}
        self.dirty = False
        self.hashed = 0  # files actually read this run, for tests and profiles

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StatCache:
        cache = cls()
        try:
            with open(path, "rb") as f:
                version, entries = marshal.loads(f.read())
            if version == cls._FORMAT and isinstance(entries, dict):
                cache._entries = entries
        except (OSError, EOFError, ValueError, TypeError):
            pass
        return cache

    def save(self, path: str | os.PathLike[str]) -> None:
        if not self.dirty:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)  # a first build that records nothing else makes it here
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            marshal.dump((self._FORMAT, self._entries), f)
        os.replace(tmp, path)
        self.dirty = False

    def digest(self, path: str, st: os.stat_result | None = None) -> Digest:
        """Digest of the file at `path`, hashing only when its signature changed (or was racily recorded)."""
        if st is None:
            st = os.stat(path)
        sig = stat_signature(st)
        entry = self._entries.get(path)
        if entry is not None and entry[0] == sig and entry[1] - st.st_mtime_ns > RACY_WINDOW_NS:
            return Digest(entry[2], sig[0])
        d = digest_file(path)
        self.hashed += 1
        if d.size_bytes == sig[0]:
            self._entries[path] = (sig, time.time_ns(), d.hash)
            self.dirty = True
        return d

    def remember(self, path: str, st: os.stat_result, digest: Digest) -> None:
        """Record a digest known by other means (a file we just restored from the cache)."""
        self._entries[path] = (stat_signature(st), time.time_ns(), digest.hash)
        self.dirty = True

    def forget(self, path: str) -> None:
        if self._entries.pop(path, None) is not None:
            self.dirty = True
