"""A remote tier wrapped with health, retries and stats: the tier a build can lean on without ever failing.

Every call is retried with backoff and jitter on a transient `TierError`; if the tier keeps failing (or fails in a
way retrying cannot help), one warning names it and the wrapper turns into a tier that holds nothing and accepts
nothing for the rest of the process. A write it refuses (a read-only token) leaves it for reads only, also with
one warning. So its reads answer "absent" instead of raising, which is what a cache in
front of it wants: when in doubt, miss. The tier itself is opened lazily on first use, so a build served entirely
from the local tier never imports botocore, redis or grpc.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from gaffer.cache.base import CacheTier, TierError
from gaffer.digest import Digest
from gaffer.outcome import TierSummary

T = TypeVar("T")
RETRIES = 3
BACKOFF_S = 0.1
#: Errors only a file system gives: a blob fetched into a local file that a full or read-only disk refused.
LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def local_failure(e: BaseException) -> OSError | None:
    """The local file-system error behind `e` (raised, or wrapped by a client library or a tier), if any: the
    local disk's trouble, which must not count against the remote tier that was being read."""
    seen: BaseException | None = e
    for _ in range(8):  # a chain of wrappers is short; a cycle must not loop
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in LOCAL_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class TierStats:
    """What one tier did during this process: for the build summary and `--summary-json`. Counted in place."""

    __slots__ = ("bytes_down", "bytes_up", "disabled", "errors", "hits", "misses", "name", "seconds")

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        self.misses = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self.seconds = 0.0
        self.errors = 0
        self.disabled = False

    def as_dict(self) -> TierSummary:
        return TierSummary(name=self.name, hits=self.hits, misses=self.misses, bytes_down=self.bytes_down,
                           bytes_up=self.bytes_up, seconds=round(self.seconds, 3), errors=self.errors,
                           disabled=self.disabled)


class ResilientTier(CacheTier):
    """`tier` (or the tier `tier()` opens on first use) with retries, one warning on lasting failure, and stats.
    Never raises TierError: a failed read is a miss, a failed write is dropped (and counted as an error). A fetch
    into a file on a full or read-only disk raises the OSError it is, held against nobody: that disk is local."""

    def __init__(self, tier: CacheTier | Callable[[], CacheTier], name: str, report: Callable[[str], None]) -> None:
        self._tier = tier if isinstance(tier, CacheTier) else None
        self._factory = None if isinstance(tier, CacheTier) else tier
        self.name = name
        self.stats = TierStats(name=name)
        self._report = report
        self._lock = threading.Lock()
        self.writable = True  # False once the tier refused a write: it is then read from only

    @property
    def healthy(self) -> bool:
        return not self.stats.disabled

    def tier(self) -> CacheTier:
        with self._lock:
            if self._tier is None:
                assert self._factory is not None
                self._tier = self._factory()
                self._tier.check()
            return self._tier

    def call(self, op: Callable[[CacheTier], T], default: T, into_file: bool = False, write: bool = False) -> T:
        """Run `op` on the tier with retries; on lasting failure disable the tier and return `default`.
        `into_file`: `op` writes what it reads into a local file, whose disk's errors are raised as they are.
        `write`: `op` stores something; one the tier refuses (not a transient failure: a read-only token, a
        server taking no uploads) leaves the tier for reads only."""
        if not self.healthy:
            return default
        delay = BACKOFF_S
        for attempt in range(RETRIES):
            start = time.perf_counter()
            try:
                return op(self.tier())
            except Exception as e:  # noqa: BLE001 - a client library bug or an unexpected reply must not fail the build
                local = local_failure(e) if into_file else None
                if local is not None:
                    raise local from None
                self.stats.errors += 1
                if not isinstance(e, TierError):
                    self.disable(f"{self.stats.name}: {type(e).__name__}: {e}")
                    return default
                if write and not e.transient:
                    self.stop_writing(str(e))
                    return default
                if not e.transient or attempt == RETRIES - 1:
                    self.disable(str(e))
                    return default
            finally:
                self.stats.seconds += time.perf_counter() - start
            import random  # a retry's jitter: not on the path of a build whose tiers answer

            time.sleep(delay * (1 + random.random()))
            delay *= 2
        return default

    def _sent(self, op: Callable[[CacheTier], None], size: int) -> None:
        """A write: counted in bytes_up only when it went through."""
        def send(tier: CacheTier) -> bool:
            op(tier)
            return True

        if self.writable and self.call(send, False, write=True):
            self.stats.bytes_up += size

    # -- CacheTier ---------------------------------------------------------------------------------------------

    def read_blob(self, digest: Digest) -> bytes | None:
        return self.call(lambda t: t.read_blob(digest), None)

    def write_blob(self, digest: Digest, data: bytes) -> None:
        self._sent(lambda t: t.write_blob(digest, data), len(data))

    def read_action(self, key: Digest) -> bytes | None:
        return self.call(lambda t: t.read_action(key), None)

    def write_action(self, key: Digest, result: bytes) -> None:
        self._sent(lambda t: t.write_action(key, result), len(result))

    def find_missing(self, digests: Sequence[Digest]) -> list[Digest]:
        return self.call(lambda t: t.find_missing(digests), list(digests))

    def read_blobs(self, digests: Sequence[Digest]) -> dict[Digest, bytes | memoryview]:
        return self.call(lambda t: t.read_blobs(digests), {})

    def write_blobs(self, blobs: Sequence[tuple[Digest, bytes]]) -> None:
        self._sent(lambda t: t.write_blobs(blobs), sum(len(data) for _, data in blobs))

    def fetch_blob(self, digest: Digest, dest: Path) -> bool:
        return self.call(lambda t: t.fetch_blob(digest, dest), False, into_file=True)

    def fetch_hashed(self, digest: Digest, dest: Path) -> Digest | None:
        return self.call(lambda t: t.fetch_hashed(digest, dest), None, into_file=True)

    def upload_blob(self, digest: Digest, path: Path) -> None:
        self._sent(lambda t: t.upload_blob(digest, path), digest.size_bytes)

    def replace_blob(self, digest: Digest, path: Path) -> None:
        self._sent(lambda t: t.replace_blob(digest, path), digest.size_bytes)

    def check(self) -> None:
        """Open the tier now (`gaffer run` does, so wrong credentials are one line at start, not mid-build)."""
        try:
            self.tier()
        except TierError as e:
            self.stats.errors += 1
            self.disable(str(e))

    def stop_writing(self, why: str) -> None:
        """The tier refused a write: read from it only, for the rest of the process; said once."""
        with self._lock:
            if not self.writable or self.stats.disabled:
                return
            self.writable = False
        self._report(f"cache tier {why}; reading from it only for this build")

    def disable(self, why: str) -> None:
        with self._lock:
            if self.stats.disabled:
                return
            self.stats.disabled = True
        self._report(f"cache tier {why}; continuing without it for this build")

    def close(self) -> None:
        """Close the tier, unless it was switched off: touched again at exit, a tier that failed would only fail
        again (a `disk://` remote on a full disk: a second warning, from its accounting)."""
        if self._tier is not None and self.healthy:
            try:
                self._tier.close()
            except Exception:  # noqa: BLE001, S110 - the build is over; a tier that fails to close changes nothing
                pass
