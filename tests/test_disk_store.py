"""The local disk tier: verified reads, corruption evicted and reported, peers cannot evict good blobs."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gaffer.cache.disk import SERVE_LOCK, DiskStore, MalformedHash
from gaffer.cache.trusted import BOOT_ID, _line, settled, signature
from gaffer.digest import Digest, digest_bytes


def store(tmp_path: Path) -> tuple[DiskStore, list[str]]:
    reports: list[str] = []
    return DiskStore(tmp_path / "cache", report=reports.append), reports


def test_round_trip_and_verified_paths(tmp_path: Path) -> None:
    s, reports = store(tmp_path)
    d = digest_bytes(b"content")
    s.write_blob(d, b"content")
    assert s.read_blob(d) == b"content"
    assert s.verified_blob_path(d) == s.blob_path(d)
    dest = tmp_path / "out"
    assert s.fetch_blob(d, dest) and dest.read_bytes() == b"content"
    assert s.find_missing([d, digest_bytes(b"other")]) == [digest_bytes(b"other")]
    assert reports == []


def test_corrupt_blob_is_evicted_and_reported(tmp_path: Path) -> None:
    s, reports = store(tmp_path)
    d = digest_bytes(b"content")
    s.write_blob(d, b"content")
    s.blob_path(d).write_bytes(b"CONTENT")  # same size, other bytes
    assert s.read_blob(d) is None
    assert not s.blob_path(d).exists() and len(reports) == 1 and "corrupt" in reports[0]


def test_truncated_blob_is_evicted_by_a_presence_check(tmp_path: Path) -> None:
    s, reports = store(tmp_path)
    d = digest_bytes(b"content")
    s.write_blob(d, b"content")
    s.blob_path(d).write_bytes(b"cont")
    assert s.find_missing([d]) == [d]
    assert not s.blob_path(d).exists() and len(reports) == 1


def test_a_wrong_size_from_a_peer_does_not_evict_a_good_blob(tmp_path: Path) -> None:
    """An ActionResult from a remote tier may name a real hash with a wrong size: that is not corruption here."""
    s, reports = store(tmp_path)
    d = digest_bytes(b"content")
    s.write_blob(d, b"content")
    lie = Digest(d.hash, d.size_bytes + 100)
    assert s.find_missing([lie]) == [lie]
    assert s.read_blob(lie) is None
    assert s.verified_blob_path(lie) is None
    assert s.read_blob(d) == b"content" and reports == []


def test_gc_evicts_least_recently_used_down_to_the_bound(tmp_path: Path) -> None:
    import os

    s, _ = store(tmp_path)
    digests = []
    for i in range(10):
        data = bytes([i]) * 1000
        d = digest_bytes(data)
        s.write_blob(d, data)
        os.utime(s.blob_path(d), (1000 + i, 1000 + i))  # blob i was last used at time 1000 + i
        digests.append(d)
    removed, freed = s.gc(max_size=5000)
    assert removed == 6 and freed == 6000  # down to 90% of 5000
    assert s.find_missing(digests) == digests[:6], "the oldest go first"


def test_an_existing_corrupt_blob_is_not_trusted_after_a_redundant_write(tmp_path: Path) -> None:
    """Adopting or storing content whose blob already exists keeps the existing file: it must still be checked."""
    s, reports = store(tmp_path)
    d = digest_bytes(b"content")
    s.write_blob(d, b"content")
    s.blob_path(d).write_bytes(b"CONTENT")  # corrupted behind the store's back
    source = tmp_path / "source"
    source.write_bytes(b"content")
    assert s.put_file(source) == d
    tmp = s.temp_path()
    tmp.write_bytes(b"content")
    s.adopt(d, tmp)
    assert s.verified_blob_path(d) is None and len(reports) == 1


# -- rule: a local blob is trusted (not hashed again) only while its file is exactly as gaffer last hashed it -----


def settled_blob(s: DiskStore, data: bytes) -> Digest:
    """A stored blob whose last change is old enough for its stat signature to be recorded (not racy)."""
    d = digest_bytes(data)
    s.write_blob(d, data)
    path = s.blob_path(d)
    while not settled(path.stat()):  # waiting on the clock itself, not on another process
        time.sleep(0.1)
    return d


def verified_in_another_process(root: Path, d: Digest) -> None:
    """Hash the blob in a process of its own, as one build would: the record is what later processes read."""
    code = ("import sys; from gaffer.cache.disk import DiskStore; from gaffer.digest import Digest; "
            "sys.exit(DiskStore(sys.argv[1]).verified_blob_path(Digest(sys.argv[2], int(sys.argv[3]))) is None)")
    subprocess.run([sys.executable, "-c", code, str(root), d.hash, str(d.size_bytes)], check=True)


def test_a_blob_hashed_once_is_trusted_by_later_processes(tmp_path: Path) -> None:
    s, _ = store(tmp_path)
    d = settled_blob(s, b"content")
    assert not DiskStore(s.root).trusts_blob(d), "written, never hashed: not trusted"
    verified_in_another_process(s.root, d)
    assert DiskStore(s.root).trusts_blob(d)


def test_a_blob_hashed_within_its_timestamp_tick_is_not_recorded(tmp_path: Path) -> None:
    """An edit in the same tick would keep the signature: a racy one is never recorded."""
    s, _ = store(tmp_path)
    d = digest_bytes(b"content")
    s.write_blob(d, b"content")
    verified_in_another_process(s.root, d)
    assert not DiskStore(s.root).trusts_blob(d)


@pytest.mark.parametrize("how", ["edited in place", "replaced by another file"])
def test_a_changed_blob_is_hashed_again_even_with_its_size_and_mtime_restored(tmp_path: Path, how: str) -> None:
    s, _ = store(tmp_path)
    d = settled_blob(s, b"content")
    verified_in_another_process(s.root, d)
    path = s.blob_path(d)
    before = path.stat()
    if how == "edited in place":
        with open(path, "r+b") as f:
            f.write(b"C")
    else:
        other = tmp_path / "other"
        other.write_bytes(b"CONTENT")
        os.replace(other, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # what `touch -r` or a careful tool does
    reports: list[str] = []
    later = DiskStore(s.root, report=reports.append)
    assert not later.trusts_blob(d)
    assert later.verified_blob_path(d) is None and not path.exists() and "corrupt" in reports[0]


def test_blobs_stored_before_the_record_is_read_join_it(tmp_path: Path) -> None:
    """Storing a blob does not read the record of every blob hashed before (an edit build stores one output
    into a store of thousands): what this process installed is trusted by it, and so is what the record says,
    whichever is asked about first."""
    s, _ = store(tmp_path)
    old = settled_blob(s, b"old")
    verified_in_another_process(s.root, old)
    for first in ("installed", "recorded"):
        source = tmp_path / f"{first}.txt"
        source.write_bytes(first.encode())
        later = DiskStore(s.root)
        new = later.put_file(source)  # installed by this process before anything read the record
        asked = [new, old] if first == "installed" else [old, new]
        assert all(later.trusts_blob(d) for d in asked)
        assert not DiskStore(s.root).trusts_blob(new), "its racy signature is this process's only"


def test_a_blob_copied_with_its_record_from_another_store_is_hashed(tmp_path: Path) -> None:
    """Another machine's or directory's files (here a `cp -a` of the whole store, record included) are checked."""
    s, _ = store(tmp_path)
    d = settled_blob(s, b"content")
    verified_in_another_process(s.root, d)
    copy = tmp_path / "copy"
    shutil.copytree(s.root, copy, copy_function=shutil.copy2)
    assert (copy / "verified").exists() and not DiskStore(copy).trusts_blob(d)


def test_verify_hashes_trusted_blobs_too(tmp_path: Path) -> None:
    """Bit rot changes content and no signature: a trusted blob is served, and `verify` still finds it."""
    s, _ = store(tmp_path)
    d = settled_blob(s, b"content")
    path = s.blob_path(d)
    path.write_bytes(b"CONTENT")  # the rot, then a record of the rotten file's signature, as if made before it
    while not settled(path.stat()):
        time.sleep(0.1)
    s.trusted.remember(d.hash, path.stat())
    assert DiskStore(s.root).verified_blob_path(d) == path  # the trade: an unchanged file is not hashed again
    reports: list[str] = []
    report = DiskStore(s.root, report=reports.append).verify()
    assert report.corrupt == [d.hash] and not path.exists() and len(reports) == 1


def test_verify_of_a_cache_no_server_used_leaves_no_server_lock(tmp_path: Path) -> None:
    """`verify` takes a `gaffer serve` store's lock only where a server has made one: a build's own cache gets no
    `serve.lock` file."""
    s, _ = store(tmp_path)
    s.write_blob(digest_bytes(b"content"), b"content")
    assert s.verify().checked == 1
    assert not (s.root / SERVE_LOCK).exists()


def test_a_damaged_record_is_ignored(tmp_path: Path) -> None:
    s, _ = store(tmp_path)
    d = settled_blob(s, b"content")
    verified_in_another_process(s.root, d)
    log = s.root / "verified"
    good = log.read_bytes()
    log.write_bytes(good[:-3] + b"0\n" + good[:20])  # a flipped checksum digit and a torn line
    assert not DiskStore(s.root).trusts_blob(d)
    assert DiskStore(s.root).verified_blob_path(d) == s.blob_path(d)


def test_a_blobs_last_record_counts_and_each_line_is_checked_when_asked(tmp_path: Path) -> None:
    """The log's lines are parsed only when their blob is asked about: the last line of a blob is its record (a
    stale signature after a current one is not trusted, the reverse is), and a damaged line or one for a longer
    name is no record, whatever the lines before it say; the blobs not asked about stay trusted through `gc`'s
    rewrite of the log."""
    s, _ = store(tmp_path)
    current, stale, damaged, prefixed, other = (settled_blob(s, b"blob %d" % i) for i in range(5))
    for d in (current, stale, damaged, prefixed, other):
        verified_in_another_process(s.root, d)
    log = s.root / "verified"
    lines = {line[:64].decode(): line for line in log.read_bytes().splitlines(keepends=True)[1:]}
    stale_line = _line(stale.hash, (*signature(s.blob_path(stale).stat())[:3], 1, 1))
    broken = lines[damaged.hash][:-3] + b"0\n"  # a flipped checksum digit
    longer = _line(prefixed.hash + "0", signature(s.blob_path(prefixed).stat()))  # a checksum right, a name wrong
    with open(log, "ab") as f:
        f.write(lines[current.hash] + stale_line + broken + longer)
    later = DiskStore(s.root)
    assert later.trusts_blob(current) and later.trusts_blob(other)
    assert not later.trusts_blob(stale) and not later.trusts_blob(damaged) and not later.trusts_blob(prefixed)
    later.gc()
    assert DiskStore(s.root).trusts_blob(other) and DiskStore(s.root).trusts_blob(current)


def test_records_hold_only_for_the_boot_they_were_made_in(tmp_path: Path) -> None:
    """After a power loss a torn blob can keep its signature: a log from another boot is dropped, not trusted."""
    s, _ = store(tmp_path)
    d = settled_blob(s, b"content")
    verified_in_another_process(s.root, d)
    log = s.root / "verified"
    header, _, records = log.read_bytes().partition(b"\n")
    assert header == b"boot " + Path(BOOT_ID).read_bytes().strip() and DiskStore(s.root).trusts_blob(d)
    log.write_bytes(b"boot 00000000-0000-4000-8000-000000000000\n" + records)
    assert not DiskStore(s.root).trusts_blob(d)
    assert log.read_bytes() == header + b"\n", "the old boot's log is replaced by an empty one for this boot"
    log.write_bytes(records)  # a log from before boot ids were recorded
    assert not DiskStore(s.root).trusts_blob(d)
    verified_in_another_process(s.root, d)
    assert DiskStore(s.root).trusts_blob(d)


def test_concurrent_processes_append_records_without_losing_any(tmp_path: Path) -> None:
    s, _ = store(tmp_path)
    digests = [digest_bytes(b"blob %d" % i) for i in range(40)]
    for i, d in enumerate(digests):
        s.write_blob(d, b"blob %d" % i)
    while not settled(s.blob_path(digests[-1]).stat()):
        time.sleep(0.1)
    code = ("import sys; from gaffer.cache.disk import DiskStore; from gaffer.digest import Digest; "
            "s = DiskStore(sys.argv[1]); "
            "[s.verified_blob_path(Digest(h, int(n))) for h, n in (a.split(':') for a in sys.argv[2:])]")
    args = [f"{d.hash}:{d.size_bytes}" for d in digests]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(s.root), *args[k::4]]) for k in range(4)]
    assert [p.wait() for p in procs] == [0] * 4
    later = DiskStore(s.root)
    assert all(later.trusts_blob(d) for d in digests)


def test_gc_and_clean_drop_the_records_of_blobs_they_remove(tmp_path: Path) -> None:
    s, _ = store(tmp_path)
    old, recent = digest_bytes(b"o" * 1000), digest_bytes(b"r" * 1000)
    s.write_blob(old, b"o" * 1000)
    s.write_blob(recent, b"r" * 1000)
    while not settled(s.blob_path(recent).stat()):
        time.sleep(0.1)
    verified_in_another_process(s.root, old)
    verified_in_another_process(s.root, recent)
    assert len((s.root / "verified").read_bytes().splitlines()) == 1 + 2  # the boot's line, then the records
    os.utime(s.blob_path(old), (1000, 1000))  # least recently used: evicted first
    assert DiskStore(s.root).gc(max_size=1500) == (1, 1000)
    assert len((s.root / "verified").read_bytes().splitlines()) == 1 + 1 and DiskStore(s.root).trusts_blob(recent)
    DiskStore(s.root).clean()
    assert not (s.root / "verified").exists()


# -- the cold path's shortcuts: a blob written once per process, small files stored from memory ------------------


def test_a_blob_this_process_evicted_as_corrupt_is_written_again(tmp_path: Path) -> None:
    """The store skips blobs it already wrote in this process, except one it has since found corrupt."""
    s, reports = store(tmp_path)
    d = digest_bytes(b"content")
    s.write_blob(d, b"content")
    s.blob_path(d).write_bytes(b"CONTENT")  # corrupted behind the store's back
    assert s.read_blob(d) is None and len(reports) == 1  # evicted
    s.write_blob(d, b"content")
    assert s.read_blob(d) == b"content"
    source = tmp_path / "source"
    source.write_bytes(b"content")
    s.blob_path(d).write_bytes(b"CONTENT")
    assert s.read_blob(d) is None
    assert s.put_file(source) == d and s.read_blob(d) == b"content"


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20])
def test_put_file_stores_exactly_what_it_hashed_at_every_size(tmp_path: Path, size: int) -> None:
    """Up to 1 MiB a file is read once and stored from memory, above it copied and the copy hashed: either way
    the blob is the file's content under its digest, and a second store of it changes nothing."""
    s, reports = store(tmp_path)
    data = os.urandom(size)
    source = tmp_path / "source"
    source.write_bytes(data)
    d = s.put_file(source)
    assert d == digest_bytes(data) and s.blob_path(d).read_bytes() == data
    assert DiskStore(tmp_path / "cache").read_blob(d) == data  # as another process reads it: hashed
    assert s.put_file(source) == d and reports == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []  # no temp file left behind


@pytest.mark.parametrize("size", [0, 100, 70_000])
def test_an_action_entry_is_read_whole_whatever_its_size_says(tmp_path: Path, size: int) -> None:
    """An entry is read in one read of its size plus one byte; a file longer than its fstat said (here a FIFO,
    whose size is 0) is read on to its end, not cut at the size."""
    import threading

    store = DiskStore(tmp_path / "cache")
    key, result = digest_bytes(b"key"), os.urandom(size)
    store.write_action(key, result)
    assert store.read_action(key) == result
    path = store._action_path(key)
    entry = Path(path).read_bytes()
    os.unlink(path)
    os.mkfifo(path)
    writer = threading.Thread(target=Path(path).write_bytes, args=(entry,))
    writer.start()
    assert store.read_action(key) == result
    writer.join(timeout=10)
    assert store.corrupt_evicted == 0


def test_a_cache_removed_under_a_build_is_not_written_to_and_raises_nothing(tmp_path: Path) -> None:
    """`rm -rf` of the cache directory while a build runs takes its finished temp files too: an entry whose temp
    file is gone is not stored (a later lookup is a miss), and the build goes on."""
    store = DiskStore(tmp_path / "cache")
    data = b"made by a task"
    digest = digest_bytes(data)
    tmp = store.write_temp(data)
    shutil.rmtree(tmp_path / "cache")
    store.adopt(digest, tmp)
    assert not store.has_blob(digest)
    store.write_blob(digest, data)  # a later write makes the directory again and stores it
    assert store.read_blob(digest) == data


@pytest.mark.parametrize("how, private", [("temp_path", "same"), ("write_temp", "same"), ("temp_path", "other")],
                         ids=["temp_path", "write_temp", "private-temp-on-another-file-system"])
def test_a_blob_fetched_before_the_disk_filled_is_held_for_the_build(how: str, private: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob fetched into the store's temp directory while another thread's write fills the disk (the store turns
    read-only, its temp directory moves to a private one): adopting it holds it for this process, as a blob
    fetched after (it was unlinked, yet the fetch counted it local: the restore failed on a healthy remote)."""
    if private == "other":  # TMPDIR on another file system than the cache: the file cannot be renamed there
        shm = Path("/dev/shm")
        if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("no second file system for TMPDIR")
        monkeypatch.setenv("TMPDIR", str(shm))
        monkeypatch.setattr(tempfile, "tempdir", None)  # read again from TMPDIR
    reports: list[str] = []
    store = DiskStore(tmp_path / "cache", report=reports.append, full_is_read_only=True)
    data = b"fetched from a remote"
    digest = digest_bytes(data)
    if how == "temp_path":
        tmp = store.temp_path()
        tmp.write_bytes(data)
    else:
        tmp = store.write_temp(data)
    assert tmp.parent == tmp_path / "cache" / "tmp"
    assert store.full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    store.adopt(digest, tmp)
    assert store.has_blob(digest) and store.read_blob(digest) == data
    assert Path(store.blob_file(digest)).read_bytes() == data
    assert len(reports) == 1 and "is full" in reports[0]
    store.close()
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # nothing left behind


def test_writers_on_several_threads_survive_the_cache_being_removed_again_and_again(tmp_path: Path) -> None:
    """A build stores outputs from several threads; `rm -rf` of the cache meanwhile must fail none of them."""
    from concurrent.futures import ThreadPoolExecutor

    store = DiskStore(tmp_path / "cache")
    big = tmp_path / "big"
    big.write_bytes(os.urandom((1 << 20) + 1))  # copied and hashed in the cache's temp directory
    stop = time.monotonic() + 1.0

    def write(n: int) -> int:
        written = 0
        while time.monotonic() < stop:
            store.put_file(big) if n % 2 else store.write_blob(digest_bytes(b"%d" % written), b"%d" % written)
            written += 1
        return written

    with ThreadPoolExecutor(4) as pool:
        writers = [pool.submit(write, n) for n in range(3)]
        while time.monotonic() < stop:
            shutil.rmtree(tmp_path / "cache", ignore_errors=True)
        assert all(w.result() > 0 for w in writers)


def _victim(tmp_path: Path) -> Path:
    """A directory beside the store, whose path a hash "../victim" would name: it must survive."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_bytes(b"not the cache's")
    return victim


@pytest.mark.parametrize("bad", ["../victim", "../../victim", "", "..", "A" * 64, "0" * 63 + "/", "0" * 65])
def test_a_malformed_hash_touches_no_file_and_is_absent(tmp_path: Path, bad: str) -> None:
    """A peer's digest names a path only if its hash is a SHA-256: "../victim" named a directory beside the store,
    which the check for a directory in a blob's place removed whole; "" named cas/ itself (every blob)."""
    s, reports = store(tmp_path)
    victim = _victim(tmp_path)
    kept = digest_bytes(b"kept")
    s.write_blob(kept, b"kept")
    s.write_action(kept, b"result")
    d = Digest(bad, 3)
    assert not s.has_blob(d) and s.find_missing([d]) == [d]
    assert s.read_blob(d) is None and s.verified_blob_path(d) is None and not s.trusts_blob(d)
    assert not s.fetch_blob(d, tmp_path / "out") and s.read_action(d) is None
    s.evict_action(d)
    with pytest.raises(MalformedHash):
        s.write_blob(d, b"abc")
    with pytest.raises(MalformedHash):
        s.write_action(d, b"result")
    with pytest.raises(MalformedHash):
        s.blob_path(d)
    assert (victim / "precious").read_bytes() == b"not the cache's"
    assert s.read_blob(kept) == b"kept" and s.read_action(kept) == b"result"
    assert reports == [] and not os.listdir(tmp_path / "cache" / "tmp")


def test_a_malformed_hash_from_a_remote_tier_reaches_no_file_through_the_tiered_cache(tmp_path: Path) -> None:
    """What a remote's ActionResult names goes through TieredCache.ensure_local to the local tier's presence check."""
    from gaffer.cache.tiered import TieredCache

    victim = _victim(tmp_path)
    local, reports = store(tmp_path)
    remote = DiskStore(tmp_path / "remote", report=reports.append)
    for tier in (local, remote):
        tier.write_blob(digest_bytes(b"kept"), b"kept")  # makes cas/, which "cas/../../victim" goes through
    cache = TieredCache(local, [remote], read_only=True, report=reports.append)
    assert not cache.ensure_local([Digest("../victim", 3), Digest("", 0)])
    assert (victim / "precious").exists() and local.read_blob(digest_bytes(b"kept")) == b"kept"
    assert remote.read_blob(digest_bytes(b"kept")) == b"kept" and reports == []


def test_a_directory_in_a_shard_is_evicted_by_gc_or_left_when_not_an_entry(tmp_path: Path) -> None:
    """gc used to unlink every entry it evicted: a directory there (IsADirectoryError) ended it, and with it
    gobuildcache's close and `gaffer cache gc`."""
    s, _ = store(tmp_path)
    for n in range(4):
        s.write_blob(digest_bytes(b"%d" % n), b"%d" % n)
    entry = s.blob_path(digest_bytes(b"a directory"))
    stray = entry.parent / "not-an-entry"
    for directory in (entry, stray):
        directory.mkdir(parents=True)
        (directory / "inside").write_bytes(b"x")
        os.utime(directory, (1, 1))  # the least recently used: gc reaches them first
    s.gc(max_size=0)
    assert not entry.exists() and stray.is_dir()
    assert not list((tmp_path / "cache" / "cas").glob("*/[0-9a-f]*"))


def test_a_symlink_loop_in_a_shard_is_no_entry_and_fails_no_walk(tmp_path: Path) -> None:
    """gc, status and verify walk the shards: a symlink loop there (ELOOP on its stat) ended each of them."""
    s, _ = store(tmp_path)
    d = digest_bytes(b"kept")
    s.write_blob(d, b"kept")
    os.symlink("loop", s.blob_path(d).parent / "loop")
    assert s.status().blobs == 1 and s.verify().corrupt == []
    assert s.gc(max_size=1 << 20) == (0, 0) and s.read_blob(d) == b"kept"


def test_a_directory_in_an_entrys_place_already_removed_by_another_writer_is_no_error(tmp_path: Path) -> None:
    """Two writers find a directory in a blob's place; the second to remove it finds it gone (or half gone): its
    put must still store the blob, not fail with FileNotFoundError."""
    s, reports = store(tmp_path)
    data = b"written by both"
    digest = digest_bytes(data)
    place = s.blob_path(digest)
    s._remove_entry(place)  # the step where the second writer finds the place already cleared
    place.mkdir(parents=True)
    (place / "inside").write_bytes(b"x")
    s.write_blob(digest, data)
    assert s.read_blob(digest) == data and len(reports) == 1  # the directory, evicted
