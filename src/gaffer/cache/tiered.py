"""The tiered cache: the local disk tier first, remote tiers behind it.

- Reads go near to far; a remote hit fills the local tier (and nearer remotes unless read-only).
- Every downloaded blob is verified against its digest before it is stored or used; a bad one is a miss for that
  tier, is not stored, and is reported.
- Writes land locally at once (the caller did that) and go to remotes behind the build, on a small thread pool:
  FindMissingBlobs first so nothing is uploaded twice, the blobs, then the action result. `flush()` waits.
- A remote that fails is retried with backoff and jitter; if it keeps failing, one warning names it and the rest
  of the process goes on without it. A remote never fails a build.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import TypeVar

from gaffer.cache.base import CacheTier, TierError
from gaffer.cache.disk import DiskStore
from gaffer.digest import EMPTY_DIGEST, Digest, digest_file
from gaffer.units import format_count

T = TypeVar("T")
RETRIES = 3
BACKOFF_S = 0.1
UPLOAD_WORKERS = 4
DOWNLOAD_WORKERS = 8


def _warn(message: str) -> None:
    print(f"gaffer: warning: {message}", file=sys.stderr)


@dataclass
class TierStats:
    """What one tier did during this process: for the build summary and `--summary-json`."""

    name: str
    hits: int = 0
    misses: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    seconds: float = 0.0
    errors: int = 0
    disabled: bool = False

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d


class Remote:
    """One remote tier with its health, retries and stats. The tier itself is opened lazily on first use,
    so a build served entirely from the local tier never imports boto3, redis or grpc."""

    def __init__(self, tier: CacheTier | Callable[[], CacheTier], name: str, report: Callable[[str], None]) -> None:
        self._tier = tier if isinstance(tier, CacheTier) else None
        self._factory = None if isinstance(tier, CacheTier) else tier
        self.stats = TierStats(name=name)
        self._report = report
        self._lock = threading.Lock()

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

    def call(self, op: Callable[[CacheTier], T], default: T) -> T:
        """Run `op` on the tier with retries; on lasting failure disable the tier and return `default`."""
        if not self.healthy:
            return default
        delay = BACKOFF_S
        for attempt in range(RETRIES):
            start = time.perf_counter()
            try:
                return op(self.tier())
            except TierError as e:
                self.stats.errors += 1
                if not e.transient or attempt == RETRIES - 1:
                    self.disable(str(e))
                    return default
            except Exception as e:  # a client library bug or an unexpected reply must not fail the build
                self.stats.errors += 1
                self.disable(f"{self.stats.name}: {type(e).__name__}: {e}")
                return default
            finally:
                self.stats.seconds += time.perf_counter() - start
            time.sleep(delay * (1 + random.random()))
            delay *= 2
        return default

    def connect(self) -> None:
        """Open the tier now (`gaffer run` does, so wrong credentials are one line at start, not mid-build)."""
        try:
            self.tier()
        except TierError as e:
            self.stats.errors += 1
            self.disable(str(e))

    def disable(self, why: str) -> None:
        with self._lock:
            if self.stats.disabled:
                return
            self.stats.disabled = True
        self._report(f"cache tier {why}; continuing without it for this build")

    def close(self) -> None:
        if self._tier is not None:
            try:
                self._tier.close()
            except Exception:
                pass


class TieredCache:
    """The cache every front end uses: `local` (a DiskStore) plus remote tiers, nearest first."""

    def __init__(
        self,
        local: DiskStore,
        remotes: Sequence[CacheTier | tuple[str, Callable[[], CacheTier]]] = (),
        *,
        read_only: bool = False,
        report: Callable[[str], None] = _warn,
    ) -> None:
        self.local = local
        self.read_only = read_only
        self.report = report
        self.local_stats = TierStats(name=local.name)
        self.remotes: list[Remote] = []
        for r in remotes:
            if isinstance(r, CacheTier):
                self.remotes.append(Remote(r, r.name, report))
            else:
                self.remotes.append(Remote(r[1], r[0], report))
        self._uploads: list[Future[None]] = []
        self._upload_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()  # also guards _served
        self._served: dict[Digest, list[TierStats]] = {}  # key -> the tiers whose entries await settle()

    def connect(self) -> None:
        """Open every remote tier at once, in parallel; one that fails its check is disabled with a warning."""
        if len(self.remotes) == 1:
            self.remotes[0].connect()
        elif self.remotes:
            with ThreadPoolExecutor(len(self.remotes)) as pool:
                list(pool.map(Remote.connect, self.remotes))

    # -- reads -------------------------------------------------------------------------------------------------

    def get_action(self, key: Digest) -> bytes | None:
        """The serialized ActionResult for `key`, from the nearest tier that has it (filling nearer ones)."""
        data = self.local.read_action(key)
        if data is not None:
            self._unsettled(key, self.local_stats)
            return data
        self.local_stats.misses += 1
        for i, remote in enumerate(self.remotes):
            data = remote.call(lambda t: t.read_action(key), None)
            if data is None:
                if remote.healthy:
                    remote.stats.misses += 1
                continue
            self._unsettled(key, remote.stats)
            remote.stats.bytes_down += len(data)
            self.local.write_action(key, data)
            if not self.read_only:
                for nearer in self.remotes[:i]:
                    nearer.call(lambda t: t.write_action(key, data), None)
            return data
        return None

    def _unsettled(self, key: Digest, tier: TierStats) -> None:
        with self._pool_lock:  # two tasks with one key may look it up at once: one entry each
            self._served.setdefault(key, []).append(tier)

    def settle(self, key: Digest, usable: bool) -> None:
        """Count the entry `get_action(key)` returned as its tier's hit only if it was usable (parsed, every blob
        present and verified), else as a miss: a hit that then fails verification is no hit. Callers settle every
        entry they got."""
        with self._pool_lock:
            waiting = self._served.get(key, [])
            tier = waiting.pop() if waiting else None
            if not waiting:
                self._served.pop(key, None)
        if tier is not None:
            if usable:
                tier.hits += 1
            else:
                tier.misses += 1

    def peek_action(self, key: Digest) -> bytes | None:
        """The ActionResult for `key` from the nearest tier that has it, filling no tier and counting nothing:
        what `--dry-run` asks so that predicting a build changes no cache."""
        data = self.local.read_action(key)
        for remote in self.remotes:
            if data is not None:
                break
            data = remote.call(lambda t: t.read_action(key), None)
        return data

    def contains(self, digests: Sequence[Digest]) -> bool:
        """Does some tier hold each blob? (Presence only: nothing is fetched or verified, nothing filled.)"""
        missing = [d for d in self.local.find_missing(list(dict.fromkeys(digests))) if d != EMPTY_DIGEST]
        for remote in self.remotes:
            if not missing:
                break
            missing = remote.call(lambda t: t.find_missing(missing), missing)
        return not missing

    def ensure_local(self, digests: Sequence[Digest]) -> bool:
        """Make every blob present (and verified) in the local tier, fetching from remotes. False if any is
        missing everywhere."""
        missing = self.local.find_missing(list(dict.fromkeys(digests)))
        if EMPTY_DIGEST in missing:  # the empty blob is always available (REAPI): no server has to hold it
            self.local.write_blob(EMPTY_DIGEST, b"")
            missing.remove(EMPTY_DIGEST)
        if not missing:
            return True
        for remote in self.remotes:
            if not missing or not remote.healthy:
                continue
            if len(missing) == 1:
                fetched = [self._fetch_one(remote, missing[0])]
            else:
                with ThreadPoolExecutor(min(DOWNLOAD_WORKERS, len(missing))) as pool:
                    fetched = list(pool.map(lambda d: self._fetch_one(remote, d), missing))
            missing = [d for d, ok in zip(missing, fetched) if not ok]
        return not missing

    def _fetch_one(self, remote: Remote, digest: Digest) -> bool:
        tmp = self.local.temp_path()
        try:
            if not remote.call(lambda t: t.fetch_blob(digest, tmp), False):
                return False
            if digest_file(tmp) != digest:
                remote.stats.errors += 1
                self.report(f"cache tier {remote.stats.name}: blob {digest.hash[:12]} failed verification; ignored")
                return False
            remote.stats.bytes_down += digest.size_bytes
            self.local.adopt(digest, tmp)
            return True
        except OSError as e:
            self.report(f"cannot store a downloaded blob in {self.local.root}: {e.strerror}")
            return False
        finally:
            tmp.unlink(missing_ok=True)

    # -- writes ------------------------------------------------------------------------------------------------

    def put_action(self, key: Digest, result: bytes, blobs: Sequence[Digest]) -> None:
        """Record an action result whose blobs are already in the local tier; upload to remotes behind."""
        self.local.write_action(key, result)
        if self.read_only or not self.remotes:
            return
        unique = list(dict.fromkeys(blobs))
        with self._pool_lock:
            if self._upload_pool is None:
                self._upload_pool = ThreadPoolExecutor(UPLOAD_WORKERS, thread_name_prefix="gaffer-upload")
            self._uploads.append(self._upload_pool.submit(self._upload, key, result, unique))

    def _upload(self, key: Digest, result: bytes, blobs: list[Digest]) -> None:
        for remote in self.remotes:
            missing = remote.call(lambda t: t.find_missing(blobs), None)
            if missing is None:
                continue
            # `call` returns its default (False) when the tier failed; the writes themselves return None.
            for digest in missing:
                path = self.local.blob_path(digest)
                if remote.call(lambda t: t.upload_blob(digest, path) or True, False):
                    remote.stats.bytes_up += digest.size_bytes
            if remote.call(lambda t: t.write_action(key, result) or True, False):
                remote.stats.bytes_up += len(result)

    def flush(self) -> None:
        """Wait for write-behind uploads; say so on stderr if that takes more than a second."""
        with self._pool_lock:
            pending = self._uploads
            self._uploads = []
        if not pending:
            return
        done, not_done = wait(pending, timeout=1.0)
        if not_done:
            print(f"gaffer: uploading {format_count(len(not_done), 'result')} to the remote cache...", file=sys.stderr,
                  flush=True)
            wait(not_done)

    def close(self) -> None:
        self.flush()
        if self._upload_pool is not None:
            self._upload_pool.shutdown()
        for remote in self.remotes:
            remote.close()
        self.local.close()

    # -- reporting ---------------------------------------------------------------------------------------------

    def tier_stats(self) -> list[TierStats]:
        self.local_stats.bytes_down = self.local.bytes_served
        self.local_stats.bytes_up = self.local.bytes_stored
        return [self.local_stats] + [r.stats for r in self.remotes]
