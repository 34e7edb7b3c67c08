"""The worker's blob cache: a local DiskStore in front of the server's CAS.

Inputs are fetched only when the local store lacks them (one local check, then batched reads through the REAPI
client of cache/grpc.py: BatchReadBlobs for small blobs, ByteStream for large ones), and every blob from the
server is hashed before it enters the store: a corrupt one counts as missing, never as an input. Outputs go the
other way: FindMissingBlobs on the server, then only what it lacks.

The cache keeps its own record of the blobs it holds (in least recently used order, with their sizes): the server
prefers workers that already hold an action's inputs, so the worker reports what entered and what left the store
since its last report. Past its size bound the store evicts the least recently used blobs (DiskStore.gc), and
only then is the record checked against the disk.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from gaffer.cache.disk import DiskStore
from gaffer.cache.grpc import GrpcTier
from gaffer.digest import Digest, digest_bytes, digest_file
from gaffer.units import format_count, format_size

INVENTORY_LIMIT = 100_000  # blobs in one reset report: the most recently used ones


class BlobCache:
    """Local blobs (verified), the server's CAS, and the blobs added since the last inventory report."""

    def __init__(self, local: DiskStore, server: GrpcTier, report: Callable[[str], None]) -> None:
        self.local = local
        self.server = server
        self.report = report  # the worker's log line
        self._lock = threading.Lock()
        entries = sorted((st.st_mtime, path.name, st.st_size) for path, st in local.files("cas"))
        self._held: OrderedDict[Digest, None] = OrderedDict((Digest(h, size), None) for _t, h, size in entries)
        self._bytes = sum(d.size_bytes for d in self._held)
        self._added: dict[Digest, None] = {}  # since the last report, insertion-ordered
        self._removed: dict[Digest, None] = {}

    def fetch(self, digests: Iterable[Digest]) -> None:
        """Bring every blob of `digests` the local store lacks from the server, checked against its digest.
        Blobs the server lacks (or sends corrupt) stay missing: the caller finds them absent locally."""
        digests = list(dict.fromkeys(digests))
        self._remember(digests, fresh=False)  # those already here are used again: most recent now
        wanted = self.local.find_missing(digests)
        if not wanted:
            return
        small = [d for d in wanted if self.server.batchable(d.size_bytes)]
        for digest, data in self.server.read_blobs(small).items():
            if digest_bytes(data) != digest:
                self.report(f"warning: blob {digest} from {self.server.name} does not match its digest: ignored")
                continue
            self.local.write_blob(digest, data)
            self._remember([digest])
        for digest in wanted:
            if digest in small:
                continue
            tmp = self.local.temp_path()
            try:
                if not self.server.fetch_blob(digest, tmp):
                    continue
                if digest_file(tmp) != digest:
                    self.report(f"warning: blob {digest} from {self.server.name} does not match its digest: ignored")
                    continue
                self.local.adopt(digest, tmp)
                self._remember([digest])
            finally:
                tmp.unlink(missing_ok=True)

    def upload(self, digests: Sequence[Digest]) -> None:
        """Put the blobs the server lacks among `digests` (all in the local store) into its CAS."""
        missing = self.server.find_missing(list(dict.fromkeys(digests)))
        small = []
        for digest in missing:
            path = self.local.verified_blob_path(digest)
            if path is None:
                raise FileNotFoundError(f"blob {digest} vanished from the worker's cache before its upload")
            if self.server.batchable(digest.size_bytes):
                small.append((digest, path.read_bytes()))
            else:
                self.server.upload_blob(digest, path)
        self.server.write_blobs(small)

    def produced(self, digests: Iterable[Digest]) -> None:
        """Blobs an action wrote into the local store (its outputs and logs), for the next inventory report."""
        self._remember(digests)

    def _remember(self, digests: Iterable[Digest], fresh: bool = True) -> None:
        """Record blobs as held and most recently used; `fresh`: they just entered the store."""
        with self._lock:
            for digest in digests:
                if digest in self._held:
                    self._held.move_to_end(digest)
                elif fresh:
                    self._held[digest] = None
                    self._bytes += digest.size_bytes
                    self._added[digest] = None
                    self._removed.pop(digest, None)

    def evict(self) -> None:
        """Past the size bound, evict the least recently used blobs, and note which left for the next report."""
        with self._lock:
            if self._bytes <= self.local.max_size:
                return
            self.local.gc(self.local.max_size)
            gone = [d for d in self._held if not os.path.exists(self.local.blob_path(d))]
            for digest in gone:
                del self._held[digest]
                self._bytes -= digest.size_bytes
                self._removed[digest] = None
                self._added.pop(digest, None)
        self.report(f"blob cache over {format_size(self.local.max_size)}: {format_count(len(gone), 'blob')} evicted")

    def take_changes(self) -> tuple[list[Digest], list[Digest]]:
        """The blobs added (most recent first) and removed since the last call."""
        with self._lock:
            added, removed = list(self._added)[::-1], list(self._removed)
            self._added, self._removed = {}, {}
        return added, removed

    def held(self) -> list[Digest]:
        """The blobs held, most recently used first, at most INVENTORY_LIMIT (a reset report); clears the
        changes, which it includes."""
        with self._lock:
            self._added, self._removed = {}, {}
            held = list(self._held)
        return held[::-1][:INVENTORY_LIMIT]

