"""The one small interface every cache tier implements (disk, S3, Redis, HTTP, REAPI gRPC, and the wrappers).

A tier stores two things, both in REAPI's formats:
  - the CAS: blobs by `Digest` (SHA-256 of the content);
  - the action cache (AC): serialized `ActionResult` protos by action key (also a `Digest`).
A tier moves bytes; it does not parse ActionResults and does not have to verify blobs: the cache in front of it
(`TieredCache`, `gaffer serve`) verifies every downloaded blob against its digest before it is used or stored.

A backend implements a few primitives — `read_blob`/`write_blob` (small blobs, bytes), `read_action`/
`write_action`, and `has_blob` or `find_missing` — and overrides the streaming forms (`fetch_blob`/`upload_blob`,
files of any size) and the batch forms (`find_missing`, `read_blobs`, `write_blobs`) where its protocol does
better than the defaults here; `contains` is derived for every tier. The wrappers (the retrying `ResilientTier`, the `TieredCache`) implement the same
interface, so tiers nest.

Errors: a tier raises `TierError` for anything that went wrong talking to its store. `transient=True` means
"worth retrying" (timeouts, connection refused, 5xx); `transient=False` means retrying will not help
(bad credentials, missing bucket). A miss is not an error: reads return None/False.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

from gaffer.atomic import write_all
from gaffer.digest import Digest, digest_file
from gaffer.tuples import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a pool is first needed: concurrent.futures loads logging (~10 ms)
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path  # not at run time, nor typing: see gaffer.tuples

LOOKUP_WORKERS = 16  # parallel requests in the default find_missing and read_blobs (one request per digest)
_pool_lock = threading.Lock()


class TierError(Exception):
    def __init__(self, tier: str, message: str, transient: bool = True) -> None:
        super().__init__(f"{tier}: {message}")
        self.tier = tier
        self.message = message  # without the tier's name, for a caller whose own message already names it
        self.transient = transient


def transient_status(status: int) -> bool:
    """Is an HTTP status (S3's or a Bazel HTTP cache's) worth a retry? Server errors, timeouts, throttling."""
    return status >= 500 or status in (408, 429)


class CacheTier(ABC):
    """A CAS + AC store. Implementations must be safe to call from several threads at once."""

    #: What the user wrote to name this tier (its URL without secrets): used in warnings and stats.
    name: str
    _lookups: ThreadPoolExecutor | None = None

    # -- primitives --------------------------------------------------------------------------------------------

    @abstractmethod
    def read_blob(self, digest: Digest) -> bytes | None:
        """A small blob's bytes, or None if absent."""

    @abstractmethod
    def write_blob(self, digest: Digest, data: bytes) -> None:
        """Store a small blob."""

    @abstractmethod
    def read_action(self, key: Digest) -> bytes | None:
        """The serialized ActionResult stored under `key`, or None."""

    @abstractmethod
    def write_action(self, key: Digest, result: bytes) -> None:
        """Store a serialized ActionResult under `key`."""

    def has_blob(self, digest: Digest) -> bool:
        """Is the blob here? Backends that answer one digest per request implement this (or `find_missing`)."""
        return not self.find_missing([digest])

    # -- batch forms -------------------------------------------------------------------------------------------

    def find_missing(self, digests: Sequence[Digest]) -> list[Digest]:
        """The subset of `digests` this tier does not hold. By default `has_blob` per digest, in parallel; the
        pool's map cancels the lookups not yet started when one fails, so a dead store fails fast."""
        if type(self).has_blob is CacheTier.has_blob:
            raise NotImplementedError(f"{type(self).__name__} implements neither has_blob nor find_missing")
        if len(digests) <= 1:
            return [d for d in digests if not self.has_blob(d)]
        present = list(self._lookup_pool().map(self.has_blob, digests))
        return [d for d, here in zip(digests, present, strict=True) if not here]

    def _lookup_pool(self) -> ThreadPoolExecutor:
        """The threads of the default batch forms, which send one request per digest."""
        with _pool_lock:
            if self._lookups is None:
                from concurrent.futures import ThreadPoolExecutor

                self._lookups = ThreadPoolExecutor(LOOKUP_WORKERS, thread_name_prefix="gaffer-lookup")
            return self._lookups

    def contains(self, digests: Sequence[Digest]) -> bool:
        """Does this tier hold every one of `digests`? (Presence only: nothing is read or verified.)"""
        return not self.find_missing(digests)

    def read_blobs(self, digests: Sequence[Digest]) -> dict[Digest, bytes | memoryview]:
        """The small blobs this tier holds among `digests` (absent ones are left out), each as bytes or a view of
        the reply that carried it (REAPI's batches: not copied out of it). By default `read_blob` per digest,
        several at a time (as `find_missing`); a protocol with a batch read overrides it."""
        unique = list(dict.fromkeys(digests))
        if len(unique) <= 1:
            found = [self.read_blob(d) for d in unique]
        else:
            found = list(self._lookup_pool().map(self.read_blob, unique))
        return {d: data for d, data in zip(unique, found, strict=True) if data is not None}

    def write_blobs(self, blobs: Sequence[tuple[Digest, bytes]]) -> None:
        """Store several small blobs."""
        for digest, data in blobs:
            self.write_blob(digest, data)

    # -- streaming forms (files of any size) -------------------------------------------------------------------

    def fetch_blob(self, digest: Digest, dest: Path) -> bool:
        """Stream a blob of any size into the file `dest` (created or truncated). False if absent.
        By default through memory: backends whose protocol streams override it."""
        data = self.read_blob(digest)
        return write_chunks(dest, None if data is None else [data])

    def fetch_hashed(self, digest: Digest, dest: Path) -> Digest | None:
        """`fetch_blob`, and the digest of what it wrote into `dest` (None: absent), for the caller to compare with
        `digest`. By default the file is read again to hash it; a tier that streams hashes each piece as it writes
        it (`write_hashed`)."""
        return digest_file(dest) if self.fetch_blob(digest, dest) else None

    def upload_blob(self, digest: Digest, path: Path) -> None:
        """Store a blob of any size, streamed from the file at `path`. By default through memory."""
        with open(path, "rb") as f:
            self.write_blob(digest, f.read())

    def replace_blob(self, digest: Digest, path: Path) -> None:
        """`upload_blob` over a copy this tier holds that failed verification. By default the same: a tier whose
        writes replace (HTTP) heals with it, one whose blobs are written once (S3, GCS, Azure) keeps its copy."""
        self.upload_blob(digest, path)

    # -- management --------------------------------------------------------------------------------------------

    def check(self) -> None:  # noqa: B027 - optional: a tier with nothing to probe keeps this no-op
        """Cheap start-up probe: raise TierError(transient=False) for wrong credentials or a missing bucket."""

    def close(self) -> None:
        """Release connections."""
        if self._lookups is not None:
            self._lookups.shutdown(wait=True, cancel_futures=True)


def write_hashed(dest: Path, chunks: Iterable[bytes | memoryview] | None) -> Digest | None:
    """Write a blob's `chunks` into the file `dest`, hashing each as it is written: the digest of exactly what the
    file holds, or None, writing nothing, when there are none (it was absent)."""
    if chunks is None:
        return None
    import hashlib  # OpenSSL's SHA-256: these are the large blobs

    h = hashlib.sha256()
    size = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        for chunk in chunks:
            h.update(chunk)  # the same immutable bytes the next line writes
            write_all(fd, chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return Digest(h.hexdigest(), size)


def write_chunks(dest: Path, chunks: Iterable[bytes | memoryview] | None) -> bool:
    """Write a blob's `chunks` into the file `dest`; False, writing nothing, when there are none (it was absent)."""
    if chunks is None:
        return False
    with open(dest, "wb") as f:
        f.writelines(chunks)
    return True
