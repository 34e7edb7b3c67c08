"""An instance of `gaffer serve --backend URL`: the backend (S3, Redis, another REAPI server...) is the store of
record, and the disk under `--dir` only a read-through cache of its blobs.

Several servers may share one backend (replicas behind a load balancer), so nothing local is authoritative:
FindMissingBlobs and the completeness check of an action result ask the backend, action results are read from
and written to the backend only (they change), and every write reaches the backend before it is acknowledged.
Blobs read through the server are verified and kept on its disk, which its size bound keeps in check; what the
backend keeps is its own business (a bucket's lifecycle rules, Redis's maxmemory policy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from gaffer.cache.base import CacheTier, TierError
from gaffer.digest import EMPTY_DIGEST, Digest, digest_file
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos.digests import from_proto
from gaffer.server.store import SMALL_BLOB, BackendUnavailable, BlobFile, Namespace, check_digest, decode_action

if TYPE_CHECKING:
    from gaffer.server.store import ServerStore

T = TypeVar("T")


class BackendNamespace(Namespace):
    """A Namespace whose blobs and action results live in `backend`; its directory caches the blobs read."""

    def __init__(self, server: ServerStore, name: str, backend: CacheTier) -> None:
        super().__init__(server, name)
        self.backend = backend
        self._ask(lambda b: b.check())

    def _ask(self, op: Callable[[CacheTier], T]) -> T:
        """`op` on the backend; its failure is the peer's UNAVAILABLE (no retry here: the peer retries or misses)."""
        try:
            return op(self.backend)
        except TierError as e:
            raise BackendUnavailable(str(e)) from e

    # -- CAS ---------------------------------------------------------------------------------------------------

    def has(self, digest: Digest) -> bool:
        return digest == EMPTY_DIGEST or not self._ask(lambda b: b.find_missing([digest]))

    def missing(self, digests: Iterable[re_pb2.Digest]) -> list[re_pb2.Digest]:
        wanted = [d for d in digests if d.size_bytes or d.hash != EMPTY_DIGEST.hash]
        absent = set(self._ask(lambda b: b.find_missing(list(dict.fromkeys(check_digest(d) for d in wanted)))))
        return [d for d in wanted if from_proto(d) in absent]

    def size_of(self, hash_: str) -> int | None:
        """Known locally, or learnt by fetching the blob by its hash alone (the Bazel HTTP protocol names no
        size): a backend that needs the size (REAPI) answers that as a miss."""
        size = super().size_of(hash_)
        if size is not None:
            return size
        try:
            pulled = self._pull(Digest(hash_, 0), sized=False)
        except BackendUnavailable:
            return None
        return None if pulled is None else pulled.size_bytes

    def read(self, digest: Digest) -> bytes | None:
        data = super().read(digest)
        if data is None and self._pull(digest, sized=True) is not None:
            data = super().read(digest)
        return data

    def open(self, digest: Digest) -> tuple[BlobFile, bool] | None:
        opened = super().open(digest)  # a small blob: through `read`, which pulls it
        if opened is None and digest.size_bytes > SMALL_BLOB and self._pull(digest, sized=True) is not None:
            opened = super().open(digest)
        return opened

    def _pull(self, digest: Digest, *, sized: bool) -> Digest | None:
        """Fetch a blob from the backend onto the disk, verified (against its hash alone unless `sized`)."""
        tmp = self.temp_path()
        try:
            if not self._ask(lambda b: b.fetch_blob(digest, tmp)):
                return None
            actual = digest_file(tmp)
            if actual.hash != digest.hash or (sized and actual != digest):
                return None  # corrupt in the backend, or a wrong size asked for: a miss either way
            if not self._here(actual):
                self._adopt(actual, tmp)
            return actual
        finally:
            tmp.unlink(missing_ok=True)

    def committed(self, digest: Digest) -> None:
        path = self.server.path(self.key(digest))
        self._ask(lambda b: b.upload_blob(digest, path))

    # -- action cache ------------------------------------------------------------------------------------------

    def _stored_action(self, key: Digest) -> tuple[bytes, re_pb2.ActionResult] | None:
        data = self._ask(lambda b: b.read_action(key))
        result = None if data is None else decode_action(data)
        return None if data is None or result is None else (data, result)

    def _complete(self, key: Digest, needed: list[Digest], again: bool = False) -> bool:
        return not self._ask(lambda b: b.find_missing(needed))

    def put_action(self, key: Digest, result: re_pb2.ActionResult) -> None:
        data = result.SerializeToString(deterministic=True)
        self._ask(lambda b: b.write_action(key, data))

    def close(self) -> None:
        self.backend.close()
