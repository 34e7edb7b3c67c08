"""One conformance suite for the remote tiers, run against real servers: moto S3, Ceph radosgw (a real S3),
fake-gcs-server (Google Cloud Storage), Azurite (Azure Blob Storage), redis-server and nginx as a Bazel HTTP
cache; faults come from a TCP proxy between the tier and the server."""

from __future__ import annotations

import base64
import http.client
import http.server
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gaffer.cache.base import CacheTier, TierError
from gaffer.cache.urls import open_tier, redact
from gaffer.digest import Digest, digest_bytes, digest_file
from gaffer.errors import UserError
from tests import servers
from tests.conftest import BUCKET
from tests.faultproxy import Fault, FaultProxy
from tests.support import require_tool

LARGE = 20 * 1024 * 1024
SMALL_THRESHOLD = 8 * 1024 * 1024  # S3 tiers under test upload LARGE in parts
GCS_CHUNK = 2 * 1024 * 1024  # and the GCS tier in resumable pieces of this size
TIMEOUT = 10.0


@dataclass
class Backend:
    """A running server and how to name a tier on it: `url(address, namespace)`."""

    kind: str
    server: servers.Server
    url: Callable[[str, str], str]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def open(self, namespace: str, address: str | None = None, timeout: float = TIMEOUT) -> CacheTier:
        url = self.url(address or self.address, namespace)
        if self.kind in ("moto", "ceph"):
            from gaffer.cache.s3 import S3Tier

            return S3Tier.from_url(url, timeout=timeout, multipart_threshold=SMALL_THRESHOLD)
        if self.kind == "gcs":
            from gaffer.cache.gcs import GcsTier

            # Google's clients find an emulator in the environment only: this test's (monkeypatched) environment
            os.environ["STORAGE_EMULATOR_HOST"] = f"http://{address or self.address}"
            return GcsTier.from_url(url, timeout=timeout, chunk_size=GCS_CHUNK)
        return open_tier(url, timeout=timeout)


def _s3_url(address: str, namespace: str, bucket: str = BUCKET) -> str:
    return f"s3://{bucket}/{namespace}?endpoint=http://{address}&region=us-east-1"


def _aws_env(monkeypatch: pytest.MonkeyPatch, server: servers.Server) -> None:
    """The server's credentials, and nothing of the machine's own AWS configuration."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    for var, value in server.env.items():
        monkeypatch.setenv(var, value)


def _gcs_url(address: str, namespace: str, bucket: str = BUCKET) -> str:
    return f"gs://{bucket}/{namespace}"


def _azblob_url(address: str, namespace: str, container: str = BUCKET) -> str:
    return f"azblob://{container}/{namespace}?account={servers.AZURITE_ACCOUNT}&endpoint=http://{address}/" \
        f"{servers.AZURITE_ACCOUNT}"


def _backend(kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    if kind in ("moto", "ceph"):
        server = request.getfixturevalue(f"{kind}_bucket")
        _aws_env(monkeypatch, server)
        return Backend(kind, server, _s3_url)
    if kind in ("gcs", "azurite"):
        server = request.getfixturevalue("gcs_bucket" if kind == "gcs" else "azurite_container")
        for var, value in server.env.items():  # the emulator's client environment: every request on loopback
            monkeypatch.setenv(var, value)
        return Backend(kind, server, _gcs_url if kind == "gcs" else _azblob_url)
    if kind == "redis":
        return Backend(kind, request.getfixturevalue("redis_server"),
                       lambda address, ns: f"redis://{address}/0?prefix={ns}")
    return Backend(kind, request.getfixturevalue("nginx_cache"), lambda address, ns: f"http://{address}/{ns}")


@pytest.fixture(params=["moto", "ceph", "gcs", "azurite", "redis", "nginx"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    return _backend(request.param, request, monkeypatch)


@pytest.fixture
def tier(backend: Backend) -> Iterator[CacheTier]:
    """A tier in a fresh namespace, so tests sharing a server never see each other's entries."""
    t = backend.open(uuid.uuid4().hex[:12])
    yield t
    t.close()


def _blob(text: str) -> tuple[Digest, bytes]:
    data = text.encode()
    return digest_bytes(data), data


# -- conformance -------------------------------------------------------------------------------------------------


def test_small_blob_round_trip(tier: CacheTier, tmp_path: Path) -> None:
    tier.check()
    digest, data = _blob("hello, cache")
    tier.write_blob(digest, data)
    assert tier.read_blob(digest) == data
    dest = tmp_path / "fetched"
    assert tier.fetch_blob(digest, dest)
    assert dest.read_bytes() == data

    src = tmp_path / "src"
    src.write_bytes(b"uploaded from a file")
    uploaded = digest_file(src)
    tier.upload_blob(uploaded, src)
    assert tier.read_blob(uploaded) == b"uploaded from a file"


def test_a_tiered_fill_reads_many_blobs_at_once_each_verified(tier: CacheTier, tmp_path: Path) -> None:
    """fill_local (what gobuildcache's prefetch and every restore use): small blobs many to a read_blobs call
    (the default reads them concurrently), a big one streamed, a lying one and an absent one left missing."""
    from gaffer.cache.disk import DiskStore
    from gaffer.cache.tiered import TieredCache

    small = [_blob(f"small blob {i}") for i in range(40)]
    big = (digest_bytes(b"B" * (3 << 20)), b"B" * (3 << 20))
    lying = (digest_bytes(b"what it should be."), b"what it is instead")  # its size: an HTTP tier checks that
    # over READ_GROUP_BLOB_BYTES: fetched alone into a file (S3 hashes it as it writes; the others read it back)
    big_lie = (digest_bytes(b"L" * (2 << 20)), b"L" * ((2 << 20) - 1) + b"X")
    tier.write_blobs([*small, big, lying, big_lie])
    assert tier.read_blobs([d for d, _ in small[:3]] + [lying[0]]) == {**dict(small[:3]), lying[0]: lying[1]}
    absent = digest_bytes(b"never stored")
    local = DiskStore(tmp_path / "local")
    warnings: list[str] = []
    cache = TieredCache(local, [tier], report=warnings.append)
    wanted = [d for d, _ in small] + [big[0], lying[0], big_lie[0], absent]
    assert sorted(cache.fill_local(wanted)) == sorted([lying[0], big_lie[0], absent])
    assert all(local.read_blob(d) == data for d, data in [*small, big])
    assert not local.has_blob(lying[0]) and not local.has_blob(big_lie[0])
    assert len(warnings) == 1 and "failed verification" in warnings[0]  # the first only: the others are counted
    assert cache.tier_stats()[1].bytes_down == sum(len(data) for _, data in [*small, big])
    assert cache.tier_stats()[1].errors == 2


def test_read_groups_keep_the_order_and_the_bounds() -> None:
    from gaffer.cache.tiered import READ_GROUP_BLOB_BYTES, READ_GROUP_BYTES, READ_GROUP_COUNT, read_groups

    sizes = [100] * 5 + [READ_GROUP_BLOB_BYTES + 1] + [1000] * 700 + [READ_GROUP_BLOB_BYTES] * 9
    digests = [Digest(f"{i:064x}", size) for i, size in enumerate(sizes)]
    groups = read_groups(digests, first=4)
    assert [d for g in groups for d in g] == digests
    assert [len(g) for g in groups[:5]] == [4, 1, 1, 16, 32]  # the ramp (4, 8 cut short by the big blob alone...)
    for g in groups:
        assert len(g) == 1 or (len(g) <= READ_GROUP_COUNT and sum(d.size_bytes for d in g) <= READ_GROUP_BYTES)


def test_large_blob_streams_both_ways(backend: Backend, tier: CacheTier, tmp_path: Path) -> None:
    src = tmp_path / "large"
    with open(src, "wb") as f:
        f.writelines(os.urandom(1 << 20) for _ in range(LARGE // (1 << 20)))
    digest = digest_file(src)
    dest = tmp_path / "fetched"
    tracemalloc.start()
    try:
        tier.upload_blob(digest, src)
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert tier.fetch_blob(digest, dest)
        _, fetch_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest_file(dest) == digest
    assert tier.find_missing([digest]) == []
    if backend.kind != "redis":  # redis holds values whole, by design
        assert upload_peak < LARGE / 2 and fetch_peak < LARGE / 2, (upload_peak, fetch_peak)


def test_find_missing_keeps_order(tier: CacheTier) -> None:
    blobs = [_blob(f"blob {i}") for i in range(5)]
    for digest, data in blobs[::2]:
        tier.write_blob(digest, data)
    asked = [d for d, _ in blobs]
    assert tier.find_missing(asked) == [asked[1], asked[3]]
    assert tier.find_missing([]) == []


def test_action_round_trip_and_overwrite(tier: CacheTier) -> None:
    key, _ = _blob("action key")
    assert tier.read_action(key) is None
    tier.write_action(key, b"result one")
    assert tier.read_action(key) == b"result one"
    tier.write_action(key, b"result two")  # a fresh result replaces a stale one
    assert tier.read_action(key) == b"result two"


def test_misses_are_none_not_errors(tier: CacheTier, tmp_path: Path) -> None:
    digest, _ = _blob("never stored")
    assert tier.read_blob(digest) is None
    assert tier.fetch_blob(digest, tmp_path / "x") is False
    assert tier.read_action(digest) is None
    assert tier.find_missing([digest]) == [digest]


def test_namespaces_are_isolated(backend: Backend) -> None:
    one, two = backend.open("ns-one-" + uuid.uuid4().hex[:6]), backend.open("ns-two-" + uuid.uuid4().hex[:6])
    try:
        digest, data = _blob("only in namespace one")
        one.write_blob(digest, data)
        one.write_action(digest, b"result")
        assert two.read_blob(digest) is None
        assert two.read_action(digest) is None
        assert two.find_missing([digest]) == [digest]
        assert one.find_missing([digest]) == []
    finally:
        one.close()
        two.close()


def test_rewriting_an_existing_blob_succeeds(backend: Backend, tier: CacheTier, tmp_path: Path) -> None:
    digest, data = _blob("written twice")
    tier.write_blob(digest, data)
    tier.write_blob(digest, data)
    src = tmp_path / "again"
    src.write_bytes(data)
    tier.upload_blob(digest, src)
    # S3, GCS, Azure and redis write CAS objects once: a second PUT under the same key does not replace the first.
    tier.write_blob(digest, data[::-1])  # of the digest's size: an HTTP tier refuses a body of another
    expected = data[::-1] if backend.kind == "nginx" else data
    assert tier.read_blob(digest) == expected


@pytest.mark.parametrize("kind", ["moto", "ceph", "gcs", "azurite", "redis"])
def test_clear_empties_only_its_namespace(kind: str, request: pytest.FixtureRequest,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    b = _backend(kind, request, monkeypatch)
    cleared, kept = b.open("clear-" + uuid.uuid4().hex[:6]), b.open("keep-" + uuid.uuid4().hex[:6])
    try:
        digest, data = _blob("to be cleared")
        for t in (cleared, kept):
            t.write_blob(digest, data)
            t.write_action(digest, b"result")
        cleared.clear()  # type: ignore[attr-defined]
        assert cleared.read_blob(digest) is None and cleared.read_action(digest) is None
        assert kept.read_blob(digest) == data and kept.read_action(digest) == b"result"
    finally:
        cleared.close()
        kept.close()


# -- configuration and credential errors: one non-transient TierError naming the tier ----------------------------


def _assert_lasting(error: pytest.ExceptionInfo[TierError], tier: CacheTier, *words: str) -> None:
    assert error.value.transient is False
    message = str(error.value)
    assert "\n" not in message and message.startswith(tier.name + ": ")
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("kind", ["moto", "ceph"])
def test_s3_missing_bucket(kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _backend(kind, request, monkeypatch)
    from gaffer.cache.s3 import S3Tier

    tier = S3Tier.from_url(_s3_url(b.address, "x", bucket="no-such-bucket"), timeout=TIMEOUT)
    with pytest.raises(TierError) as e:
        tier.check()
    _assert_lasting(e, tier, "'no-such-bucket'", "does not exist")
    digest, data = _blob("x")
    with pytest.raises(TierError) as e:
        tier.write_blob(digest, data)
    _assert_lasting(e, tier, "'no-such-bucket'")
    tier.close()


def test_s3_wrong_secret_on_ceph(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _backend("ceph", request, monkeypatch)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    tier = b.open("x")
    with pytest.raises(TierError) as e:
        tier.check()
    _assert_lasting(e, tier, f"'{BUCKET}'", "denied")
    with pytest.raises(TierError) as e:
        tier.read_blob(_blob("x")[0])
    _assert_lasting(e, tier, "SignatureDoesNotMatch")
    tier.close()


def test_s3_without_credentials(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _backend("moto", request, monkeypatch)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    tier = b.open("x")
    with pytest.raises(TierError) as e:
        tier.check()
    _assert_lasting(e, tier, "no AWS credentials")
    tier.close()


@pytest.mark.parametrize("kind", ["gcs", "azurite"])
def test_cloud_missing_bucket(kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _backend(kind, request, monkeypatch)
    make_url = _gcs_url if kind == "gcs" else _azblob_url
    tier = open_tier(make_url(b.address, "x", "no-such-bucket"), timeout=TIMEOUT)
    with pytest.raises(TierError) as e:
        tier.check()
    _assert_lasting(e, tier, "'no-such-bucket'", "does not exist")
    tier.close()


@pytest.mark.parametrize("kind", ["moto", "gcs", "azurite"])
def test_big_blob_written_once(kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                               tmp_path: Path) -> None:
    """A blob big enough for a multipart, resumable or block upload is not replaced by a second upload."""
    tier = _backend(kind, request, monkeypatch).open(uuid.uuid4().hex[:12])
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(os.urandom(LARGE))
    second.write_bytes(os.urandom(LARGE))
    digest = digest_file(first)
    tier.upload_blob(digest, first)
    tier.upload_blob(digest, second)
    assert tier.fetch_blob(digest, tmp_path / "fetched")
    assert digest_file(tmp_path / "fetched") == digest
    tier.close()


def test_fake_gcs_ignores_if_generation_match_on_resumable_uploads(
        gcs_bucket: servers.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the emulator does on the two upload paths the tier uses, so the test above means something: it enforces
    ifGenerationMatch=0 on a multipart upload (412) but not on a resumable one, where GCS itself answers 412 when
    the upload starts. For big blobs the tier asks first."""
    import google.api_core.exceptions
    from google.cloud import storage

    for var, value in gcs_bucket.env.items():
        monkeypatch.setenv(var, value)
    client = storage.Client(project=None)
    small, big = os.urandom(1000), os.urandom(9 * 1024 * 1024)  # the client uploads over 8 MiB resumably
    for data, enforced in ((small, True), (big, False)):
        blob = client.bucket(BUCKET).blob(f"probe-{uuid.uuid4().hex[:8]}", chunk_size=GCS_CHUNK)
        blob.upload_from_string(data, if_generation_match=0, retry=None)
        if enforced:
            with pytest.raises(google.api_core.exceptions.PreconditionFailed):
                blob.upload_from_string(data[::-1], if_generation_match=0, retry=None)
        else:
            blob.upload_from_string(data[::-1], if_generation_match=0, retry=None)
        assert blob.download_as_bytes() == (data if enforced else data[::-1])
    client.close()


def test_azure_wrong_key_on_azurite(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _backend("azurite", request, monkeypatch)
    monkeypatch.setenv("AZURE_STORAGE_KEY", servers.AZURITE_KEY.replace("Eby8", "AAAA"))
    tier = b.open("x")
    with pytest.raises(TierError) as e:
        tier.check()
    _assert_lasting(e, tier, f"'{BUCKET}'", "denied")
    assert servers.AZURITE_KEY[10:30] not in str(e.value)
    tier.close()


def test_azure_connection_string_on_azurite(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection string gives the key and the endpoint: the URL needs only the container and the account."""
    b = _backend("azurite", request, monkeypatch)
    monkeypatch.delenv("AZURE_STORAGE_KEY")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"DefaultEndpointsProtocol=http;AccountName="
                       f"{servers.AZURITE_ACCOUNT};AccountKey={servers.AZURITE_KEY};BlobEndpoint={b.server.url};")
    tier = open_tier(f"azblob://{BUCKET}/cs-{uuid.uuid4().hex[:8]}?account={servers.AZURITE_ACCOUNT}")
    digest, data = _blob("through a connection string")
    tier.write_blob(digest, data)
    assert tier.read_blob(digest) == data
    tier.close()


# -- which credentials the cloud tiers pick (no request is made: nothing here may reach a metadata server) -------


def test_gcs_credentials_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import google.auth.credentials
    import google.auth.exceptions
    import google.oauth2.credentials

    from gaffer.cache.gcs import credentials

    for var, value in servers.ISOLATED_CLOUD_ENV.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    assert isinstance(credentials(), google.auth.credentials.AnonymousCredentials)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    with pytest.raises(google.auth.exceptions.DefaultCredentialsError):
        credentials()  # nothing configured, and NO_GCE_CHECK keeps the metadata server out of it
    key = tmp_path / "adc.json"
    key.write_text('{"type": "authorized_user", "client_id": "id", "client_secret": "secret", "refresh_token": "t"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    assert isinstance(credentials(), google.oauth2.credentials.Credentials)


@pytest.mark.parametrize("key_file", [None, "/", "/nonexistent/key.json"], ids=["none", "a-directory", "absent"])
def test_gcs_without_credentials_is_one_lasting_error(key_file: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials, or GOOGLE_APPLICATION_CREDENTIALS naming what is no key file: one lasting TierError (a
    directory made google-auth raise IsADirectoryError, a traceback out of `gaffer run`)."""
    for var, value in servers.ISOLATED_CLOUD_ENV.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    if key_file is not None:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", key_file)
    tier = open_tier("gs://bucket/p", timeout=TIMEOUT)
    with pytest.raises(TierError) as e:
        tier.check()
    _assert_lasting(e, tier, "no Google credentials", "GOOGLE_APPLICATION_CREDENTIALS")
    tier.close()


def test_azure_credentials_chain() -> None:
    from azure.identity import DefaultAzureCredential

    from gaffer.cache.azblob import credential

    key = {"account_name": "acct", "account_key": "a2V5"}
    assert credential("acct", {"AZURE_STORAGE_CONNECTION_STRING": "AccountName=acct;AccountKey=a2V5;"
                               "BlobEndpoint=http://127.0.0.1:9/acct", "AZURE_STORAGE_KEY": "other"}) == \
        (key, "http://127.0.0.1:9/acct")
    assert credential("acct", {"AZURE_STORAGE_CONNECTION_STRING": "AccountName=acct;SharedAccessSignature=sv=1&sig=x="}) \
        == ("sv=1&sig=x=", None)
    assert credential("acct", {"AZURE_STORAGE_KEY": "a2V5", "AZURE_STORAGE_SAS_TOKEN": "sv=1"}) == (key, None)
    assert credential("acct", {"AZURE_STORAGE_SAS_TOKEN": "sv=1"}) == ("sv=1", None)
    chosen, endpoint = credential("acct", {})
    assert isinstance(chosen, DefaultAzureCredential) and endpoint is None  # built, never asked for a token here
    for connection, problem in [("AccountName=other;AccountKey=a2V5", "for the account 'other', not 'acct'"),
                                ("AccountName=acct;BlobEndpoint=http://h", "neither AccountKey nor")]:
        with pytest.raises(ValueError, match=problem):
            credential("acct", {"AZURE_STORAGE_CONNECTION_STRING": connection})


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[servers.Server]:
    server = servers.start_redis(require_tool("redis-server"), password="s3cret")
    yield server
    server.stop()


@pytest.mark.parametrize("userinfo", [":wrong@", ""])
def test_redis_wrong_or_no_password(redis_with_password: servers.Server, userinfo: str) -> None:
    tier = open_tier(f"redis://{userinfo}127.0.0.1:{redis_with_password.port}/0", timeout=TIMEOUT)
    with pytest.raises(TierError) as e:
        tier.check()
    _assert_lasting(e, tier, "authentication failed")
    assert "wrong" not in str(e.value)
    tier.close()
    good = open_tier(f"redis://:s3cret@127.0.0.1:{redis_with_password.port}/0", timeout=TIMEOUT)
    good.check()
    assert good.name == f"redis://:***@127.0.0.1:{redis_with_password.port}/0"
    good.close()


def test_redis_skips_blobs_over_max_blob(redis_server: servers.Server, tmp_path: Path) -> None:
    tier = open_tier(f"redis://127.0.0.1:{redis_server.port}/0?prefix={uuid.uuid4().hex}&max_blob=1KiB")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    big_digest = digest_file(big)
    tier.upload_blob(big_digest, big)
    small, data = _blob("fits")
    tier.write_blob(small, data)
    assert tier.read_blob(big_digest) is None
    assert tier.find_missing([big_digest, small]) == [big_digest]
    tier.close()


@pytest.fixture(scope="module")
def nginx_with_auth() -> Iterator[servers.Server]:
    server = servers.start_nginx_cache(require_tool("nginx"), credentials=("ci", "pa:ss"), token="tok-123")
    yield server
    server.stop()


def test_http_authentication(nginx_with_auth: servers.Server, tmp_path: Path) -> None:
    port = nginx_with_auth.port
    digest, data = _blob("behind auth")
    for url in (f"http://127.0.0.1:{port}/p", f"http://ci:wrong@127.0.0.1:{port}/p"):
        tier = open_tier(url, timeout=TIMEOUT)
        with pytest.raises(TierError) as e:
            tier.check()
        _assert_lasting(e, tier, "401")
        tier.close()
    basic = open_tier(f"http://ci:pa%3Ass@127.0.0.1:{port}/p", timeout=TIMEOUT)
    assert basic.name == f"http://ci:***@127.0.0.1:{port}/p"
    basic.check()
    basic.write_blob(digest, data)
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    bearer = open_tier(f"http://127.0.0.1:{port}/p?token_file={token_file}", timeout=TIMEOUT)
    assert bearer.read_blob(digest) == data
    basic.close()
    bearer.close()


class _ForwardingProxy(http.server.BaseHTTPRequestHandler):
    """A plain HTTP forward proxy: absolute-form requests, forwarded and answered; every one is counted, with its
    Proxy-Authorization."""

    seen: list[tuple[str, str | None]]

    def _forward(self) -> None:
        self.seen.append((self.path, self.headers.get("Proxy-Authorization")))
        target = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-authorization", "connection")}
        upstream = http.client.HTTPConnection(target.netloc, timeout=10)
        upstream.request(self.command, target.path, body=body if self.command == "PUT" else None, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", answer.getheader("Content-Length", "0") if self.command == "HEAD"
                         else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_HEAD = do_PUT = _forward

    def log_message(self, *args: object) -> None:
        pass


def test_http_through_a_proxy(nginx_cache: servers.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY (with its credentials) is honoured as httpx honoured it, and NO_PROXY bypasses it."""
    handler = type("Proxy", (_ForwardingProxy,), {"seen": []})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        digest, data = _blob("through a proxy")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://me:se%40cret@127.0.0.1:{proxy.server_port}")
        tier = open_tier(f"http://127.0.0.1:{nginx_cache.port}/{uuid.uuid4().hex[:12]}", timeout=TIMEOUT)
        tier.write_blob(digest, data)
        assert tier.read_blob(digest) == data and tier.find_missing([digest]) == []
        tier.close()
        assert [m for m, _ in handler.seen] == [
            f"http://127.0.0.1:{nginx_cache.port}{tier.base_url.split(str(nginx_cache.port))[1]}/cas/{digest.hash}"
        ] * 3
        assert {auth for _, auth in handler.seen} == {"Basic " + base64.b64encode(b"me:se@cret").decode()}
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = open_tier(tier.base_url, timeout=TIMEOUT)
        assert direct.read_blob(digest) == data
        direct.close()
        assert len(handler.seen) == 3
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=10)


# -- a server that is down or broken: a transient TierError, quickly ---------------------------------------------

FAULT_TIMEOUT = 0.5
FAULT_CASES = [
    (kind, fault) for kind in ("moto", "ceph", "gcs", "azurite", "redis", "nginx") for fault in Fault
    if fault is not Fault.PASS and not (kind == "redis" and fault is Fault.HTTP_503)  # redis does not speak HTTP
]


@pytest.mark.parametrize("backend, fault", FAULT_CASES, indirect=["backend"],
                         ids=[f"{kind}-{fault.value}" for kind, fault in FAULT_CASES])
def test_faults_are_transient_and_quick(backend: Backend, fault: Fault) -> None:
    with FaultProxy(("127.0.0.1", backend.server.port)) as proxy:
        tier = backend.open(uuid.uuid4().hex[:12], address=proxy.address, timeout=FAULT_TIMEOUT)
        digest, data = _blob("through the proxy")
        tier.write_blob(digest, data)  # pooled connections exist when the fault starts
        proxy.set_mode(fault)
        ops = [tier.check, lambda: tier.read_blob(digest), lambda: tier.find_missing([digest])]
        for op in ops[:1] if fault is Fault.HANG else ops:  # each hanging call costs its whole timeout
            start = time.monotonic()
            try:
                op()
            except TierError as e:
                assert e.transient, str(e)
                assert str(e).startswith(tier.name + ": ")
            else:  # a trickled answer short enough may arrive within its bound: not a failure, as long as it did
                assert fault is Fault.TRICKLE, (op, fault)
            elapsed = time.monotonic() - start
            # two attempts at most, each bounded by the timeout, plus botocore's backoff (under 1 s); without
            # the timeout a hanging server would hold the call for botocore's or httpx's default (60 s, 5 s)
            assert elapsed < 4.5, (op, elapsed)
        proxy.set_mode(Fault.PASS)
        assert tier.read_blob(digest) == data  # and it recovers
        tier.close()


@pytest.mark.parametrize("backend", ["redis", "nginx"], indirect=True)
def test_a_trickled_blob_is_cut_off_by_its_deadline(backend: Backend) -> None:
    """A blob of a few KiB trickled at 20 bytes/s would take minutes, every read getting its byte in time: the
    whole request is bounded (the timeout plus the blob's time at 1 MiB/s), a transient error."""
    with FaultProxy(("127.0.0.1", backend.server.port)) as proxy:
        tier = backend.open(uuid.uuid4().hex[:12], address=proxy.address, timeout=FAULT_TIMEOUT)
        data = os.urandom(4096)
        digest = digest_bytes(data)
        tier.write_blob(digest, data)
        proxy.set_mode(Fault.TRICKLE)
        start = time.monotonic()
        with pytest.raises(TierError) as e:
            tier.read_blob(digest)
        assert e.value.transient and "TimeoutError" in str(e.value), str(e.value)
        assert time.monotonic() - start < 4.5
        tier.close()


class _ChunkedServer(http.server.BaseHTTPRequestHandler):
    """Answers every GET with `data`, chunked (no Content-Length) at about 2.5 MiB/s: a slow link's cache server
    or proxy that streams."""

    protocol_version = "HTTP/1.1"
    data = b""
    PIECE = 64 * 1024

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(self.data), self.PIECE):
            piece = self.data[i:i + self.PIECE]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            time.sleep(0.025)  # the slow link itself, not a wait for anything
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


def test_a_chunked_blob_has_its_size_s_time_at_the_floor_rate() -> None:
    """A 2 MiB blob streamed chunked at 2.5 MiB/s (0.8 s) under a 0.5 s timeout: its whole-request deadline counts
    the digest's size at 1 MiB/s, as a Content-Length would (it had only the timeout, and every read was cut
    off)."""
    data = os.urandom(2 * 1024 * 1024)
    digest = digest_bytes(data)
    handler = type("Chunked", (_ChunkedServer,), {"data": data})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        tier = open_tier(f"http://127.0.0.1:{server.server_port}/slow", timeout=0.5)
        assert tier.read_blob(digest) == data
        tier.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _OversizedServer(http.server.BaseHTTPRequestHandler):
    """Answers every GET for a small blob with a body far too big: a 4 GiB Content-Length and then nothing (held
    until the client hangs up), or a chunked body that streams on and on."""

    protocol_version = "HTTP/1.1"
    chunked = False
    PIECE = b"x" * (64 * 1024)

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header(*("Transfer-Encoding", "chunked") if self.chunked else ("Content-Length", str(4 << 30)))
        self.end_headers()
        try:
            if not self.chunked:
                self.wfile.flush()
                self.rfile.read(1)  # until the client closes the connection
                return
            for _ in range(256):  # 16 MiB
                self.wfile.write(b"%x\r\n%s\r\n" % (len(self.PIECE), self.PIECE))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client hung up, as it should

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_blob_answered_too_long_is_refused_unread(chunked: bool, tmp_path: Path) -> None:
    """A 1 KiB blob's GET answered with a 4 GiB Content-Length was read whole (into memory for read_blob), waiting
    for bytes that never come until the timeout; a chunked answer that runs on was read to its end. Now a
    Content-Length other than the digest's size is refused at once and a body never read past it."""
    data = os.urandom(1024)
    digest = digest_bytes(data)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Oversized", (_OversizedServer,),
                                                                     {"chunked": chunked}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    tier = open_tier(f"http://127.0.0.1:{server.server_port}/big", timeout=5)
    try:
        for op in (lambda: tier.read_blob(digest), lambda: tier.fetch_blob(digest, tmp_path / "blob")):
            tracemalloc.start()
            start = time.monotonic()
            try:
                with pytest.raises(TierError) as e:
                    op()
                elapsed = time.monotonic() - start
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert e.value.transient, str(e.value)
            assert ("Content-Length 4294967296" if not chunked else "longer than 1024 bytes") in str(e.value)
            assert elapsed < 2.5, elapsed  # well under the 5 s timeout: nothing waited for
            assert peak < 256 * 1024, peak
    finally:
        tier.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- URLs ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, problem", [
    ("ftp://host/x", "unknown scheme 'ftp' (supported: disk://, s3://, gs://, azblob://, redis://"),
    ("/var/cache", "not a URL"),
    ("s3://", "expected s3://BUCKET/PREFIX"),
    ("s3://bucket/p?regoin=eu", "unknown parameter 'regoin' (parameters: endpoint, region)"),
    ("s3://bucket/p?region=a&region=b", "parameter 'region' given twice"),
    ("s3://bucket/p?endpoint=localhost:9000", "is not an http:// or https:// URL"),
    ("redis://:hunter2@host:99999/0", "Port out of range"),
    ("redis://host/zero", "the database 'zero' is not a number"),
    ("redis://host/0?max_blob=lots", "max_blob: 'lots' is not a size"),
    ("redis:///0", "expected redis://"),
    ("https:///prefix", "expected http(s)://HOST"),
    ("https://host/p?token_file=/nonexistent/token", "cannot read token_file /nonexistent/token"),
    ("http://host/p?token=abc", "unknown parameter 'token'"),
    ("disk://", "no directory"),
    ("grpc://host", "expected grpc://HOST:PORT"),
    ("gs://", "expected gs://BUCKET/PREFIX"),
    ("gs://bucket/p?region=eu", "unknown parameter 'region' (parameters: none)"),
    ("azblob://cache/p", "account= is required"),
    ("azblob://cache/p?account=a&endpoint=127.0.0.1:10000", "is not an http:// or https:// URL"),
    ("azblob://cache/p?account=a&key=hunter2", "unknown parameter 'key' (parameters: account, endpoint)"),
])
def test_bad_urls_are_one_line_user_errors(url: str, problem: str) -> None:
    with pytest.raises(UserError) as e:
        open_tier(url)
    message = str(e.value)
    assert problem in message and "\n" not in message
    assert "hunter2" not in message


def test_redact() -> None:
    assert redact("redis://:hunter2@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("https://me:p%40ss@host/c?token=abc&token_file=/run/tok&x=1") == \
        "https://me:***@host/c?token=***&token_file=/run/tok&x=1"
    assert redact("s3://bucket/prefix?endpoint=http://h:7480") == "s3://bucket/prefix?endpoint=http://h:7480"
    assert redact("http://user@host/p") == "http://user@host/p"
    assert redact("not a url") == "not a url"


def test_open_tier_dispatches_on_scheme(tmp_path: Path) -> None:
    from gaffer.cache.azblob import AzureBlobTier
    from gaffer.cache.disk import DiskStore
    from gaffer.cache.gcs import GcsTier
    from gaffer.cache.grpc import GrpcTier
    from gaffer.cache.http import HttpTier
    from gaffer.cache.redis import RedisTier
    from gaffer.cache.s3 import S3Tier

    cases = {
        f"disk://{tmp_path}/d": DiskStore,
        "s3://bucket/p?endpoint=http://127.0.0.1:1&region=us-east-1": S3Tier,
        "gs://bucket/p": GcsTier,
        "azblob://cache/p?account=a&endpoint=http://127.0.0.1:1/a": AzureBlobTier,
        "redis://127.0.0.1:1/0": RedisTier,
        "rediss://:pw@127.0.0.1:1/0": RedisTier,
        "http://127.0.0.1:1/p": HttpTier,
        "https://127.0.0.1:1/p": HttpTier,
        "grpc://127.0.0.1:1/main": GrpcTier,
    }
    for url, cls in cases.items():
        tier = open_tier(url, timeout=1)  # nothing connects until a request
        assert isinstance(tier, cls)
        assert tier.name == redact(url) or isinstance(tier, (DiskStore, GrpcTier))
        tier.close()


def test_urls_module_loads_no_client_library() -> None:
    code = ("import sys, gaffer.cache.urls, gaffer.cache.factory, gaffer.cache.tiered; "
            "print(sorted(m for m in ('boto3', 'botocore', 'redis', 'httpx', 'grpc', 'google.cloud.storage', "
            "'google.auth', 'azure.storage.blob', 'azure.core', 'azure.identity') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tiered_caches_nest(tmp_path: Path) -> None:
    """A TieredCache is itself a tier: one can sit behind another (a team cache behind a machine cache), reads
    fill every level on the way back, writes travel outward behind the build, and blobs are verified at each."""
    from gaffer.cache.disk import DiskStore
    from gaffer.cache.tiered import TieredCache
    from gaffer.digest import digest_bytes

    near, middle, far = (DiskStore(tmp_path / name) for name in ("near", "middle", "far"))
    warnings: list[str] = []
    inner = TieredCache(middle, [far], report=warnings.append)
    outer = TieredCache(near, [inner], report=warnings.append)
    data = b"from far away" * 1000
    blob, key = digest_bytes(data), digest_bytes(b"action")
    far.write_blob(blob, data)
    far.write_action(key, b"result")
    assert outer.get_action(key) == b"result"
    assert outer.ensure_local([blob])
    assert near.read_blob(blob) == data and middle.read_blob(blob) == data
    corrupt = digest_bytes(b"right content")
    far.write_blob(corrupt, b"wrong content")  # a bad blob far away: a miss at every level, never stored nearer
    assert not outer.ensure_local([corrupt]) and not middle.has_blob(corrupt)
    mine, mine_key = digest_bytes(b"built here"), digest_bytes(b"my action")
    near.write_blob(mine, b"built here")
    outer.put_action(mine_key, b"my result", [mine])
    outer.close()
    assert far.read_blob(mine) == b"built here" and far.read_action(mine_key) == b"my result"
    assert far.corrupt_evicted == 1 and not warnings


@pytest.mark.parametrize("backend", ["redis", "nginx"], indirect=True)
def test_a_blob_a_remote_served_corrupt_is_replaced_by_the_build_that_makes_it(backend: Backend,
                                                                                 tmp_path: Path) -> None:
    """A copy that failed verification (right size, wrong bytes) is uploaded over when the build makes the blob,
    though the tier says it has it: Redis too (its blobs are written with SET NX, which left the corrupt copy)."""
    from gaffer.cache.disk import DiskStore
    from gaffer.cache.tiered import TieredCache

    namespace = uuid.uuid4().hex[:12]
    digest, data = _blob("served corrupt")
    planted = backend.open(namespace)
    planted.write_blob(digest, b"X" * len(data))
    warnings: list[str] = []
    local = DiskStore(tmp_path / "local")
    cache = TieredCache(local, [backend.open(namespace)], report=warnings.append)
    assert not cache.ensure_local([digest])
    assert len(warnings) == 1 and "failed verification" in warnings[0], warnings
    local.write_blob(digest, data)  # the task that makes it ran
    cache.put_action(digest_bytes(b"its action"), b"result", [digest])
    cache.close()
    assert planted.read_blob(digest) == data
    planted.close()


def test_a_blob_from_a_far_remote_fills_the_nearer_remotes_too(tmp_path: Path) -> None:
    """A hit in the second remote writes its entry into the first (the nearer one) and, behind the build, the blobs
    fetched with it: the nearer remote must not be left with entries whose blobs it lacks. Read-only: neither."""
    from gaffer.cache.disk import DiskStore
    from gaffer.cache.tiered import TieredCache
    from gaffer.digest import digest_bytes

    data = b"only far away" * 1000
    blob, key = digest_bytes(data), digest_bytes(b"action")
    for read_only in (False, True):
        near, far = DiskStore(tmp_path / f"near-{read_only}"), DiskStore(tmp_path / f"far-{read_only}")
        far.write_blob(blob, data)
        far.write_action(key, b"result")
        cache = TieredCache(DiskStore(tmp_path / f"local-{read_only}"), [near, far], read_only=read_only)
        assert cache.get_action(key) == b"result"
        assert cache.ensure_local([blob])
        cache.close()
        if read_only:
            assert near.read_action(key) is None and not near.has_blob(blob)
        else:
            assert near.read_action(key) == b"result" and near.read_blob(blob) == data


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_tier_that_refuses_writes_still_serves_reads(protocol: str, tmp_path: Path) -> None:
    """A job with a cache's read-only token that forgot --cache-read-only: its first upload is refused (gRPC
    PERMISSION_DENIED, HTTP 403). That is one warning, and the tier goes on serving reads (hits) for the rest of
    the build; it is not dropped, and nothing more is sent to it."""
    from gaffer.cache.disk import DiskStore
    from gaffer.cache.tiered import TieredCache
    from gaffer.protos import remote_execution_pb2 as re_pb2
    from tests.buildgrid import start_gaffer_serve

    (tmp_path / "rw").write_text("read-write-token\n")
    (tmp_path / "ro").write_text("read-only-token\n")
    server = start_gaffer_serve("--token-file", str(tmp_path / "rw"), "--read-token-file", str(tmp_path / "ro"))
    base = f"{server.url if protocol == 'grpc' else server.http_url}/refused"

    def entry(name: str) -> tuple[Digest, Digest, bytes, bytes]:
        data = f"output of {name}".encode()
        blob = digest_bytes(data)
        result = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="o", digest=re_pb2.Digest(
            hash=blob.hash, size_bytes=blob.size_bytes))]).SerializeToString(deterministic=True)
        return digest_bytes(f"key of {name}".encode()), blob, data, result

    def cache(local: str, token: str, report: Callable[[str], None]) -> TieredCache:
        tier = open_tier(f"{base}?token_file={tmp_path / token}", timeout=TIMEOUT)
        return TieredCache(DiskStore(tmp_path / local), [tier], report=report)

    try:
        key, blob, data, result = entry("trusted")
        writer = cache("a", "rw", lambda message: pytest.fail(message))
        writer.local.write_blob(blob, data)
        writer.put_action(key, result, [blob])
        writer.close()
        warnings: list[str] = []
        reader = cache("b", "ro", warnings.append)
        for name in ("untrusted", "another"):
            other_key, other_blob, other_data, other_result = entry(name)
            reader.local.write_blob(other_blob, other_data)
            reader.put_action(other_key, other_result, [other_blob])
            reader.flush()
        assert len(warnings) == 1 and "reading from it only" in warnings[0], warnings
        assert reader.get_action(key) == result and reader.ensure_local([blob])
        stats = reader.tier_stats()[1]
        assert not stats.disabled and stats.errors == 1
        reader.close()
    finally:
        server.stop()
