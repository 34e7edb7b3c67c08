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

import contextlib
import errno
import marshal
import os

from gaffer.shards import ShardedMap
from gaffer.tuples import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from hashlib import _Hash

try:  # CPython's own SHA-256 (see sha256): `_sha2` from Python 3.12 on, `_sha256` before
    from _sha2 import sha256 as _own_sha256  # type: ignore[import-not-found]
except ImportError:
    try:
        from _sha256 import sha256 as _own_sha256  # type: ignore[import-not-found]
    except ImportError:  # a build without it: OpenSSL's for everything
        _own_sha256 = None

_CHUNK = 1 << 20
_SMALL = 1 << 16  # up to this many bytes, CPython's own SHA-256 (see sha256)


def sha256(data: bytes | memoryview = b"", size: int | None = None) -> _Hash:
    """A SHA-256 object over `data` (and what is added to it, `size` bytes in all if known): CPython's own
    implementation for small data (keys, actions, action results, most inputs and outputs), whose module
    loads in ~0.4 ms, against ~3 ms for OpenSSL's (hashlib), the cost of every `gaffer run` that hashes
    anything; OpenSSL's, several times faster per byte, for large data. Both compute the same digest."""
    if _own_sha256 is not None and (len(data) if size is None else size) <= _SMALL:
        return _own_sha256(data)  # type: ignore[no-any-return]
    import hashlib

    return hashlib.sha256(data)


class Digest(NamedTuple):
    """A blob's identity: SHA-256 hex and size, exactly REAPI's `Digest` message."""

    hash: str
    size_bytes: int

    def __str__(self) -> str:
        return f"{self.hash}/{self.size_bytes}"


EMPTY_DIGEST = Digest(sha256().hexdigest(), 0)


def digest_bytes(data: bytes | memoryview) -> Digest:
    return Digest(sha256(data).hexdigest(), len(data))


def digest_file(path: str | os.PathLike[str]) -> Digest:
    """Hash a file's content: small files in one read (most build outputs and Go cache entries), big ones
    streamed so memory stays flat whatever the size."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # not open(): its buffering costs three system calls more
    try:
        expected = os.fstat(fd).st_size
        if expected <= _CHUNK:
            h = sha256(size=expected)
            size = 0
            while chunk := os.read(fd, _CHUNK):
                h.update(chunk)
                size += len(chunk)
            return Digest(h.hexdigest(), size)
        import hashlib

        with open(fd, "rb", closefd=False) as f:
            h = hashlib.file_digest(f, "sha256")
            return Digest(h.hexdigest(), f.tell())
    finally:
        os.close(fd)


_HEX = frozenset("0123456789abcdef")


def is_valid_hash(text: str) -> bool:
    """True for a 64-character lowercase hex SHA-256, the only form accepted from peers and cache entries."""
    return len(text) == 64 and _HEX.issuperset(text)


StatSignature = tuple[int, int, int, int]  # size, mtime_ns, inode, ctime_ns


def stat_signature(st: os.stat_result) -> StatSignature:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def file_system_now(directory: str | os.PathLike[str], create: bool = True) -> int:
    """The current time as the file system holding `directory` records it: the mtime of a file created there
    (by the file system's clock, NFS: the server's, and at its granularity). The file is this process's own, so
    a concurrent build cannot move the time. 0 (every signature racy) if the directory cannot be written."""
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory)
        fd = _unnamed_file(directory)
    except OSError:
        return 0
    try:
        return os.fstat(fd).st_mtime_ns
    except OSError:
        return 0
    finally:
        os.close(fd)


def _unnamed_file(directory: str | os.PathLike[str]) -> int:
    """A new file in `directory` that no name reaches: Linux's O_TMPFILE where the file system has it, else a temp
    file unlinked at once (importing tempfile only then). Raises OSError."""
    if hasattr(os, "O_TMPFILE"):
        try:
            return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    import tempfile

    fd, name = tempfile.mkstemp(prefix="stamp.", dir=directory)
    try:
        os.unlink(name)  # nothing is left behind; the open descriptor still has the file's times
    except OSError:
        os.close(fd)
        raise
    return fd


OTHER_DEVICE_WINDOW_NS = 2_000_000_000  # FAT keeps even seconds; ext3 and older NFS servers whole ones
# Local file systems stamping files with this kernel's clock in fine ticks: another device of one of these
# types needs no window unless its timestamps are whole seconds (ext4 with small inodes). Any other type (NFS,
# SMB, FUSE, FAT...) or a device /proc/self/mountinfo does not list gets the window.
LOCAL_FINE_TYPES = frozenset(("ext4", "ext3", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "bcachefs", "ramfs"))


def moment_for(st: os.stat_result, moment: int, device: int | None) -> int:
    """`moment`, read on the file system `device`, as it may be compared with the times of the file `st`: on
    another file system that may date a file written after the moment before it (whole-second timestamps, an
    NFS server's clock, on either side) it is moved OTHER_DEVICE_WINDOW_NS earlier. `device` None: the same.
    When both are local file systems with fine timestamps (a tmpfs, a container volume) they share this kernel's
    clock: there the window would only keep freshly generated headers from ever being stored."""
    if device is None or st.st_dev == device:
        return moment
    whole_seconds = st.st_mtime_ns % 1_000_000_000 == 0 and st.st_ctime_ns % 1_000_000_000 == 0
    if whole_seconds:
        return moment - OTHER_DEVICE_WINDOW_NS
    from gaffer.mounts import device_type

    if device_type(st.st_dev) not in LOCAL_FINE_TYPES or device_type(device) not in LOCAL_FINE_TYPES:
        return moment - OTHER_DEVICE_WINDOW_NS
    return moment


def is_racy(sig: StatSignature, moment: int) -> bool:
    """Could the file change without its signature changing, after a `moment` from `file_system_now`? Yes if
    it was modified (mtime, or ctime, which no one can set back) in that moment's timestamp tick or later: a
    file dated in the future stays racy until the clock passes it."""
    return sig[1] >= moment or sig[3] >= moment


class StatCache:
    """Maps a path to the digest of its content, trusted while its stat signature is unchanged.

    Persisted in shards (gaffer.shards: an edit build reads and writes back only those holding the files it
    looks at), each entry marshalled on its own (fast to load, cannot execute code). A damaged or foreign
    shard is ignored: its files are hashed again.
    """

    def __init__(self, entries: ShardedMap | None = None) -> None:
        # path -> marshalled (size, mtime_ns, inode, ctime_ns, moment recorded (file-system time), hash): bytes
        # take less memory than nested tuples of ints (8.3 MiB instead of 12.8 for 20,000 entries).
        self._entries = entries if entries is not None else ShardedMap(None)
        self.moment = 0  # file_system_now() taken before this process read any file; 0: record nothing trusted
        self.device: int | None = None  # the file system `moment` was read on, if files on others are read too
        self.hashed = 0  # files actually read this run, for tests and profiles

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> StatCache:
        """The stat cache kept in `directory` (its shards are read as paths in them are asked for)."""
        return cls(ShardedMap(os.fspath(directory)))

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write what changed to `directory` (the one it was loaded from); raises OSError naming the file."""
        if self._entries.changed:  # a first build that records nothing else makes .gaffer
            self._entries.save(os.fspath(directory))
            try:  # the one file this cache was in before it was kept in shards, beside the directory
                os.unlink(os.path.join(os.path.dirname(os.fspath(directory)), "stat-cache"))
            except OSError:
                pass

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
            self._entries.set(path, marshal.dumps((*sig, moment_for(st, self.moment, self.device), d.hash)))
        return d

    def forget(self, path: str) -> None:
        self._entries.pop(path)
