"""What both protocols of `gaffer serve` share: instance namespaces over DiskStores, an in-memory index of the
blobs each holds, a memory cache of small blobs, verified writes, checked action results and the size bound.

Layout under `--dir`: the instance "" is a plain DiskStore at the root (so `gaffer cache status --dir` works on
it); a named instance lives in `instances/<name, percent-encoded>/`, one DiskStore each, so two instances never
see each other's entries and an instance name can never reach outside `instances/`.

With `--backend`, each instance is a `BackendNamespace` (server/backend.py): the backend is the store of record
and the directory only a read-through cache of its blobs.

The server owns its directory. The index (built from the store at start and after each gc) answers
FindMissingBlobs without a system call per digest; it heals itself when a read finds a blob gone. Action results
are checked against the disk itself, never the index, so an entry whose blobs are gone is a miss, not a broken hit.
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
from collections import OrderedDict
from collections.abc import Callable, Iterable
from io import BufferedReader
from pathlib import Path
from typing import Self
from urllib.parse import quote, unquote

from google.protobuf.message import DecodeError

from gaffer.cache.base import CacheTier, TierError
from gaffer.cache.disk import DiskStore
from gaffer.digest import EMPTY_DIGEST, Digest, digest_bytes, is_valid_hash
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos.digests import from_proto

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# REAPI forbids these as instance name segments: they would make resource names ambiguous.
_RESERVED = frozenset({"blobs", "uploads", "actions", "actionResults", "operations", "capabilities",
                       "compressed-blobs"})
MAX_INSTANCE_NAME = 200
MAX_ACTION_RESULT = 16 * 1024 * 1024
SMALL_BLOB = 1024 * 1024  # blobs up to this size are read whole (and checked) and may sit in the memory cache
TOUCH_AFTER_S = 3600  # as DiskStore: refresh a blob's mtime (its LRU age) at most hourly when it is read


class BadRequest(Exception):
    """The peer sent something invalid (INVALID_ARGUMENT / HTTP 400); the message says what."""


class BackendUnavailable(Exception):
    """The backend behind `--backend` failed (UNAVAILABLE / HTTP 503): the peer may retry, or miss."""


def storage_failure(error: OSError | BackendUnavailable) -> tuple[str, str]:
    """What a failure of the server's storage means to a peer: ("full" | "unavailable" | "broken", message), for
    both protocols to turn into their status (RESOURCE_EXHAUSTED/507, UNAVAILABLE/503, INTERNAL/500)."""
    if isinstance(error, BackendUnavailable):
        return "unavailable", f"cache backend: {error}"
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
    """An instance name made of `/`-separated segments of letters, digits, `.`, `_`, `-` (no `.`/`..`)."""
    if name and (
        len(name) > MAX_INSTANCE_NAME
        or not all(_SEGMENT.fullmatch(s) and s not in _RESERVED for s in name.split("/"))
    ):
        raise BadRequest(f"invalid instance name {name[:80]!r} (segments of letters, digits, '.', '_', '-')")
    return name


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
        if len(data) > SMALL_BLOB or len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old[0])
            self._entries[key] = (data, time.time())
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, (evicted, _) = self._entries.popitem(last=False)
                self._bytes -= len(evicted)

    def drop(self, key: tuple[str, str]) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old[0])


class Namespace:
    """One instance: its DiskStore and the index of the blobs in it (hash -> size)."""

    def __init__(self, name: str, store: DiskStore, memory: MemoryCache, added: Callable[[str, int], None]) -> None:
        self.name = name
        self.store = store
        self._memory = memory
        self._added = added
        self._present: dict[str, int] = {}
        # large blobs whose content this process has checked (uploaded or read in full): streamed without hashing
        self._verified: set[str] = set()

    def reindex(self) -> int:
        """Rebuild the index from the disk; the bytes of blobs found."""
        present = {d.hash: d.size_bytes for d in self.store.blobs()}
        self._present = present
        return sum(present.values())

    # -- CAS ---------------------------------------------------------------------------------------------------

    def has(self, digest: Digest) -> bool:
        """Does the instance hold the blob? (FindMissing, and an upload that may finish early.)"""
        return self._here(digest)

    def _here(self, digest: Digest) -> bool:
        """Is the blob on this server's disk, as indexed?"""
        return digest.size_bytes == 0 or self._present.get(digest.hash) == digest.size_bytes

    def size_of(self, hash_: str) -> int | None:
        """The size of the blob with this hash, if the index has it. The empty blob is always present (REAPI)."""
        if hash_ == EMPTY_DIGEST.hash:
            return 0
        return self._present.get(hash_)

    def missing(self, digests: Iterable[re_pb2.Digest]) -> list[re_pb2.Digest]:
        """FindMissingBlobs: index lookups; only digests not found are validated (indexed ones are valid)."""
        present = self._present
        missing = []
        for d in digests:
            if d.size_bytes and present.get(d.hash) != d.size_bytes:
                check_digest(d)
                missing.append(d)
        return missing

    def read(self, digest: Digest) -> bytes | None:
        """A small blob's bytes (memory, else disk, checked against the digest), or None."""
        if digest.size_bytes == 0:
            return b""
        if not self._here(digest):
            return None
        key = (self.name, digest.hash)
        data = self._memory.get(key, lambda: self.store.blob_path(digest))
        if data is not None:
            return data
        data = self.store.read_blob(digest)  # the size matched the disk: a mismatch now is corruption (evicted)
        if data is None:
            self.forget(digest)
            return None
        self._memory.put(key, data)
        return data

    def open(self, digest: Digest) -> tuple[BufferedReader, bool] | None:
        """The blob's file for streaming, and whether its content must be checked as it streams; None if absent."""
        if not self._here(digest):
            return None
        try:
            f = open(self.store.blob_path(digest), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            self.forget(digest)
            return None
        if os.fstat(f.fileno()).st_size != digest.size_bytes:
            f.close()
            self.forget(digest)
            return None
        return f, digest.hash not in self._verified

    def streamed(self, digest: Digest, ok: bool) -> None:
        """Record the outcome of checking a blob as it streamed; a corrupt one is evicted and reported."""
        if ok:
            self._verified.add(digest.hash)
        else:
            self.store.verified_blob_path(digest)  # hashes it again, evicts and reports it
            self.forget(digest)

    def forget(self, digest: Digest) -> None:
        """The blob is not (or no longer) on disk as indexed."""
        if self._present.get(digest.hash) == digest.size_bytes:
            self._present.pop(digest.hash, None)
        self._verified.discard(digest.hash)
        self._memory.drop((self.name, digest.hash))

    def put(self, digest: Digest, data: bytes) -> None:
        """Store a blob after checking it against its digest (BadRequest if it does not match)."""
        if digest_bytes(data) != digest:
            raise BadRequest(f"the data does not match digest {digest}")
        self._keep(digest, data)

    def _keep(self, digest: Digest, data: bytes) -> None:
        """Put a checked blob on this server's disk (and in the memory cache)."""
        if self._here(digest):
            return
        self.store.write_blob(digest, data)
        self._installed(digest)
        self._memory.put((self.name, digest.hash), data)

    def receive(self, digest: Digest, chunks: Iterable[bytes]) -> None:
        """Stream a blob into a temp file in the store, hashing as it comes; install it only if it matches."""
        with self.upload(digest) as upload:
            for chunk in chunks:
                upload.write(chunk)
            upload.commit()

    def upload(self, digest: Digest) -> Upload:
        """A blob to receive piece by piece (an HTTP body read by an event loop between pieces)."""
        return Upload(self, digest)

    def committed(self, digest: Digest) -> None:
        """An upload is in the store (installed now, or there already): what else must hold it before the peer
        is told it is stored (nothing here; a backend with --backend)."""

    def _installed(self, digest: Digest) -> None:
        self._present[digest.hash] = digest.size_bytes
        if digest.size_bytes > SMALL_BLOB:
            self._verified.add(digest.hash)
        self._added(self.name, digest.size_bytes)

    # -- action cache ------------------------------------------------------------------------------------------

    def action_result(self, key: Digest) -> tuple[bytes, re_pb2.ActionResult] | None:
        """The stored ActionResult, only if every blob it names is present (else it would be a broken hit)."""
        data = self._stored_action(key)
        if data is None:
            return None
        try:
            result = re_pb2.ActionResult.FromString(data)
        except DecodeError:
            self.store.evict_action(key)
            return None
        needed = self._referenced_blobs(result)
        if needed is None or not self._complete(needed):
            return None
        return data, result

    def _stored_action(self, key: Digest) -> bytes | None:
        return self.store.read_action(key)

    def _complete(self, needed: list[Digest]) -> bool:
        """Is every blob on disk? Asked of the disk itself, never the index."""
        for digest in needed:
            try:
                on_disk = os.stat(self.store.blob_path(digest)).st_size == digest.size_bytes
            except OSError:
                on_disk = False
            if not on_disk:
                self.forget(digest)
                return False
        return True

    def _referenced_blobs(self, result: re_pb2.ActionResult) -> list[Digest] | None:
        """Every non-empty blob `result` names, including the files inside its output directory trees.

        None when an output tree is missing or unreadable."""
        digests = [f.digest for f in result.output_files] + [result.stdout_digest, result.stderr_digest]
        for directory in result.output_directories:
            if directory.HasField("root_directory_digest"):
                digests.append(directory.root_directory_digest)
            if not directory.HasField("tree_digest"):
                continue
            digests.append(directory.tree_digest)
            data = self.read(from_proto(directory.tree_digest))
            if data is None:
                return None
            try:
                tree = re_pb2.Tree.FromString(data)
            except DecodeError:
                return None
            for d in (tree.root, *tree.children):
                digests.extend(f.digest for f in d.files)
        return [from_proto(d) for d in digests if d.size_bytes > 0]

    def put_action(self, key: Digest, result: re_pb2.ActionResult) -> None:
        data = result.SerializeToString(deterministic=True)
        self.store.write_action(key, data)
        self._added(self.name, len(data))

    def close(self) -> None:
        self.store.close()


class Upload:
    """A blob arriving in pieces (one call per piece, so an event loop can await the network in between): each
    piece hashed and written to a temp file in the store, the blob installed only if it matches its digest. The
    temp file is gone when the upload is closed, whatever happened (a peer gone, a full disk)."""

    def __init__(self, namespace: Namespace, digest: Digest) -> None:
        self._namespace = namespace
        self._digest = digest
        self._tmp = namespace.store.temp_path()
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed by close()
        self._sha = hashlib.sha256()
        self._received = 0

    def write(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self._digest.size_bytes:
            raise BadRequest(f"more data than the {self._digest.size_bytes} bytes of digest {self._digest}")
        self._sha.update(chunk)
        self._file.write(chunk)

    def commit(self) -> None:
        """Install the blob (BadRequest if the data does not match its digest)."""
        self._file.close()
        digest = self._digest
        if self._received != digest.size_bytes or self._sha.hexdigest() != digest.hash:
            raise BadRequest(f"the data ({self._received} bytes) does not match digest {digest}")
        if not self._namespace._here(digest):
            self._namespace.store.adopt(digest, self._tmp)
            self._namespace._installed(digest)
        self._namespace.committed(digest)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class ServerStore:
    """Instance name -> Namespace, with the server-wide size bound enforced by a background LRU gc."""

    def __init__(self, root: Path, max_size: int, report: Callable[[str], None], memory: int,
                 backend: Callable[[str], CacheTier] | None = None) -> None:
        self.root = root
        self._backend = backend  # instance -> its tier in the backend, with `--backend`
        self.max_size = max_size
        self._report = report
        self._memory = MemoryCache(memory)
        self._namespaces: dict[str, Namespace] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._gc: threading.Thread | None = None
        self.namespace("")
        instances = root / "instances"
        if instances.is_dir():
            for path in sorted(instances.iterdir()):
                try:
                    self.namespace(check_instance(unquote(path.name)))
                except BadRequest:
                    report(f"ignoring {path}: not a gaffer serve instance directory")

    def namespace(self, instance: str) -> Namespace:
        """The namespace of `instance` (validated), created on first use."""
        found = self._namespaces.get(instance)
        if found is not None:
            return found
        check_instance(instance)
        path = self.root / "instances" / quote(instance, safe="") if instance else self.root
        with self._lock:
            found = self._namespaces.get(instance)
            if found is None:
                disk = DiskStore(path, self.max_size, report=self._report)
                if not disk.writable:  # a server that drops every upload would only look like a cache
                    raise TierError(disk.name, "cannot write to the cache directory (read-only)", transient=False)
                if self._backend is None:
                    found = Namespace(instance, disk, self._memory, self._added)
                else:
                    from gaffer.server.backend import BackendNamespace

                    found = BackendNamespace(instance, disk, self._memory, self._added, self._backend(instance))
                self._sizes[instance] = found.reindex()
                self._namespaces[instance] = found
        return found

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    # -- size bound --------------------------------------------------------------------------------------------

    def _added(self, instance: str, size: int) -> None:
        with self._lock:
            self._sizes[instance] += size
            if sum(self._sizes.values()) <= self.max_size or self._gc is not None:
                return
            self._gc = threading.Thread(target=self._collect, name="gaffer-serve-gc", daemon=True)
            self._gc.start()

    def _collect(self) -> None:
        """Evict least-recently-used entries, each instance down to its share of the bound (by its size), until
        the total is under the bound: writes that land during a pass are caught by the next one."""
        try:
            while True:
                with self._lock:
                    sizes = dict(self._sizes)
                total = sum(sizes.values())
                if total <= self.max_size:
                    return
                for instance, size in sizes.items():
                    namespace = self._namespaces[instance]
                    namespace.store.gc(int(self.max_size * size / total))
                    namespace.reindex()
                    recount = namespace.store.status().bytes
                    with self._lock:
                        self._sizes[instance] = recount
        finally:
            with self._lock:
                self._gc = None

    def close(self) -> None:
        """Wait for a running gc; record each store's size for `gaffer cache status`."""
        gc = self._gc
        if gc is not None:
            gc.join()
        for namespace in self._namespaces.values():
            namespace.close()
