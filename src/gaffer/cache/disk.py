"""The local disk tier: CAS blobs and action-cache entries as plain files under one directory.

Layout (one concept per directory, safe for several processes at once):
    cas/<2 hex>/<sha256>   blob content, exactly the bytes (so a GOCACHEPROG DiskPath can point at it)
    ac/<2 hex>/<sha256>    serialized REAPI ActionResult, keyed by action digest, after a checksum header
    tmp/                   files being written; renamed into place atomically
    size                   running estimate of the bytes stored (updated under `lock`)
    builds.log             one JSON line per build (hits, misses), for `gaffer cache status`
    verified               blobs this store hashed and the stat signature they had then (see trusted.py)

Every read is verified: a blob against its digest (unless its file is unchanged since this store last hashed
it: see trusted.py; `verify` hashes everything), an action-cache entry against the SHA-256 in its header (the
header is this tier's own: every caller reads and writes the plain ActionResult). A corrupt or truncated entry
is evicted, reported and treated as a miss. A file's mtime is its "last used" time for LRU eviction; reads
refresh it at most once an hour so hits stay cheap.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

from gaffer.atomic import write_all
from gaffer.cache.base import CacheTier, TierError
from gaffer.cache.trusted import TrustedBlobs
from gaffer.digest import Digest, digest_bytes, digest_file, is_valid_hash, sha256
from gaffer.errors import EnvironmentProblem
from gaffer.tuples import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path  # at run time only where a Path is handed out: gobuildcache's gets use strings
    from typing import TextIO

DEFAULT_MAX_SIZE = 10 * 1024**3
GC_LOW_WATER = 0.9  # gc evicts down to this fraction of max_size so it does not run again at once
_TOUCH_AFTER_S = 3600
STALE_TEMP_S = 24 * 3600  # a temp file untouched this long is a dead writer's, whatever its name says
_AC_MAGIC = b"gAC1"  # an action-cache file: magic, SHA-256 of the rest, then the serialized ActionResult
_AC_HEADER = len(_AC_MAGIC) + sha256().digest_size
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_MIN_FREE = 1 << 20  # less free than this at start: a build's cache is already full (its tasks' output too)
_SMALL_FILE = 1 << 20  # put_file reads a file up to this size into memory; a bigger one is copied by the kernel
SERVE_LOCK = "serve.lock"  # locked by a `gaffer serve` using the directory as its store, or a `gaffer cache verify`


def _path(text: str) -> Path:
    from pathlib import Path

    return Path(text)


def _warn(message: str) -> None:
    print(f"gaffer: warning: {message}", file=sys.stderr)


class MalformedHash(TierError):
    """A digest whose hash is not a SHA-256 (a peer's "../x", or ""): it names no entry, and no file is touched
    for it. Reads treat it as absent; a write raises this."""

    def __init__(self, store: str, blob_hash: str) -> None:
        super().__init__(store, f"malformed digest hash {blob_hash[:70]!r}", transient=False)


class StoreServed(EnvironmentProblem):
    """Another process holds the store's SERVE_LOCK: `command` (a `gaffer serve`, or a `gaffer cache verify`) and
    its `pid` ("?" if it named none), as it wrote them there."""

    def __init__(self, root: Path, pid: str, command: str) -> None:
        super().__init__(f"{root}: a {command} (pid {pid}) is using this store; stop it first")
        self.root = root
        self.pid = pid
        self.command = command


def lock_served(root: Path, command: str) -> int:
    """Take, without waiting, the lock on a store that a `gaffer serve` holds while it runs, and `gaffer cache
    verify` while it may rewrite the server's packs (SERVE_LOCK, made if need be), naming this process and its
    `command` in it: the descriptor holding it, until closed. StoreServed if another process holds it; OSError
    if it cannot be taken (a file system without locks)."""
    # held read-only: a descriptor open for writing would keep the file system from going read-only
    fd = os.open(root / SERVE_LOCK, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, _, holder = os.pread(fd, 32, 0).decode(errors="replace").strip().partition(" ")
        os.close(fd)
        raise StoreServed(root, pid or "?", holder or "gaffer serve") from None
    except BaseException:
        os.close(fd)
        raise
    try:
        writer = os.open(root / SERVE_LOCK, os.O_WRONLY | os.O_CLOEXEC)
        try:  # fixed width, written in place: the one refused never reads it half-written
            os.pwrite(writer, f"{os.getpid()} {command}".ljust(31).encode() + b"\n", 0)
        finally:
            os.close(writer)
    except OSError:
        pass  # it still locks; the one refused just cannot name this process
    return fd


def lock_stores(root: Path, command: str, create: bool = True) -> list[int]:
    """`lock_served` on `root` (when `create`, or once it has a SERVE_LOCK) and, first, on the served store of
    which `root` is a named instance's directory (`<store>/instances/<name>`, the layout `gaffer serve` gives
    them), whose server indexes `root` too; then on each instance directory `root` has (on the same terms), which
    its server indexes: a `gaffer serve` of one of them alone, started first, holds its own lock only. The
    descriptors holding them, until closed."""
    real = os.path.realpath(root)
    outer = os.path.dirname(os.path.dirname(real))
    stores = [_path(outer)] if (os.path.basename(os.path.dirname(real)) == "instances"
                                and os.path.exists(os.path.join(outer, SERVE_LOCK))) else []
    instances: list[Path] = []
    if create or (root / SERVE_LOCK).exists():
        stores.append(root)
        with suppress(OSError):  # no instances/ directory
            instances = [_path(e.path) for e in os.scandir(root / "instances") if e.is_dir(follow_symlinks=False)
                         and (create or os.path.exists(os.path.join(e.path, SERVE_LOCK)))]
    held: list[int] = []
    try:
        for store in stores:
            held.append(lock_served(store, command))
        for instance in sorted(instances):
            try:
                held.append(lock_served(instance, command))
            except StoreServed:
                raise
            except OSError:  # a lock file it cannot make (read-only): no server of that directory alone made it
                continue
    except BaseException:
        for fd in held:
            os.close(fd)
        raise
    return held


class StoreStatus(NamedTuple):
    actions: int
    blobs: int
    bytes: int
    max_size: int


class VerifyReport(NamedTuple):
    checked: int  # blobs
    corrupt: list[str]  # hashes of the evicted blobs and action-cache entries
    checked_actions: int = 0
    left: tuple[str, ...] = ()  # hashes of corrupt blobs left in a pack that could not be rewritten (a full disk)


class DiskStore(CacheTier):
    """CAS + AC on a local directory. Thread- and process-safe; all writes are temp file + rename."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_size: int = DEFAULT_MAX_SIZE,
        report: Callable[[str], None] | None = None,
        full_is_read_only: bool = False,
        create: bool = True,
    ) -> None:
        """`full_is_read_only`: a full disk turns the store read-only (a build goes on without caching) instead
        of failing the write (a server answers that it is full). `create=False` (a dry run, `cache status`): a
        read-only view that makes nothing in the directory, nor the directory itself."""
        self._root_text = os.fspath(root).rstrip("/") or ("/" if os.fspath(root) else ".")  # no trailing slash
        self._root: Path | None = None
        self._full_is_read_only = full_is_read_only
        self.name = f"disk://{self._root_text}"
        self.max_size = max_size
        self.report = report or _warn
        self.corrupt_evicted = 0
        self._written = 0
        self.bytes_stored = 0  # by this process, for the tier's stats (_written is reset when accounted)
        self.bytes_served = 0
        self._tmp = f"{self._root_text}/tmp"
        self._cas = f"{self._root_text}/cas/"
        self._present: set[str] = set()  # blobs this process stored or found stored: written once per process
        self._held: dict[str, str] = {}  # blobs adopted while the store could not write: their temp files
        self._warn_lock = threading.Lock()
        self._read_only_warned = False
        try:
            if create:
                os.makedirs(self._tmp, exist_ok=True)
            self.writable = create and os.access(self._tmp, os.W_OK)  # root too is refused on a read-only mount
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not os.access(self._root_text,
                                                                                        os.R_OK | os.X_OK):
                raise TierError(self.name, f"cannot create cache directory: {e.strerror}", transient=False) from e
            self.writable = False
        if not self.writable:
            # A read-only cache (a shared, pre-filled one) still serves hits; temp files go to a private directory.
            self._tmp = _private_temp_dir()
        self.trusted = TrustedBlobs(f"{self._root_text}/verified", self.writable, self._new_temp)
        if self.writable and full_is_read_only and _free_bytes(self._tmp) < _MIN_FREE:
            self._full(os.strerror(errno.ENOSPC))

    # -- paths -------------------------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The store's directory (a Path made when first asked for: gobuildcache's start-up imports no pathlib)."""
        if self._root is None:
            self._root = _path(self._root_text)
        return self._root

    def blob_path(self, digest: Digest) -> Path:
        return _path(self._blob_file(digest.hash))

    def blob_file(self, digest: Digest) -> str:
        """`blob_path` as a string (gobuildcache's puts)."""
        return self._blob_file(digest.hash)

    def _blob_file(self, blob_hash: str) -> str:
        """`blob_path` as a string: the hot paths (a build stores several blobs per task) skip pathlib.
        MalformedHash for a hash that is not a SHA-256: "../x" would name a file outside the store."""
        if not is_valid_hash(blob_hash):
            raise MalformedHash(self.name, blob_hash)
        return self._held.get(blob_hash) or f"{self._cas}{blob_hash[:2]}/{blob_hash}"

    def _action_path(self, key: Digest) -> str:
        """An action entry's path; MalformedHash as `_blob_file`."""
        if not is_valid_hash(key.hash):
            raise MalformedHash(self.name, key.hash)
        return f"{self._root_text}/ac/{key.hash[:2]}/{key.hash}"

    def _is_entry(self, path: Path | str) -> bool:
        """Is `path` an entry's place in this store (cas/<xx>/<hash> or ac/<xx>/<hash>)? Only there is a directory
        removed whole."""
        shard, name = os.path.split(os.path.normpath(path))
        kind, prefix = os.path.split(shard)
        return (is_valid_hash(name) and prefix == name[:2]
                and kind in (os.path.normpath(f"{self._root_text}/cas"), os.path.normpath(f"{self._root_text}/ac")))

    def temp_path(self) -> Path:
        """A fresh path in the store's temp directory (same filesystem, so `adopt` is an atomic rename). The
        directory is made again if it vanished (`rm -rf` of the cache while a build runs)."""
        return _path(self._new_temp())

    def _new_temp(self) -> str:
        """`temp_path` as a string."""
        self._make_temp_dir()
        return self._temp_name()

    def _make_temp_dir(self) -> None:
        try:
            os.mkdir(self._tmp, 0o777 if self.writable else 0o700)  # the private one: this user's alone
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(self._tmp, exist_ok=True)

    def _temp_name(self) -> str:
        """A fresh name in the temp directory, which `__init__` made: `_fill_temp` makes it again only when
        writing there fails because it vanished (one `mkdir` per process, not one per temp file)."""
        return f"{self._tmp}/{os.getpid()}-{time.monotonic_ns()}-{os.urandom(4).hex()}"

    # -- CAS ---------------------------------------------------------------------------------------------------

    def has_blob(self, digest: Digest) -> bool:
        """Present with the right size (content is checked on read)."""
        try:
            path = self._blob_file(digest.hash)
            st = os.stat(path)
        except (OSError, MalformedHash):
            return False
        if not _regular(st):
            self._evict_corrupt(path, "blob", digest)
            return False
        if st.st_size != digest.size_bytes:
            self._mismatch(path, digest)
            return False
        return True

    def find_missing(self, digests: Sequence[Digest]) -> list[Digest]:
        return [d for d in digests if not self.has_blob(d)]

    def read_blob(self, digest: Digest) -> bytes | None:
        try:
            path = self.blob_path(digest)
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except (OSError, MalformedHash):
            return None
        self.bytes_served += len(data)
        if not self._trusts(digest, st):
            actual = digest_bytes(data)
            if actual != digest:
                self._mismatch(path, digest, actual.hash)
                return None
            self.trusted.remember(digest.hash, st)
        self._touch(path, st.st_mtime)
        return data

    def verified_blob_path(self, digest: Digest) -> Path | None:
        """The blob's path after checking its content (or finding its file unchanged since this store hashed it),
        or None (a corrupt blob is evicted and reported)."""
        path = self.verified_blob_file(digest)
        return None if path is None else _path(path)

    def verified_blob_file(self, digest: Digest) -> str | None:
        """`verified_blob_path` as a string: gobuildcache asks for one per build step."""
        try:
            path = self._blob_file(digest.hash)
            st = os.stat(path)
            if not _regular(st):  # a directory (or a FIFO, which would block the hash) where the blob belongs
                self._evict_corrupt(path, "blob", digest)
                return None
            if not self._trusts(digest, st):
                actual = digest_file(path)
                if actual != digest:
                    self._mismatch(path, digest, actual.hash)
                    return None
                self.trusted.remember(digest.hash, st)  # the stat from before the hash: an edit meanwhile moved it
        except FileNotFoundError:  # removed by another process (`gobuildcache clear`): `write_blob` writes it again
            self._present.discard(digest.hash)
            return None
        except (OSError, MalformedHash):
            return None
        self._touch(path, st.st_mtime)
        return path

    def trusts_blob(self, digest: Digest) -> bool:
        """Would `verified_blob_path` answer without hashing the blob?"""
        try:
            return self._trusts(digest, os.stat(self._blob_file(digest.hash)))
        except (OSError, MalformedHash):
            return False

    def _trusts(self, digest: Digest, st: os.stat_result) -> bool:
        return st.st_size == digest.size_bytes and self.trusted.trusts(digest.hash, st)

    def fetch_blob(self, digest: Digest, dest: Path) -> bool:
        source = self.verified_blob_path(digest)
        if source is None:
            return False
        try:
            copy_file(source, dest)
        except FileNotFoundError:  # evicted by another process between verify and copy
            return False
        self.bytes_served += digest.size_bytes
        return True

    def write_blob(self, digest: Digest, data: bytes | memoryview) -> None:
        """Store `data` under `digest` (the caller hashed it). A blob this process already stored or found stored
        is not looked at again: if another process evicted it meanwhile, an entry naming it is a miss, as any
        entry whose blob is gone."""
        if digest.hash in self._present:
            return
        if not self.has_blob(digest):
            dest = self._blob_file(digest.hash)  # before the temp file: a malformed hash leaves none
            tmp = self._temp_to_store(lambda tmp: _write_new(tmp, data))
            if tmp is not None:
                self._install(tmp, dest, len(data))
        self._present.add(digest.hash)

    def upload_blob(self, digest: Digest, path: Path) -> None:
        if self.has_blob(digest):
            return
        dest = self._blob_file(digest.hash)
        tmp = self._temp_to_store(lambda tmp: copy_file(path, tmp))
        if tmp is not None:
            self._install(tmp, dest, digest.size_bytes)

    def adopt(self, digest: Digest, tmp: Path) -> None:
        """Move a verified file (made with `temp_path()`) into the CAS. A store that cannot write (a full disk, a
        read-only one) holds it for this process until `close`: a blob fetched from a remote tier for a restore is
        then still there for the restore."""
        if self.has_blob(digest):
            tmp.unlink(missing_ok=True)
            return
        if not self.writable:
            self._hold(digest, os.fspath(tmp))
            return
        self._install_verified(tmp, digest)

    def _hold(self, digest: Digest, tmp: str) -> None:
        """Keep a verified blob for this process, in its private temp directory. One made in the store's own temp
        directory before the store turned read-only (another thread's write filled the disk) stays in that
        directory if it cannot be moved (another file system, itself full), under a name the caller does not
        remove and that still names this process (other processes leave a running one's temp files alone)."""
        self._blob_file(digest.hash)  # MalformedHash before a file is named after it
        held = f"{self._tmp}/held-{digest.hash}"
        try:
            if os.path.dirname(tmp) != self._tmp:
                self._make_temp_dir()
            os.replace(tmp, held)
        except OSError:
            held = f"{tmp}-held"
            os.replace(tmp, held)  # within its directory: no room needed (gone with the cache: raised, a miss)
        self._held[digest.hash] = held

    def put_file(self, path: Path | str) -> Digest:
        """Store a file's content; return its digest. What is stored is what was hashed, so a concurrent edit
        cannot poison it: a small file is read once, hashed and written from memory; a big one is copied (a
        reflink where the file system has them) and the copy hashed."""
        data = _read_small(path)
        if data is not None:
            digest = digest_bytes(data)
            if digest.hash not in self._present and not self.has_blob(digest):
                small = self._temp_to_store(lambda tmp: _write_new(tmp, data))
                if small is not None:
                    self._install_verified(small, digest)
            self._present.add(digest.hash)
            return digest
        tmp = self._temp_to_store(lambda tmp: copy_file(path, tmp))
        if tmp is None:  # nothing is stored: no copy to hash instead of the file
            return digest_file(path)
        try:
            digest = digest_file(tmp)
        except FileNotFoundError:  # removed with the cache directory under this process: copy it again
            return self.put_file(path)
        if self.has_blob(digest):
            with suppress(FileNotFoundError):
                os.unlink(tmp)
        else:
            self._install_verified(tmp, digest)  # only a file we installed: an existing one is checked when read
        return digest

    def _install_verified(self, tmp: Path | str, digest: Digest) -> None:
        """Install a temp file this process hashed; this process trusts it while its signature holds. (Its
        signature is racy now: other processes hash it once more, and only then record it.)"""
        path = self._blob_file(digest.hash)
        self._install(tmp, path, digest.size_bytes)
        try:
            self.trusted.remember(digest.hash, os.stat(path), persist=False)
        except OSError:
            pass

    # -- action cache ------------------------------------------------------------------------------------------

    def read_action(self, key: Digest) -> bytes | None:
        """The entry's ActionResult bytes; None if absent or damaged (a damaged one is evicted and reported)."""
        try:
            path = self._action_path(key)
        except MalformedHash:
            return None
        data = self._read_and_touch(path)
        if data is None:
            return None
        result = _checked_action(data)
        if result is None:
            if data.startswith(_AC_MAGIC):
                self._evict_corrupt(path, "action result", key)
            else:  # written by a gaffer before entries had a checksum: a miss, not worth a warning each
                with suppress(FileNotFoundError):
                    os.unlink(path)
        return result

    def write_action(self, key: Digest, result: bytes) -> None:
        entry = action_entry(result)
        dest = self._action_path(key)
        tmp = self._temp_to_store(lambda tmp: _write_new(tmp, entry))
        if tmp is not None:
            self._install(tmp, dest, len(entry))

    def evict_action(self, key: Digest) -> None:
        with suppress(FileNotFoundError, MalformedHash):
            os.unlink(self._action_path(key))

    # -- housekeeping ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Account this process's writes and garbage-collect if the store went over its bound (unless a `gaffer
        serve` is using it)."""
        if not self.writable:
            import shutil  # here (and in clean, copy_file): its import (lzma, bz2...) would slow gobuildcache's start

            for held in self._held.values():  # those held outside the private directory (see `_hold`) too
                with suppress(FileNotFoundError):
                    os.unlink(held)
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        if not self._written:
            return
        try:
            with self._locked():
                size = self._read_size() + self._written
                self._written = 0
                self._write_size(size)
        except OSError as e:  # a disk that filled up since the last write: the entries stored are fine
            self.report(f"cannot update the size estimate in {self._root_text}/size: {e.strerror or e}")
            return
        if size > self.max_size:
            try:
                with self.unserved("gaffer"):  # a served store is its server's to evict, by its own index
                    self.gc()
            except StoreServed:
                pass
            except OSError as e:  # the store's lock could not be taken (a file system without locks)
                self.report(f"cannot garbage-collect {self._root_text}: {e.strerror or e}")

    def gc(self, max_size: int | None = None) -> tuple[int, int]:
        """Evict least-recently-used files until the store is under GC_LOW_WATER of its bound.

        Returns (files removed, bytes removed). Also removes temp files left by killed processes.
        """
        limit = self.max_size if max_size is None else max_size
        self._present.clear()
        with self._locked():
            entries = []
            blobs: dict[str, os.stat_result] = {}
            total = 0
            for path, st in self._walk():
                entries.append((st.st_mtime, st.st_size, path))
                total += st.st_size
                if path.parent.parent.name == "cas":
                    blobs[path.name] = st
            removed = removed_bytes = 0
            if total > limit:
                target = int(limit * GC_LOW_WATER)
                entries.sort()
                for _mtime, size, path in entries:
                    if total <= target:
                        break
                    try:
                        self._remove_entry(path)  # a directory in an entry's place too
                    except OSError:  # one not named as an entry, or not removable: it stays, still counted
                        continue
                    total -= size
                    removed += 1
                    removed_bytes += size
                    blobs.pop(path.name, None)
            stale = time.time() - STALE_TEMP_S
            for tmp in self._temp_files():
                try:
                    if tmp.stat().st_mtime < stale:
                        tmp.unlink()
                except OSError:
                    pass
            self._write_size(total)
            self.trusted.prune(blobs)
        return removed, removed_bytes

    def status(self) -> StoreStatus:
        """What the store holds; a blob both in a file and in a pack, or in two packs, counts once (`gaffer
        serve` rewrites a pack once a blob of it is evicted, so a pack at rest holds only live blobs)."""
        packed = {hash_: size for _path, table in self._packs() for hash_, _offset, size in table or ()}
        actions = blobs = size = 0
        for path, st in self._walk():
            size += st.st_size
            if path.parent.parent.name == "ac":
                actions += 1
            else:
                blobs += 1
                packed.pop(path.name, None)
        blobs += len(packed)
        size += sum(packed.values())
        return StoreStatus(actions=actions, blobs=blobs, bytes=size, max_size=self.max_size)

    def files(self, kind: str) -> Iterator[tuple[Path, os.stat_result]]:
        """Every entry of one kind ("cas" or "ac") and its stat: what `gaffer serve` indexes in memory at start."""
        return self._walk(kind)

    def verify(self) -> VerifyReport:
        """Hash every blob (trusted or not: bit rot changes no stat signature) and check every action-cache entry's
        checksum; evict (and list) the corrupt ones. The blobs found right are the new record of trusted ones.
        StoreServed if a `gaffer serve` is using the store (its index would no longer match the disk)."""
        with self.unserved("gaffer cache verify"):
            return self._verify()

    @contextmanager
    def unserved(self, command: str) -> Iterator[None]:
        """Keep a `gaffer serve` from starting on the store while `command` changes it (StoreServed if one runs
        now: its index would no longer match the disk). A directory without SERVE_LOCK never had a server, nor
        packs, and gets no lock file."""
        held = lock_stores(self.root, command, create=False)
        try:
            yield
        finally:
            for fd in held:
                os.close(fd)

    def _verify(self) -> VerifyReport:
        checked = checked_actions = 0
        corrupt = []
        good = []
        for path, st in self._walk("cas"):
            checked += 1
            digest = Digest(path.name, st.st_size)
            try:
                ok = digest_file(path) == digest
            except OSError:
                continue
            if ok:
                good.append((path.name, st))
            else:
                corrupt.append(path.name)
                self._evict_corrupt(path, "blob", digest)
        self.trusted.replace(good)
        packed, bad, left = self._verify_packs()
        checked += packed
        corrupt += bad
        for path, st in self._walk("ac"):
            checked_actions += 1
            try:
                ok = _checked_action(path.read_bytes()) is not None
            except OSError:
                continue
            if not ok:
                corrupt.append(path.name)
                self._evict_corrupt(path, "action result", Digest(path.name, st.st_size))
        return VerifyReport(checked=checked, corrupt=corrupt, checked_actions=checked_actions, left=tuple(left))

    def _packs(self) -> Iterator[tuple[Path, list[tuple[str, int, int]] | None]]:
        """`gaffer serve`'s packs (server/packs.py) and their tables (None: a torn pack), skipping any removed
        meanwhile (the server evicted or rewrote it)."""
        from gaffer.server.packs import PACKS, BadPack, read_table

        try:
            packs = sorted(os.scandir(self.root / PACKS), key=lambda e: e.name)
        except OSError:
            return
        for entry in packs:
            try:
                yield _path(entry.path), read_table(entry.path)
            except BadPack:
                yield _path(entry.path), None
            except OSError:
                continue

    def _verify_packs(self) -> tuple[int, list[str], list[str]]:
        """Hash every packed blob; a pack holding corrupt blobs is replaced by one holding its good blobs, a torn
        one removed: how many blobs were checked, the evicted corrupt blobs' hashes (a torn pack's name), and
        those of corrupt blobs left where they are (their pack could not be rewritten)."""
        checked, corrupt, left = 0, [], []
        for path, table in self._packs():
            if table is None:
                corrupt.append(path.name)
                self._evict_corrupt(path, "pack", Digest(path.name, 0))
                continue
            try:
                data, mtime = path.read_bytes(), path.stat().st_mtime
            except OSError:
                continue
            checked += len(table)
            blobs = [(h, data[offset:offset + size]) for h, offset, size in table]
            bad = {h for h, blob in blobs if digest_bytes(blob).hash != h}
            if bad:
                replaced = self._rewrite_pack(path, [(h, blob) for h, blob in blobs if h not in bad], mtime)
                for h, blob in blobs:
                    if h in bad and replaced:
                        corrupt.append(h)
                        self._corrupt_evicted("blob", Digest(h, len(blob)))
                    elif h in bad:
                        left.append(h)
        return checked, corrupt, left

    def _rewrite_pack(self, path: Path, blobs: list[tuple[str, bytes]], mtime: float) -> bool:
        """Replace a pack by a new one of `blobs` (a pack is never changed in place: a temp file, flushed, renamed
        into `packs/` and its directory flushed, keeping the old one's mtime, its blobs' age for `gaffer serve`),
        then unlink the old one. If the new one cannot be written (a full disk), the old one is left as it is
        (`gaffer serve` checks each packed blob it reads), said, and False returned."""
        from gaffer.server.files import fsync
        from gaffer.server.packs import encode

        if blobs:
            tmp = ""
            try:
                tmp = self._temp_holding(encode(blobs)[0])
                os.utime(tmp, (mtime, mtime))
                fsync(tmp)
                install(tmp, path.parent / os.path.basename(tmp))
                tmp = ""
                fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as e:
                if tmp:
                    with suppress(FileNotFoundError):
                        os.unlink(tmp)
                self.report(f"cannot rewrite {path} without its corrupt blobs ({e.strerror}): left as it is")
                return False
        with suppress(FileNotFoundError):
            os.unlink(path)
        return True

    def clean(self) -> None:
        """Remove every entry (the directory itself stays). Temp files of running processes stay too: a build
        using the cache meanwhile must still finish, its results stored into a store emptied under it."""
        self._present.clear()
        with self._locked():
            import shutil

            for sub in ("cas", "ac", "packs"):  # packs: gaffer serve's (server/packs.py)
                shutil.rmtree(self.root / sub, ignore_errors=True)
            self.remove_stale_temp_files()
            self.trusted.clear()
            self._write_size(0)
            (self.root / "builds.log").unlink(missing_ok=True)

    def remove_stale_temp_files(self, ours_too: bool = False) -> None:
        """Remove the temp files of processes no longer running (a kill -9, a crash). When in doubt a file stays:
        one named after a running process is kept even if that process may be another one (its pid reused, or a
        writer in another pid namespace sharing the directory: a container's PID 1), since no start time on a
        steppable clock can tell. `ours_too` (a server at start, before it writes): a file under this process's
        own pid is a dead writer's (restarted in a container, it gets the very pid it had) once it is older than
        STALE_TEMP_S, the age gc removes any temp file at; a younger one may be a live writer's elsewhere."""
        stale = time.time() - STALE_TEMP_S
        for tmp in self._temp_files():
            pid = tmp.name.partition("-")[0]
            if not pid.isdigit() or (int(pid) != os.getpid() and not process_alive(int(pid))):
                tmp.unlink(missing_ok=True)
            elif int(pid) == os.getpid() and ours_too:
                with suppress(FileNotFoundError):
                    if tmp.stat().st_mtime < stale:
                        tmp.unlink()

    def record_build(self, hits: int, misses: int) -> None:
        """Append one build's hit/miss counts (read back by `recent_hit_rate`)."""
        if not self.writable:
            return
        line = f'{{"t": {int(time.time())}, "hits": {int(hits)}, "misses": {int(misses)}}}\n'
        try:
            with open(f"{self._root_text}/builds.log", "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as e:  # the statistics are not worth failing a build over
            self.report(f"cannot record the build in {self._root_text}/builds.log: {e.strerror or e}")

    def recent_builds(self, last: int = 20) -> list[dict[str, int]]:
        """The last builds' counts; a damaged line (a torn write, a disk error, an edit) is skipped, not fatal."""
        try:
            lines = (self.root / "builds.log").read_bytes().splitlines()[-last:]
        except OSError:
            return []
        import json

        builds = []
        for line in lines:
            try:
                entry = json.loads(line)
                hits, misses = int(entry["hits"]), int(entry["misses"])
            except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
                continue
            if hits >= 0 and misses >= 0:
                builds.append({"hits": hits, "misses": misses})
        return builds

    # -- internals ---------------------------------------------------------------------------------------------

    def _install(self, tmp: Path | str, dest: Path | str, size: int) -> None:
        if not self.writable:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            self._stores_nothing()
            return
        try:
            install(tmp, dest, self._remove_entry)
        except (FileNotFoundError, FileExistsError):  # the temp file, or the shard directory being made, went
            return  # with the cache (`rm -rf` of it under a build): not stored, a lookup of it is a miss
        self._written += size
        self.bytes_stored += size

    def _read_and_touch(self, path: str) -> bytes | None:
        """A whole entry, refreshing its LRU time; None if absent. (os-level calls: `open()` would add an ioctl,
        a seek and a second fstat to every lookup. One read asks for a byte more than the file's size: exactly
        the size means it reached the end, and no second read is needed to see that; more (it grew) or less (a
        short read, as some network file systems give) is read on to the end.)"""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            size = st.st_size + 1
            data = os.read(fd, size)
            if len(data) != st.st_size:  # it grew since the fstat, or the read came back short: read on to the end
                chunks = [data]
                while chunk := os.read(fd, 1 << 16):
                    chunks.append(chunk)
                data = b"".join(chunks)
        except OSError:
            return None
        finally:
            os.close(fd)
        self._touch(path, st.st_mtime)
        self.bytes_served += len(data)
        return data

    def _touch(self, path: Path | str, mtime: float) -> None:
        now = time.time()
        if now - mtime > _TOUCH_AFTER_S:
            try:
                os.utime(path, (now, now))
            except OSError:
                pass

    def _mismatch(self, path: Path | str, digest: Digest, actual_hash: str | None = None) -> None:
        """The file under `digest.hash` does not match `digest`. If its content still hashes to its name, the file
        is fine and the digest's size is wrong (a peer's mistake, or a lie): keep the file, it is just not this
        blob. Otherwise the file is corrupt: evict and report it."""
        if actual_hash is None:
            try:
                actual_hash = digest_file(path).hash
            except OSError:
                return
        if actual_hash != digest.hash:
            self._evict_corrupt(path, "blob", digest)

    def _evict_corrupt(self, path: Path | str, what: str, digest: Digest) -> None:
        try:
            self._remove_entry(path)
        except OSError:
            pass
        self._corrupt_evicted(what, digest)

    def _remove_entry(self, path: Path | str) -> None:
        """Remove the file at `path`, or a directory there if `path` is an entry's place (`_is_entry`): one made
        by mistake would refuse every write of that entry. One already gone (another process replacing it too)
        is no error; what cannot be removed shows when its place is written."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            if not self._is_entry(path):
                raise
            import shutil

            shutil.rmtree(path, ignore_errors=True)  # a concurrent remover takes parts of it from under this one

    def _corrupt_evicted(self, what: str, digest: Digest) -> None:
        """Forget and report an entry removed as corrupt."""
        if what == "blob":
            self.trusted.forget(digest.hash)
            self._present.discard(digest.hash)
        self.corrupt_evicted += 1
        self.report(f"corrupt cache {what} {digest.hash[:12]} in {self._root_text} evicted; it will be rebuilt or refetched")

    def _walk(self, *kinds: str) -> Iterator[tuple[Path, os.stat_result]]:
        for kind in kinds or ("cas", "ac"):
            top = self.root / kind
            try:
                shards = list(os.scandir(top))
            except FileNotFoundError:
                continue
            for shard in shards:
                if not shard.is_dir():
                    continue
                for entry in os.scandir(shard.path):
                    try:
                        yield _path(entry.path), entry.stat()
                    except OSError:  # removed meanwhile, or a symlink going nowhere (a loop): no entry
                        continue

    def _temp_files(self) -> list[Path]:
        try:
            return [_path(entry.path) for entry in os.scandir(self._tmp)]
        except FileNotFoundError:
            return []

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._open_lock() as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _open_lock(self) -> TextIO:
        try:
            return open(f"{self._root_text}/lock", "a")
        except FileNotFoundError:  # the whole directory was removed while this process used it
            os.makedirs(self._root_text, exist_ok=True)
            return open(f"{self._root_text}/lock", "a")

    def _read_size(self) -> int:
        try:
            with open(f"{self._root_text}/size", "rb") as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0

    def _write_size(self, size: int) -> None:
        os.replace(self._temp_holding(str(size).encode()), f"{self._root_text}/size")

    def record_size(self, size: int) -> None:
        """Set the running size estimate (`gaffer serve`, which accounts its store in memory, at exit)."""
        with self._locked():
            self._write_size(size)

    def _stores_nothing(self) -> None:
        """Say once that this store keeps nothing new (a full one has said so already)."""
        with self._warn_lock:
            if self._read_only_warned:
                return
            self._read_only_warned = True
        self.report(f"cache directory {self._root_text} is read-only: its entries are used, nothing new is stored")

    def _temp_to_store(self, fill: Callable[[str], object]) -> str | None:
        """A temp file made by `fill`, to install as an entry; None when the store keeps nothing new (read-only,
        or its disk full, and the private temp directory too): nothing is written then, and a build goes on."""
        if not self.writable:
            self._stores_nothing()
            return None
        try:
            return self._fill_temp(fill)
        except OSError as e:
            if e.errno in _FULL and not self.writable:  # it filled up meanwhile, and so did the private directory
                return None
            raise

    def write_temp(self, data: bytes | memoryview) -> Path:
        """A new temp file holding `data`; on a failure (a full disk) none is left behind."""
        return _path(self._temp_holding(data))

    def _temp_holding(self, data: bytes | memoryview) -> str:
        return self._fill_temp(lambda tmp: _write_new(tmp, data))

    def _fill_temp(self, fill: Callable[[str], object]) -> str:
        """A new temp file written by `fill`; on a failure none is left behind. The temp directory is made again
        if it vanished. A full disk with `full_is_read_only`: the store turns read-only, and `fill` writes again in
        the private temp directory."""
        tmp = self._temp_name()
        try:
            fill(tmp)
            return tmp
        except OSError as e:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(e, FileNotFoundError) and (e.filename == tmp or not os.path.isdir(self._tmp)):
                with suppress(FileNotFoundError, FileExistsError):  # removed again meanwhile: the next try makes it
                    self._make_temp_dir()  # removed under this process (`rm -rf` of the cache while a build runs)
            elif e.errno not in _FULL or not (self._full_is_read_only and self.writable):
                raise
            else:
                self._full(e.strerror or os.strerror(e.errno))
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return self._fill_temp(fill)

    def full(self, error: OSError) -> bool:
        """A file meant for this store (a blob fetched into `temp_path()`) could not be written: if its disk is
        full and the store may go on read-only, it does (said once), and True: a new `temp_path()` is elsewhere."""
        if error.errno not in _FULL or not self._full_is_read_only:
            return False
        self._full(error.strerror or os.strerror(error.errno))
        return True

    def _full(self, why: str) -> None:
        """Go on as a read-only cache: its entries are used, nothing new is stored, temp files (a task's output
        too) go to a private directory; said once."""
        with self._warn_lock:
            if not self.writable:
                return
            self.writable = self.trusted.writable = False
            self._read_only_warned = True
            self._tmp = _private_temp_dir()
        self.report(f"cache directory {self._root_text} is full ({why}): its entries are used, nothing new is stored")


def _private_temp_dir() -> str:
    """A temp directory of this process alone, for a store that cannot write its own."""
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"gaffer-{os.getuid()}-{os.getpid()}-{os.urandom(4).hex()}")


def _free_bytes(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return _MIN_FREE
    return st.f_bavail * st.f_frsize


def process_alive(pid: int) -> bool:
    """Is process `pid` running (a zombie is not: it writes no more)? A temp file's name starts with the pid of the
    process writing it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]  # after the command name, which may hold anything
    except (OSError, IndexError):  # no /proc (or it exited meanwhile): alive as far as can be told
        return True
    return state != b"Z"


def action_entry(result: bytes) -> bytes:
    """An action-cache file's content: the magic, the SHA-256 of the serialized ActionResult, then it."""
    return _AC_MAGIC + sha256(result).digest() + result


def _checked_action(data: bytes) -> bytes | None:
    """The ActionResult inside an action-cache file, or None if the file is damaged (or not in this format)."""
    if not data.startswith(_AC_MAGIC) or len(data) < _AC_HEADER:
        return None
    result = data[_AC_HEADER:]
    return result if sha256(result).digest() == data[len(_AC_MAGIC):_AC_HEADER] else None


def install(tmp: Path | str, dest: Path | str, clear: Callable[[Path | str], None] = os.unlink) -> None:
    """Rename a finished temp file into place, making its shard directory if needed, or removing a directory in
    its place with `clear` (a store's entry: `DiskStore._remove_entry`); on a failure (a full disk cannot take the
    directory) the temp file is removed, not left behind."""
    try:
        try:
            os.replace(tmp, dest)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(tmp, dest)
        except IsADirectoryError:
            clear(dest)
            os.replace(tmp, dest)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _regular(st: os.stat_result) -> bool:
    """A regular file (what every cache entry is), by its mode bits: `stat.S_ISREG` without the import."""
    return st.st_mode & 0o170000 == 0o100000


def _read_small(path: Path | str) -> bytes | None:
    """The file's content if it is at most `_SMALL_FILE` bytes (when opened), else None."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size > _SMALL_FILE:
            return None
        chunks = []
        while chunk := os.read(fd, _SMALL_FILE):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write_new(path: str, data: bytes | memoryview) -> None:
    """Create `path` holding `data`: three system calls, where `open()` adds an fstat, an ioctl and a seek."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def copy_file(source: Path | str, dest: Path | str) -> None:
    """Copy with the kernel (`copy_file_range`: a reflink where the filesystem has one), else a plain copy."""
    with open(source, "rb") as src, open(dest, "wb") as dst:
        remaining = os.fstat(src.fileno()).st_size
        try:
            while remaining > 0:
                n = os.copy_file_range(src.fileno(), dst.fileno(), remaining)
                if n == 0:
                    break
                remaining -= n
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            src.seek(0)
            dst.seek(0)
            dst.truncate()
            import shutil

            shutil.copyfileobj(src, dst, 1 << 20)
