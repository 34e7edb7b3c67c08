"""The local disk tier: verified reads, corruption evicted and reported, peers cannot evict good blobs."""

from __future__ import annotations

from pathlib import Path

from gaffer.cache.disk import DiskStore
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
