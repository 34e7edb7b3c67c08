"""Content digests (REAPI `Digest`: lowercase hex SHA-256 + size) and the stat cache that avoids rehashing.

A file is re-hashed only when its (size, mtime_ns, inode, ctime_ns) signature changed since it was last hashed.
A signature is only as fine as the file system's timestamps (1 s on ext4 with 128-byte inodes, FAT, HFS+ and
many NFS mounts; a scheduler tick elsewhere): a file written again in the tick it was hashed in keeps its
signature. So, as git does with its index, an entry is trusted only if the file's mtime and ctime are older
than the moment the entry was recorded, that moment read from the file system itself (`file_system_now`: the
mtime of a file gaffer creates there), so it has the file system's real granularity and clock (an NFS
server's, whatever this machine's says). A signature no older than that moment is "racy": re-hashed.
"""

from __future__ import annotations

import hashlib
import marshal
import os
from pathlib import Path
from typing import NamedTuple

from gaffer.atomic import save_marshalled

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


def file_system_now(directory: Path, create: bool = True) -> int:
    """The current time as the file system holding `directory` records it: the mtime of a file created there
    (by the file system's clock, NFS: the server's, and at its granularity). The file is this process's own, so
    a concurrent build cannot move the time. 0 (every signature racy) if the directory cannot be written."""
    try:
        if create:
            directory.mkdir(exist_ok=True)
        import tempfile  # here: gobuildcache's start-up needs this module but not tempfile (shutil, lzma...)

        fd, name = tempfile.mkstemp(prefix="stamp.", dir=directory)
    except OSError:
        return 0
    try:
        os.unlink(name)  # nothing is left behind; the open descriptor still has the file's times
        return os.fstat(fd).st_mtime_ns
    except OSError:
        return 0
    finally:
        os.close(fd)


def is_racy(sig: StatSignature, moment: int) -> bool:
    """Could the file change without its signature changing, after a `moment` from `file_system_now`? Yes if
    it was modified (mtime, or ctime, which no one can set back) in that moment's timestamp tick or later: a
    file dated in the future stays racy until the clock passes it."""
    return sig[1] >= moment or sig[3] >= moment


class StatCache:
    """Maps a path to the digest of its content, trusted while its stat signature is unchanged.

    Persisted with `marshal` (fast to load, cannot execute code). A damaged or foreign file is ignored.
    """

    _FORMAT = 3  # 1 recorded wall-clock times; 2 held tuples, 3 each entry marshalled on its own

    def __init__(self) -> None:
        # path -> marshalled (size, mtime_ns, inode, ctime_ns, moment recorded (file-system time), hash): bytes
        # take less memory than nested tuples of ints (8.3 MiB instead of 12.8 for 20,000 entries).
        self._entries: dict[str, bytes] = {}
        self.moment = 0  # file_system_now() taken before this process read any file; 0: record nothing trusted
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
        save_marshalled(path, (self._FORMAT, self._entries))  # a first build that records nothing else makes .gaffer
        self.dirty = False

    def digest(self, path: str, st: os.stat_result | None = None) -> Digest:
        """Digest of the file at `path`, hashing only when its signature changed (or was racily recorded)."""
        if st is None:
            st = os.stat(path)
        sig = stat_signature(st)
        entry = self._entries.get(path)
        if entry is not None:
            try:
                size, mtime, ino, ctime, moment, hash_ = marshal.loads(entry)
            except (EOFError, ValueError, TypeError):  # a damaged entry: hash the file again
                pass
            else:
                if (size, mtime, ino, ctime) == sig and not is_racy(sig, moment):
                    return Digest(hash_, size)
        d = digest_file(path)
        self.hashed += 1
        if d.size_bytes == sig[0]:
            self._entries[path] = marshal.dumps((*sig, self.moment, d.hash))
            self.dirty = True
        return d

    def remember(self, path: str, st: os.stat_result, digest: Digest) -> None:
        """Record a digest known by other means (a file we just restored from the cache)."""
        self._entries[path] = marshal.dumps((*stat_signature(st), self.moment, digest.hash))
        self.dirty = True

    def forget(self, path: str) -> None:
        if self._entries.pop(path, None) is not None:
            self.dirty = True
