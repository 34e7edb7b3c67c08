"""What both protocols of `gaffer serve` share: instance namespaces, one index of every entry (which is also the
LRU order eviction follows and the size account), a memory cache of small blobs, verified writes, reserved space
for uploads in flight, and checked action results.

Layout under `--dir`: a file per entry, as gaffer's local cache lays it out (`cas/<2 hex>/<sha256>`,
`ac/<2 hex>/<sha256>`), except the small blobs of a batch, which go to one pack (`packs/<name>`, packs.py). The
instance "" is at the root (so `gaffer cache status|verify --dir` work on its files); a named instance lives in
`instances/<name, percent-encoded>/`, so two instances never see each other's entries and an instance name can
never reach outside `instances/`. Every file and pack is a temp file renamed into place (kill -9 loses nothing
committed and needs no recovery; files.py, which also says what `--fsync` adds). A file costs its size rounded up
to the file system's block plus an inode, which is what it takes on disk; a pack its whole file, until it is
unlinked (evicted whole) or rewritten without its dropped blobs (packs.py).

The server owns its directory. The index is read from the disk once, at start; after that every install,
eviction and corruption found goes through it under one lock, so it never disagrees with what the server wrote:
an eviction pass takes the least recently used entries (a packed one: its whole pack) from the index and unlinks
them under the lock, and an
upload installs its file and indexes it under the same lock, so nothing acknowledged is lost from the index.
Using an action result (a hit, or storing it) moves it, then every blob it names, to the recent end of the LRU
order, so an action result is always evicted before (or with) its blobs. A lookup still checks the index and
stats the blobs on disk (a file removed behind the server's back makes a miss, not a broken hit).
With `--backend`, each instance is a `BackendNamespace` (server/backend.py): the backend is the store of record
and the directory only a read-through cache of its blobs, indexed, bounded and evicted as above.

Peers choose digests, so nothing a peer sends reaches DiskStore calls that evict on a size mismatch unless the
size already matched the file on disk: a peer cannot make the server evict a good blob.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from io import BufferedReader, BytesIO
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar
from urllib.parse import quote, unquote

from google.protobuf.message import DecodeError

from gaffer.cache.base import CacheTier, TierError
from gaffer.cache.disk import GC_LOW_WATER, DiskStore, StoreServed, action_entry, lock_stores
from gaffer.digest import EMPTY_DIGEST, Digest, digest_bytes, is_valid_hash
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos.digests import from_proto
from gaffer.server import packs
from gaffer.server.files import EntryFiles, StrPath, remove
from gaffer.server.packs import PACKS, BadPack, Pack
from gaffer.server.trees import BadTree, HashingReader, file_digests

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# REAPI forbids these as instance name segments: they would make resource names ambiguous.
_RESERVED = frozenset({"blobs", "uploads", "actions", "actionResults", "operations", "capabilities",
                       "compressed-blobs"})
MAX_INSTANCE_NAME = 200
NAME_MAX = 255  # the longest file name most file systems take: an instance's encoded directory name
MAX_TREE_BYTES = 1024**3  # the distinct Tree blobs one action result may name, in all: beyond, a miss
CHECK_BATCH = 10_000  # blobs of an action result checked at once
MAX_ACTION_RESULT = 16 * 1024 * 1024
SMALL_BLOB = 1024 * 1024  # blobs up to this size are read whole (and checked) and may sit in the memory cache
TOUCH_AFTER_S = 3600  # as DiskStore: refresh a blob's mtime (its LRU age) at most hourly when it is read
INODE_BYTES = 256  # what a file costs beyond its data blocks: its inode (ext4's size) and directory entry
EVICT_BATCH = 256  # entries unlinked per hold of the index lock, so uploads and lookups wait at most that long
PACK_MIN = 2  # a batch with at least this many new small blobs writes them as one pack (packs.py)

Key = tuple[str, str, str]  # (instance, "cas" | "ac", hash)
# An index entry: size, cost on disk, and for a packed blob its pack and offset (None, 0: a file of its own). One
# tuple, not a second map: a store holds millions.
Entry = tuple[int, int, Pack | None, int]
AnyDigest = TypeVar("AnyDigest", Digest, re_pb2.Digest)
BlobFile = BufferedReader | BytesIO  # a blob's own file, or a packed blob's bytes (small: read whole, checked)


class SlowCheck(Exception):
    """The answer needs reads too long for a server's event loop (output trees, a backend): ask on an I/O thread."""


class BadRequest(Exception):
    """The peer sent something invalid (INVALID_ARGUMENT / HTTP 400); the message says what."""


class BackendUnavailable(Exception):
    """The backend behind `--backend` failed (UNAVAILABLE / HTTP 503): the peer may retry, or miss."""


class NoSpace(OSError):
    """The store cannot take this upload now (RESOURCE_EXHAUSTED / HTTP 507): the uploads in flight already hold
    its whole bound. An OSError with ENOSPC, so a front end treats it as it treats a full disk."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


class TooLarge(NoSpace):
    """The blob is larger than the store's whole bound (RESOURCE_EXHAUSTED / HTTP 413): refused before a byte is
    read, rather than acknowledged and then evicted with everything else."""


def storage_failure(error: OSError | BackendUnavailable) -> tuple[str, str]:
    """What a failure of the server's storage means to a peer: ("too large" | "full" | "unavailable" | "broken",
    message), for both protocols to turn into their status (RESOURCE_EXHAUSTED/413, RESOURCE_EXHAUSTED/507,
    UNAVAILABLE/503, INTERNAL/500)."""
    if isinstance(error, BackendUnavailable):
        return "unavailable", f"cache backend: {error}"
    if isinstance(error, TooLarge):
        return "too large", str(error.strerror)
    if isinstance(error, NoSpace):
        return "full", f"cache full: {error.strerror}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "full", f"cache disk full: {error.strerror}"
    return "broken", f"cache storage error: {error.strerror}"


def check_hash(text: str) -> str:
    if not is_valid_hash(text):
        raise BadRequest(f"{text[:80]!r} is not a lowercase hex SHA-256")
    return text


def check_digest(digest: re_pb2.Digest) -> Digest:
    check_hash(digest.hash)
    if digest.size_bytes < 0:
        raise BadRequest(f"negative size in digest {digest.hash}/{digest.size_bytes}")
    return from_proto(digest)


def check_instance(name: str) -> str:
    """An instance name made of `/`-separated segments of letters, digits, `.`, `_`, `-` (no `.`/`..`), short
    enough to be a directory name once encoded."""
    if name and (
        len(name) > MAX_INSTANCE_NAME
        or len(_encoded(name)) > NAME_MAX
        or not all(_SEGMENT.fullmatch(s) and s not in _RESERVED for s in name.split("/"))
    ):
        raise BadRequest(f"invalid instance name {name[:80]!r} (segments of letters, digits, '.', '_', '-')")
    return name


def _encoded(instance: str) -> str:
    return quote(instance, safe="")


class MemoryCache:
    """Small blobs by (instance, hash), least recently used first out, bounded in bytes.

    Blobs are immutable and checked before they go in, so a cached copy is always right. Each entry remembers when
    it last refreshed its file's mtime, so blobs hot in memory do not look cold to the disk's LRU gc."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], path: Callable[[], Path]) -> bytes | None:
        now = time.time()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            data, touched = entry
            if now - touched > TOUCH_AFTER_S:
                self._entries[key] = (data, now)
        if now - touched > TOUCH_AFTER_S:
            try:
                os.utime(path(), (now, now))
            except OSError:
                pass
        return data

    def put(self, key: tuple[str, str], data: bytes) -> None:
        self.put_many([(key, data)])

    def put_many(self, items: Iterable[tuple[tuple[str, str], bytes]]) -> None:
        """`put` for a batch's blobs, in one hold of the lock."""
        now, limit = time.time(), min(SMALL_BLOB, self.max_bytes)
        with self._lock:
            for key, data in items:
                if len(data) > limit:
                    continue
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= len(old[0])
                self._entries[key] = (data, now)
                self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, (evicted, _) = self._entries.popitem(last=False)
                self._bytes -= len(evicted)

    def drop(self, key: tuple[str, str]) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old[0])


def decode_action(data: bytes) -> re_pb2.ActionResult | None:
    """A stored ActionResult, or None if the bytes are not one."""
    try:
        return re_pb2.ActionResult.FromString(data)
    except DecodeError:
        return None


class Reservation:
    """Space held in the store's bound for one upload in flight; released when the upload ends either way."""

    def __init__(self, store: ServerStore, cost: int) -> None:
        self._store = store
        self.cost = cost

    def release(self) -> None:
        with self._store._lock:
            self.release_locked()

    def release_locked(self, cost: int | None = None) -> None:
        """Give back `cost` of it (an entry installed), by default all that is left."""
        part = self.cost if cost is None else min(cost, self.cost)
        self._store._reserved -= part
        self.cost -= part

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Upload:
    """One blob arriving in pieces: its space reserved first (NoSpace / TooLarge before a byte is read), written
    to a temp file while hashed, installed by `commit()` only if it matches its digest. Leaving the `with` block
    without committing (a bad digest, a dropped client, a full disk) removes the temp file and frees the space.

        with namespace.upload(digest) as upload:
            for chunk in body:
                upload.write(chunk)
            upload.commit()

    The temp file is opened for each piece only, so an upload waiting on its peer holds no file descriptor. The
    calls may come from different threads one after another, and `close` from another thread at any time (a
    cancelled gRPC call), hence the lock.
    """

    def __init__(self, namespace: Namespace, digest: Digest) -> None:
        self.digest = digest
        self._namespace = namespace
        self._sha = hashlib.sha256()
        self._received = 0
        self._lock = threading.Lock()
        self._closed = False
        self._reservation = namespace.server.reserve(digest.size_bytes)
        self._files = namespace.server.files
        try:
            self._tmp = namespace.temp_path()
            self._files.create(self._tmp, b"")
        except BaseException:
            self._reservation.release()
            raise

    def write(self, chunk: bytes) -> None:
        with self._lock:
            self._check_open()
            self._received += len(chunk)
            if self._received > self.digest.size_bytes:
                raise BadRequest(f"more data than the {self.digest.size_bytes} bytes of digest {self.digest}")
            self._sha.update(chunk)
            self._files.append(self._tmp, chunk)

    def commit(self) -> None:
        """Install the blob if it matches its digest (BadRequest if not), then tell the namespace (`committed`)."""
        with self._lock:
            self._check_open()
            if self._received != self.digest.size_bytes or self._sha.hexdigest() != self.digest.hash:
                raise BadRequest(f"the data ({self._received} bytes) does not match digest {self.digest}")
            if self.digest == EMPTY_DIGEST:  # always present, never stored
                return
            key = self._namespace.key(self.digest)
            self._files.flush([self._tmp])
            self._namespace.server.install(key, self._tmp, self._received, self._reservation)
            self._namespace.checked(self.digest)
        self._namespace.committed(self.digest)  # outside the lock: a cancel need not wait for a backend

    def _check_open(self) -> None:
        if self._closed:
            raise BadRequest(f"the upload of {self.digest} was abandoned")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._tmp.unlink(missing_ok=True)
            self._reservation.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Namespace:
    """One instance: a view of the store's index for its entries. Only a write creates its directory, so a read
    under a new instance name leaves nothing behind."""


    def __init__(self, server: ServerStore, name: str) -> None:
        self.server = server
        self.name = name

    def key(self, digest: Digest, kind: str = "cas") -> Key:
        return (self.name, kind, digest.hash)

    # -- CAS ---------------------------------------------------------------------------------------------------

    def has(self, digest: Digest) -> bool:
        """Does the instance hold the blob? (FindMissing, and an upload that may finish early.)"""
        return self._here(digest)

    def _here(self, digest: Digest) -> bool:
        """On this server's disk, as indexed, with this size (then it becomes the most recently used); a size-0
        digest is present only as the empty blob's (always there, REAPI)."""
        return digest == EMPTY_DIGEST or self.server.use(self.key(digest), digest.size_bytes)

    def size_of(self, hash_: str) -> int | None:
        """The size of the blob with this hash, if the index has it. The empty blob is always present (REAPI)."""
        if hash_ == EMPTY_DIGEST.hash:
            return 0
        return self.server.size_of((self.name, "cas", hash_))

    def missing(self, digests: Iterable[re_pb2.Digest]) -> list[re_pb2.Digest]:
        """FindMissingBlobs: index lookups, which also mark the present blobs used (the client is about to name
        them in an action result); only digests not found are validated (indexed ones are valid)."""
        missing = self.server.unindexed(self.name, digests)
        for d in missing:
            check_digest(d)
        return missing

    def read(self, digest: Digest) -> bytes | None:
        """A small blob's bytes (memory, else disk, checked against the digest), or None."""
        if digest == EMPTY_DIGEST:
            return b""
        if not self._here(digest):
            return None
        memory = self.server.memory
        key = (self.name, digest.hash)
        data = memory.get(key, lambda: self.server.age_path(self.key(digest)))
        if data is not None:
            return data
        packed, data = self.server.read_packed(self.key(digest))
        if not packed:
            data = self.server.disk(self.name).read_blob(digest)  # the size matched: a mismatch now is corruption
        elif data is not None and digest_bytes(data) != digest:
            self.server.corrupt(self.key(digest), digest)
            data = None
        if data is None:
            self.forget(digest)
            return None
        memory.put(key, data)
        return data

    def open(self, digest: Digest) -> tuple[BlobFile, bool] | None:
        """The blob's file for streaming, and whether its content must be checked as it streams; None if absent.
        A small blob (packed or not) comes as its bytes, already checked, through `read` and its memory cache."""
        if digest.size_bytes <= SMALL_BLOB:
            data = self.read(digest)
            return None if data is None else (BytesIO(data), False)
        if not self._here(digest):
            return None
        try:
            f = open(self.server.path(self.key(digest)), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            self.forget(digest)
            return None
        if os.fstat(f.fileno()).st_size != digest.size_bytes:
            f.close()
            self.forget(digest)
            return None
        return f, (self.name, digest.hash) not in self.server.verified

    def streamed(self, digest: Digest, ok: bool) -> None:
        """Record the outcome of checking a blob as it streamed (a large one: a file of its own); a corrupt one is
        evicted and reported."""
        if ok:
            self.server.verified.add((self.name, digest.hash))
        else:
            self.server.disk(self.name).verified_blob_path(digest)  # hashes it again, evicts and reports it
            self.forget(digest)

    def checked(self, digest: Digest) -> None:
        """This process just checked (and stored) the blob: a large one is streamed later without hashing."""
        if digest.size_bytes > SMALL_BLOB:
            self.server.verified.add((self.name, digest.hash))

    def forget(self, digest: Digest) -> None:
        """The blob is not (or no longer) on disk as indexed."""
        self.server.drop(self.key(digest), digest.size_bytes)

    def committed(self, digest: Digest) -> None:
        """A blob the peer sent (an Upload, or one of a batch's in `put_checked`) is now in the store, once: what
        else must hold it before the peer is told it is stored (nothing here; the backend, with --backend)."""

    def upload(self, digest: Digest) -> Upload:
        """Start receiving a blob (see Upload); raises NoSpace / TooLarge when the store cannot take it."""
        return Upload(self, digest)

    def put_checked(self, blobs: Iterable[tuple[Digest, bytes]]) -> None:
        """Store blobs the caller checked against their digests (a batch): those not yet here go to this server's
        disk in one pass (ServerStore.store_many) and into the memory cache; then `committed`, each once."""
        named = dict(blobs)
        named.pop(EMPTY_DIGEST, None)  # always present, never stored
        fresh = [(digest, named[digest]) for digest in self.server.unindexed(self.name, named)]  # as _here
        if fresh:
            self.server.store_many([(self.key(digest), data) for digest, data in fresh])
            self.server.memory.put_many(((self.name, digest.hash), data) for digest, data in fresh)
        for digest in named:
            self.committed(digest)

    def _adopt(self, digest: Digest, tmp: Path) -> None:
        """Install a checked temp file (made in `temp_path()`) as the blob, counted against the bound."""
        with self.server.reserve(digest.size_bytes) as reservation:
            self.server.install(self.key(digest), tmp, digest.size_bytes, reservation)
        self.checked(digest)

    def temp_path(self) -> Path:
        """A fresh temp file path in the instance's directory (created if need be: a write is coming)."""
        return self.server.writable_disk(self.name).temp_path()

    # -- action cache ------------------------------------------------------------------------------------------

    def action_result(self, key: Digest, trees: bool = True) -> tuple[bytes, re_pb2.ActionResult] | None:
        """The stored ActionResult, only if every blob it names is present (else it would be a broken hit).
        With `trees=False`, a result naming output trees (whose check may read up to MAX_TREE_BYTES) raises
        SlowCheck instead: the caller asks again where long reads belong."""
        found = self._stored_action(key)
        if found is None:
            return None
        if not trees and any(d.HasField("tree_digest") for d in found[1].output_directories):
            raise SlowCheck
        for i, needed in enumerate(self._referenced_blobs(found[1])):
            if needed is None or not self._complete(key, needed, again=i > 0):
                return None
        return found

    def _stored_action(self, key: Digest) -> tuple[bytes, re_pb2.ActionResult] | None:
        entry = self.key(key, "ac")
        if self.server.size_of(entry) is None:
            return None
        data = self.server.disk(self.name).read_action(key)  # a damaged entry is evicted and reported
        if data is None:
            self.server.drop(entry)
            return None
        result = decode_action(data)
        if result is None:
            self.server.evict(entry)
            return None
        return data, result

    def _complete(self, key: Digest, needed: list[Digest], again: bool = False) -> bool:
        """Is every blob indexed (then the result, and after it each blob, become the most recently used) and on
        the disk itself (a blob removed behind the server's back makes a miss)? `again`: a later batch of the
        same result's blobs."""
        entry, blobs = self.key(key, "ac"), [(self.key(d), d.size_bytes) for d in needed]
        if not self.server.use_together(entry, blobs, again=again):
            return False
        packs_seen: dict[str, bool] = {}
        for digest in needed:
            if not self.server.on_disk(self.key(digest), digest.size_bytes, packs_seen):
                self.forget(digest)
                return False
        return True

    def _referenced_blobs(self, result: re_pb2.ActionResult) -> Iterator[list[Digest] | None]:
        """Every blob `result` names other than the empty one, including the files inside its output directory
        trees, in batches of at most CHECK_BATCH; None (and nothing after it) when an output tree is missing,
        unreadable or corrupt.

        Peers choose what a result names: each distinct tree is read once, as a stream (trees.py), and all of them
        together at most MAX_TREE_BYTES, so a small result cannot cost unbounded memory or CPU."""
        named = [f.digest for f in result.output_files] + [result.stdout_digest, result.stderr_digest]
        named += [d.root_directory_digest for d in result.output_directories if d.HasField("root_directory_digest")]
        trees = dict.fromkeys(from_proto(d.tree_digest) for d in result.output_directories if d.HasField("tree_digest"))
        trees.pop(EMPTY_DIGEST, None)  # no root, no files
        if sum(t.size_bytes for t in trees) > MAX_TREE_BYTES:
            yield None
            return
        yield _distinct([*map(from_proto, named), *trees])
        for tree in trees:
            opened = self.open(tree)
            if opened is None:
                yield None
                return
            batch: list[Digest] = []
            with opened[0] as f:
                reader = HashingReader(f, tree.size_bytes)
                try:
                    for digest in file_digests(reader):
                        batch.append(from_proto(digest))
                        if len(batch) == CHECK_BATCH:
                            yield _distinct(batch)
                            batch = []
                except BadTree:
                    yield None
                    return
            intact = reader.hexdigest() == tree.hash
            self.streamed(tree, intact)
            if not intact:
                yield None
                return
            yield _distinct(batch)

    def result_complete(self, result: re_pb2.ActionResult) -> bool:
        """Is every blob `result` names in the instance (the files of its output trees too)? A worker's result
        is checked so before anyone is told of it: a blob it failed to upload (or sent corrupt, so the CAS refused
        it) makes the attempt a failure."""
        for needed in self._referenced_blobs(result):
            if needed is None or not all(self.has(d) for d in needed):
                return False
        return True

    def put_action(self, key: Digest, result: re_pb2.ActionResult) -> None:
        """Store an action result, then mark the blobs it names used after it: it is evicted before them."""
        entry = self.key(key, "ac")
        self.server.store(entry, action_entry(result.SerializeToString(deterministic=True)))
        for i, needed in enumerate(self._referenced_blobs(result)):
            if needed is None:
                break
            self.server.use_together(entry, [(self.key(d), d.size_bytes) for d in needed], partial=True, again=i > 0)

    def close(self) -> None:
        """Nothing to release for a local instance (a backend one closes its tier)."""


def _distinct(digests: Iterable[Digest]) -> list[Digest]:
    """The blobs `digests` name, each once: not the empty one (always present), nor an unset field's."""
    named = dict.fromkeys(d for d in digests if d.hash or d.size_bytes)
    named.pop(EMPTY_DIGEST, None)
    return list(named)


def _hold(root: Path) -> list[int]:
    """Lock the store for this server (until `close`, or its exit): two servers on one directory would each keep
    their own index and size account of the same files, one evicting (or rewriting packs) under the other, and
    `gaffer cache verify` takes the same lock. The lock file names the holder. TierError if another process
    holds it."""
    try:
        return lock_stores(root, "gaffer serve")
    except StoreServed as e:
        what = f"its instance directory {e.root.name}" if e.root.parent == root / "instances" else "this store"
        raise TierError(str(root), f"another {e.command} (pid {e.pid}) is using {what}", transient=False) from None
    except OSError as e:
        raise TierError(str(root), f"cannot lock the store: {e.strerror}", transient=False) from None


class ServerStore:
    """Instance name -> Namespace over one index: every entry of every instance, least recently used first, with
    its size and its cost on disk; the server-wide bound is enforced on it by a background eviction pass."""

    def __init__(self, root: Path, max_size: int, report: Callable[[str], None], memory: int,
                 backend: Callable[[str], CacheTier] | None = None, sync: bool = False) -> None:
        """`sync` (`--fsync`): an entry is on the device, not only in the kernel, before it is acknowledged."""
        self.root = root
        self.files = EntryFiles(sync)
        self._backend = backend  # instance -> its tier in the backend, with `--backend`
        self.local = backend is None  # every answer from this server's own index and disk
        self._backends: dict[str, Namespace] = {}
        self.max_size = max_size
        self._report = report
        self.memory = MemoryCache(memory)
        self.verified: set[tuple[str, str]] = set()  # large blobs this process checked: streamed without hashing
        self._index: OrderedDict[Key, Entry] = OrderedDict()
        self._stale: deque[Pack] = deque()  # packs worth rewriting without their dropped blobs (the background pass)
        self._bytes = 0  # the cost of every indexed file and of every pack (all of it, until it is unlinked)
        self._reserved = 0  # the cost of the uploads in flight
        self._disks: dict[str, DiskStore] = {}
        self._lock = threading.Lock()
        self._gc: threading.Thread | None = None
        self._gc_error_reported = False
        self._closing = False  # the background pass stops before its next step
        root_disk = DiskStore(root, max_size, report=report)
        if not root_disk.writable:  # a server that drops every upload would only look like a cache
            raise TierError(root_disk.name, "cannot write to the cache directory (read-only)", transient=False)
        self._held = _hold(root)
        self._disks[""] = root_disk
        self._block = os.statvfs(root).f_frsize or 4096
        self._load()
        if backend is not None:
            self.namespace("")  # a backend that cannot be reached is an error at start (BackendUnavailable)

    def namespace(self, instance: str) -> Namespace:
        """The namespace of `instance` (validated). Nothing is created on disk until it is written to. With a
        backend, one per instance, opened (and checked) on first use."""
        check_instance(instance)
        if self._backend is None:
            return Namespace(self, instance)
        found = self._backends.get(instance)
        if found is None:
            from gaffer.server.backend import BackendNamespace

            opened = BackendNamespace(self, instance, self._backend(instance))
            with self._lock:
                found = self._backends.setdefault(instance, opened)
            if found is not opened:
                opened.close()
        return found

    @property
    def total_bytes(self) -> int:
        """What the entries take on disk, as the bound counts it (uploads in flight not included)."""
        return self._bytes

    def cost(self, size: int) -> int:
        """What an entry of `size` bytes takes on disk: whole blocks, and an inode."""
        return -(-size // self._block) * self._block + INODE_BYTES

    def path(self, key: Key) -> Path:
        return Path(self.entry_path(key))

    def age_path(self, key: Key) -> Path:
        """The file whose mtime is the entry's age in the LRU order after a restart: its own, or its pack."""
        entry = self._index.get(key)
        return Path(entry[2].path) if entry is not None and entry[2] is not None else self.path(key)

    def entry_path(self, key: Key) -> str:
        """`path` as a str, built without pathlib (a batch builds 1,000)."""
        instance, kind, hash_ = key
        return f"{self.instance_dir(instance)}/{kind}/{hash_[:2]}/{hash_}"

    def instance_dir(self, instance: str) -> str:
        return f"{self.root}/instances/{_encoded(instance)}" if instance else str(self.root)

    def disk(self, instance: str) -> DiskStore:
        """The instance's DiskStore, its directory created on first use (which only a write or an indexed entry
        leads to). An OSError without the server's paths when it cannot be created."""
        found = self._disks.get(instance)
        if found is not None:
            return found
        with self._lock:
            found = self._disks.get(instance)
            if found is None:
                try:
                    found = DiskStore(self.root / "instances" / _encoded(instance), self.max_size, report=self._report)
                except TierError as e:
                    cause = e.__cause__ if isinstance(e.__cause__, OSError) else OSError(errno.EIO, "I/O error")
                    raise OSError(cause.errno, f"cannot create the instance's directory: {cause.strerror}") from None
                self._disks[instance] = found
        return found

    def writable_disk(self, instance: str) -> DiskStore:
        """`disk(instance)` for a write: OSError (EROFS) if its directory is read-only."""
        disk = self.disk(instance)
        if not disk.writable:
            raise OSError(errno.EROFS, "the instance's directory is read-only")
        return disk

    # -- the index ---------------------------------------------------------------------------------------------

    def _load(self) -> None:
        """Index every entry on disk, oldest first by mtime (an action result before blobs of the same age); a
        blob found twice (a pack and a file, two packs) is indexed once, its other copy left unindexed."""
        found: list[tuple[float, int, Key, int, Pack | None, int]] = []
        for instance in self._instances():
            disk = self.disk(instance)
            disk.remove_stale_temp_files(ours_too=True)
            for order, kind in enumerate(("ac", "cas")):
                for path, st in disk.files(kind):
                    if is_valid_hash(path.name):
                        found.append((st.st_mtime, order, (instance, kind, path.name), st.st_size, None, 0))
            found += self._load_packs(instance)
        found.sort(key=lambda f: (f[0], f[1]))
        every_pack = {pack for *_, pack, _offset in found if pack is not None}
        self._bytes += sum(pack.cost for pack in every_pack)
        with self._lock:
            for _mtime, _order, key, size, pack, offset in found:
                old = self._index.get(key)
                if old is not None:
                    if pack is not None and old[2] is None:
                        continue  # a file and a packed copy: the file is the entry
                    self._unindex(key, old[1])  # a newer copy (a file, or a pack written later) is the entry
                if pack is None:
                    self._index[key] = (size, self.cost(size), None, 0)
                    self._bytes += self.cost(size)
                else:
                    self._index[key] = (size, size + packs.ENTRY, pack, offset)
                    pack.add(key, size)
            for pack in every_pack:
                self._tidy(pack)
            self._collect_if_over()

    def _load_packs(self, instance: str) -> list[tuple[float, int, Key, int, Pack | None, int]]:
        """The blobs of an instance's packs, as `_load` lists entries; a pack that is not whole (torn by a crash
        of the machine without --fsync) is removed and reported."""
        directory = f"{self.instance_dir(instance)}/{PACKS}"
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        found: list[tuple[float, int, Key, int, Pack | None, int]] = []
        for name in names:
            path = f"{directory}/{name}"
            try:
                table = packs.read_table(path)
                st = os.stat(path)
            except BadPack as e:
                self._report(f"removing {path}: not a whole pack ({e})")
                remove(path)
                continue
            except OSError as e:  # not a file the server can read: left alone, its blobs not served
                self._report(f"skipping {path}: {e.strerror}")
                continue
            pack = Pack(path, instance, self.cost(st.st_size), st.st_size, st.st_mtime)
            found += [(st.st_mtime, 1, (instance, "cas", hash_), size, pack, offset)
                      for hash_, offset, size in table if is_valid_hash(hash_)]
        return found

    def _instances(self) -> Iterator[str]:
        """The instances with a directory: "" and each valid one under `instances/`."""
        yield ""
        instances = self.root / "instances"
        if not instances.is_dir():
            return
        for path in sorted(instances.iterdir()):
            try:
                if not path.is_dir():  # a file left there (a log, a note) would fail the start with ENOTDIR
                    raise BadRequest("not a directory")
                yield check_instance(unquote(path.name))
            except BadRequest:
                self._report(f"ignoring {path}: not a gaffer serve instance directory")

    def size_of(self, key: Key) -> int | None:
        entry = self._index.get(key)
        return None if entry is None else entry[0]

    def use(self, key: Key, size: int) -> bool:
        """Is the entry indexed with this size? If so it becomes the most recently used."""
        with self._lock:
            entry = self._index.get(key)
            if entry is None or entry[0] != size:
                return False
            self._index.move_to_end(key)
            return True

    def unindexed(self, instance: str, digests: Iterable[AnyDigest]) -> list[AnyDigest]:
        """The digests not indexed with their size (never the empty blob's); the others become recently used."""
        index = self._index
        missing = []
        with self._lock:
            for d in digests:
                key = (instance, "cas", d.hash)
                entry = index.get(key)
                if entry is not None and entry[0] == d.size_bytes:
                    index.move_to_end(key)
                elif d.size_bytes or d.hash != EMPTY_DIGEST.hash:
                    missing.append(d)
        return missing

    def use_together(self, first: Key, blobs: list[tuple[Key, int]], partial: bool = False,
                     again: bool = False) -> bool:
        """Mark `first` (an action result) used, then the blobs it names, in one step: it stays older than each of
        them, so eviction never takes a blob before the result naming it. Unless `partial`, nothing is marked
        and False is returned when `first` or any blob is not indexed (with its size). `again`: more blobs of
        `first` after an earlier call (a result checked in batches); they move, `first` stays older."""
        index = self._index
        with self._lock:
            if first not in index:
                return False
            present = [key for key, size in blobs if (entry := index.get(key)) is not None and entry[0] == size]
            if not partial and len(present) < len(blobs):
                return False
            if not again:
                index.move_to_end(first)
            for key in present:
                index.move_to_end(key)
        return True

    def reserve(self, size: int) -> Reservation:
        """Hold room in the bound for an upload of `size` bytes until it is installed or given up. TooLarge if it
        could never fit; NoSpace if the uploads in flight already hold the bound. Entries are evicted to make room
        (in the background), as for any write that takes the store over its bound."""
        return self.reserve_many([size])

    def reserve_many(self, sizes: list[int], cost: int | None = None) -> Reservation:
        """`reserve` for several entries at once (a batch), each counted as `cost` counts it; or `cost` itself
        (a pack of them)."""
        if cost is None:
            cost = sum(self.cost(size) for size in sizes if size)
        if cost > self.max_size:
            raise TooLarge(f"{sum(sizes)} bytes of blobs are more than this server's size bound ({self.max_size} bytes)"
                           if len(sizes) > 1 else
                           f"a blob of {sizes[0]} bytes is larger than this server's size bound ({self.max_size} bytes)")
        with self._lock:
            if self._reserved + cost > self.max_size:
                raise NoSpace("the uploads in flight fill this server's size bound; retry later")
            self._reserved += cost
            self._collect_if_over()
        return Reservation(self, cost)

    def store(self, key: Key, data: bytes) -> None:
        """Write a whole entry (a checked blob, an action-cache file): reserve, temp file, install."""
        self.store_many([(key, data)])

    def store_many(self, entries: list[tuple[Key, bytes]]) -> None:
        """Write whole entries of one instance (a batch of checked blobs) in one pass: the small blobs of a batch
        as one pack (`store_pack`), the others each in its own file: one reservation for all, every temp file
        written, then all installed (EVICT_BATCH per hold of the lock). On a failure (a full disk) the temp
        files not yet installed are removed and the error raised; those installed stay."""
        if self.local:
            small = [(key, data) for key, data in entries if key[1] == "cas" and len(data) <= SMALL_BLOB]
            if len(small) >= PACK_MIN:
                self.store_pack(small)
                entries = [(key, data) for key, data in entries if key[1] != "cas" or len(data) > SMALL_BLOB]
                if not entries:
                    return
        tmps: list[str] = []
        with self.reserve_many([len(data) for _, data in entries]) as reservation:
            try:
                tmp_dir = str(self.writable_disk(entries[0][0][0]).temp_path().parent)
                for _, data in entries:
                    tmps.append(self.files.temp(tmp_dir))
                    self.files.create(tmps[-1], data)
                self.files.flush(tmps)
                self.install_many([(key, tmp, len(data)) for (key, data), tmp in zip(entries, tmps, strict=True)],
                                  reservation)
            except BaseException:
                for tmp in tmps:
                    remove(tmp)
                raise

    def store_pack(self, blobs: list[tuple[Key, bytes]]) -> None:
        """Write blobs of one instance as one pack: a temp file (flushed with --fsync) renamed into `packs/`,
        then every blob indexed in one hold of the lock (a blob already indexed stays where it is, and is marked
        used). The pack's room is reserved first; on a failure nothing is left behind."""
        instance = blobs[0][0][0]
        content, offsets = packs.encode([(key[2], data) for key, data in blobs])
        with self.reserve_many([len(data) for _, data in blobs], cost=self.cost(len(content))) as reservation:
            dest, changed = self._write_pack(instance, content)
            pack = Pack(dest, instance, reservation.cost, len(content), time.time())
            with self._lock:
                reservation.release_locked()  # now the pack's cost, in _bytes
                self._bytes += pack.cost
                for (key, data), offset in zip(blobs, offsets, strict=True):
                    size, old = len(data), self._index.get(key)
                    if old is not None and old[0] == size:
                        self._index.move_to_end(key)
                        continue
                    if old is not None and self._unindex(key, old[1]):
                        remove(self.path(key))  # a file of the wrong size (torn): the packed copy replaces it
                    self._index[key] = (size, size + packs.ENTRY, pack, offset)
                    pack.add(key, size)
                self._tidy(pack)  # unlinked if every blob was here already
                self._collect_if_over()
        self.files.sync_dirs(changed)

    def _write_pack(self, instance: str, content: bytes, mtime: float | None = None) -> tuple[str, set[str]]:
        """A new pack holding `content` in the instance's `packs/`: a temp file (flushed with --fsync) renamed into
        place, or with `mtime` a rewritten pack (keeping its age), always flushed: the old one is unlinked next.
        Its path, and the directories changed (for `sync_dirs`); on a failure nothing is left behind."""
        tmp = self.files.temp(str(self.writable_disk(instance).temp_path().parent))
        dest = f"{self.instance_dir(instance)}/{PACKS}/{os.path.basename(tmp)}"
        self.files.create(tmp, content)
        changed: set[str] = set()
        try:
            if mtime is not None:
                os.utime(tmp, (mtime, mtime))
            self.files.flush([tmp], always=mtime is not None)
            self.files.publish(tmp, dest, changed)
        except BaseException:
            remove(tmp)
            raise
        return dest, changed

    def read_packed(self, key: Key) -> tuple[bool, bytes | None]:
        """(False, None) if the blob is not in a pack (any more); else (True, its bytes as stored, unchecked), or
        (True, None) when its pack was removed behind the server's back. The pack's mtime is refreshed at most
        hourly: it is its blobs' age in the LRU order after a restart."""
        while True:
            with self._lock:
                size, _cost, pack, offset = self._index.get(key) or (0, 0, None, 0)
                if pack is None:
                    return False, None
            try:
                data = packs.read_blob(pack.path, offset, size)
                self._touch(pack)
                return True, data
            except FileNotFoundError:
                with self._lock:
                    if (entry := self._index.get(key)) is not None and entry[2] is pack:
                        return True, None
                # moved to a new pack by a rewrite meanwhile (look again), or evicted

    def on_disk(self, key: Key, size: int, packs_seen: dict[str, bool]) -> bool:
        """Is the entry's file (or its pack: looked at once per `packs_seen`) still on disk at its length? A file
        removed behind the server's back makes a miss, not a broken hit; a blob whose pack was rewritten (moved)
        meanwhile is looked for again where it is now."""
        while True:
            entry = self._index.get(key)
            pack = None if entry is None else entry[2]
            path = self.entry_path(key) if pack is None else pack.path
            found = packs_seen.get(path)
            if found is None:
                try:
                    found = os.stat(path).st_size == (size if pack is None else pack.size)
                except OSError:
                    found = False
                if pack is not None:
                    packs_seen[path] = found
            if found:
                return True
            with self._lock:
                now = self._index.get(key)
                if now is None or now[2] is pack:
                    return False

    def corrupt(self, key: Key, digest: Digest) -> None:
        """A packed blob whose bytes do not match its digest: unindexed, and reported; the background pass
        rewrites its pack without it at once, so a restart does not index it again."""
        with self._lock:
            entry = self._index.get(key)
            pack = None if entry is None else entry[2]
            if pack is not None:
                pack.damaged = True
            if entry is not None:
                self._unindex(key, entry[1])
        self._report(f"corrupt blob {digest} in {pack.path if pack else 'a pack'}: evicted")

    def install(self, key: Key, tmp: StrPath, size: int, reservation: Reservation) -> None:
        """Install one finished temp file (see install_many)."""
        self.install_many([(key, tmp, size)], reservation)

    def install_many(self, entries: list[tuple[Key, StrPath, int]], reservation: Reservation) -> None:
        """Rename finished temp files into place and index them, each in one step under the lock (so no eviction
        pass can unlink a file just indexed, or index a file it unlinks); the reservation becomes the entries'
        cost. A blob already indexed stays (same content) and is marked used; an action result is replaced.
        With `--fsync`, the directories renamed into are flushed before this returns (the peer is told)."""
        changed: set[str] = set()
        for start in range(0, len(entries), EVICT_BATCH):
            with self._lock:
                for key, tmp, size in entries[start:start + EVICT_BATCH]:
                    cost = self.cost(size)
                    reservation.release_locked(cost if size else 0)
                    old = self._index.get(key)
                    if old is not None and key[1] == "cas" and old[0] == size:
                        self._index.move_to_end(key)
                        remove(tmp)
                        continue
                    self.files.publish(tmp, self.entry_path(key), changed)
                    if old is not None:
                        self._unindex(key, old[1])  # an action result replaced (its file, by the rename)
                    self._index[key] = (size, cost, None, 0)
                    self._index.move_to_end(key)
                    self._bytes += cost
                self._collect_if_over()
        self.files.sync_dirs(changed)

    def drop(self, key: Key, size: int | None = None) -> None:
        """The entry is gone from disk (or corrupt, and evicted by the DiskStore): take it out of the index."""
        with self._lock:
            entry = self._index.get(key)
            if entry is not None and (size is None or entry[0] == size):
                self._unindex(key, entry[1])

    def evict(self, key: Key) -> None:
        """Remove an entry found unusable: from the index and from disk."""
        with self._lock:
            entry = self._index.get(key)
            if entry is None or self._unindex(key, entry[1]):
                self.path(key).unlink(missing_ok=True)

    def _unindex(self, key: Key, cost: int) -> bool:
        """(Lock held.) Take an entry out of the index; True if it is a file of its own (the caller unlinks it).
        A packed blob's bytes stay counted with its pack until it is rewritten or unlinked (`_tidy`)."""
        size, _cost, pack, _offset = self._index.pop(key)
        self._uncache(key)
        if pack is None:
            self._bytes -= cost
            return True
        pack.remove(size)
        self._tidy(pack)
        return False

    def _uncache(self, key: Key) -> None:
        """(Lock held.) An entry left the index: nothing remembers it any more."""
        if key[1] == "cas":
            self.memory.drop((key[0], key[2]))
            self.verified.discard((key[0], key[2]))

    def _tidy(self, pack: Pack) -> None:
        """(Lock held.) Unlink a pack none of whose blobs is indexed; queue one worth rewriting without the blobs it
        holds unindexed (found corrupt, missing, or indexed elsewhere) for the background pass."""
        if not pack.live:
            self._drop_pack(pack)
        elif not pack.queued and pack.worth_rewriting():
            pack.queued = True
            self._stale.append(pack)
            self._collect_if_over()

    def _evict_pack(self, pack: Pack) -> None:
        """(Lock held.) Evict every blob still indexed in `pack`, and unlink it: the room freed is exactly its cost,
        for an unlink and no write (a rewrite to keep its younger blobs would write them all again, and a pass
        could rewrite most of the store; those blobs are uploaded again by their next user, into a new pack)."""
        for key in pack.keys:
            entry = self._index.get(key)
            if entry is not None and entry[2] is pack:
                del self._index[key]
                self._uncache(key)
        pack.live = pack.live_bytes = 0
        self._drop_pack(pack)

    def _drop_pack(self, pack: Pack) -> None:
        """(Lock held.) Unlink a pack none of whose blobs is indexed; its cost leaves the account."""
        self._bytes -= pack.cost
        pack.cost = 0
        try:
            os.unlink(pack.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            self._gc_failed(f"cannot evict {pack.path}", e)

    def _touch(self, pack: Pack) -> None:
        """A blob was read from `pack`: refresh its mtime, at most hourly (as DiskStore does a blob's file)."""
        now = time.time()
        if now - pack.touched > TOUCH_AFTER_S:
            pack.touched = now
            try:
                os.utime(pack.path, (now, now))
            except OSError:
                pass

    def _compact(self, pack: Pack) -> None:
        """Rewrite the blobs of `pack` still indexed into a new pack (as old as the newest of the old one's mtime
        and its last read: a memory cache hit refreshes the mtime alone), move them there (each keeps its place
        in the LRU order), and unlink the old one once the new one is durable (always flushed: else a crash of
        the machine could leave the new one empty and the old one gone). Blobs unindexed meanwhile are left out.
        An OSError (a full disk, an unreadable pack) leaves the old pack as it was, and is raised."""
        with self._lock:
            pack.queued = False
            members = [(key, entry[3], entry[0]) for key in pack.keys
                       if (entry := self._index.get(key)) is not None and entry[2] is pack]
        if not members:
            return
        try:
            with open(pack.path, "rb") as f:
                old, mtime = f.read(), os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return  # evicted meanwhile, or removed behind the server's back (its blobs are missed when read)
        if len(old) != pack.size:
            return  # not the file the server wrote any more: its blobs are checked when read
        touched = max(pack.touched, mtime)
        content, offsets = packs.encode([(key[2], old[offset:offset + size]) for key, offset, size in members])
        dest, changed = self._write_pack(pack.instance, content, touched)
        try:
            self.files.sync_dirs(changed, always=True)  # the new pack is durable before the old one goes
        except BaseException:
            remove(dest)
            raise
        new = Pack(dest, pack.instance, self.cost(len(content)), len(content), touched)
        with self._lock:
            self._bytes += new.cost
            for (key, old_offset, size), offset in zip(members, offsets, strict=True):
                entry = self._index.get(key)
                if entry is not None and entry[2] is pack and entry[3] == old_offset:
                    pack.remove(size)
                    new.add(key, size)
                    self._index[key] = (size, entry[1], new, offset)  # the same place in the LRU order
            new.damaged = pack.damaged and new.live < len(members)  # one found corrupt meanwhile may be in it
            self._tidy(pack)
            self._tidy(new)

    # -- size bound --------------------------------------------------------------------------------------------

    def _collect_if_over(self) -> None:
        """(Lock held.) Start the background pass if the entries and the uploads in flight exceed the bound, or a
        pack waits to be rewritten (which alone evicts nothing)."""
        if (self._stale or self._bytes + self._reserved > self.max_size) and self._gc is None and not self._closing:
            self._gc = threading.Thread(target=self._collect, name="gaffer-serve-gc", daemon=True)
            self._gc.start()

    def _collect(self) -> None:
        """The background pass. Once the entries and uploads in flight exceed the bound, evict least recently used
        entries until they fit under GC_LOW_WATER of it (so a pass does not start again at once), a batch per
        hold of the lock; between those, and before each pack rewrite (one at a time), look at the bound again.
        An OSError is reported (once) and the pass goes on; whatever ends it, a later one can start."""
        target = int(self.max_size * GC_LOW_WATER)
        evicting = False
        try:
            while True:
                with self._lock:
                    evicting = evicting or self._bytes + self._reserved > self.max_size
                    if evicting and not self._closing:
                        evicting = self._evict(target)
                        if evicting:
                            continue  # more to evict: the lock is let go between batches
                    if self._closing or not self._stale:
                        self._gc = None
                        return
                    pack = self._stale.popleft()
                try:
                    self._compact(pack)
                except OSError as e:
                    self._gc_failed(f"cannot rewrite {pack.path}", e)
        finally:
            with self._lock:
                if self._gc is threading.current_thread():
                    self._gc = None

    def _evict(self, target: int) -> bool:
        """(Lock held.) Evict up to EVICT_BATCH least recently used entries (a packed blob: its whole pack) while
        the entries and uploads in flight exceed `target`: True if more is to be evicted."""
        for _ in range(EVICT_BATCH):
            if self._bytes + self._reserved <= target or not self._index:
                return False
            key, (_size, cost, pack, _offset) = next(iter(self._index.items()))
            if pack is not None:
                self._evict_pack(pack)
            elif self._unindex(key, cost):
                try:
                    os.unlink(self.path(key))
                except FileNotFoundError:
                    pass
                except OSError as e:
                    self._gc_failed(f"cannot evict {self.entry_path(key)}", e)
        return True

    def _gc_failed(self, what: str, error: OSError) -> None:
        """Report a failure of the background pass, the first one only (a broken disk would say it each time)."""
        if not self._gc_error_reported:
            self._gc_error_reported = True
            self._report(f"{what}: {error.strerror}")

    def close(self) -> None:
        """Stop the background pass (after its current step: pack rewrites still queued are found again at the
        next start, or their dropped blobs missed again); close the backend's tiers; record each instance's size
        for `gaffer cache status`."""
        with self._lock:
            self._closing = True
            gc = self._gc
        if gc is not None:
            gc.join()
        self.files.close()
        for fd in self._held:  # another server may use the store now
            os.close(fd)
        for namespace in self._backends.values():
            namespace.close()
        sizes = dict.fromkeys(self._disks, 0)
        live_packs = set()
        for key, (_size, cost, pack, _offset) in self._index.items():
            if pack is not None:
                live_packs.add(pack)
            elif key[0] in sizes:
                sizes[key[0]] += cost
        for pack in live_packs:
            if pack.instance in sizes:
                sizes[pack.instance] += pack.cost
        for instance, size in sizes.items():
            disk = self._disks[instance]
            try:
                disk.record_size(size)
            except OSError as e:
                self._report(f"cannot record the size of {disk.root}: {e.strerror}")
