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
- Storage: `verified`, one line per record appended with one `write` (O_APPEND, so several processes can append
  at once), each line with its own CRC: a torn or damaged line is skipped, so a crash costs re-hashing only.
  Read once per process, lazily; a log with many superseded lines is rewritten (temp file + rename; a line
  another process appends meanwhile is lost, which again only costs a hash).
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

Signature = tuple[int, int, int, int, int]

RACY_NS = 2_000_000_000  # above any file system's timestamp granularity (1 s) plus clock jitter
_COMPACT_SLACK = 1024  # rewrite the log when it holds this many lines more than twice its records


def signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def settled(st: os.stat_result) -> bool:
    """Is the file's last change older than any tick a later edit could share? (False for one in the future.)"""
    return time.time_ns() - st.st_ctime_ns >= RACY_NS


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

    def __init__(self, path: Path, writable: bool, temp_path: Callable[[], Path]) -> None:
        self.path = path
        self.writable = writable
        self._temp_path = temp_path
        self._records: dict[str, Signature] | None = None
        # Remembered before the log was read (a build storing its outputs, which never asks what it trusts):
        # added when it is read, so that storing one blob does not parse 20,000 lines.
        self._early: dict[str, Signature] = {}
        self._lock = threading.Lock()

    def _loaded(self) -> dict[str, Signature]:
        with self._lock:
            if self._records is None:
                self._records, lines = self._read()
                if self.writable and lines > 2 * len(self._records) + _COMPACT_SLACK:
                    self._rewrite(self._records)
                self._records.update(self._early)
                self._early.clear()
            return self._records

    def _read(self) -> tuple[dict[str, Signature], int]:
        try:
            lines = self.path.read_bytes().splitlines(keepends=True)
        except OSError:
            return {}, 0
        records = {}
        for line in lines:
            parsed = _parse(line)
            if parsed is not None:
                records[parsed[0]] = parsed[1]
        return records, len(lines)

    def trusts(self, blob_hash: str, st: os.stat_result) -> bool:
        return self._loaded().get(blob_hash) == signature(st)

    def remember(self, blob_hash: str, st: os.stat_result, *, persist: bool = True) -> None:
        """Record that the file with stat `st` was hashed and is right. A racy signature is not recorded; one this
        process installed itself is trusted by this process alone (`persist=False`)."""
        if persist and not settled(st):
            return
        sig = signature(st)
        with self._lock:  # several threads at once (gobuildcache's pool); `prune` iterates the dict
            records = self._records if self._records is not None else self._early
            if records.get(blob_hash) == sig:
                return
            records[blob_hash] = sig
        if persist and self.writable:
            self._append(_line(blob_hash, sig))

    def forget(self, blob_hash: str) -> None:
        records = self._loaded()
        with self._lock:
            records.pop(blob_hash, None)

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
        records = self._loaded()
        with self._lock:
            kept = {h: sig for h, sig in records.items() if h in present and signature(present[h]) == sig}
        self._store(kept)

    def _store(self, records: dict[str, Signature]) -> None:
        with self._lock:
            self._records = records
            if self.writable:
                self._rewrite(records)

    def _rewrite(self, records: dict[str, Signature]) -> None:
        try:
            tmp = self._temp_path()
        except OSError:
            return
        try:
            with open(tmp, "wb") as f:
                f.write(b"".join(_line(h, sig) for h, sig in records.items()))
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)

    def clear(self) -> None:
        with self._lock:
            self._records = {}
            self.path.unlink(missing_ok=True)
