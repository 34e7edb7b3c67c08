"""GrpcTier conformance: the same checks against `gaffer serve` and against BuildGrid (the reference server)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gaffer.cache.base import TierError
from gaffer.cache.grpc import GrpcTier
from gaffer.digest import Digest, digest_bytes, digest_file
from gaffer.errors import UserError
from gaffer.protos import remote_execution_pb2 as re_pb2
from tests.buildgrid import ReapiServer
from tests.faultproxy import Fault, FaultProxy
from tests.servers import free_port
from tests.support import run_gaffer

LARGE = 4 * 1024 * 1024 + 12345  # over the 4 MiB batch limit: must go through ByteStream


@pytest.fixture(params=["gaffer_serve", pytest.param("buildgrid", marks=pytest.mark.slow)])
def server(request: pytest.FixtureRequest) -> ReapiServer:
    return request.getfixturevalue(request.param)


@pytest.fixture
def tier(server: ReapiServer) -> Iterator[GrpcTier]:
    t = GrpcTier.from_url(server.url, timeout=10)
    t.check()
    yield t
    t.close()


def _blob(size: int) -> tuple[Digest, bytes]:
    data = os.urandom(size)
    return digest_bytes(data), data


def _action_result(*outputs: Digest) -> bytes:
    files = [re_pb2.OutputFile(path=f"out/{i}", digest=re_pb2.Digest(hash=d.hash, size_bytes=d.size_bytes))
             for i, d in enumerate(outputs)]
    result = re_pb2.ActionResult(output_files=files, execution_metadata=re_pb2.ExecutedActionMetadata(worker="t"))
    return result.SerializeToString(deterministic=True)


def test_check_reads_the_batch_limit(tier: GrpcTier) -> None:
    assert 1024 * 1024 <= tier._limit() <= 64 * 1024 * 1024


def test_small_blob_round_trip(tier: GrpcTier, tmp_path: Path) -> None:
    digest, data = _blob(1000)
    assert tier.find_missing([digest]) == [digest]
    assert tier.read_blob(digest) is None
    assert tier.fetch_blob(digest, tmp_path / "absent") is False
    tier.write_blob(digest, data)
    assert tier.find_missing([digest]) == []
    assert tier.read_blob(digest) == data
    assert tier.fetch_blob(digest, tmp_path / "f") and (tmp_path / "f").read_bytes() == data


def test_large_blob_streams_through_bytestream(tier: GrpcTier, tmp_path: Path) -> None:
    digest, data = _blob(LARGE)
    source = tmp_path / "source"
    source.write_bytes(data)
    assert not tier.batchable(digest.size_bytes)
    assert tier.read_blob(digest) is None and tier.fetch_blob(digest, tmp_path / "absent") is False
    tier.upload_blob(digest, source)
    assert tier.find_missing([digest]) == []
    assert tier.fetch_blob(digest, tmp_path / "copy")
    assert digest_file(tmp_path / "copy") == digest
    assert tier.read_blob(digest) == data


def test_many_small_blobs_span_several_batches(tier: GrpcTier) -> None:
    blobs = [_blob(40 * 1024) for _ in range(150)]  # 6 MiB in all: more than one batch either way
    batches = list(tier._batches([d for d, _ in blobs]))
    assert len(batches) >= 2
    tier.write_blobs(blobs)
    digests = [d for d, _ in blobs]
    assert tier.find_missing(digests) == []
    assert tier.read_blobs(digests + [_blob(10)[0]]) == dict(blobs)


def test_empty_blob_is_always_present(tier: GrpcTier) -> None:
    empty = digest_bytes(b"")
    assert tier.read_blobs([empty]) == {empty: b""}


def test_action_cache_round_trip(tier: GrpcTier) -> None:
    digest, data = _blob(100)
    tier.write_blob(digest, data)
    key = _blob(50)[0]
    assert tier.read_action(key) is None
    result = _action_result(digest)
    tier.write_action(key, result)
    assert re_pb2.ActionResult.FromString(tier.read_action(key) or b"") == re_pb2.ActionResult.FromString(result)


def test_corrupt_upload_is_rejected_and_not_stored(tier: GrpcTier, tmp_path: Path) -> None:
    digest, data = _blob(2000)
    with pytest.raises(TierError) as small:
        tier.write_blob(digest, data[:-1] + bytes([data[-1] ^ 1]))
    assert not small.value.transient and "INVALID_ARGUMENT" in str(small.value)
    big_digest, big = _blob(LARGE)
    (tmp_path / "bad").write_bytes(big[1:] + b"x")
    with pytest.raises(TierError) as large:
        tier.upload_blob(big_digest, tmp_path / "bad")
    assert not large.value.transient
    assert tier.find_missing([digest, big_digest]) == [digest, big_digest]


def test_unknown_or_invalid_instance_is_not_transient(server: ReapiServer) -> None:
    name = "../escape" if server.name == "gaffer" else "no-such-instance"
    tier = GrpcTier.from_url(f"{server.url}/{name}")
    with pytest.raises(TierError) as e:
        tier.check()
    assert not e.value.transient


def test_instances_never_see_each_other(gaffer_serve: ReapiServer) -> None:
    a, b = GrpcTier.from_url(f"{gaffer_serve.url}/team-a"), GrpcTier.from_url(f"{gaffer_serve.url}/team/b")
    digest, data = _blob(300)
    key = _blob(20)[0]
    a.write_blob(digest, data)
    a.write_action(key, _action_result(digest))
    assert a.read_action(key) is not None
    assert b.find_missing([digest]) == [digest]
    assert b.read_blob(digest) is None
    assert b.read_action(key) is None
    root = GrpcTier.from_url(gaffer_serve.url)
    assert root.find_missing([digest]) == [digest]


def test_unreachable_server_is_transient() -> None:
    tier = GrpcTier.from_url(f"grpc://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(TierError) as e:
        tier.check()
    assert e.value.transient and "UNAVAILABLE" in str(e.value)


def test_hanging_server_times_out_as_transient(gaffer_serve: ReapiServer) -> None:
    host, port = gaffer_serve.grpc_address.split(":")
    with FaultProxy((host, int(port)), Fault.HANG) as proxy:
        tier = GrpcTier.from_url(f"grpc://{proxy.address}", timeout=0.5)
        with pytest.raises(TierError) as e:
            tier.find_missing([_blob(1)[0]])
        tier.close()
    assert e.value.transient and ("DEADLINE_EXCEEDED" in str(e.value) or "UNAVAILABLE" in str(e.value))


def test_token_file_and_ca_are_read_from_the_url(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    tier = GrpcTier.from_url(f"grpc://127.0.0.1:1/x?token_file={tmp_path / 'token'}")
    assert tier._metadata == (("authorization", "Bearer s3cret"),)
    assert tier.name == "grpc://127.0.0.1:1/x" and tier.instance == "x"
    for bad in ("grpc://127.0.0.1/x", f"grpc://h:1?token_file={tmp_path / 'nope'}", "grpc://h:1?ca=/etc/hosts",
                "grpcs://h:1?ca=/no/such/ca.pem", "grpc://h:1?colour=red"):
        with pytest.raises(UserError):
            GrpcTier.from_url(bad)


class _LyingServer:
    """A REAPI server on loopback that sends the blobs it was given as they are, whatever their digests say: a
    damaged or hostile remote. ByteStream sends a blob in uneven chunks."""

    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import grpc

        from gaffer.protos import bytestream_pb2, bytestream_pb2_grpc
        from gaffer.protos import remote_execution_pb2_grpc as re_grpc

        class Capabilities(re_grpc.CapabilitiesServicer):  # type: ignore[misc]
            def GetCapabilities(self, request: object, context: object) -> re_pb2.ServerCapabilities:
                return re_pb2.ServerCapabilities(cache_capabilities=re_pb2.CacheCapabilities(
                    digest_functions=[re_pb2.DigestFunction.SHA256], max_batch_total_size_bytes=4 << 20))

        class Cas(re_grpc.ContentAddressableStorageServicer):  # type: ignore[misc]
            def BatchReadBlobs(self, request: re_pb2.BatchReadBlobsRequest, context: object
                               ) -> re_pb2.BatchReadBlobsResponse:
                reply = re_pb2.BatchReadBlobsResponse()
                for d in request.digests:
                    data = blobs.get(Digest(d.hash, d.size_bytes))
                    r = reply.responses.add(digest=d, data=data or b"")
                    if data is None:
                        r.status.code = grpc.StatusCode.NOT_FOUND.value[0]
                return reply

        class ByteStream(bytestream_pb2_grpc.ByteStreamServicer):  # type: ignore[misc]
            def Read(self, request: bytestream_pb2.ReadRequest, context: grpc.ServicerContext
                     ) -> Iterator[bytestream_pb2.ReadResponse]:
                _, blob_hash, size = request.resource_name.rsplit("/", 2)
                data = blobs.get(Digest(blob_hash, int(size)))
                if data is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, "absent")
                for start, end in ((0, 1000), (1000, 1 << 20), (1 << 20, len(data))):
                    yield bytestream_pb2.ReadResponse(data=data[start:end])

        self.server = grpc.server(ThreadPoolExecutor(4), options=[("grpc.max_send_message_length", -1)])
        re_grpc.add_CapabilitiesServicer_to_server(Capabilities(), self.server)
        re_grpc.add_ContentAddressableStorageServicer_to_server(Cas(), self.server)
        bytestream_pb2_grpc.add_ByteStreamServicer_to_server(ByteStream(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def test_a_fill_checks_every_blob_a_lying_server_sends(tmp_path: Path) -> None:
    """Blobs arrive as views of the replies (batches) or are hashed as they are written (streams): a blob whose
    bytes do not match its digest, whether cut short, longer, or different in its last chunk only, is reported
    and never stored; the honest ones are stored whole."""
    from gaffer.cache.disk import DiskStore
    from gaffer.cache.tiered import TieredCache

    small, middle, big = _blob(5000), _blob(2 << 20), _blob(LARGE)  # a batch, a batch of one, a stream
    small_lie = (digest_bytes(b"what it should be"), b"what it is instead")
    middle_lie = (digest_bytes(middle[1][:-1] + b"?"), middle[1])
    last_chunk = bytearray(big[1])
    last_chunk[-1] ^= 1
    lies = {digest_bytes(bytes(last_chunk)): big[1], Digest(digest_bytes(big[1][:-7]).hash, LARGE - 7): big[1],
            digest_bytes(big[1] + b"more"): big[1] + b"mor", small_lie[0]: small_lie[1], middle_lie[0]: middle_lie[1]}
    server = _LyingServer({small[0]: small[1], middle[0]: middle[1], big[0]: big[1], **lies})
    warnings: list[str] = []
    local = DiskStore(tmp_path / "local")
    cache = TieredCache(local, [GrpcTier(f"127.0.0.1:{server.port}", timeout=10)], report=warnings.append)
    try:
        absent = digest_bytes(b"never stored")
        assert sorted(cache.fill_local([small[0], middle[0], big[0], *lies, absent])) == sorted([*lies, absent])
        assert all(local.read_blob(d) == data for d, data in (small, middle, big))
        assert not any(local.has_blob(d) for d in lies)
        assert len(warnings) == 1 and "failed verification" in warnings[0]  # the first only: the others are counted
        assert cache.tier_stats()[1].errors == len(lies)
    finally:
        cache.close()
        server.server.stop(None)


def test_tls_to_a_plaintext_server_is_one_warning_without_grpc_logs(gaffer_serve: ReapiServer,
                                                                     tmp_path: Path) -> None:
    """grpcs:// to a server that speaks plaintext: gaffer's one warning, and none of gRPC's own log lines
    (`I1201 12:00:00.000 ssl_transport_security.cc:... Handshake failed`) around it."""
    url = f"grpcs://{gaffer_serve.url.removeprefix('grpc://')}/ns"
    proc = _run_small_build(tmp_path, url)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"gaffer: warning: cache tier {url}: "), proc.stderr
    assert not [line for line in proc.stderr.splitlines() if re.match(r"[EWI]\d{4} ", line)], proc.stderr


def test_a_ca_file_without_a_certificate_is_one_line(gaffer_serve: ReapiServer, tmp_path: Path) -> None:
    """A `ca=` file that holds no PEM certificate is the user's mistake: one line, exit status 2 (gRPC alone would
    log four lines of its own and fail every handshake)."""
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    url = f"grpcs://{gaffer_serve.url.removeprefix('grpc://')}/ns?ca={tmp_path / 'ca.pem'}"
    proc = _run_small_build(tmp_path, url)
    assert proc.returncode == 2, proc.stderr
    line = f"gaffer: cache URL {url}: ca file {tmp_path / 'ca.pem'} holds no PEM certificate"
    assert proc.stderr.splitlines() == [line], proc.stderr


def _run_small_build(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    """`gaffer run --cache URL` of a one-task graph, with a fresh local cache."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({"tasks": {"t": {"command": "echo hi > o.txt", "outputs": ["o.txt"]}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GAFFER_", "GRPC_"))}
    env.update(GAFFER_CACHE_DIR=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    return run_gaffer(["run", "--cache", url], cwd=ws, env=env)
