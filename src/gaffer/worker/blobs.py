"""The worker's blob cache: a local DiskStore in front of the server's CAS.

Inputs are fetched only when the local store lacks them (one local check, then batched reads through the REAPI
client of cache/grpc.py: BatchReadBlobs for small blobs, ByteStream for large ones), and every blob from the
server is hashed before it enters the store: a corrupt one counts as missing, never as an input. Outputs go the
other way: FindMissingBlobs on the server, then only what it lacks. What entered the store since the last
inventory report is remembered for it (the server prefers workers that already hold an action's inputs).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Sequence

from gaffer.cache.disk import DiskStore
from gaffer.cache.grpc import GrpcTier
from gaffer.digest import Digest, digest_bytes, digest_file

INVENTORY_LIMIT = 100_000  # blobs in one reset report: the most recently used ones


class BlobCache:
    """Local blobs (verified), the server's CAS, and the blobs added since the last inventory report."""

    def __init__(self, local: DiskStore, server: GrpcTier) -> None:
        self.local = local
        self.server = server
        self._added: dict[Digest, None] = {}  # insertion-ordered set
        self._lock = threading.Lock()

    def fetch(self, digests: Iterable[Digest]) -> None:
        """Bring every blob of `digests` the local store lacks from the server, checked against its digest.
        Blobs the server lacks (or sends corrupt) stay missing: the caller finds them absent locally."""
        wanted = self.local.find_missing(list(dict.fromkeys(digests)))
        if not wanted:
            return
        small = [d for d in wanted if self.server.batchable(d.size_bytes)]
        for digest, data in self.server.read_blobs(small).items():
            if digest_bytes(data) != digest:
                _warn(f"blob {digest} from {self.server.name} does not match its digest: ignored")
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
                    _warn(f"blob {digest} from {self.server.name} does not match its digest: ignored")
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

    def _remember(self, digests: Iterable[Digest]) -> None:
        with self._lock:
            self._added.update(dict.fromkeys(digests))

    def take_added(self) -> list[Digest]:
        """The blobs added since the last call, most recent first."""
        with self._lock:
            added, self._added = list(self._added), {}
        return added[::-1]

    def held(self) -> list[Digest]:
        """Every blob of the local store, most recently used first, at most INVENTORY_LIMIT (a reset report)."""
        entries = sorted(((st.st_mtime, path.name, st.st_size) for path, st in self.local.files("cas")),
                         reverse=True)
        return [Digest(name, size) for _mtime, name, size in entries[:INVENTORY_LIMIT]]


def _warn(message: str) -> None:
    print(f"gaffer worker: warning: {message}", file=sys.stderr, flush=True)
