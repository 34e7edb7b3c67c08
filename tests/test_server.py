"""`gaffer serve` as a real process: REAPI details, the Bazel HTTP cache protocol, /metrics, tokens, signals."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from gaffer.cache.base import TierError
from gaffer.cache.grpc import GrpcTier
from gaffer.digest import Digest, digest_bytes
from gaffer.protos import bytestream_pb2, bytestream_pb2_grpc
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos import remote_execution_pb2_grpc as re_grpc
from tests import servers
from tests.buildgrid import ReapiServer, serve_s3_backend, start_gaffer_serve, stop_signal
from tests.servers import wait_until


def _blob(size: int) -> tuple[Digest, bytes]:
    data = os.urandom(size)
    return digest_bytes(data), data


def _pb(d: Digest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=d.hash, size_bytes=d.size_bytes)


@pytest.fixture
def served(request: pytest.FixtureRequest) -> ReapiServer:
    """The server under test: `gaffer serve` on its own disk, or (`BACKENDS`) on an S3 backend with the disk as a
    read-through cache only. The same protocol tests must pass on both."""
    backend = getattr(request, "param", "disk")
    server: ReapiServer = request.getfixturevalue({"disk": "gaffer_serve", "s3": "gaffer_serve_s3"}[backend])
    return server


BACKENDS = pytest.mark.parametrize("served", ["disk", "s3"], indirect=True)


@pytest.fixture
def channel(served: ReapiServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.grpc_address) as ch:
        yield ch


@pytest.fixture
def http(served: ReapiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.http_url, timeout=10) as client:
        yield client


@pytest.fixture
def tier(served: ReapiServer) -> Iterator[GrpcTier]:
    t = GrpcTier.from_url(served.url)
    yield t
    t.close()


# -- REAPI --------------------------------------------------------------------------------------------------------


def test_capabilities(channel: grpc.Channel) -> None:
    caps = re_grpc.CapabilitiesStub(channel).GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name="x"))
    cache = caps.cache_capabilities
    assert list(cache.digest_functions) == [re_pb2.DigestFunction.SHA256]
    assert cache.action_cache_update_capabilities.update_enabled
    assert cache.max_batch_total_size_bytes == 4 * 1024 * 1024
    assert cache.symlink_absolute_path_strategy == re_pb2.SymlinkAbsolutePathStrategy.ALLOWED
    assert (caps.high_api_version.major, caps.high_api_version.minor) == (2, 3)


@BACKENDS
def test_bytestream_read_with_offset_and_limit(tier: GrpcTier, channel: grpc.Channel) -> None:
    digest, data = _blob(3 * 1024 * 1024 + 5)
    tier.write_blobs([(digest, data)])
    stub = bytestream_pb2_grpc.ByteStreamStub(channel)
    name = f"blobs/{digest.hash}/{digest.size_bytes}"

    def read(offset: int, limit: int) -> bytes:
        request = bytestream_pb2.ReadRequest(resource_name=name, read_offset=offset, read_limit=limit)
        return b"".join(r.data for r in stub.Read(request))

    assert read(0, 0) == data
    assert read(1000, 0) == data[1000:]
    assert read(1000, 2_000_000) == data[1000:2_001_000]
    assert read(len(data), 0) == b""
    with pytest.raises(grpc.RpcError) as e:
        read(len(data) + 1, 0)
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_bytestream_write_checks_offsets_and_query_write_status(channel: grpc.Channel) -> None:
    stub = bytestream_pb2_grpc.ByteStreamStub(channel)
    digest, data = _blob(1000)
    name = f"uploads/5e1c0b2e-0000-4000-8000-000000000000/blobs/{digest.hash}/{digest.size_bytes}"
    status = stub.QueryWriteStatus(bytestream_pb2.QueryWriteStatusRequest(resource_name=name))
    assert (status.committed_size, status.complete) == (0, False)
    skipping = [bytestream_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[:500]),
                bytestream_pb2.WriteRequest(write_offset=600, data=data[500:], finish_write=True)]
    with pytest.raises(grpc.RpcError) as e:
        stub.Write(iter(skipping))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    unfinished = [bytestream_pb2.WriteRequest(resource_name=name, write_offset=0, data=data)]
    with pytest.raises(grpc.RpcError) as e:
        stub.Write(iter(unfinished))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    good = [bytestream_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[:500]),
            bytestream_pb2.WriteRequest(write_offset=500, data=data[500:], finish_write=True)]
    assert stub.Write(iter(good)).committed_size == 1000
    status = stub.QueryWriteStatus(bytestream_pb2.QueryWriteStatusRequest(resource_name=name))
    assert (status.committed_size, status.complete) == (1000, True)


@pytest.mark.parametrize("name", [
    "../blobs/{h}/1", "/abs/blobs/{h}/1", "a/./b/blobs/{h}/1", "blobs/{h}/x", "blobs/{h}", "blobs/NOTAHASH/1",
    "uploads/blobs/{h}/1", "a//b/blobs/{h}/1",
])
def test_bad_resource_names_are_invalid_arguments(channel: grpc.Channel, name: str) -> None:
    resource = name.format(h="a" * 64)
    with pytest.raises(grpc.RpcError) as e:
        list(bytestream_pb2_grpc.ByteStreamStub(channel).Read(bytestream_pb2.ReadRequest(resource_name=resource)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@BACKENDS
def test_action_result_with_a_missing_blob_is_a_miss(tier: GrpcTier) -> None:
    present, data = _blob(100)
    tier.write_blob(present, data)
    absent = _blob(100)[0]
    tree = re_pb2.Tree(root=re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=_pb(absent))]))
    tree_bytes = tree.SerializeToString(deterministic=True)
    tree_digest = digest_bytes(tree_bytes)
    tier.write_blob(tree_digest, tree_bytes)
    cases = {
        "output file": re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="o", digest=_pb(absent))]),
        "stdout": re_pb2.ActionResult(stdout_digest=_pb(absent)),
        "stderr": re_pb2.ActionResult(stderr_digest=_pb(absent)),
        "tree": re_pb2.ActionResult(output_directories=[re_pb2.OutputDirectory(path="d", tree_digest=_pb(absent))]),
        "file in tree": re_pb2.ActionResult(
            output_directories=[re_pb2.OutputDirectory(path="d", tree_digest=_pb(tree_digest))]),
    }
    for what, result in cases.items():
        key = _blob(10)[0]
        result.stdout_raw = b""  # every result also names a present blob, so only `absent` makes it a miss
        result.output_files.append(re_pb2.OutputFile(path="present", digest=_pb(present)))
        tier.write_action(key, result.SerializeToString(deterministic=True))
        assert tier.read_action(key) is None, what
    complete = _blob(10)[0]
    tier.write_action(complete, re_pb2.ActionResult(stdout_digest=_pb(present)).SerializeToString())
    assert tier.read_action(complete) is not None


@BACKENDS
def test_a_wrong_size_from_a_peer_never_evicts_a_good_blob(tier: GrpcTier) -> None:
    digest, data = _blob(700)
    tier.write_blob(digest, data)
    lying = Digest(digest.hash, digest.size_bytes + 1)
    assert tier.find_missing([lying]) == [lying]
    assert tier.read_blobs([lying]) == {}
    assert tier.find_missing([digest]) == []
    assert tier.read_blob(digest) == data


def test_a_blob_removed_behind_the_servers_back_heals_the_index(
    gaffer_serve: ReapiServer, tier: GrpcTier
) -> None:
    digest, data = _blob(900)
    tier.write_blob(digest, data)
    key = _blob(10)[0]
    tier.write_action(key, re_pb2.ActionResult(stdout_digest=_pb(digest)).SerializeToString())
    assert tier.read_action(key) is not None
    (gaffer_serve.workdir / "store" / "cas" / digest.hash[:2] / digest.hash).unlink()
    assert tier.read_action(key) is None  # checked against the disk, not the index
    assert tier.find_missing([digest]) == [digest]  # so the client uploads it again
    tier.write_blob(digest, data)
    assert tier.read_action(key) is not None


@BACKENDS
def test_get_tree(tier: GrpcTier, channel: grpc.Channel) -> None:
    leaf = re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=_pb(_blob(1)[0]))])
    leaf_bytes = leaf.SerializeToString(deterministic=True)
    root = re_pb2.Directory(directories=[re_pb2.DirectoryNode(name="sub", digest=_pb(digest_bytes(leaf_bytes)))])
    root_bytes = root.SerializeToString(deterministic=True)
    tier.write_blobs([(digest_bytes(leaf_bytes), leaf_bytes), (digest_bytes(root_bytes), root_bytes)])
    stub = re_grpc.ContentAddressableStorageStub(channel)
    pages = list(stub.GetTree(re_pb2.GetTreeRequest(root_digest=_pb(digest_bytes(root_bytes)), page_size=1)))
    assert [d for p in pages for d in p.directories] == [root, leaf]
    with pytest.raises(grpc.RpcError) as e:
        list(stub.GetTree(re_pb2.GetTreeRequest(root_digest=_pb(_blob(5)[0]))))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_corrupt_blob_on_disk_is_evicted_not_served(tmp_path: Path) -> None:
    """Blobs damaged on disk while the server was down: each is checked when first read, and evicted."""
    small, small_data = _blob(500)
    large, large_data = _blob(5 * 1024 * 1024)
    server = start_gaffer_serve(workdir=tmp_path)
    GrpcTier.from_url(server.url).write_blobs([(small, small_data), (large, large_data)])
    assert stop_signal(server) == 0
    for digest in (small, large):
        with open(tmp_path / "store" / "cas" / digest.hash[:2] / digest.hash, "r+b") as f:
            f.write(b"X")
    server = start_gaffer_serve(workdir=tmp_path)
    try:
        tier = GrpcTier.from_url(server.url)
        assert tier.find_missing([small, large]) == []  # the index knows them; reading finds them corrupt
        assert tier.read_blob(small) is None
        with pytest.raises(TierError) as e:
            tier.read_blob(large)
        assert e.value.transient and "DATA_LOSS" in str(e.value)
        assert tier.find_missing([small, large]) == [small, large]
        assert "corrupt cache blob" in server.log.read_text()
    finally:
        server.stop()


# -- HTTP -----------------------------------------------------------------------------------------------------------


@BACKENDS
def test_http_cas_and_ac(http: httpx.Client, tier: GrpcTier) -> None:
    digest, data = _blob(3000)
    assert http.get(f"/cas/{digest.hash}").status_code == 404
    assert http.head(f"/cas/{digest.hash}").status_code == 404
    assert http.put(f"/cas/{digest.hash}", content=data).status_code == 200
    assert http.get(f"/cas/{digest.hash}").content == data
    head = http.head(f"/cas/{digest.hash}")
    assert head.status_code == 200 and head.headers["content-length"] == "3000"
    assert tier.read_blob(digest) == data  # one store behind both protocols
    key = _blob(8)[0]
    result = re_pb2.ActionResult(stdout_digest=_pb(digest)).SerializeToString(deterministic=True)
    assert http.get(f"/ac/{key.hash}").status_code == 404
    assert http.put(f"/ac/{key.hash}", content=result).status_code == 200
    assert http.get(f"/ac/{key.hash}").content == result
    assert tier.read_action(key) == result


@BACKENDS
def test_http_large_blob_streams(http: httpx.Client) -> None:
    digest, data = _blob(6 * 1024 * 1024 + 3)
    assert http.put(f"/cas/{digest.hash}", content=iter([data[:1000], data[1000:]]),
                    headers={"Content-Length": str(len(data))}).status_code == 200
    with http.stream("GET", f"/cas/{digest.hash}") as r:
        assert r.status_code == 200
        assert digest_bytes(b"".join(r.iter_bytes())) == digest


@BACKENDS
def test_http_rejects_bad_uploads_and_paths(http: httpx.Client) -> None:
    digest, data = _blob(100)
    assert http.put(f"/cas/{digest.hash}", content=data + b"!").status_code == 400
    assert http.get(f"/cas/{digest.hash}").status_code == 404
    assert http.put(f"/ac/{digest.hash}", content=b"\xff\xff not a proto").status_code == 400
    assert http.get("/cas/NOTAHASH").status_code == 400
    assert http.get(f"/../cas/{digest.hash}").status_code in (400, 404)
    assert http.get(f"/.hidden/cas/{digest.hash}").status_code == 400
    assert http.get("/elsewhere").status_code == 404


@BACKENDS
def test_http_action_result_with_a_missing_blob_is_a_miss(http: httpx.Client) -> None:
    key = _blob(8)[0]
    result = re_pb2.ActionResult(stdout_digest=_pb(_blob(9)[0])).SerializeToString()
    assert http.put(f"/ac/{key.hash}", content=result).status_code == 200
    assert http.get(f"/ac/{key.hash}").status_code == 404


@BACKENDS
def test_http_instance_prefix_is_the_grpc_instance(http: httpx.Client, served: ReapiServer) -> None:
    digest, data = _blob(64)
    assert http.put(f"/proj/x/cas/{digest.hash}", content=data).status_code == 200
    assert http.get(f"/cas/{digest.hash}").status_code == 404
    assert http.get(f"/proj/cas/{digest.hash}").status_code == 404
    assert GrpcTier.from_url(f"{served.url}/proj/x").read_blob(digest) == data


def test_metrics(http: httpx.Client) -> None:
    digest, data = _blob(10)
    http.put(f"/cas/{digest.hash}", content=data)
    http.get(f"/cas/{digest.hash}")
    http.get(f"/ac/{_blob(8)[0].hash}")
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['gaffer_requests_total{protocol="http",method="PUT",kind="cas",status="200"}'] >= 1
    assert values['gaffer_cache_hits_total{kind="cas"}'] >= 1
    assert values['gaffer_cache_misses_total{kind="ac"}'] >= 1
    assert values["gaffer_received_bytes_total"] >= 10 and values["gaffer_sent_bytes_total"] >= 10
    assert values["gaffer_store_bytes"] >= 10


# -- process: tokens, size bound, signals, flags ---------------------------------------------------------------------


def test_token_required_for_every_read_and_write(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("let-me-in\n")
    server = start_gaffer_serve("--token-file", str(tmp_path / "token"), workdir=tmp_path / "s")
    try:
        digest, data = _blob(100)
        for anonymous in (GrpcTier.from_url(server.url), GrpcTier(server.grpc_address, token="wrong")):
            with pytest.raises(TierError) as e:
                anonymous.check()
            assert not e.value.transient and "UNAUTHENTICATED" in str(e.value)
            with pytest.raises(TierError):
                anonymous.find_missing([digest])
            with pytest.raises(TierError):
                anonymous.read_action(digest)
        authorized = GrpcTier.from_url(f"{server.url}?token_file={tmp_path / 'token'}")
        authorized.write_blob(digest, data)
        assert authorized.read_blob(digest) == data
        with httpx.Client(base_url=server.http_url) as client:
            assert client.get(f"/cas/{digest.hash}").status_code == 401
            assert client.put(f"/cas/{digest.hash}", content=data).status_code == 401
            assert client.get("/metrics").status_code == 401
            ok = client.get(f"/cas/{digest.hash}", headers={"Authorization": "Bearer let-me-in"})
            assert ok.status_code == 200 and ok.content == data
    finally:
        server.stop()


def test_size_bound_evicts_least_recently_used(tmp_path: Path) -> None:
    server = start_gaffer_serve("--max-size", "1MiB", workdir=tmp_path)
    try:
        tier = GrpcTier.from_url(server.url)
        blobs = [_blob(200 * 1024) for _ in range(10)]
        for digest, data in blobs:
            tier.write_blob(digest, data)

        def under_bound() -> bool:
            return len(tier.find_missing([d for d, _ in blobs])) >= 5

        wait_until(under_bound, "gc under --max-size", 10)
        store = tmp_path / "store" / "cas"
        assert sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) <= 1024 * 1024
    finally:
        server.stop()


def test_sigterm_exits_0_and_kill_9_keeps_committed_entries(tmp_path: Path) -> None:
    server = start_gaffer_serve(workdir=tmp_path)
    digest, data = _blob(2 * 1024 * 1024)
    GrpcTier.from_url(server.url).write_blob(digest, data)
    assert stop_signal(server, signal.SIGKILL) == -signal.SIGKILL
    server = start_gaffer_serve(workdir=tmp_path)
    try:
        assert GrpcTier.from_url(server.url).read_blob(digest) == data
        assert stop_signal(server, signal.SIGTERM) == 0
        assert "SIGTERM: stopping" in server.log.read_text()
    finally:
        server.stop()


def test_sighup_stops_cleanly_as_sigterm_does(tmp_path: Path) -> None:
    """A closed terminal's SIGHUP killed the server on the spot (as kill -9: nothing committed lost, but uploads in
    flight cut, workers' polls dropped): it stops as on SIGTERM."""
    server = start_gaffer_serve(workdir=tmp_path)
    try:
        assert stop_signal(server, signal.SIGHUP) == 0
        assert "SIGHUP: stopping" in server.log.read_text()
    finally:
        server.stop()


@pytest.mark.parametrize(("after", "status"), [(signal.SIGHUP, 0), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_a_second_sighup_is_ignored_a_sigterm_after_it_exits_at_once(tmp_path: Path, after: signal.Signals,
                                                                      status: int) -> None:
    """A closed terminal usually sends SIGHUP twice (the shell forwards it, then the kernel sends it again): the
    second one ended the server at once (status 129), cutting the upload its grace period was for. A SIGHUP after
    the first stop signal is now ignored; a SIGTERM after it still exits at once."""
    server = start_gaffer_serve(workdir=tmp_path)
    try:
        digest, data = _blob(100_000)
        with _inside_an_upload(server, digest, data) as conn:
            os.kill(server.proc.pid, signal.SIGHUP)  # back to back, as a closed terminal sends them
            os.kill(server.proc.pid, signal.SIGHUP)
            wait_until(lambda: "SIGHUP: stopping" in server.log.read_text(), "the stop signal", 10, server.proc)
            server.proc.send_signal(after)  # surely after the first was taken
            if after == signal.SIGHUP:
                wait_until(lambda: "SIGHUP again: already stopping, ignored" in server.log.read_text(),
                           "the second SIGHUP", 10, server.proc)
                conn.sendall(data)
                assert conn.recv(100).startswith(b"HTTP/1.1 200")
        assert server.proc.wait(30) == status, server.log.read_text()
    finally:
        server.stop()


@pytest.mark.parametrize(("args", "status", "message"), [
    (["--bogus"], 2, "unrecognized arguments"),
    (["--grpc", "nohostport"], 2, "expected HOST:PORT"),
    (["--http", "127.0.0.1:99999"], 2, "expected HOST:PORT"),
    (["--grpc", "127.0.0.1:0", "--max-size", "lots"], 2, "is not a size"),
    (["--grpc", "127.0.0.1:0", "--token-file", "/no/such/token"], 2, "--token-file"),
    (["--grpc", "127.0.0.1:0", "--backend", "ftp://host/x"], 2, "unknown scheme 'ftp'"),
    ([], 2, "nothing to serve"),
])
def test_bad_flags_are_one_line_errors(tmp_path: Path, args: list[str], status: int, message: str) -> None:
    run = subprocess.run([sys.executable, "-m", "gaffer.server.main", "--dir", str(tmp_path), *args],
                         check=False, capture_output=True, text=True, timeout=30)
    assert run.returncode == status
    assert run.stderr.count("\n") == 1 and message in run.stderr and run.stderr.startswith("gaffer serve: ")


def test_port_in_use_is_an_environment_error(gaffer_serve: ReapiServer, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "gaffer.server.main", "--dir", str(tmp_path),
                          "--grpc", gaffer_serve.grpc_address], check=False, capture_output=True, text=True, timeout=30)
    assert run.returncode == 3 and run.stderr.count("\n") == 1 and "cannot listen" in run.stderr


@contextlib.contextmanager
def _inside_an_upload(server: ReapiServer, digest: Digest, data: bytes) -> Iterator[socket.socket]:
    """A connection whose HTTP PUT of `data` the server has begun (it answered 100 Continue): the body is the
    caller's to send, so a signal can land while the server is inside the request."""
    host, port = server.http_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"PUT /cas/{digest.hash} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        assert conn.recv(100).startswith(b"HTTP/1.1 100")
        yield conn


def test_stop_signal_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    server = start_gaffer_serve(workdir=tmp_path)
    try:
        digest, data = _blob(100_000)
        with _inside_an_upload(server, digest, data) as conn:
            server.proc.send_signal(signal.SIGINT)
            wait_until(lambda: "SIGINT: stopping" in server.log.read_text(), "the stop signal", 10, server.proc)
            conn.sendall(data)
            assert conn.recv(100).startswith(b"HTTP/1.1 200")
        assert server.proc.wait(30) == 0
        assert (tmp_path / "store" / "cas" / digest.hash[:2] / digest.hash).read_bytes() == data
    finally:
        server.stop()


@BACKENDS
def test_the_empty_blob_is_always_present(http: httpx.Client, tier: GrpcTier) -> None:
    """REAPI: the empty blob exists on every server, whether or not anyone uploaded it."""
    empty = digest_bytes(b"")
    assert http.get(f"/cas/{empty.hash}").status_code == 200
    assert http.head(f"/never-used-instance/cas/{empty.hash}").status_code == 200
    assert tier.find_missing([empty]) == [] and tier.read_blob(empty) == b""


# -- replicas on one backend ----------------------------------------------------------------------------------------


def test_two_replicas_share_one_bucket(moto_bucket: servers.Server, tmp_path: Path) -> None:
    """What is written through one replica is read through the other: nothing is authoritative locally."""
    url, env = serve_s3_backend(moto_bucket, f"replicas-{uuid.uuid4().hex[:8]}")
    a = start_gaffer_serve("--backend", url, workdir=tmp_path / "a", env=env)
    b = start_gaffer_serve("--backend", url, workdir=tmp_path / "b", env=env)
    try:
        via_a, via_b = GrpcTier.from_url(a.url), GrpcTier.from_url(b.url)
        (small, small_data), (large, large_data) = _blob(2000), _blob(5 * 1024 * 1024 + 1)
        via_a.write_blobs([(small, small_data), (large, large_data)])
        key = _blob(10)[0]
        result = re_pb2.ActionResult(stdout_digest=_pb(small), output_files=[
            re_pb2.OutputFile(path="big", digest=_pb(large))]).SerializeToString(deterministic=True)
        via_a.write_action(key, result)
        assert via_b.find_missing([small, large]) == []
        assert via_b.read_action(key) == result
        assert via_b.read_blob(small) == small_data and via_b.read_blob(large) == large_data
        with httpx.Client(base_url=b.http_url) as client:  # the Bazel protocol names blobs by hash alone
            assert client.get(f"/cas/{small.hash}").content == small_data
            assert client.get(f"/ac/{key.hash}").content == result
        put, put_data = _blob(4000)
        with httpx.Client(base_url=a.http_url) as client:  # an HTTP upload reaches the backend too
            assert client.put(f"/cas/{put.hash}", content=put_data).status_code == 200
        assert via_b.read_blob(put) == put_data
        instance = _blob(300)
        GrpcTier.from_url(f"{a.url}/team/x").write_blob(*instance)
        assert GrpcTier.from_url(f"{b.url}/team/x").read_blob(instance[0]) == instance[1]
        assert via_b.find_missing([instance[0]]) == [instance[0]], "instances stay apart in the backend"
    finally:
        a.stop()
        b.stop()


def test_a_backend_without_its_bucket_is_an_environment_error(moto_s3: servers.Server, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "gaffer.server.main", "--dir", str(tmp_path), "--grpc", "127.0.0.1:0",
                          "--backend", f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}?endpoint={moto_s3.url}"],
                         check=False, capture_output=True, text=True, timeout=60, env={**os.environ, **moto_s3.env})
    assert run.returncode == 3, run.stderr
    assert run.stderr.count("\n") == 1 and "does not exist" in run.stderr and run.stderr.startswith("gaffer serve: ")


def test_on_another_reapi_server_and_when_that_backend_goes_away(tmp_path: Path) -> None:
    """`--backend grpc://...`: instances nest in the backend's; a backend that stops answering is UNAVAILABLE (gRPC)
    and 503 (HTTP) for each request, and the server itself stays up."""
    backend = start_gaffer_serve(workdir=tmp_path / "backend")
    front = start_gaffer_serve("--backend", f"{backend.url}/base", workdir=tmp_path / "front")
    try:
        digest, data = _blob(3 * 1024 * 1024)  # over the batch limit: streamed both ways
        GrpcTier.from_url(f"{front.url}/team").write_blob(digest, data)
        assert GrpcTier.from_url(f"{backend.url}/base/team").read_blob(digest) == data
        key = _blob(10)[0]
        GrpcTier.from_url(f"{front.url}/team").write_action(key, re_pb2.ActionResult(
            stdout_digest=_pb(digest)).SerializeToString(deterministic=True))
        assert GrpcTier.from_url(f"{backend.url}/base/team").read_action(key) is not None
        backend.proc.terminate()
        backend.proc.wait(30)
        with pytest.raises(TierError) as e:
            GrpcTier.from_url(f"{front.url}/team").find_missing([digest])
        assert e.value.transient and "UNAVAILABLE" in str(e.value)
        with httpx.Client(base_url=front.http_url, timeout=60) as client:
            assert client.get(f"/team/ac/{key.hash}").status_code == 503
        assert front.proc.poll() is None
    finally:
        front.stop()
        backend.stop()
