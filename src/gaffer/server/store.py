"""What both protocols of `gaffer serve` share: instance namespaces over DiskStores, verified writes, checked
action results and the size bound.

Layout under `--dir`: the instance "" is a plain DiskStore at the root (so `gaffer cache status --dir` works on
it); a named instance lives in `instances/<name, percent-encoded>/`, one DiskStore each, so two instances never
see each other's entries and an instance name can never reach outside `instances/`.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote, unquote

from google.protobuf.message import DecodeError

from gaffer.cache.disk import DiskStore
from gaffer.digest import Digest
from gaffer.protos import remote_execution_pb2 as re_pb2

_HASH = re.compile(r"[0-9a-f]{64}")
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# REAPI forbids these as instance name segments: they would make resource names ambiguous.
_RESERVED = frozenset({"blobs", "uploads", "actions", "actionResults", "operations", "capabilities",
                       "compressed-blobs"})
MAX_INSTANCE_NAME = 200
MAX_ACTION_RESULT = 16 * 1024 * 1024


class BadRequest(Exception):
    """The peer sent something invalid (INVALID_ARGUMENT / HTTP 400); the message says what."""


def check_hash(text: str) -> str:
    if not _HASH.fullmatch(text):
        raise BadRequest(f"{text[:80]!r} is not a lowercase hex SHA-256")
    return text


def check_digest(digest: re_pb2.Digest) -> Digest:
    check_hash(digest.hash)
    if digest.size_bytes < 0:
        raise BadRequest(f"negative size in digest {digest.hash}/{digest.size_bytes}")
    return Digest(digest.hash, digest.size_bytes)


def check_instance(name: str) -> str:
    """An instance name made of `/`-separated segments of letters, digits, `.`, `_`, `-` (no `.`/`..`)."""
    if name and (
        len(name) > MAX_INSTANCE_NAME
        or not all(_SEGMENT.fullmatch(s) and s not in _RESERVED for s in name.split("/"))
    ):
        raise BadRequest(f"invalid instance name {name[:80]!r} (segments of letters, digits, '.', '_', '-')")
    return name


class ServerStore:
    """Instance name -> DiskStore, with the server-wide size bound enforced by a background LRU gc."""

    def __init__(self, root: Path, max_size: int, report: Callable[[str], None]) -> None:
        self.root = root
        self.max_size = max_size
        self._report = report
        self._stores: dict[str, DiskStore] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._gc: threading.Thread | None = None
        self.open("")
        instances = root / "instances"
        if instances.is_dir():
            for path in sorted(instances.iterdir()):
                try:
                    self.open(check_instance(unquote(path.name)))
                except BadRequest:
                    report(f"ignoring {path}: not a gaffer serve instance directory")

    def open(self, instance: str) -> DiskStore:
        """The store of `instance` (validated), created on first use."""
        store = self._stores.get(instance)
        if store is not None:
            return store
        check_instance(instance)
        path = self.root / "instances" / quote(instance, safe="") if instance else self.root
        with self._lock:
            store = self._stores.get(instance)
            if store is None:
                store = DiskStore(path, self.max_size, report=self._report)
                self._sizes[instance] = store.status().bytes
                self._stores[instance] = store
        return store

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    # -- writes ------------------------------------------------------------------------------------------------

    def put_blob(self, instance: str, digest: Digest, data: bytes) -> None:
        """Store a blob after checking it against its digest (BadRequest if it does not match)."""
        if len(data) != digest.size_bytes or hashlib.sha256(data).hexdigest() != digest.hash:
            raise BadRequest(f"the data does not match digest {digest}")
        store = self.open(instance)
        if not store.has_blob(digest):
            store.write_blob(digest, data)
            self._added(instance, digest.size_bytes)

    def receive_blob(self, instance: str, digest: Digest, chunks: Iterable[bytes]) -> None:
        """Stream a blob into a temp file in the store, hashing as it comes; install it only if it matches."""
        store = self.open(instance)
        tmp = store.temp_path()
        sha = hashlib.sha256()
        received = 0
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    received += len(chunk)
                    if received > digest.size_bytes:
                        raise BadRequest(f"more data than the {digest.size_bytes} bytes of digest {digest}")
                    sha.update(chunk)
                    f.write(chunk)
            if received != digest.size_bytes or sha.hexdigest() != digest.hash:
                raise BadRequest(f"the data ({received} bytes) does not match digest {digest}")
            new = not store.has_blob(digest)
            store.adopt(digest, tmp)
            if new:
                self._added(instance, digest.size_bytes)
        finally:
            tmp.unlink(missing_ok=True)

    def put_action(self, instance: str, key: Digest, result: re_pb2.ActionResult) -> None:
        data = result.SerializeToString(deterministic=True)
        self.open(instance).write_action(key, data)
        self._added(instance, len(data))

    # -- reads -------------------------------------------------------------------------------------------------

    def action_result(self, instance: str, key: Digest) -> tuple[bytes, re_pb2.ActionResult] | None:
        """The stored ActionResult, only if every blob it names is present (else it would be a broken hit)."""
        store = self.open(instance)
        data = store.read_action(key)
        if data is None:
            return None
        try:
            result = re_pb2.ActionResult.FromString(data)
        except DecodeError:
            store.evict_action(key)
            return None
        needed = self._referenced_blobs(store, result)
        if needed is None or store.find_missing(needed):
            return None
        return data, result

    def _referenced_blobs(self, store: DiskStore, result: re_pb2.ActionResult) -> list[Digest] | None:
        """Every non-empty blob `result` names, including the files inside its output directory trees.

        None when an output tree is missing or unreadable."""
        digests = [f.digest for f in result.output_files] + [result.stdout_digest, result.stderr_digest]
        for directory in result.output_directories:
            if directory.HasField("root_directory_digest"):
                digests.append(directory.root_directory_digest)
            if not directory.HasField("tree_digest"):
                continue
            tree_digest = Digest(directory.tree_digest.hash, directory.tree_digest.size_bytes)
            data = store.read_blob(tree_digest) if tree_digest.size_bytes else b""
            if data is None:
                return None
            try:
                tree = re_pb2.Tree.FromString(data)
            except DecodeError:
                return None
            for d in (tree.root, *tree.children):
                digests.extend(f.digest for f in d.files)
        return [Digest(d.hash, d.size_bytes) for d in digests if d.size_bytes > 0]

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
                    store = self._stores[instance]
                    store.gc(int(self.max_size * size / total))
                    recount = store.status().bytes
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
        for store in self._stores.values():
            store.close()
