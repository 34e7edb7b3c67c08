"""`gaffer serve`'s store under load and at its limits: the index and eviction agree under concurrent uploads,
action results are evicted before their blobs, disk accounting (uploads in flight, per-file cost, the bound),
lazy instance directories, and a full or read-only disk. Real server processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import pytest

from gaffer.cache.disk import lock_served
from gaffer.digest import Digest, digest_bytes
from gaffer.protos import bytestream_pb2, bytestream_pb2_grpc
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos import remote_execution_pb2_grpc as re_grpc
from gaffer.server.packs import PACKS, encode, read_table
from gaffer.server.store import ServerStore
from tests.buildgrid import ReapiServer, start_gaffer_serve, stop_signal
from tests.servers import wait_until
from tests.support import fill_disk, gaffer_env, require, require_tool, run_gaffer

MiB = 1024 * 1024


def _blob(size: int) -> tuple[Digest, bytes]:
    data = os.urandom(size)
    return digest_bytes(data), data


def _pb(d: Digest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=d.hash, size_bytes=d.size_bytes)


def _packed(store: Path) -> dict[str, Path]:
    """The blobs in the packs of the instance at `store` (evicted ones too: a pack keeps their bytes until it
    goes), each with its pack."""
    packs = store / PACKS
    return {hash_: pack for pack in (packs.iterdir() if packs.is_dir() else ())
            for hash_, _offset, _size in read_table(str(pack))}


def _disk_usage(store: Path) -> int:
    """What the blobs' files and packs take on disk (blocks)."""
    return sum(f.stat().st_blocks * 512 for d in ("cas", PACKS) for f in (store / d).rglob("*") if f.is_file())


def _store_bytes(server: ReapiServer) -> int:
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    line = next(line for line in text.splitlines() if line.startswith("gaffer_store_bytes "))
    return int(float(line.split()[1]))


class _Client:
    """Raw REAPI stubs on one channel (the tier would hide the status codes these tests look at)."""

    def __init__(self, server: ReapiServer, instance: str = "") -> None:
        self.channel = grpc.insecure_channel(server.grpc_address)
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.ac = re_grpc.ActionCacheStub(self.channel)
        self.bytestream = bytestream_pb2_grpc.ByteStreamStub(self.channel)
        self.instance = instance

    def update(self, blobs: list[tuple[Digest, bytes]]) -> list[int]:
        """BatchUpdateBlobs; the status code of each blob."""
        requests = [re_pb2.BatchUpdateBlobsRequest.Request(digest=_pb(d), data=data) for d, data in blobs]
        response = self.cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance,
                                                                            requests=requests), timeout=60)
        return [r.status.code for r in response.responses]

    def missing(self, digests: list[Digest]) -> set[Digest]:
        response = self.cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(
            instance_name=self.instance, blob_digests=[_pb(d) for d in digests]), timeout=60)
        return {Digest(d.hash, d.size_bytes) for d in response.missing_blob_digests}

    def read(self, digests: list[Digest]) -> dict[Digest, bytes]:
        response = self.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(
            instance_name=self.instance, digests=[_pb(d) for d in digests]), timeout=60)
        return {Digest(r.digest.hash, r.digest.size_bytes): r.data for r in response.responses if r.status.code == 0}

    def put_action(self, key: Digest, result: re_pb2.ActionResult) -> None:
        self.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(
            instance_name=self.instance, action_digest=_pb(key), action_result=result), timeout=60)

    def get_action(self, key: Digest) -> re_pb2.ActionResult | None:
        try:
            return self.ac.GetActionResult(re_pb2.GetActionResultRequest(
                instance_name=self.instance, action_digest=_pb(key)), timeout=60)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return None

    def write(self, digest: Digest, data: bytes) -> grpc.StatusCode:
        name = f"uploads/5e1c0b2e-0000-4000-8000-000000000000/blobs/{digest.hash}/{digest.size_bytes}"
        if self.instance:
            name = f"{self.instance}/{name}"
        chunks = [data[i:i + MiB] for i in range(0, len(data), MiB)] or [b""]
        requests = [bytestream_pb2.WriteRequest(resource_name=name if i == 0 else "", write_offset=i * MiB,
                                                data=chunk, finish_write=i == len(chunks) - 1)
                    for i, chunk in enumerate(chunks)]
        try:
            self.bytestream.Write(iter(requests), timeout=60)
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[list[ReapiServer]]:
    """Servers a test starts (`serve.append(start_gaffer_serve(...))`), stopped after it."""
    started: list[ReapiServer] = []
    yield started
    for server in started:
        server.stop()


# -- item: the index and eviction are one structure -------------------------------------------------------------


def test_eviction_during_concurrent_uploads_loses_nothing_acknowledged(tmp_path: Path, serve: list) -> None:
    """20,000 blobs from 4 threads into a 4 MiB store, so eviction passes run all along. Afterwards the index and
    the disk agree on every acknowledged blob: reported present if and only if its file is there, and then
    readable. Meanwhile an action result is never a hit once FindMissing reported one of its blobs missing."""
    server = start_gaffer_serve("--max-size", "4MiB", "--memory", "0", workdir=tmp_path)
    serve.append(server)
    threads, batches, per_batch = 4, 50, 100
    acknowledged: list[tuple[Digest, bytes]] = []
    actions: list[tuple[Digest, list[Digest]]] = []
    lock = threading.Lock()
    done = threading.Event()
    broken: list[str] = []

    def upload() -> None:
        client = _Client(server)
        try:
            for _ in range(batches):
                blobs = [_blob(1024) for _ in range(per_batch)]
                codes = client.update(blobs)
                with lock:
                    acknowledged.extend(b for b, code in zip(blobs, codes, strict=True) if code == 0)
        finally:
            client.close()

    def store_actions() -> None:
        client = _Client(server)
        try:
            while not done.is_set():
                blobs = [_blob(512) for _ in range(3)]
                client.update(blobs)
                key = _blob(16)[0]
                client.put_action(key, re_pb2.ActionResult(
                    output_files=[re_pb2.OutputFile(path=f"o{i}", digest=_pb(d)) for i, (d, _) in enumerate(blobs)]))
                with lock:
                    actions.append((key, [d for d, _ in blobs]))
        finally:
            client.close()

    def check_actions() -> None:
        client = _Client(server)
        try:
            while not done.is_set():
                with lock:
                    recent = actions[-20:]
                for key, blobs in recent:
                    if client.missing(blobs) and client.get_action(key) is not None:
                        broken.append(f"action {key.hash[:12]} was a hit after FindMissing reported a blob missing")
        finally:
            client.close()

    helpers = [threading.Thread(target=store_actions), threading.Thread(target=check_actions)]
    for t in helpers:
        t.start()
    try:
        with ThreadPoolExecutor(threads) as pool:
            for future in [pool.submit(upload) for _ in range(threads)]:
                future.result()
    finally:
        done.set()
        for t in helpers:
            t.join()
    assert not broken, broken[:5]
    assert len(acknowledged) == threads * batches * per_batch
    wait_until(lambda: _store_bytes(server) <= 4 * MiB, "eviction under the bound", 60, server.proc, server.log)

    # A pass may still be finishing: it only removes. So a blob reported missing must have no file (files only
    # go; a pack keeps an evicted blob's bytes until all of it goes), and one reported present whose file or pack
    # is gone must be reported missing when asked again.
    client = _Client(server)
    cas = tmp_path / "store" / "cas"
    packed = _packed(tmp_path / "store")
    assert packed, "the batches should have been written as packs"

    def on_disk(d: Digest) -> bool:
        return (cas / d.hash[:2] / d.hash).exists() or (d.hash in packed and packed[d.hash].exists())

    def missing(digests: list[Digest]) -> set[Digest]:
        return set().union(*(client.missing(digests[i:i + 5000]) for i in range(0, len(digests), 5000)))

    digests = [d for d, _ in acknowledged]
    reported_missing = missing(digests)
    lost = [d for d in reported_missing if (cas / d.hash[:2] / d.hash).exists()]
    assert not lost, f"{len(lost)} blobs on disk reported missing"
    gone = [d for d in digests if d not in reported_missing and not on_disk(d)]
    assert missing(gone) == set(gone), "blobs without a file still reported present"
    present = [(d, data) for d, data in acknowledged if d not in reported_missing and d not in gone]
    assert present, "the newest blobs should have survived eviction"
    for i in range(0, len(present), 1000):
        chunk = dict(present[i:i + 1000])
        read = client.read(list(chunk))
        unread = [d for d in chunk if d not in read]
        assert all(read[d] == chunk[d] for d in read)
        assert missing(unread) == set(unread), "blobs reported present but not readable"
    client.close()


# -- item: disk accounting --------------------------------------------------------------------------------------


def test_small_blobs_count_what_they_take_on_disk(tmp_path: Path, serve: list) -> None:
    """300 blobs of 8 bytes uploaded one at a time take a block and an inode each (1.3 MB): a 256 KiB bound keeps
    their files within 256 KiB."""
    server = start_gaffer_serve("--max-size", "256KiB", workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    for _ in range(300):
        assert client.update([_blob(8)]) == [0]
    client.close()
    wait_until(lambda: _store_bytes(server) <= 256 * 1024, "eviction", 30, server.proc)
    assert 0 < _disk_usage(tmp_path / "store") <= 256 * 1024
    assert not _packed(tmp_path / "store")


def test_an_empty_action_result_counts(tmp_path: Path, serve: list) -> None:
    server = start_gaffer_serve(workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    before = _store_bytes(server)
    client.put_action(_blob(8)[0], re_pb2.ActionResult())
    assert _store_bytes(server) > before
    client.close()


def test_a_blob_larger_than_the_bound_is_refused_before_its_body(tmp_path: Path, serve: list) -> None:
    server = start_gaffer_serve("--max-size", "1MiB", workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    kept, kept_data = _blob(1000)
    assert client.update([(kept, kept_data)]) == [0]
    big, big_data = _blob(2 * MiB)
    assert client.write(big, big_data) == grpc.StatusCode.RESOURCE_EXHAUSTED
    host, port = server.http_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:  # a body that will never come
        conn.sendall(f"PUT /cas/{'a' * 64} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**12}\r\n\r\n".encode())
        assert conn.recv(100).startswith(b"HTTP/1.1 413")
    assert client.missing([kept, big]) == {big}  # nothing was evicted for it
    assert client.read([kept]) == {kept: kept_data}
    client.close()


def test_uploads_in_flight_count_against_the_bound(tmp_path: Path, serve: list) -> None:
    """A stalled 700 KiB upload holds its room in a 1 MiB store: a second one is refused (507) until it ends."""
    server = start_gaffer_serve("--max-size", "1MiB", workdir=tmp_path)
    serve.append(server)
    first, first_data = _blob(700 * 1024)
    second, second_data = _blob(700 * 1024)
    host, port = server.http_url.removeprefix("http://").split(":")
    tmp = tmp_path / "store" / "tmp"
    with socket.create_connection((host, int(port)), timeout=10) as conn, \
            httpx.Client(base_url=server.http_url, timeout=10) as http:
        conn.sendall(f"PUT /cas/{first.hash} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(first_data)}\r\n\r\n"
                     .encode() + first_data[:1000])
        wait_until(lambda: any(tmp.iterdir()), "the first upload's temp file", 10, server.proc)
        assert http.put(f"/cas/{second.hash}", content=second_data).status_code == 507
        conn.sendall(first_data[1000:])
        assert conn.recv(100).startswith(b"HTTP/1.1 200")
        assert http.put(f"/cas/{second.hash}", content=second_data).status_code == 200
        assert http.get(f"/cas/{second.hash}").content == second_data


def test_reads_under_a_new_instance_name_create_nothing(tmp_path: Path, serve: list) -> None:
    server = start_gaffer_serve(workdir=tmp_path)
    serve.append(server)
    client = _Client(server, "fresh/one")
    digest, data = _blob(100)
    assert client.missing([digest]) == {digest}
    assert client.read([digest]) == {}
    assert client.get_action(digest) is None
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        assert http.get(f"/other/cas/{digest.hash}").status_code == 404
        assert http.head(f"/third/ac/{digest.hash}").status_code == 404
    assert not (tmp_path / "store" / "instances").exists()
    assert client.update([(digest, data)]) == [0]  # a write creates it
    assert client.read([digest]) == {digest: data}
    assert [p.name for p in (tmp_path / "store" / "instances").iterdir()] == ["fresh%2Fone"]
    client.close()


def test_an_instance_name_too_long_for_a_directory_is_invalid(tmp_path: Path, serve: list) -> None:
    server = start_gaffer_serve(workdir=tmp_path)
    serve.append(server)
    name = "/".join(["a"] * 100)  # 199 characters, 397 once encoded: no file system takes it as a name
    client = _Client(server, name)
    with pytest.raises(grpc.RpcError) as e:
        client.update([_blob(10)])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    client.close()
    digest, data = _blob(10)
    assert httpx.put(f"{server.http_url}/{name}/cas/{digest.hash}", content=data, timeout=10).status_code == 400


# -- item: smaller lies ---------------------------------------------------------------------------------------------


def test_a_size_zero_digest_is_present_only_as_the_empty_blob(tmp_path: Path, serve: list) -> None:
    server = start_gaffer_serve(workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    empty, fake = digest_bytes(b""), Digest("b" * 64, 0)
    assert client.missing([empty, fake]) == {fake}
    assert client.read([empty, fake]) == {empty: b""}
    with pytest.raises(grpc.RpcError) as e:
        list(client.bytestream.Read(bytestream_pb2.ReadRequest(resource_name=f"blobs/{fake.hash}/0"), timeout=10))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    key = _blob(8)[0]
    client.put_action(key, re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="o", digest=_pb(fake))]))
    assert client.get_action(key) is None
    client.close()


def test_duplicate_blobs_in_a_batch_are_counted_once(tmp_path: Path, serve: list) -> None:
    server = start_gaffer_serve(workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    before = _store_bytes(server)
    assert client.update([_blob(1000)]) == [0]
    one = _store_bytes(server) - before
    before += one
    for _ in range(20):
        blob = _blob(1000)
        assert client.update([blob] * 8) == [0] * 8
    assert _store_bytes(server) - before == 20 * one
    client.close()


def test_one_blob_uploaded_at_once_many_ways_is_stored_once_and_reads_never_see_half(
    tmp_path: Path, serve: list
) -> None:
    """Three ByteStream uploads and a batch of the same 3 MiB blob at once, read all along: each upload succeeds,
    a read finds nothing or the whole blob, and the store counts it once. An upload whose bytes do not match its
    digest (same size, or more bytes than it names, found while later chunks still arrive) is refused, stored
    nowhere, and leaves no temp file."""
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    before = _store_bytes(server)
    other = _blob(3 * MiB + 1)
    assert client.write(*other) == grpc.StatusCode.OK
    one = _store_bytes(server) - before
    digest, data = _blob(3 * MiB + 1)
    uploaded = threading.Event()
    seen: list[bytes] = []

    def read_all_along() -> None:
        while not uploaded.is_set():
            seen.extend(client.read([digest]).values())

    reader = threading.Thread(target=read_all_along)
    reader.start()
    with ThreadPoolExecutor(4) as pool:
        streams = [pool.submit(client.write, digest, data) for _ in range(3)]
        batch = pool.submit(client.update, [(digest, data)])
        assert [s.result() for s in streams] == [grpc.StatusCode.OK] * 3 and batch.result() == [0]
    uploaded.set()
    reader.join(60)
    assert all(found == data for found in seen)
    assert client.read([digest]) == {digest: data}
    assert _store_bytes(server) - before == 2 * one

    wrong, longer = _blob(3 * MiB + 1)[0], _blob(2 * MiB)[0]
    assert client.write(wrong, os.urandom(3 * MiB + 1)) == grpc.StatusCode.INVALID_ARGUMENT
    assert client.write(longer, os.urandom(3 * MiB)) == grpc.StatusCode.INVALID_ARGUMENT
    assert client.missing([wrong, longer]) == {wrong, longer}
    assert _store_bytes(server) - before == 2 * one
    assert not list((tmp_path / "store" / "tmp").iterdir())
    client.close()


# -- packs: a batch's small blobs in one file ------------------------------------------------------------------


def _tree(file: Digest) -> tuple[tuple[Digest, bytes], tuple[Digest, bytes]]:
    """A root Directory holding one subdirectory holding `file`: (root, leaf) as blobs."""
    leaf = re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=_pb(file))]).SerializeToString()
    root = re_pb2.Directory(directories=[re_pb2.DirectoryNode(name="d", digest=_pb(digest_bytes(leaf)))])
    root_data = root.SerializeToString()
    return (digest_bytes(root_data), root_data), (digest_bytes(leaf), leaf)


def test_a_batch_is_one_pack_and_every_read_path_finds_its_blobs_across_a_restart(tmp_path: Path, serve: list) -> None:
    """The small blobs of a batch go to one pack, a large one of the same batch to its own file. BatchReadBlobs,
    ByteStream Read (with an offset and a limit), GetTree, HTTP GET and HEAD, FindMissingBlobs and an action
    result naming packed blobs all find them, from the disk (no memory cache), before and after a restart."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    small = [_blob(size) for size in (1, 100, 5000) * 10]
    root, leaf = _tree(small[0][0])
    small += [root, leaf]
    large = _blob(2 * MiB)
    key = _blob(16)[0]
    result = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="o", digest=_pb(small[1][0]))],
                                 stdout_digest=_pb(small[2][0]), stderr_digest=_pb(large[0]))
    client = _Client(server)
    assert client.update([*small, large]) == [0] * (len(small) + 1)
    client.put_action(key, result)
    client.close()
    assert len(list((store / PACKS).iterdir())) == 1 and set(_packed(store)) == {d.hash for d, _ in small}
    assert (store / "cas" / large[0].hash[:2] / large[0].hash).is_file()

    def every_read_finds_them(server: ReapiServer) -> None:
        client = _Client(server)
        everything = dict([*small, large])
        assert not client.missing(list(everything))
        assert client.read(list(everything)) == everything
        digest, data = small[2]
        stream = client.bytestream.Read(bytestream_pb2.ReadRequest(
            resource_name=f"blobs/{digest.hash}/{digest.size_bytes}", read_offset=10, read_limit=3000), timeout=60)
        assert b"".join(r.data for r in stream) == data[10:3010]
        tree = client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=_pb(root[0])), timeout=60)
        assert [d.SerializeToString() for page in tree for d in page.directories] == [root[1], leaf[1]]
        assert client.get_action(key) == result
        for digest, data in small[:3]:
            assert httpx.get(f"{server.http_url}/cas/{digest.hash}", timeout=10).content == data
            assert httpx.head(f"{server.http_url}/cas/{digest.hash}", timeout=10).status_code == 200
        client.close()

    every_read_finds_them(server)
    assert stop_signal(server) == 0
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    serve.append(server)
    every_read_finds_them(server)


def test_a_corrupt_packed_blob_is_evicted_and_a_torn_pack_dropped_at_start(tmp_path: Path, serve: list) -> None:
    """Damage inside a pack while the server is down: each damaged blob is found when read (a miss in a batch
    read, NOT_FOUND for a ByteStream read of a small blob, nothing of it sent), evicted and reported; its
    neighbours are served. A pack cut short (a crash of the machine without --fsync) is removed at start,
    reported, its blobs missing."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    client = _Client(server)
    first = [_blob(2000) for _ in range(10)]
    assert client.update(first) == [0] * 10
    first_pack = next((store / PACKS).iterdir())
    second = [_blob(2000) for _ in range(10)]
    assert client.update(second) == [0] * 10
    client.close()
    assert stop_signal(server) == 0
    places = {hash_: offset for hash_, offset, _size in read_table(str(first_pack))}
    with open(first_pack, "r+b") as f:
        for digest, data in first[3:5]:
            f.seek(places[digest.hash] + 1999)
            f.write(b"X" if data[-1:] != b"X" else b"Y")
    second_pack = _packed(store)[second[0][0].hash]
    os.truncate(second_pack, second_pack.stat().st_size - 1)

    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    assert "not a whole pack" in server.log.read_text() and not second_pack.exists()
    assert client.missing([d for d, _ in second]) == {d for d, _ in second}
    good = dict(first[:3] + first[5:])
    assert client.read([d for d, _ in first]) == {**good, **client.read([])} and client.read(list(good)) == good
    digest = first[4][0]
    stream = client.bytestream.Read(bytestream_pb2.ReadRequest(resource_name=f"blobs/{digest.hash}/{digest.size_bytes}"),
                                    timeout=60)
    received = []
    with pytest.raises(grpc.RpcError) as e:
        received.extend(r.data for r in stream)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and not received
    assert client.missing([d for d, _ in first]) == {first[3][0], first[4][0]}
    assert "corrupt blob" in server.log.read_text()
    client.close()


def test_cache_verify_and_status_see_packed_blobs(tmp_path: Path) -> None:
    """`gaffer cache status|verify --dir` on a server's store count and hash the packed blobs too: a pack with a
    damaged blob is rewritten without it (its good blobs kept), a torn one is removed; a sound pack stays."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    client = _Client(server)
    batches = [[_blob(2000) for _ in range(10)] for _ in range(3)]
    for batch in batches:
        assert client.update(batch) == [0] * 10
    client.close()
    assert stop_signal(server) == 0
    damaged, torn, sound = (_packed(store)[batch[0][0].hash] for batch in batches)
    status = _gaffer_cache("status", store)
    assert "Blobs: 30" in status.stdout, status.stdout
    places = {hash_: offset for hash_, offset, _size in read_table(str(damaged))}
    digest, data = batches[0][6]
    with open(damaged, "r+b") as f:
        f.seek(places[digest.hash])
        f.write(bytes([data[0] ^ 1]))
    os.truncate(torn, torn.stat().st_size - 1)
    verify = _gaffer_cache("verify", store)
    assert verify.returncode == 1 and "checked 20 blobs" in verify.stdout and "2 corrupt" in verify.stdout, (
        verify.stdout + verify.stderr)
    assert digest.hash[:12] in verify.stdout and torn.name[:12] in verify.stdout
    assert not torn.exists() and sound.exists()
    packed = _packed(store)
    assert digest.hash not in packed and all(d.hash in packed for d, _ in batches[0] if d != digest)
    again = _gaffer_cache("verify", store)
    assert again.returncode == 0 and "checked 19 blobs" in again.stdout, again.stdout + again.stderr
    twice, data = batches[2][0]  # in a pack and in a file of its own (the file is the entry): one blob
    (store / "cas" / twice.hash[:2]).mkdir(parents=True, exist_ok=True)
    (store / "cas" / twice.hash[:2] / twice.hash).write_bytes(data)
    assert "Blobs: 19" in _gaffer_cache("status", store).stdout


def _gaffer_cache(command: str, store: Path, *under: str) -> subprocess.CompletedProcess[str]:
    """`gaffer cache COMMAND` on `store`, run by `under` (a tracer) if given."""
    return subprocess.run([*under, sys.executable, "-m", "gaffer", "cache", command, "--cache-dir", str(store)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={k: v for k, v in os.environ.items() if not k.startswith("GAFFER_")})


def _one_pack(workdir: Path, count: int) -> list[tuple[Digest, bytes]]:
    """`count` blobs of 2,000 bytes uploaded in one batch (one pack) to a server on `workdir`/store, then stopped."""
    server = start_gaffer_serve("--memory", "0", workdir=workdir)
    client = _Client(server)
    batch = [_blob(2000) for _ in range(count)]
    assert client.update(batch) == [0] * count
    client.close()
    assert stop_signal(server) == 0
    return batch


def _damage(pack: Path, digest: Digest, data: bytes) -> None:
    """Flip the first byte of a packed blob, as bit rot would."""
    offset = next(offset for hash_, offset, _size in read_table(str(pack)) if hash_ == digest.hash)
    with open(pack, "r+b") as f:
        f.seek(offset)
        f.write(bytes([data[0] ^ 1]))


def _flushed_before_unlinked(calls: list[str], new: str, old: Path) -> None:
    """In an strace log (-y), the pack renamed to `new` was fsync'd before its rename, its directory after, and
    only then was `old` unlinked."""
    renamed = next(i for i, call in enumerate(calls)
                   if "rename(" in call and f'/{PACKS}/{new}"' in call and call.rstrip().endswith("= 0"))
    tmp = calls[renamed].split('"')[1]
    assert any(f"<{tmp}>" in call for call in calls[:renamed] if "fsync(" in call), "not flushed before its rename"
    unlinked = next(i for i, call in enumerate(calls) if "unlink" in call and old.name in call)
    assert renamed < unlinked and any(f"/{PACKS}>" in call for call in calls[renamed:unlinked] if "fsync(" in call), (
        "its directory not flushed before the old pack was unlinked")


def test_cache_verify_flushes_a_rewritten_pack_before_unlinking_the_old_one(tmp_path: Path) -> None:
    """`gaffer cache verify` replacing a pack that holds a corrupt blob: the new pack, as old as the one it
    replaces, is fsync'd before its rename and its directory after, and only then is the old pack unlinked."""
    strace = require_tool("strace")
    store = tmp_path / "store"
    batch = _one_pack(tmp_path, 3)
    old = _packed(store)[batch[0][0].hash]
    _damage(old, *batch[0])
    hours_ago = time.time() - 3 * 3600
    os.utime(old, (hours_ago, hours_ago))
    log = tmp_path / "strace.log"
    verify = _gaffer_cache("verify", store, strace, "-f", "-qq", "-y", "-e", "trace=fsync,rename,unlink,unlinkat",
                           "-o", str(log))
    assert verify.returncode == 1, verify.stdout + verify.stderr
    new = _packed(store)[batch[1][0].hash]
    assert not old.exists() and set(_packed(store)) == {d.hash for d, _ in batch[1:]}
    assert new.stat().st_mtime == pytest.approx(hours_ago, abs=1)
    _flushed_before_unlinked(log.read_text().splitlines(), new.name, old)


def test_cache_verify_on_a_full_disk_leaves_a_pack_it_cannot_rewrite(tmp_path: Path, small_disk: Path,
                                                                     serve: list) -> None:
    """No room for the pack that would replace one holding a corrupt blob: `gaffer cache verify` says so and
    leaves the old pack as it is (the server checks each blob it reads), its good blobs with it."""
    store = small_disk / "store"
    server = start_gaffer_serve("--dir", str(store), "--memory", "0", workdir=tmp_path / "s")
    serve.append(server)
    client = _Client(server)
    batch = [_blob(2000) for _ in range(10)]
    assert client.update(batch) == [0] * 10
    client.close()
    assert stop_signal(server) == 0
    pack = _packed(store)[batch[0][0].hash]
    _damage(pack, *batch[0])
    fill_disk(small_disk, 0)
    verify = _gaffer_cache("verify", store)
    assert verify.returncode == 1 and f"cannot rewrite {pack} without its corrupt blobs" in verify.stderr, (
        verify.stdout + verify.stderr)
    assert "left as it is" in verify.stderr and "Traceback" not in verify.stderr
    assert f"1 corrupt (left in place: {batch[0][0].hash[:12]})" in verify.stdout, verify.stdout
    assert pack.exists() and set(_packed(store)) == {d.hash for d, _ in batch}


def test_cache_verify_refuses_a_store_a_server_is_using(tmp_path: Path, serve: list) -> None:
    """`gaffer cache verify`, `gc` or `clean` on the store of a running server would change files and packs under
    its index: refused in one line naming the server (exit status 3), nothing changed. `status` only reads, and runs. Once the server has
    stopped, verify runs; a server started while a verify runs is refused, naming it."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    batch = [_blob(2000) for _ in range(3)]
    assert client.update(batch) == [0] * 3
    client.close()
    pack = _packed(store)[batch[0][0].hash]
    _damage(pack, *batch[0])
    for action in ("verify", "gc", "clean"):  # each changes the store: a server's index would no longer match it
        refused = _gaffer_cache(action, store)
        assert refused.returncode == 3 and refused.stdout == "", action + refused.stdout + refused.stderr
        assert refused.stderr == (f"gaffer: {store}: a gaffer serve (pid {server.proc.pid}) is using this store; "
                                  "stop it first\n")
    assert pack.exists()
    status = _gaffer_cache("status", store)
    assert status.returncode == 0 and "Blobs: 3" in status.stdout, status.stdout + status.stderr
    assert stop_signal(server) == 0
    again = _gaffer_cache("verify", store)
    assert again.returncode == 1 and not pack.exists(), again.stdout + again.stderr
    held = lock_served(store, "gaffer cache verify")  # as a verify running now holds it: a server names it
    try:
        refused = subprocess.run([sys.executable, "-m", "gaffer.server.main", "--dir", str(store), "--grpc",
                                  "127.0.0.1:0", "--http", "127.0.0.1:0"],
                                 capture_output=True, text=True, timeout=60, check=False)
    finally:
        os.close(held)
    assert refused.returncode == 3, refused.stderr
    assert f"another gaffer cache verify (pid {os.getpid()}) is using this store" in refused.stderr, refused.stderr


def test_a_served_stores_instance_directory_is_refused_as_the_store_itself(tmp_path: Path, serve: list) -> None:
    """A named instance's directory has the layout of a local cache: `gaffer cache clean --cache-dir
    STORE/instances/NAME` emptied it under the running server's index, and a second server could serve it."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    serve.append(server)
    client = _Client(server, "team")
    batch = [_blob(2000)]
    assert client.update(batch) == [0]
    instance = store / "instances" / "team"
    for action in ("verify", "gc", "clean"):
        refused = _gaffer_cache(action, instance)
        assert refused.returncode == 3 and refused.stdout == "", action + refused.stdout + refused.stderr
        assert f"a gaffer serve (pid {server.proc.pid}) is using this store" in refused.stderr, refused.stderr
    second = subprocess.run([sys.executable, "-m", "gaffer.server.main", "--dir", str(instance), "--grpc",
                             "127.0.0.1:0"], capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 3, second.stderr
    assert f"another gaffer serve (pid {server.proc.pid}) is using this store" in second.stderr, second.stderr
    assert client.read([batch[0][0]]) == {batch[0][0]: batch[0][1]}
    client.close()


def test_a_store_whose_instance_directory_is_served_alone_is_refused(tmp_path: Path, serve: list) -> None:
    """`gaffer serve --dir S/instances/NAME` started first (S not served yet: it locks its own directory only),
    then `gaffer serve --dir S`: both ran on the same files, each with its own index and size account. The outer
    one is refused while the instance's server runs, and starts once it stopped."""
    store = tmp_path / "store"
    inner = start_gaffer_serve("--memory", "0", "--dir", str(store / "instances" / "team"), workdir=tmp_path / "in")
    serve.append(inner)
    outer = subprocess.run([sys.executable, "-m", "gaffer.server.main", "--dir", str(store), "--grpc",
                            "127.0.0.1:0"], capture_output=True, text=True, timeout=60, check=False)
    assert outer.returncode == 3, outer.stderr
    assert (f"another gaffer serve (pid {inner.proc.pid}) is using its instance directory team" in outer.stderr
            and outer.stderr.count("\n") == 1), outer.stderr
    assert stop_signal(inner, signal.SIGTERM) == 0
    serve.append(start_gaffer_serve("--memory", "0", workdir=tmp_path))


def test_a_file_among_the_instance_directories_is_ignored_not_a_traceback(tmp_path: Path, serve: list) -> None:
    """A file left in STORE/instances/ (a log, a note) under a valid instance name failed the server's start with a
    NotADirectoryError traceback: it is ignored, as a directory with an invalid name is, and said."""
    instances = tmp_path / "store" / "instances"
    instances.mkdir(parents=True)
    (instances / "notes").write_text("not an instance\n")
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    serve.append(server)
    assert f"ignoring {instances / 'notes'}: not a gaffer serve instance directory" in server.log.read_text()


def test_a_start_removes_the_temp_files_of_dead_writers_only(tmp_path: Path, serve: list) -> None:
    """A server killed mid-upload leaves a temp file named after its pid: removed at the next start when that pid
    is no process now, or a zombie not yet reaped. A file named after a live process stays, even one started after
    the file was last written: a reused pid cannot be told from a live writer in another pid namespace (a CI
    container's PID 1 building into a shared volume) or from a clock stepped forward; they were removed."""
    tmp = tmp_path / "store" / "tmp"
    tmp.mkdir(parents=True)
    zombie = subprocess.Popen(["true"])
    wait_until(lambda: Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                       "an unreaped child", 10)
    gone = subprocess.Popen(["true"])
    gone.wait()
    later = subprocess.Popen(["sleep", "60"])  # started after the file below was last written
    try:
        dead_writer = tmp / f"{zombie.pid}-1-aaaaaaaa"
        no_process = tmp / f"{gone.pid}-1-dddddddd"
        live_pid = tmp / f"{later.pid}-1-bbbbbbbb"
        running = tmp / f"{os.getpid()}-1-cccccccc"  # this test process, running since before: a writer
        for path in (dead_writer, no_process, live_pid, running):
            path.write_bytes(b"half an upload")
        an_hour_ago = time.time() - 3600
        os.utime(live_pid, (an_hour_ago, an_hour_ago))
        server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
        serve.append(server)
        assert sorted(p.name for p in tmp.iterdir()) == sorted([live_pid.name, running.name])
    finally:
        later.kill()
        later.wait()
        zombie.wait()


def test_a_restarted_servers_own_old_temp_files_are_removed_young_ones_stay(tmp_path: Path) -> None:
    """A server restarted in a container gets the very pid it had: its dead self's temp files, named after its own
    pid, stayed for good. At start, one older than a day (the age gc removes any temp file at) is removed; a
    younger one stays (the same pid may be a live writer in another pid namespace)."""
    tmp = tmp_path / "store" / "tmp"
    tmp.mkdir(parents=True)
    old, young = tmp / f"{os.getpid()}-1-aaaaaaaa", tmp / f"{os.getpid()}-2-bbbbbbbb"
    for path in (old, young):
        path.write_bytes(b"half an upload")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    store = ServerStore(tmp_path / "store", 1 << 30, report=print, memory=0)  # in this process: its pid
    try:
        assert [p.name for p in tmp.iterdir()] == [young.name]
    finally:
        store.close()


def test_a_build_on_a_served_store_leaves_eviction_to_the_server(tmp_path: Path, serve: list) -> None:
    """`gaffer run --cache-dir` on the store of a running server (say a served ~/.cache/gaffer) garbage-collected
    it down to the build's own --cache-max-size when it went over, deleting the server's entries under its index
    as `gaffer cache gc` would, which a served store refuses. The server's own eviction is the one that runs."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    digest, data = _blob(300_000)
    assert client.update([(digest, data)]) == [0]
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "graph.json").write_text(json.dumps({"t": {"command": ["sh", "-c", "head -c 4096 /dev/zero > out"],
                                                            "outputs": ["out"]}}))
    build = run_gaffer(["run", "t", "--cache-max-size", "1KiB"], workspace, gaffer_env(store))
    assert build.returncode == 0, build.stdout + build.stderr
    assert client.read([digest]) == {digest: data}
    client.close()


def test_a_torn_blob_file_is_replaced_by_its_packed_copy_for_good(tmp_path: Path, serve: list) -> None:
    """A blob's file cut short while the server was down, then the blob uploaded again in a batch: the packed copy
    is the entry and the torn file is removed, so a restart serves the packed copy (not the torn file)."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    client = _Client(server)
    digest, data = _blob(2 * MiB)  # too big for a pack: a file of its own
    assert client.update([(digest, data)]) == [0]
    client.close()
    assert stop_signal(server) == 0
    small = _blob(100)
    torn = store / "cas" / small[0].hash[:2] / small[0].hash
    torn.parent.mkdir(exist_ok=True)
    torn.write_bytes(small[1][:10])  # as a crash of the machine could leave it
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    client = _Client(server)
    other = _blob(200)
    assert client.update([small, other]) == [0, 0]
    client.close()
    assert not torn.exists() and small[0].hash in _packed(store)
    assert stop_signal(server) == 0
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    assert client.read([small[0], other[0], digest]) == {small[0]: small[1], other[0]: other[1], digest: data}
    client.close()


def test_a_blob_packed_again_is_served_from_its_newer_pack_after_a_restart(tmp_path: Path, serve: list) -> None:
    """A packed blob damaged on disk is evicted when read; uploaded again, it lands in a newer pack. After a
    restart the newer copy is the entry, not the damaged one still in the older pack."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    client = _Client(server)
    batch = [_blob(2000) for _ in range(3)]
    assert client.update(batch) == [0] * 3
    old_pack = _packed(store)[batch[0][0].hash]
    places = {hash_: offset for hash_, offset, _size in read_table(str(old_pack))}
    with open(old_pack, "r+b") as f:
        f.seek(places[batch[0][0].hash])
        f.write(bytes([batch[0][1][0] ^ 1]))
    assert client.read([batch[0][0]]) == {}  # found damaged, evicted
    assert client.update([batch[0], _blob(300)]) == [0, 0]
    client.close()
    assert stop_signal(server) == 0
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    assert client.read([d for d, _ in batch]) == dict(batch)
    client.close()


def test_a_second_server_on_the_same_store_is_refused(tmp_path: Path, serve: list) -> None:
    """Two servers on one directory would each index and account the same files: the second exits 3 naming the
    first, which goes on serving; once the first has stopped, the store is free again."""
    first = start_gaffer_serve(workdir=tmp_path)
    serve.append(first)
    client = _Client(first)
    digest, data = _blob(100)
    assert client.update([(digest, data)]) == [0]
    second = subprocess.run([sys.executable, "-m", "gaffer.server.main", "--dir", str(tmp_path / "store"),
                             "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 3, second.stderr
    store = tmp_path / "store"
    assert second.stderr == f"gaffer serve: --dir {store}: another gaffer serve (pid {first.proc.pid}) is using this store\n"
    assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
    assert client.read([digest]) == {digest: data}
    client.close()
    assert stop_signal(first) == 0
    again = start_gaffer_serve(workdir=tmp_path)
    serve.append(again)
    client = _Client(again)
    assert client.read([digest]) == {digest: data}
    client.close()


def _pack_costs(store: Path) -> int:
    """What the instance's packs count in the bound: each its size in whole blocks, and an inode."""
    block = os.statvfs(store).f_frsize
    return sum(-(-pack.stat().st_size // block) * block + 256 for pack in (store / PACKS).iterdir())


def test_eviction_takes_whole_packs_and_a_blob_used_again_comes_back_in_a_new_pack(tmp_path: Path,
                                                                                   serve: list) -> None:
    """14 batches of 100 x 1 KiB into a 1 MiB store, 30 blobs of the first batch used again after the sixth.
    Eviction takes whole packs, oldest first by their least recently used blob, so the first pack goes with the
    30 (a miss, never a wrong hit), and no pack is rewritten; the account is exactly what the packs left count.
    The 30 uploaded again go to a new pack and are served."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--max-size", "1MiB", "--memory", "0", workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    batches, written = [], set()
    for i in range(14):
        if i == 6:
            assert not client.missing([d for d, _ in batches[0][:30]])  # used again: the recent end
        batches.append([_blob(1024) for _ in range(100)])
        assert client.update(batches[-1]) == [0] * 100
        written.add(_packed(store)[batches[-1][0][0].hash])  # the newest pack: never the one evicted
        if i == 0:
            first_pack = next(iter(written))
    wait_until(lambda: _store_bytes(server) <= MiB * 0.9 and _store_bytes(server) == _pack_costs(store),
               "eviction", 30, server.proc, server.log)
    left = set((store / PACKS).iterdir())
    assert left <= written, "a pack was rewritten"
    assert not first_pack.exists() and client.missing([d for d, _ in batches[0]]) == {d for d, _ in batches[0]}
    for batch in batches:
        missing = client.missing([d for d, _ in batch])
        assert not missing or len(missing) == 100, "a pack evicted in part"
    assert len(left) == sum(not client.missing([d for d, _ in batch]) for batch in batches)
    kept = dict(batches[0][:30])
    assert client.update(list(kept.items())) == [0] * 30
    assert client.read(list(kept)) == kept and _packed(store)[next(iter(kept)).hash] not in written
    assert _disk_usage(store) <= _store_bytes(server) <= MiB
    client.close()


def test_reads_during_pack_rewrites_always_find_live_blobs(tmp_path: Path, serve: list) -> None:
    """70 blobs of a pack of 100 damaged on disk and read, one after another (each found corrupt has its pack
    rewritten without it, the damaged ones still in it copied along, so the rewrites follow each other), while
    another thread reads the 30 sound ones over and over: every read finds all 30, byte for byte, whether it
    came before, during or after a rewrite."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    serve.append(server)
    first = [_blob(1024) for _ in range(100)]
    client = _Client(server)
    assert client.update(first) == [0] * 100
    first_pack = _packed(store)[first[0][0].hash]
    places = {hash_: offset for hash_, offset, _size in read_table(str(first_pack))}
    with open(first_pack, "r+b") as f:
        for digest, data in first[30:]:
            f.seek(places[digest.hash])
            f.write(bytes([data[0] ^ 1]))
    kept = dict(first[:30])
    done = threading.Event()
    reads: list[dict[Digest, bytes]] = []

    def read_all_along() -> None:
        reader = _Client(server)
        while not done.is_set():
            reads.append(reader.read(list(kept)))
        reader.close()

    thread = threading.Thread(target=read_all_along)
    thread.start()
    try:
        for digest, _data in first[30:]:
            assert client.read([digest]) == {}
        wait_until(lambda: set(_packed(store)) == {d.hash for d in kept}, "the pack rewritten without them", 30,
                   server.proc, server.log)
    finally:
        done.set()
        thread.join(60)
    assert reads and all(found == kept for found in reads)
    assert client.read(list(kept)) == kept
    client.close()


def test_eviction_through_interleaved_packs_unlinks_whole_packs_and_rewrites_none(tmp_path: Path,
                                                                                 serve: list) -> None:
    """Nine batches of 100 x 1 KiB in a 1 MiB store, the first 60 blobs of each used again, so the least recently
    used end holds 40 blobs of every pack; a tenth batch takes the store over its bound. The pass evicts the
    two oldest packs whole (what the bound needs, to one pack) and writes nothing: no pack is rewritten, every
    other blob stays, and the account is exactly what the packs left count."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--max-size", "1MiB", "--memory", "0", workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    batches = [[_blob(1024) for _ in range(100)] for _ in range(10)]
    for batch in batches[:9]:
        assert client.update(batch) == [0] * 100
    written = set((store / PACKS).iterdir())
    assert not client.missing([d for batch in batches[:9] for d, _ in batch[:60]])  # the recent end
    assert client.update(batches[9]) == [0] * 100
    written |= {_packed(store)[batches[9][0][0].hash]}
    target = int(MiB * 0.9)
    wait_until(lambda: _store_bytes(server) <= target and _store_bytes(server) == _pack_costs(store), "eviction",
               30, server.proc, server.log)
    assert set((store / PACKS).iterdir()) <= written, "a pack was rewritten"
    gone = [batch for batch in batches if client.missing([d for d, _ in batch])]
    assert gone == batches[:2], "not the two oldest packs, whole"
    assert not client.missing([d for batch in batches[2:] for d, _ in batch])
    one_pack = _pack_costs(store) // 8
    assert _store_bytes(server) + one_pack > target, "more evicted than the bound needs"
    client.close()
    assert stop_signal(server) == 0
    status = _gaffer_cache("status", store)
    assert "Blobs: 800" in status.stdout, status.stdout


def test_action_results_stay_hits_while_their_packs_are_rewritten(tmp_path: Path) -> None:
    """An action result whose output is a packed blob, looked up over and over on another thread while its pack
    is rewritten (a neighbour dropped): every lookup is a hit and the blob stays indexed, 100 times over. (A
    store in this process, with thread switches forced often, so lookups land inside the rewrite.)"""
    store = ServerStore(tmp_path / "store", 1 << 30, report=print, memory=0)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(100):
            assert _hits_while_rewritten(store), "a lookup during a pack rewrite lost the blob"
    finally:
        sys.setswitchinterval(interval)
        store.close()


def _hits_while_rewritten(store: ServerStore) -> bool:
    """One round of the test above: did every lookup hit, and is the blob still indexed?"""
    namespace = store.namespace("")
    (kept, data), (dropped, filler) = _blob(3000), _blob(3000)
    namespace.put_checked([(kept, data), (dropped, filler)])
    key = _blob(16)[0]
    namespace.put_action(key, re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="o", digest=_pb(kept))]))
    pack = store.age_path(("", "cas", kept.hash))
    done = threading.Event()
    misses: list[Digest] = []

    def look_up() -> None:
        while not done.is_set() and not misses:
            if namespace.action_result(key) is None:
                misses.append(key)

    thread = threading.Thread(target=look_up)
    thread.start()
    namespace.forget(dropped)  # its pack is rewritten without it, in the background
    wait_until(lambda: not pack.exists(), "the pack rewritten", 30)
    done.set()
    thread.join(30)
    return not misses and namespace.has(kept)


def test_a_corrupt_packed_blob_is_dropped_for_good(tmp_path: Path, serve: list) -> None:
    """A packed blob damaged on disk, found when read: its pack is rewritten without it, so after a restart it is
    missing (not indexed again from the old pack) and its neighbours are still served."""
    store = tmp_path / "store"
    batch = _one_pack(tmp_path, 10)
    pack = _packed(store)[batch[3][0].hash]
    places = {hash_: offset for hash_, offset, _size in read_table(str(pack))}
    with open(pack, "r+b") as f:
        f.seek(places[batch[3][0].hash])
        f.write(bytes([batch[3][1][0] ^ 1]))
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    client = _Client(server)
    assert client.read([batch[3][0]]) == {}
    assert "corrupt blob" in server.log.read_text()
    client.close()
    assert stop_signal(server) == 0
    assert batch[3][0].hash not in _packed(store)
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    assert client.missing([d for d, _ in batch]) == {batch[3][0]}
    good = dict(batch[:3] + batch[4:])
    assert client.read(list(good)) == good
    client.close()


def test_bytestream_reads_a_packed_blob_from_the_memory_cache(tmp_path: Path, serve: list) -> None:
    """A batch's blobs go to the memory cache as they are stored: a ByteStream Read of one is answered from there,
    as a batch read is, so it never needs the disk (here its pack is removed behind the server's back)."""
    store = tmp_path / "store"
    server = start_gaffer_serve(workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    batch = [_blob(2000) for _ in range(3)]
    assert client.update(batch) == [0] * 3
    _packed(store)[batch[0][0].hash].unlink()
    digest, data = batch[1]
    stream = client.bytestream.Read(bytestream_pb2.ReadRequest(
        resource_name=f"blobs/{digest.hash}/{digest.size_bytes}", read_offset=5, read_limit=100), timeout=60)
    assert b"".join(r.data for r in stream) == data[5:105]
    assert client.read([batch[2][0]]) == dict(batch[2:])
    client.close()


def test_a_packed_blob_used_keeps_its_pack_young_across_a_restart(tmp_path: Path, serve: list) -> None:
    """Two packs last used hours ago, the older one's blob read again: restarted with a bound that holds one
    pack, the server evicts the other one, whose blobs were used longer ago (not the one written first)."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    client = _Client(server)
    first, second = ([_blob(1024) for _ in range(100)] for _ in range(2))
    assert client.update(first) == [0] * 100
    assert client.update(second) == [0] * 100
    client.close()
    assert stop_signal(server) == 0
    hours_ago = time.time() - 3 * 3600
    os.utime(_packed(store)[first[0][0].hash], (hours_ago, hours_ago))
    os.utime(_packed(store)[second[0][0].hash], (hours_ago + 60, hours_ago + 60))
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path)
    client = _Client(server)
    assert client.read([first[0][0]]) == dict(first[:1])
    client.close()
    assert stop_signal(server) == 0
    server = start_gaffer_serve("--max-size", "120KiB", "--memory", "0", workdir=tmp_path)
    serve.append(server)
    wait_until(lambda: _store_bytes(server) <= 120 * 1024 * 0.9, "eviction", 30, server.proc, server.log)
    client = _Client(server)
    assert not client.missing([d for d, _ in first])
    assert len(client.missing([d for d, _ in second])) >= 90
    client.close()


def test_a_rewritten_pack_keeps_the_newest_of_its_ages(tmp_path: Path) -> None:
    """A pack last read from the disk 3 hours ago, whose mtime a hit in the memory cache refreshed since (to an
    hour ago), rewritten without a dropped blob: the new pack is as old as the newest of the two, so its blobs
    keep their age across a restart. (A store in this process.)"""
    root = tmp_path / "store"
    (kept, kept_data), (dropped, dropped_data) = _blob(100), _blob(5000)
    store = ServerStore(root, 1 << 30, report=print, memory=0)
    store.namespace("").put_checked([(kept, kept_data), (dropped, dropped_data)])
    store.close()
    pack = _packed(root)[kept.hash]
    now = time.time()
    os.utime(pack, (now - 3 * 3600, now - 3 * 3600))
    store = ServerStore(root, 1 << 30, report=print, memory=0)
    try:
        os.utime(pack, (now - 3600, now - 3600))  # what MemoryCache.get does to the pack of a blob it serves
        store.namespace("").forget(dropped)
        wait_until(lambda: not pack.exists(), "the pack rewritten", 30)
        assert _packed(root)[kept.hash].stat().st_mtime == pytest.approx(now - 3600, abs=1)
    finally:
        store.close()


def _packs_sharing_a_blob(root: Path, count: int) -> set[Path]:
    """`count` packs of the instance at `root`, written a second apart, each holding one blob of its own and one
    they all share: at start, every pack but the newest is worth rewriting without it."""
    (root / PACKS).mkdir(parents=True)
    shared, shared_data = _blob(3000)
    now = time.time()
    for i in range(count):
        own, own_data = _blob(10)
        pack = root / PACKS / f"pack-{i:03}"
        pack.write_bytes(encode([(shared.hash, shared_data), (own.hash, own_data)])[0])
        os.utime(pack, (now - count + i, now - count + i))
    return set((root / PACKS).iterdir())


def test_a_stop_waits_for_one_pack_rewrite_not_for_all_queued(tmp_path: Path) -> None:
    """200 packs worth rewriting found at start, and the store closed at once: the close waits for the rewrite
    under way, not for the queue (a stop must not take that long; the packs are found again at the next start).
    (A store in this process.)"""
    root = tmp_path / "store"
    written = _packs_sharing_a_blob(root, 200)
    ServerStore(root, 1 << 30, report=print, memory=0).close()
    assert len(written & set((root / PACKS).iterdir())) >= 150


def test_the_bound_is_kept_between_pack_rewrites(tmp_path: Path) -> None:
    """200 packs worth rewriting found at start, under the bound with ten older files; then an upload takes the
    store over its bound. The background pass evicts (the old files) before its next rewrite, not after the
    queue: the store is back within its bound while most packs still wait. (A store in this process.)"""
    root = tmp_path / "store"
    written = _packs_sharing_a_blob(root, 200)
    for digest, data in (_blob(50_000) for _ in range(10)):
        path = root / "cas" / digest.hash[:2] / digest.hash
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (time.time() - 10_000, time.time() - 10_000))
    bound = 2 * MiB
    store = ServerStore(root, bound, report=print, memory=0)
    try:
        assert store.total_bytes < bound * 0.9
        store.namespace("").put_checked([_blob(700_000)])
        wait_until(lambda: store.total_bytes <= bound, "eviction", 30)
        assert len(written & set((root / PACKS).iterdir())) >= 100, "the queued rewrites went first"
    finally:
        store.close()


def test_a_pack_the_background_pass_cannot_read_stops_no_later_pass(tmp_path: Path, serve: list) -> None:
    """A pack replaced by a directory behind the server's back: the blob of it an action result names is missed,
    and rewriting the pack without it fails, reported once; the background pass goes on: 3 MiB more uploaded
    into a 1 MiB store are kept within the bound, and the server stops cleanly."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--max-size", "1MiB", "--memory", "0", workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    (small, small_data), (named, named_data) = _blob(100), _blob(5000)
    assert client.update([(small, small_data), (named, named_data)]) == [0, 0]
    key = _blob(16)[0]
    client.put_action(key, re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="o", digest=_pb(named))]))
    pack = _packed(store)[small.hash]
    pack.unlink()
    pack.mkdir()
    assert client.get_action(key) is None
    wait_until(lambda: f"cannot rewrite {pack}" in server.log.read_text(), "the failed rewrite reported", 30,
               server.proc, server.log)
    for _ in range(30):
        assert client.update([_blob(1024) for _ in range(100)]) == [0] * 100
    wait_until(lambda: _store_bytes(server) <= MiB, "eviction", 30, server.proc, server.log)
    client.close()
    assert stop_signal(server) == 0
    log = server.log.read_text()
    assert log.count("cannot ") == 1 and "Traceback" not in log, log


def test_a_pack_rewritten_under_the_bound_evicts_nothing(tmp_path: Path, serve: list) -> None:
    """A store between the background pass's low-water mark and its bound (nine packs of 100 x 1 KiB in 1 MiB),
    then a corrupt blob found, whose pack is rewritten without it: the rewrite starts no eviction, every other
    blob stays."""
    store = tmp_path / "store"
    server = start_gaffer_serve("--max-size", "1MiB", "--memory", "0", workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    batches = [[_blob(1024) for _ in range(100)] for _ in range(9)]
    for batch in batches:
        assert client.update(batch) == [0] * 100
    assert MiB * 0.9 < _store_bytes(server) <= MiB
    pack = _packed(store)[batches[4][0][0].hash]
    _damage(pack, *batches[4][0])
    assert client.read([batches[4][0][0]]) == {}
    wait_until(lambda: not pack.exists(), "the pack rewritten", 30, server.proc, server.log)
    assert client.missing([d for batch in batches for d, _ in batch]) == {batches[4][0][0]}
    client.close()


def test_a_pack_rewritten_without_fsync_is_flushed_before_the_old_one_goes(tmp_path: Path, serve: list) -> None:
    """Without --fsync too, a pack rewritten without a corrupt blob is fsync'd before its rename and its directory
    after, and only then is the old pack unlinked: a crash of the machine cannot leave the new one empty and the
    old one gone."""
    store = tmp_path / "s" / "store"
    server = start_gaffer_serve("--memory", "0", workdir=tmp_path / "s")
    serve.append(server)
    log = tmp_path / "strace.log"
    with _straced(server, log, "fsync,rename,unlink,unlinkat") as client:
        batch = [_blob(100), _blob(5000)]
        assert client.update(batch) == [0, 0]
        old = _packed(store)[batch[0][0].hash]
        _damage(old, *batch[1])
        assert client.read([batch[1][0]]) == {}
        wait_until(lambda: not old.exists(), "the pack rewritten", 30, server.proc, server.log)
        new = _packed(store)[batch[0][0].hash]
    _flushed_before_unlinked(log.read_text().splitlines(), new.name, old)


# -- durability: kill -9, --fsync -------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--fsync"]], ids=["default", "fsync"])
def test_kill_9_right_after_writes_loses_nothing_acknowledged(tmp_path: Path, serve: list, flags: list[str]) -> None:
    """Batches (one blob in each with a wrong digest), ByteStream uploads and action results from five threads;
    the server is killed with SIGKILL while they run, right after a reply. Restarted on the same directory, it
    returns every acknowledged blob byte for byte and every acknowledged action result, never a refused blob, and
    leaves no temp file behind."""
    server = start_gaffer_serve("--memory", "0", *flags, workdir=tmp_path)
    acked: dict[Digest, bytes] = {}
    results: dict[Digest, re_pb2.ActionResult] = {}
    refused: list[Digest] = []
    lock = threading.Lock()
    dead = threading.Event()

    def batches() -> None:
        client = _Client(server)
        while not dead.is_set():
            blobs = [_blob(size) for size in (1, 100, 1024, 4000, 70_000) * 40]
            bad = (_blob(50)[0], os.urandom(50))
            try:
                codes = client.update([*blobs, bad])
            except grpc.RpcError:
                break
            assert codes == [0] * len(blobs) + [grpc.StatusCode.INVALID_ARGUMENT.value[0]]
            with lock:
                acked.update(blobs)
                refused.append(bad[0])
        client.close()

    def streams() -> None:
        client = _Client(server)
        while not dead.is_set():
            digest, data = _blob(3 * MiB + 5)
            if client.write(digest, data) != grpc.StatusCode.OK:
                break
            with lock:
                acked[digest] = data
        client.close()

    def actions() -> None:
        client = _Client(server)
        while not dead.is_set():
            key, (digest, data) = _blob(16)[0], _blob(300)
            result = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="o", digest=_pb(digest))])
            try:
                assert client.update([(digest, data)]) == [0]
                client.put_action(key, result)
            except grpc.RpcError:
                break
            with lock:
                acked[digest] = data
                results[key] = result
        client.close()

    errors: list[Exception] = []

    def run(target: Callable[[], None]) -> None:
        try:
            target()
        except Exception as e:  # noqa: BLE001 - an assertion in a thread fails the test below, in its own thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in (batches, batches, streams, streams, actions)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(acked) >= 1500 and len(results) >= 20, "acknowledged writes", 120, server.proc)
        with lock:  # the next reply in any thread comes after this: the kill lands among writes in flight
            server.proc.kill()
            dead.set()
        assert server.proc.wait(30) == -signal.SIGKILL
    finally:
        dead.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert any(d.size_bytes > MiB for d in acked)

    server = start_gaffer_serve("--memory", "0", *flags, workdir=tmp_path)
    serve.append(server)
    client = _Client(server)
    small = [d for d in acked if d.size_bytes <= MiB]
    assert not client.missing(list(acked))
    for start in range(0, len(small), 40):  # at most 40 x 70,000 bytes: one batch's limit
        part = small[start:start + 40]
        assert client.read(part) == {d: acked[d] for d in part}
    for digest in (d for d in acked if d.size_bytes > MiB):
        read = client.bytestream.Read(bytestream_pb2.ReadRequest(resource_name=f"blobs/{digest.hash}/{digest.size_bytes}"),
                                      timeout=60)
        assert b"".join(r.data for r in read) == acked[digest]
    for key, result in results.items():
        assert client.get_action(key) == result
    assert client.missing(refused) == set(refused)
    assert not [p for p in (tmp_path / "store" / "tmp").iterdir()]
    assert set(_packed(tmp_path / "store")) & {d.hash for d in acked}, "the batches should have gone to packs"
    client.close()


@contextmanager
def _straced(server: ReapiServer, log: Path, calls: str) -> Iterator[_Client]:
    """strace following every thread of `server` for the block (the system calls `calls`, which must include
    rename, in `log`, a descriptor shown with its path), and a client of the server to use in it."""
    strace = require_tool("strace")
    tracer = subprocess.Popen([strace, "-f", "-qq", "-y", "-e", f"trace={calls}", "-o", str(log), "-p",
                               str(server.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = _Client(server)
    try:
        def traced() -> bool:  # strace follows the server's threads once a blob's rename shows in its log
            digest, data = _blob(10)
            client.update([(digest, data)])
            return log.exists() and digest.hash in log.read_text()

        wait_until(traced, "strace attached", 30)
        yield client
    finally:
        client.close()
        tracer.terminate()
        tracer.wait(10)


@pytest.mark.parametrize("flags", [[], ["--fsync"]], ids=["default", "fsync"])
def test_fsync_flushes_every_entry_and_its_directory_before_the_reply(
    tmp_path: Path, serve: list, flags: list[str]
) -> None:
    """With --fsync, a batch of 20 new blobs is one pack, fsync'd before its rename and its directory after, before
    the reply; a ByteStream upload and an action result one file and one directory each; without it, none (the
    kernel writes back in its own time)."""
    server = start_gaffer_serve(*flags, workdir=tmp_path / "s")
    serve.append(server)
    log = tmp_path / "strace.log"
    with _straced(server, log, "fsync,rename") as client:
        before = log.read_text().count("fsync(")
        blobs = [_blob(100) for _ in range(20)]
        assert client.update(blobs) == [0] * 20
        assert client.write(*_blob(2 * MiB)) == grpc.StatusCode.OK
        client.put_action(_blob(8)[0], re_pb2.ActionResult(stdout_digest=_pb(blobs[0][0])))
    calls = log.read_text().splitlines()  # strace has flushed its log; -y: a descriptor shows its path
    after = sum("fsync(" in call for call in calls)
    if flags:  # the batch is one pack (its file and directory), the upload and the action result a file each
        assert after - before >= 2 + 2 + 2
        packed = [i for i, call in enumerate(calls)
                  if "rename(" in call and f"/{PACKS}/" in call and call.rstrip().endswith("= 0")]
        assert len(packed) == 1, "\n".join(calls)
        tmp = calls[packed[0]].split('"')[1]
        assert any(f"<{tmp}>" in call for call in calls[:packed[0]] if "fsync(" in call), "pack not flushed"
        assert any(f"/{PACKS}>" in call for call in calls[packed[0]:] if "fsync(" in call), "its directory not"
    else:
        assert after == before == 0


# -- a full or read-only disk -----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, mounted for this test and unmounted after it."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    mount, umount = require_tool("mount"), require_tool("umount")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run([mount, "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True, check=False)
    require(mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run([umount, "-l", str(mountpoint)], check=True)


def test_a_full_disk_refuses_uploads_leaves_no_temp_files_and_stops_cleanly(
    tmp_path: Path, small_disk: Path, serve: list
) -> None:
    server = start_gaffer_serve("--dir", str(small_disk / "store"), "--max-size", "1GiB", workdir=tmp_path / "s")
    serve.append(server)
    client = _Client(server)
    stored, stored_data = _blob(1000)
    assert client.update([(stored, stored_data)]) == [0]
    fill_disk(small_disk, 512 * 1024)
    blobs = [_blob(MiB) for _ in range(3)]
    try:
        codes = client.update(blobs)
        assert any(code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] for code in codes), codes
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.write(*_blob(2 * MiB)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as e:
        client.put_action(_blob(8)[0], re_pb2.ActionResult(stdout_raw=os.urandom(MiB)))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    big_result = re_pb2.ActionResult(stdout_raw=os.urandom(MiB)).SerializeToString()
    digest, data = _blob(MiB)
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        assert http.put(f"/ac/{_blob(8)[0].hash}", content=big_result).status_code == 507
        assert http.put(f"/cas/{digest.hash}", content=data).status_code == 507
        assert http.get(f"/cas/{stored.hash}").content == stored_data  # reads go on
    assert list((small_disk / "store" / "tmp").iterdir()) == []
    assert not _packed(small_disk / "store")  # the batch's pack was never made
    fill_disk(small_disk, 0)
    client.close()
    assert stop_signal(server) == 0
    log = server.log.read_text()
    assert "Traceback" not in log and "SIGTERM: stopping" in log
    assert list((small_disk / "store" / "tmp").iterdir()) == []


def test_a_read_only_disk_refuses_writes_without_naming_the_servers_paths(
    tmp_path: Path, small_disk: Path, serve: list
) -> None:
    server = start_gaffer_serve("--dir", str(small_disk / "store"), workdir=tmp_path / "s")
    serve.append(server)
    client, other = _Client(server), _Client(server, "fresh")
    stored, stored_data = _blob(1000)
    assert client.update([(stored, stored_data)]) == [0]
    subprocess.run([require_tool("mount"), "-o", "remount,ro", str(small_disk)], check=True)
    for c in (client, other):
        try:
            codes = c.update([_blob(100)])
            assert codes != [0]
        except grpc.RpcError as e:
            assert e.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK)
            assert str(small_disk) not in (e.details() or "")
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        digest, data = _blob(100)
        for path in (f"/cas/{digest.hash}", f"/fresh/cas/{digest.hash}"):
            r = http.put(path, content=data)
            assert r.status_code >= 500 and str(small_disk) not in r.text
        assert http.get(f"/cas/{stored.hash}").content == stored_data
    client.close()
    other.close()
    assert stop_signal(server, signal.SIGTERM) == 0
    assert "Traceback" not in server.log.read_text()
