"""The tiered cache: the local disk tier first, remote tiers behind it; itself a `CacheTier`, so it nests.

- Reads go near to far; a remote hit fills the local tier (and nearer remotes unless read-only).
- Every downloaded blob is verified against its digest before it is stored or used; a bad one is a miss for that
  tier, is not stored, and is reported: the first per remote tier and build (so is an unusable action result,
  `reject`), the others counted in its errors.
- Writes land locally at once (the caller did that) and go to remotes behind the build, on a small thread pool:
  FindMissingBlobs first so nothing is uploaded twice, the blobs, then the action result. `flush()` waits.
- Each remote is wrapped in a `ResilientTier`: retried with backoff and jitter; if it keeps failing, one warning
  names it and the rest of the process goes on without it. A remote never fails a build.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from gaffer.cache.base import CacheTier
from gaffer.cache.disk import DiskStore
from gaffer.cache.resilient import ResilientTier, TierStats
from gaffer.digest import EMPTY_DIGEST, Digest, digest_bytes
from gaffer.units import format_count

if TYPE_CHECKING:  # the thread pools serve remote tiers only: a local-only build never imports concurrent.futures
    from concurrent.futures import Future, ThreadPoolExecutor

UPLOAD_WORKERS = 4
DOWNLOAD_WORKERS = 8
READ_GROUP_BLOB_BYTES = 1 << 20  # blobs up to this size are read many to a call, in memory; larger ones streamed
READ_GROUP_BYTES = 4 << 20  # the most bytes one such call asks for (REAPI servers commonly accept 4 MiB batches)
READ_GROUP_COUNT = 256


def _warn(message: str) -> None:
    print(f"gaffer: warning: {message}", file=sys.stderr)


class TieredCache(CacheTier):
    """The cache every front end uses: `local` (a DiskStore) plus remote tiers, nearest first. Remotes may be
    tiers of any kind, a TieredCache included; each is wrapped in a ResilientTier unless it is one already."""

    def __init__(
        self,
        local: DiskStore,
        remotes: Sequence[CacheTier | tuple[str, Callable[[], CacheTier]]] = (),
        *,
        read_only: bool = False,
        report: Callable[[str], None] = _warn,
    ) -> None:
        self.local = local
        self.name = local.name
        self.read_only = read_only
        self.report = report
        self.local_stats = TierStats(name=local.name)
        self.remotes: list[ResilientTier] = []
        for r in remotes:
            if isinstance(r, ResilientTier):
                self.remotes.append(r)
            elif isinstance(r, CacheTier):
                self.remotes.append(ResilientTier(r, r.name, report))
            else:
                self.remotes.append(ResilientTier(r[1], r[0], report))
        self._uploads: list[Future[None]] = []
        self._upload_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()  # also guards _served
        self._served: dict[Digest, list[TierStats]] = {}  # key -> the tiers whose entries await settle()
        self._told: set[str] = set()  # the remote tiers whose first bad entry or blob was reported
        self._store_failed = False  # a downloaded blob could not be stored: said once
        self._corrupt_in: dict[str, set[Digest]] = {}  # remote tier -> the blobs it served that failed verification

    def connect(self) -> None:
        """Open every remote tier at once, in parallel; one that fails its check is disabled with a warning."""
        if len(self.remotes) == 1:
            self.remotes[0].check()
        elif self.remotes:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(self.remotes)) as pool:
                list(pool.map(ResilientTier.check, self.remotes))

    def check(self) -> None:
        self.connect()

    # -- reads -------------------------------------------------------------------------------------------------

    def get_action(self, key: Digest) -> bytes | None:
        """The serialized ActionResult for `key`, from the nearest tier that has it (filling nearer ones)."""
        data = self.local.read_action(key)
        if data is not None:
            self._unsettled(key, self.local_stats)
            return data
        self.local_stats.misses += 1
        for i, remote in enumerate(self.remotes):
            data = remote.read_action(key)
            if data is None:
                if remote.healthy:
                    remote.stats.misses += 1
                continue
            self._unsettled(key, remote.stats)
            remote.stats.bytes_down += len(data)
            self.local.write_action(key, data)
            if not self.read_only:
                for nearer in self.remotes[:i]:
                    nearer.write_action(key, data)
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

    def reject(self, key: Digest, what: str, problem: str) -> None:
        """The entry `get_action(key)` returned cannot be used (`problem`: unreadable, unsafe, a blob gone): a
        warning naming `what` (the task), once per remote tier and build (a remote serving nothing but garbage is
        one fault: later ones are only counted in its errors). The caller still `settle`s it, as a miss."""
        with self._pool_lock:
            waiting = self._served.get(key)
            tier = waiting[-1] if waiting else None  # the one `settle` takes next
        if tier is None or tier is self.local_stats:
            self.report(f"{what} ignored: {problem}")
        else:
            self._bad(tier, f"{what}: {problem}")

    def _bad(self, tier: TierStats, problem: str) -> None:
        """Something a remote tier served failed a check: counted in its errors, said for its first only."""
        with self._pool_lock:
            tier.errors += 1
            first = tier.name not in self._told
            self._told.add(tier.name)
        if first:
            self.report(f"cache tier {tier.name}: {problem}; ignored (later ones from this tier are only counted "
                        "in its errors)")

    def peek_action(self, key: Digest) -> bytes | None:
        """The ActionResult for `key` from the nearest tier that has it, filling no tier and counting nothing:
        what `--dry-run` asks so that predicting a build changes no cache."""
        data = self.local.read_action(key)
        for remote in self.remotes:
            if data is not None:
                break
            data = remote.read_action(key)
        return data

    def ensure_local(self, digests: Sequence[Digest]) -> bool:
        """Make every blob present (and verified) in the local tier, fetching from remotes. False if any is
        missing everywhere."""
        return not self.fill_local(digests)

    def fill_local(self, digests: Sequence[Digest]) -> list[Digest]:
        """Fetch the blobs of `digests` the local tier lacks from the remotes, each verified before it is stored;
        the ones still missing (absent everywhere, or corrupt). Small blobs travel many to a `read_blobs` call
        (one BatchReadBlobs on REAPI), those groups and the larger blobs (streamed to a file) several at a time."""
        missing = self.local.find_missing(list(dict.fromkeys(digests)))
        if EMPTY_DIGEST in missing:  # the empty blob is always available (REAPI): no server has to hold it
            self.local.write_blob(EMPTY_DIGEST, b"")
            missing.remove(EMPTY_DIGEST)
        for i, remote in enumerate(self.remotes):
            if not missing or not remote.healthy:
                continue
            jobs = [partial(self._read_group, remote, group) for group in read_groups(missing)]
            if len(jobs) == 1:
                done = jobs[0]()
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(min(DOWNLOAD_WORKERS, len(jobs))) as pool:
                    done = set().union(*pool.map(lambda job: job(), jobs))
            if done and i and not self.read_only:  # the nearer remotes got the entries (get_action): their blobs too
                self._behind(None, b"", [d for d in missing if d in done], self.remotes[:i])
            missing = [d for d in missing if d not in done]
        return missing

    def _read_group(self, remote: ResilientTier, group: list[Digest]) -> set[Digest]:
        """Read a group of `read_groups` (one blob: streamed) and store those that match their digests: the ones
        now local."""
        if len(group) == 1:
            return self._fetch_one(remote, group[0])
        stored = set()
        wanted = set(group)
        for digest, data in remote.read_blobs(group).items():
            if digest not in wanted:
                continue
            if digest_bytes(data) != digest:
                self._corrupt(remote, digest)
                continue
            remote.stats.bytes_down += digest.size_bytes
            try:
                self.local.adopt(digest, self.local.write_temp(data))
            except OSError as e:
                self._cannot_store(e)
                continue
            stored.add(digest)
        return stored

    def _cannot_store(self, e: OSError) -> None:
        """A downloaded blob had nowhere to go (the local disk full, its temp directory too): a miss, said once."""
        with self._pool_lock:
            first = not self._store_failed
            self._store_failed = True
        if first:
            self.report(f"cannot store a downloaded blob in {self.local.root}: {e.strerror or e} (those that follow "
                        "are misses too)")

    def _corrupt(self, remote: ResilientTier, digest: Digest) -> None:
        with self._pool_lock:
            self._corrupt_in.setdefault(remote.name, set()).add(digest)
        self._bad(remote.stats, f"blob {digest.hash[:12]} failed verification")

    def _fetch_one(self, remote: ResilientTier, digest: Digest, again: bool = True) -> set[Digest]:
        """Stream one blob into a temp file, verify it and store it: {digest} if it is now local. A disk that fills
        up meanwhile turns the local tier read-only (it then holds what it is given outside that disk, for this
        process): the blob is fetched once more."""
        tmp = self.local.temp_path()
        try:
            got = remote.fetch_hashed(digest, tmp)
            if got is None:
                return set()
            if got != digest:
                self._corrupt(remote, digest)
                return set()
            remote.stats.bytes_down += digest.size_bytes
            self.local.adopt(digest, tmp)
            return {digest}
        except OSError as e:
            if again and self.local.full(e):
                tmp.unlink(missing_ok=True)
                return self._fetch_one(remote, digest, again=False)
            self._cannot_store(e)
            return set()
        finally:
            tmp.unlink(missing_ok=True)

    # -- writes ------------------------------------------------------------------------------------------------

    def put_action(self, key: Digest, result: bytes, blobs: Sequence[Digest]) -> None:
        """Record an action result whose blobs are already in the local tier; upload to remotes behind."""
        self.local.write_action(key, result)
        self._behind(key, result, blobs)

    @property
    def uploads(self) -> bool:
        """Does a write go on to remote tiers (so the blobs it names must be in the local tier to be read)?"""
        return bool(self.remotes) and not self.read_only

    def _behind(self, key: Digest | None, result: bytes, blobs: Sequence[Digest],
                remotes: Sequence[ResilientTier] | None = None) -> None:
        """Upload `blobs` (already local), then the action result if `key`, to the remotes (all, or `remotes`)
        behind the build."""
        if not self.uploads:
            return
        unique = list(dict.fromkeys(blobs))
        with self._pool_lock:
            if self._upload_pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._upload_pool = ThreadPoolExecutor(UPLOAD_WORKERS, thread_name_prefix="gaffer-upload")
            self._uploads.append(self._upload_pool.submit(self._upload, key, result, unique, remotes or self.remotes))

    def _upload(self, key: Digest | None, result: bytes, blobs: list[Digest], remotes: Sequence[ResilientTier]) -> None:
        for remote in remotes:
            if not remote.healthy or not remote.writable:
                continue
            missing = remote.find_missing(blobs) if blobs else []
            with self._pool_lock:  # present, but not what its digest says: sent again, to replace it
                corrupt = self._corrupt_in.get(remote.name, set())
            missing += [d for d in blobs if d in corrupt and d not in missing]
            if self.local.find_missing(missing):  # a full (read-only) local tier did not keep them: nothing to send,
                continue                          # nor a result naming them
            for digest in missing:
                if digest in corrupt:
                    remote.replace_blob(digest, self.local.blob_path(digest))
                else:
                    remote.upload_blob(digest, self.local.blob_path(digest))
            if key is not None:
                remote.write_action(key, result)

    # -- the CacheTier interface, for a TieredCache nested in another cache ------------------------------------

    def read_blob(self, digest: Digest) -> bytes | None:
        return self.local.read_blob(digest) if self.ensure_local([digest]) else None

    def fetch_blob(self, digest: Digest, dest: Path) -> bool:
        return self.ensure_local([digest]) and self.local.fetch_blob(digest, dest)

    def write_blob(self, digest: Digest, data: bytes) -> None:
        self.local.write_blob(digest, data)
        self._behind(None, b"", [digest])

    def upload_blob(self, digest: Digest, path: Path) -> None:
        self.local.upload_blob(digest, path)
        self._behind(None, b"", [digest])

    def find_missing(self, digests: Sequence[Digest]) -> list[Digest]:
        """The blobs no tier holds (presence only: nothing is fetched or verified, nothing filled): `contains`
        asks this for `--dry-run`."""
        missing = [d for d in self.local.find_missing(list(dict.fromkeys(digests))) if d != EMPTY_DIGEST]
        for remote in self.remotes:
            if not missing:
                break
            missing = remote.find_missing(missing)
        return missing

    def read_action(self, key: Digest) -> bytes | None:
        """`get_action`, counted as a hit at once: a caller through this interface has no `settle`."""
        data = self.get_action(key)
        if data is not None:
            self.settle(key, True)
        return data

    def write_action(self, key: Digest, result: bytes) -> None:
        """An action result whose blobs were stored through this cache, uploaded behind the build like them (a
        server that checks completeness, as `gaffer serve` does, answers a miss until they have all arrived)."""
        self.put_action(key, result, [])

    def flush(self) -> None:
        """Wait for write-behind uploads; say so on stderr if that takes more than a second."""
        with self._pool_lock:
            pending = self._uploads
            self._uploads = []
        if not pending:
            return
        from concurrent.futures import wait

        not_done = wait(pending, timeout=1.0).not_done
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


def read_groups(digests: Sequence[Digest], first: int = READ_GROUP_COUNT) -> list[list[Digest]]:
    """`digests` in their order, in groups for one read each: small blobs together, up to a bounded count and
    size (`first` blobs in the first group, twice as many in each next one up to READ_GROUP_COUNT, so the first
    arrive soon), a larger blob alone (it is streamed)."""
    groups: list[list[Digest]] = []
    current: list[Digest] = []  # the group of small blobs being filled
    total = limit = 0  # its bytes and most blobs
    doublings = 0
    for d in digests:
        if d.size_bytes > READ_GROUP_BLOB_BYTES:
            groups.append([d])
            current = []
            continue
        if not current or len(current) >= limit or total + d.size_bytes > READ_GROUP_BYTES:
            limit = min(READ_GROUP_COUNT, first << doublings)
            doublings = min(doublings + 1, READ_GROUP_COUNT.bit_length())
            current, total = [], 0
            groups.append(current)
        current.append(d)
        total += d.size_bytes
    return groups
