"""The disk tier's record of blobs it verified: a blob whose stat signature still matches is not hashed again.

Hashing every blob on every read is what made a warm gobuildcache slower than Go's own cache (Go trusts its
cache files outright, ccache too). gaffer trusts a local blob only while nothing about its file changed since
gaffer itself hashed it: the signature is (size, device, inode, mtime, ctime), and ctime cannot be set back by
anyone but the kernel, so an edit in place, a replacement (a new inode), a copy to another machine or directory
(new inode and ctime) all mean "hash it again". Bit rot changes no signature: `gaffer cache verify` always
re-hashes everything.

- Racy signatures: a file system stamps times in ticks (1 s on some); a file changed again within the tick it was
  hashed in keeps its signature. A signature is recorded only once its ctime is RACY_NS older than the clock, so
  a later edit always lands in a later tick.
- The LRU touch (an mtime refresh, at most once an hour of use) moves the signature too: that blob is hashed
  once more, then recorded again.
- Power loss: a file system may commit a file's size and times before its data (XFS; ext4 with
  data=writeback), so a blob torn by a crash can keep the signature it was hashed with. Records therefore hold
  for the boot they were made in: `verified` starts with the kernel's boot id, and a log from another boot (or
  with no such line) is dropped. Where there is no boot id (not Linux), records last only as long as the process.
- Storage: `verified`, one line per record appended with one `write` (O_APPEND, so several processes can append
  at once), each line with its own CRC: a torn or damaged line is skipped, so a crash costs re-hashing only.
  Read once per process, lazily, and each line parsed and checked only when its blob is asked about (a process
  asks about a few of a big store's blobs: gobuildcache's warm `go build std`, 1,000 of them); a log with many
  superseded lines is rewritten (temp file + rename; a line another process appends meanwhile is lost, which again
  only costs a hash). Where one blob has several lines, the last one counts (damaged, it is a hash again).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable

Signature = tuple[int, int, int, int, int]

BOOT_ID = "/proc/sys/kernel/random/boot_id"
RACY_NS = 2_000_000_000  # above any file system's timestamp granularity (1 s) plus clock jitter
_COMPACT_SLACK = 1024  # rewrite the log when it holds this many lines more than twice its records


def signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def settled(st: os.stat_result) -> bool:
    """Is the file's last change older than any tick a later edit could share? (False for one in the future.)"""
    return time.time_ns() - st.st_ctime_ns >= RACY_NS


def boot_header() -> bytes | None:
    """The log's first line for this boot; None where the kernel does not say which boot this is."""
    try:
        with open(BOOT_ID, "rb") as f:
            boot = f.read().strip()
    except OSError:
        return None
    return b"boot " + boot + b"\n" if boot and boot.isascii() and b" " not in boot else None


def _line(blob_hash: str, sig: Signature) -> bytes:
    text = f"{blob_hash} {' '.join(map(str, sig))}"
    return f"{text} {zlib.crc32(text.encode()):08x}\n".encode()


def _parse(line: bytes) -> tuple[str, Signature] | None:
    text, _, crc = line.rstrip(b"\n").rpartition(b" ")
    try:
        if int(crc, 16) != zlib.crc32(text):
            return None
        blob_hash, *fields = text.decode().split(" ")
        sig = tuple(int(f) for f in fields)
    except ValueError:
        return None
    return (blob_hash, sig) if len(sig) == 5 else None


class TrustedBlobs:
    """Blob hash -> the signature its file had when this store last hashed it (and found it right)."""

    def __init__(self, path: str, writable: bool, temp_path: Callable[[], str]) -> None:
        self.path = path
        self.writable = writable
        self._temp_path = temp_path
        self._records: dict[str, Signature] | None = None
        self._unparsed: dict[bytes, bytes] = {}  # the log's last line for each blob hash not yet looked up
        # Installed by this process before the log was read (a build storing its outputs never asks what it
        # trusts): added when the log is read, so that storing one blob does not parse 20,000 lines.
        self._early: dict[str, Signature] = {}
        self._lock = threading.Lock()
        self._header: bytes | None = None

    def _loaded(self) -> dict[str, Signature]:
        with self._lock:
            if self._records is None:
                self._header = boot_header()
                unparsed, lines = self._read()
                if unparsed is None and self.writable and self._header is not None and self._create():
                    unparsed, lines = self._read()  # this process, or one that raced it, made the log
                self._unparsed = unparsed if unparsed is not None else {}
                self._records = {}
                if self.writable and self._header is not None and (
                        unparsed is None or lines > 2 * len(self._unparsed) + _COMPACT_SLACK):
                    self._rewrite(self._parse_all())  # another boot's log: a fresh one, which appends follow
                self._records.update(self._early)
                self._early.clear()
            return self._records

    def _parse_all(self) -> dict[str, Signature]:
        """Every record, the log's lines parsed now (the caller holds the lock): for the functions that rewrite
        the log."""
        assert self._records is not None
        for key, line in self._unparsed.items():
            parsed = _parse(line)
            if parsed is not None and parsed[0].encode() == key:
                self._records.setdefault(parsed[0], parsed[1])
        self._unparsed.clear()
        return self._records

    def _record(self, blob_hash: str) -> Signature | None:
        """The blob's record, its log line parsed and checked if this is the first time it is asked about."""
        records = self._loaded()
        sig = records.get(blob_hash)
        if sig is not None or not self._unparsed:
            return sig
        with self._lock:
            line = self._unparsed.pop(blob_hash.encode(), None)
            if line is not None:
                parsed = _parse(line)
                if parsed is not None and parsed[0] == blob_hash:
                    records.setdefault(blob_hash, parsed[1])  # one remembered meanwhile is newer
            return records.get(blob_hash)

    def _create(self) -> bool:
        """Start an absent log with this boot's line; True if the log now exists (made here or by another). It
        appears whole (a temp file linked into place): a process racing this one, finding it still empty, would
        take it for another boot's and replace it, losing the lines appended to it meanwhile."""
        try:
            tmp = self._temp_path()
        except OSError:
            return False
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                os.write(fd, self._header or b"")
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.path)
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _read(self) -> tuple[dict[bytes, bytes] | None, int]:
        """Blob hash -> its last line, unparsed, or None when the log is absent or from another boot; and the log's
        line count."""
        try:
            with open(self.path, "rb") as f:
                lines = f.read().splitlines(keepends=True)
        except OSError:
            return None, 0
        if self._header is None or not lines or lines[0] != self._header:
            return None, len(lines)
        return {line[:64]: line for line in lines[1:]}, len(lines)

    def trusts(self, blob_hash: str, st: os.stat_result) -> bool:
        return self._record(blob_hash) == signature(st)

    def remember(self, blob_hash: str, st: os.stat_result, *, persist: bool = True) -> None:
        """Record that the file with stat `st` was hashed and is right. A racy signature is not recorded; one this
        process installed itself is trusted by this process alone (`persist=False`)."""
        if persist and not settled(st):
            return
        sig = signature(st)
        loaded = self._loaded() if persist else None  # appending needs the log's boot checked first
        with self._lock:  # several threads at once (gobuildcache's pool); `prune` iterates the dict
            records = loaded if loaded is not None else self._records if self._records is not None else self._early
            if records.get(blob_hash) == sig:
                return
            records[blob_hash] = sig
        if persist and self.writable and self._header is not None:
            self._append(_line(blob_hash, sig))

    def forget(self, blob_hash: str) -> None:
        records = self._loaded()
        with self._lock:
            records.pop(blob_hash, None)
            self._unparsed.pop(blob_hash.encode(), None)

    def _append(self, line: bytes) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError:
            return  # a record is an optimisation: without it the blob is hashed next time
        try:
            os.write(fd, line)
        except OSError:
            pass
        finally:
            os.close(fd)

    def replace(self, verified: Iterable[tuple[str, os.stat_result]]) -> None:
        """Make the log hold exactly these records (the settled ones): `verify` just hashed the whole store."""
        self._store({h: signature(st) for h, st in verified if settled(st)})

    def prune(self, present: dict[str, os.stat_result]) -> None:
        """Keep only the records whose blob is still there, unchanged: after `gc` walked (and thinned) the store."""
        self._loaded()
        with self._lock:
            kept = {h: sig for h, sig in self._parse_all().items() if h in present and signature(present[h]) == sig}
        self._store(kept)

    def _store(self, records: dict[str, Signature]) -> None:
        with self._lock:
            self._header = boot_header()
            self._records = records
            self._unparsed.clear()
            if self.writable and self._header is not None:
                self._rewrite(records)

    def _rewrite(self, records: dict[str, Signature]) -> None:
        try:
            tmp = self._temp_path()
        except OSError:
            return
        try:
            with open(tmp, "wb") as f:
                f.write(b"".join([self._header or b"", *(_line(h, sig) for h, sig in records.items())]))
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def clear(self) -> None:
        with self._lock:
            self._records = {}
            self._unparsed.clear()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
