"""Go's build cache on gaffer's cache: ActionID -> ActionResult in the action cache, the body in the CAS.

The local tier is a `DiskStore`; a hit's `DiskPath` is the CAS blob file itself (plain bytes, no extension),
checked against its digest first (or trusted, unchanged since the store hashed it), so nothing is copied on a hit
and a corrupt blob is a miss. Remote tiers, when
configured, sit behind it in a `TieredCache`: a local miss reads through them (filling the local tier), and puts
are uploaded behind the build and flushed at close. Every fault on the way to a hit is a miss; a put fails only
when the local disk does, because `go` needs a DiskPath.
"""

from __future__ import annotations

import errno
import os
import threading
import time

from gaffer.cache.base import TierError
from gaffer.cache.disk import DiskStore
from gaffer.digest import Digest, digest_bytes
from gaffer.errors import EnvironmentProblem, UserError
from gaffer.gocache.config import Config, check_remotes
from gaffer.gocache.entry import (
    CorruptEntry,
    GoEntry,
    action_key,
    decode_entry,
    encode_entry,
)
from gaffer.gocache.protocol import DEFER, Hit, log_line
from gaffer.tuples import TYPE_CHECKING
from gaffer.units import format_size

if TYPE_CHECKING:
    from gaffer.cache.tiered import TieredCache
    from gaffer.gocache.prefetch import Prefetch
    from gaffer.gocache.protocol import Deferred

AT_ONCE_MAX_BYTES = 1 << 20  # hashing 1 MiB takes about a millisecond: bigger untrusted blobs are verified on the pool
_FULL = (errno.ENOSPC, errno.EDQUOT)


class GoStats:
    """Counters for the one stats line at close."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gets = self.hits = self.puts = self.bytes_read = self.bytes_written = self.errors = 0

    def count(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


def open_local(path: str) -> DiskStore:
    """The local tier, in a directory of this user's own (see `own_directory`), writable: go needs a DiskPath
    for every put."""
    own_directory(path)
    try:
        local = DiskStore(path, report=log_line)
    except TierError as e:
        raise EnvironmentProblem(f"local cache directory: {e}") from None
    if not local.writable:
        raise EnvironmentProblem(f"local cache directory {path} is read-only: go needs to write its entries there")
    return local


def own_directory(path: str) -> None:
    """Create `path` private (0700), or check that it belongs to this user. The default directories sit in
    /tmp, where anyone can create them first: one made by another user would let that user plant the build
    outputs go links into this user's programs."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return  # DiskStore says why it cannot be made
    try:
        stats = (os.lstat(path), os.stat(path))  # a symlink, and what it points to, must be this user's too
    except OSError:
        return  # DiskStore says why it cannot be used
    for st in stats:
        if st.st_uid != os.geteuid():
            raise EnvironmentProblem(
                f"local cache directory {path} belongs to another user (uid {st.st_uid}), who could plant cache"
                " entries in it: remove it, or set CACHE_DIR (S3_TMP_DIR for s3) to a directory of your own"
            )


class Overflow:
    """Where a put's body goes when the local tier's disk is full: go fails its build on a put's Err, so it gets a
    file of this command's own instead (in the temp directory, removed at close) and nothing is cached."""

    def __init__(self, local: DiskStore) -> None:
        self._local = local
        self._dir: str | None = None
        self._count = 0
        self._lock = threading.Lock()

    def file(self, body: bytes, why: OSError) -> str:
        """A new file holding `body`; EnvironmentProblem if even the temp directory cannot take it."""
        with self._lock:
            if self._dir is None:
                import tempfile

                try:
                    self._dir = tempfile.mkdtemp(prefix="gobuildcache-")
                except OSError as e:
                    raise EnvironmentProblem(f"{self._local.root}: {why.strerror}; temp directory: {e.strerror}") from None
                log_line(f"cache directory {self._local.root} is full ({why.strerror}): nothing new is stored; go's "
                         f"outputs are kept in {self._dir} until it ends")
            self._count += 1
            path = f"{self._dir}/{self._count}"
        try:
            with open(path, "xb") as f:
                f.write(body)
        except OSError as e:
            raise EnvironmentProblem(f"{self._local.root}: {why.strerror}; {path}: {e.strerror}") from None
        return path

    def remove(self) -> None:
        if self._dir is not None:
            import shutil

            shutil.rmtree(self._dir, ignore_errors=True)


class GoStore:
    """The `Handler` the protocol server calls, from several threads at once."""

    def __init__(self, local: DiskStore, tiered: TieredCache | None, *, show_stats: bool,
                 prefetch: Prefetch | None = None) -> None:
        self.local = local
        self.tiered = tiered
        self.show_stats = show_stats
        self.stats = GoStats()
        self.prefetch = prefetch
        self._used: dict[bytes, GoEntry] = {}  # with a prefetch: this command's entries, the next one's list
        self.overflow = Overflow(local)

    @classmethod
    def open(cls, config: Config) -> GoStore:
        local = open_local(config.local_dir)
        tiered = prefetch = None
        if config.remotes:
            from gaffer.cache.factory import open_cache

            check_remotes(config)

            tiered = open_cache(local, config.remotes, read_only=config.read_only, timeout=config.timeout,
                                report=log_line)
            if config.prefetch:
                from gaffer.gocache.prefetch import Prefetch, find_scope

                prefetch = Prefetch(tiered, find_scope(os.getcwd(), os.environ, os.getppid()), log_line)
                prefetch.start()
        return cls(local, tiered, show_stats=config.debug or config.stats, prefetch=prefetch)

    def get_local(self, action_id: bytes) -> Hit | None | Deferred:
        """The answer when the local tier alone gives it and checking the blob is cheap; else DEFER, and the pool
        runs `get` (through the remote tiers, or verifying a big blob off the reader thread)."""
        key = action_key(action_id)
        entry = self._entry(key, self.local.read_action(key))
        if entry is None and self.prefetch is not None:
            entry = self.prefetch.ready(action_id)
        if entry is not None and entry.body.size_bytes > AT_ONCE_MAX_BYTES and not self.local.trusts_blob(entry.body):
            return DEFER
        hit = self._hit(entry, fetch=False)
        if hit is None and self.tiered is not None:
            return DEFER
        self._count(action_id, entry, hit)
        return hit

    def get(self, action_id: bytes) -> Hit | None:
        key = action_key(action_id)
        if self.prefetch is not None:
            entry = self.prefetch.entry(action_id)
            hit = self._hit(entry, fetch=False)
            if hit is not None:
                self._count(action_id, entry, hit)
                return hit
        data = self.tiered.get_action(key) if self.tiered else self.local.read_action(key)
        entry = self._entry(key, data)
        hit = self._hit(entry, fetch=True)
        if self.tiered:
            self.tiered.settle(key, hit is not None)
        self._count(action_id, entry, hit)
        return hit

    def _entry(self, key: Digest, data: bytes | None) -> GoEntry | None:
        """The decoded entry; a damaged one is evicted and reported, and is a miss."""
        if data is None:
            return None
        try:
            return decode_entry(data)
        except CorruptEntry as e:
            self.stats.count(errors=1)
            log_line(f"cache entry {key.hash[:12]} in {self.local.root} is damaged ({e}); evicted, rebuilding")
            self.local.evict_action(key)
            return None

    def _hit(self, entry: GoEntry | None, *, fetch: bool) -> Hit | None:
        """The entry's body checked in the local tier (`fetch`: brought from the remote tiers if it is not)."""
        if entry is None:
            return None
        path = self.local.verified_blob_file(entry.body)
        if path is None and fetch and self.tiered is not None and self.tiered.ensure_local([entry.body]):
            path = self.local.verified_blob_file(entry.body)
        if path is None:
            return None
        return Hit(entry.output_id, entry.body.size_bytes, entry.put_time_ns, path)

    def _count(self, action_id: bytes, entry: GoEntry | None, hit: Hit | None) -> None:
        s = self.stats
        with s.lock:  # plain increments: this runs for every get
            s.gets += 1
            if hit is None or entry is None:
                return
            s.hits += 1
            s.bytes_read += hit.size
            if self.prefetch is not None:
                self._used.setdefault(action_id, entry)

    def put(self, action_id: bytes, output_id: bytes, body: bytes) -> str:
        """The file go is to read the body from: the local tier's blob, or on a full disk a file of this
        command's own (see `Overflow`)."""
        digest = digest_bytes(body)
        path = None
        try:
            # an existing blob is checked too: `go` will read the file we name
            path = self.local.verified_blob_file(digest)
            if path is None:
                self.local.write_blob(digest, body)
                path = self.local.blob_file(digest)
            entry = GoEntry(output_id, digest, time.time_ns())
            result = encode_entry(entry)
            if self.prefetch is not None:
                with self.stats.lock:
                    self._used[action_id] = entry
            if self.tiered is not None:
                self.tiered.put_action(action_key(action_id), result, [digest])
            else:
                self.local.write_action(action_key(action_id), result)
        except OSError as e:
            self.stats.count(errors=1)
            if e.errno not in _FULL:
                raise EnvironmentProblem(f"{self.local.root}: {e.strerror or e}") from None
            if path is None:  # else the blob is stored and only its entry is not: go can read the blob
                return self.overflow.file(body, e)
        self.stats.count(puts=1, bytes_written=len(body))
        return path

    def close(self) -> None:
        """Flush uploads, account the local tier (and GC it if over its bound), print the stats line."""
        if self.tiered is not None:
            if self.prefetch is not None:
                self.prefetch.store(self._used)
            self.tiered.close()
        else:
            self.local.close()
        self.overflow.remove()  # go sends close once it read its last file
        s = self.stats
        if s.gets or s.puts:
            self.local.record_build(hits=s.hits, misses=s.gets - s.hits)
        if self.show_stats:
            log_line(self.stats_line())

    def stats_line(self) -> str:
        s = self.stats
        remotes = self.tiered.tier_stats()[1:] if self.tiered is not None else []
        line = (
            f"stats: {s.gets} gets, {s.hits} hits, {s.gets - s.hits} misses, {s.puts} puts, "
            f"{format_size(s.bytes_read)} read, {format_size(s.bytes_written)} written, "
            f"{sum(r.seconds for r in remotes):.2f}s on remote tiers, "
            f"{s.errors + self.local.corrupt_evicted + sum(r.errors for r in remotes)} errors"
        )
        if self.prefetch is not None and self.prefetch.fetched:
            p = self.prefetch
            line += f", prefetched {p.fetched} entries ({format_size(p.fetched_bytes)} in {p.seconds:.2f}s)"
        for r in remotes:
            line += (
                f"; {r.name}: {r.hits} hits, {r.misses} misses, {format_size(r.bytes_down)} down, "
                f"{format_size(r.bytes_up)} up, {r.errors} errors" + (" (disabled)" if r.disabled else "")
            )
        return line


def clear(config: Config, *, local: bool, remote: bool) -> None:
    """`gobuildcache clear` / `clear-local` / `clear-remote`: empty the tiers; prints one line per tier."""
    if remote and config.read_only:
        raise UserError(f"clear-remote: {config.sources['read_only']} is set, so the remote tiers are never written")
    if remote and not local and not config.remotes:
        raise UserError("clear-remote: no remote tier is configured (BACKEND_TYPE=s3 or GOBUILDCACHE_CACHE=url)")
    if local:
        open_local(config.local_dir).clean()
        print(f"cleared disk://{config.local_dir}")
    if not remote:
        return
    from gaffer.cache.urls import open_tier, redact

    for url in config.remotes:
        tier = open_tier(url, timeout=config.timeout)
        try:
            clear_tier = getattr(tier, "clear", None)
            if clear_tier is None:
                raise UserError(f"clear-remote: {redact(url)} does not support clearing; empty it with its own tools")
            clear_tier()
        except TierError as e:
            raise EnvironmentProblem(f"clear-remote: {e}") from None
        finally:
            tier.close()
        print(f"cleared {redact(url)}")
