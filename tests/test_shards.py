"""gaffer.shards: the build log's and the stat cache's files. A shard is read only when a key in it is asked
for, written only when it changed, and read as empty when it is not one intact shard of this format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gaffer.digest import StatCache, digest_bytes, file_system_now
from gaffer.shards import SHARDS, ShardedMap, shard_of, shard_path


def keys_in_distinct_shards(count: int) -> list[str]:
    found: dict[int, str] = {}
    n = 0
    while len(found) < count:
        found.setdefault(shard_of(f"key-{n}"), f"key-{n}")
        n += 1
    return list(found.values())


def two_saved(directory: str) -> tuple[str, str]:
    """Two keys in two shards, saved with the values b"one" and b"two"."""
    first, second = keys_in_distinct_shards(2)
    stored = ShardedMap(directory)
    stored.set(first, b"one")
    stored.set(second, b"two")
    stored.save(directory)
    return first, second


def test_entries_survive_a_save_and_only_changed_shards_are_written(tmp_path: Path) -> None:
    directory = str(tmp_path / "log")
    first, second = two_saved(directory)
    assert sorted(os.listdir(directory)) == sorted(f"{shard_of(k):02x}" for k in (first, second))
    untouched = os.stat(shard_path(directory, shard_of(second)))

    again = ShardedMap(directory)
    assert again.get(first) == b"one" and again.get(second) == b"two" and again.get("absent") is None
    again.set(first, b"one, again")
    again.save(directory)
    after = os.stat(shard_path(directory, shard_of(second)))
    assert (after.st_ino, after.st_mtime_ns) == (untouched.st_ino, untouched.st_mtime_ns)  # not rewritten
    assert ShardedMap(directory).get(first) == b"one, again"

    emptied = ShardedMap(directory)
    assert emptied.pop(first) == b"one, again"
    emptied.save(directory)
    assert not os.path.exists(shard_path(directory, shard_of(first)))  # an empty shard is removed
    assert sorted(ShardedMap(directory).keys()) == [second]


def test_a_shard_is_read_only_when_a_key_in_it_is_asked_for(tmp_path: Path) -> None:
    directory = str(tmp_path / "log")
    first, second = two_saved(directory)
    reader = ShardedMap(directory)
    assert reader.get(first) == b"one"
    os.unlink(shard_path(directory, shard_of(second)))  # gone before anyone asked: never read
    assert reader.get(second) is None
    assert reader.get(first) == b"one"  # read once, kept


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "one byte flipped", "another format"])
def test_a_damaged_shard_holds_nothing(tmp_path: Path, damage: str) -> None:
    directory = str(tmp_path / "log")
    key = "task"
    stored = ShardedMap(directory)
    stored.set(key, b"x" * 100)
    stored.save(directory)
    path = shard_path(directory, shard_of(key))
    data = bytearray(Path(path).read_bytes())
    if damage == "one byte flipped":
        data[len(data) - 10] ^= 0x01  # inside the value: still valid marshal, wrong content
    Path(path).write_bytes({"garbage": b"\x00\xffnot a shard", "empty": b"", "truncated": bytes(data[:len(data) // 2]),
                            "one byte flipped": bytes(data), "another format": b"GSH0" + bytes(data[4:])}[damage])
    assert ShardedMap(directory).get(key) is None


def test_a_fresh_map_removes_what_the_files_held_when_saved(tmp_path: Path) -> None:
    directory = str(tmp_path / "log")
    old, new = keys_in_distinct_shards(2)
    stored = ShardedMap(directory)
    stored.set(old, b"old")
    stored.save(directory)
    fresh = ShardedMap(directory, fresh=True)
    assert fresh.get(old) is None
    fresh.set(new, b"new")
    fresh.save(directory)
    assert os.listdir(directory) == [f"{shard_of(new):02x}"]
    assert len(ShardedMap(directory)) == 1 and SHARDS == 256


def test_a_damaged_stat_cache_shard_means_hashing_again_never_a_wrong_digest(tmp_path: Path) -> None:
    """The stat cache trusts an entry whose signature matches: one whose stored hash was damaged must not be
    read at all (the shard's checksum), else a changed file would keep a wrong digest."""
    source = tmp_path / "a.txt"
    source.write_text("a\n")
    directory = tmp_path / "stats"
    cache = StatCache.load(directory)
    cache.moment = file_system_now(tmp_path) + 10**12  # recorded long after the file was written: trusted
    assert cache.digest(str(source)) == digest_bytes(b"a\n")
    cache.save(directory)
    assert StatCache.load(directory).digest(str(source)) == digest_bytes(b"a\n")

    path = Path(shard_path(str(directory), shard_of(str(source))))
    data = bytearray(path.read_bytes())
    at = data.index(digest_bytes(b"a\n").hash.encode())
    data[at] = ord("0") if data[at] != ord("0") else ord("1")  # another valid-looking hash
    path.write_bytes(bytes(data))
    again = StatCache.load(directory)
    assert again.digest(str(source)) == digest_bytes(b"a\n") and again.hashed == 1


def test_the_stat_cache_file_of_an_older_gaffer_is_removed_at_the_first_save(tmp_path: Path) -> None:
    """Before the shards the stat cache was one file, `stat-cache`, beside the `stats` directory (in .gaffer/ and
    the launcher's directory): nothing reads it any more, so the first save removes it."""
    legacy = tmp_path / "stat-cache"
    legacy.write_bytes(b"an older gaffer's stat cache")
    source = tmp_path / "a.txt"
    source.write_text("a\n")
    cache = StatCache.load(tmp_path / "stats")
    cache.save(tmp_path / "stats")  # nothing changed: nothing written
    assert legacy.exists()
    cache.digest(str(source))
    cache.save(tmp_path / "stats")
    assert not legacy.exists() and StatCache.load(tmp_path / "stats").digest(str(source)) == digest_bytes(b"a\n")
