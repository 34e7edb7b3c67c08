"""The S3 tier's light read path (cache/s3read.py, cache/sigv4.py) against botocore, its reference: the same
signatures, URLs, credentials and region, or a hand-over to botocore when the configuration is one it does not
implement; then its reads against real stores (Ceph checks signatures) and its failures against a loopback server
that misbehaves on purpose."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gaffer.cache import s3read
from gaffer.cache.base import TierError
from gaffer.cache.s3 import S3Tier
from gaffer.cache.sigv4 import Credentials, signed_headers
from gaffer.digest import digest_bytes
from tests import servers
from tests.conftest import BUCKET

#: Every variable botocore reads that could reach past the test: the metadata service above all.
_ISOLATION = {"AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """A clean AWS environment: no variable of the machine's, empty config and credentials files in tmp_path.
    Call it with the files' text and variables to set."""
    for var in list(os.environ):
        if var.startswith("AWS_") or var.lower().endswith("_proxy"):
            monkeypatch.delenv(var)

    def setup(config: str = "", credentials: str = "", **env: str) -> None:
        (tmp_path / "config").write_text(config)
        (tmp_path / "credentials").write_text(credentials)
        for var, value in {**_ISOLATION, "AWS_CONFIG_FILE": str(tmp_path / "config"),
                           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"), **env}.items():
            monkeypatch.setenv(var, value)

    return setup


# -- the signer and the URLs, pinned to botocore's -----------------------------------------------------------------


@pytest.mark.parametrize("url, token", [
    ("http://127.0.0.1:7480/bucket/prefix/cas/0123abcd", None),
    ("https://bucket.s3.eu-west-1.amazonaws.com/a%20b/c~d/%C3%A9", "session-token"),
    ("https://s3.amazonaws.com/my.bucket/", None),
    ("http://minio.internal/bucket/ac/ff", "t"),
])
def test_signature_is_botocores(url: str, token: str | None) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    for method in ("GET", "HEAD"):
        request = AWSRequest(method=method, url=url)
        S3SigV4Auth(BotoCredentials("AKID", "secret/key+x", token), "s3", "eu-west-1").add_auth(request)
        parts = urlsplit(url)
        mine = signed_headers(method, parts.netloc, parts.path, "", Credentials("AKID", "secret/key+x", token),
                              "eu-west-1", request.headers["X-Amz-Date"])
        theirs = {k.lower(): v for k, v in request.headers.items()}
        assert {k: v for k, v in mine.items() if k != "host"} == theirs


class _Captured(Exception):
    """Raised from botocore's before-send hook: the request it was about to send, and no network."""

    def __init__(self, request: object) -> None:
        super().__init__()
        self.request = request


@pytest.mark.parametrize("bucket, endpoint, region", [
    ("gaffer-cache", None, "eu-west-1"),
    ("gaffer-cache", None, "us-east-1"),
    ("gaffer.cache", None, "ap-southeast-2"),  # a dot: not a host name under TLS, path-style
    ("gaffer--cache", None, "eu-west-1"),
    ("my_cache", None, "eu-west-1"),  # not a host name: path-style
    ("gaffer-cache", "http://127.0.0.1:7480", "us-east-1"),
    ("gaffer-cache", "https://minio.example:443", "eu-central-1"),
    ("gaffer-cache", "http://minio.example", "us-east-1"),
])
def test_requests_are_botocores(aws_env: Callable[..., None], bucket: str, endpoint: str | None, region: str) -> None:
    """The request botocore's client would send for a GET and a HEAD (caught before it leaves): same URL, same
    signed headers (signed again here at botocore's timestamp)."""
    aws_env(AWS_ACCESS_KEY_ID="AKID", AWS_SECRET_ACCESS_KEY="secret", AWS_SESSION_TOKEN="tok")
    tier = S3Tier(bucket, "team/x", endpoint=endpoint, region=region)
    reader = tier._reader
    assert reader is not None
    client = tier._s3()

    def capture(request: object, **_: object) -> None:
        raise _Captured(request)

    client.meta.events.register("before-send.s3", capture)
    key = "team/x/cas/" + "ab" * 32
    for method, call in (("GET", client.get_object), ("HEAD", client.head_object)):
        with pytest.raises(_Captured) as caught:
            call(Bucket=bucket, Key=key)
        request = caught.value.request
        theirs, mine = urlsplit(request.url), urlsplit(reader.url(key))  # type: ignore[attr-defined]
        netloc = theirs.netloc.removesuffix(":443" if theirs.scheme == "https" else ":80")
        assert (mine.scheme, mine.netloc, mine.path) == (theirs.scheme, netloc, theirs.path)
        headers = {k.lower(): v.decode() if isinstance(v, bytes) else v
                   for k, v in request.headers.items()}  # type: ignore[attr-defined]
        signed = signed_headers(method, mine.netloc, mine.path, "", reader.settings.credentials,
                                reader.settings.region, headers["x-amz-date"])
        assert {k: v for k, v in signed.items() if k != "host"} == \
            {k: v for k, v in headers.items() if k in signed}
    assert reader.settings.region == client.meta.region_name
    tier.close()


# -- credentials and region: botocore's answer, or botocore itself -------------------------------------------------

SAME_AS_BOTOCORE = {
    "environment": {"env": {"AWS_ACCESS_KEY_ID": "env-id", "AWS_SECRET_ACCESS_KEY": "env-secret",
                             "AWS_SESSION_TOKEN": "env-token", "AWS_DEFAULT_REGION": "eu-west-1"}},
    "environment over files": {
        "credentials": "[default]\naws_access_key_id = file-id\naws_secret_access_key = file-secret\n",
        "env": {"AWS_ACCESS_KEY_ID": "env-id", "AWS_SECRET_ACCESS_KEY": "env-secret"}},
    "credentials file": {"credentials": "[default]\naws_access_key_id = file-id\naws_secret_access_key = s\n"},
    "named profile, region in config": {
        "config": "[profile ci]\nregion = eu-north-1\noutput = json\n",
        "credentials": "[default]\naws_access_key_id = d\naws_secret_access_key = d\n"
                    "[ci]\naws_access_key_id = ci-id\naws_secret_access_key = ci-secret\naws_session_token = tok\n",
        "env": {"AWS_PROFILE": "ci"}},
    "AWS_DEFAULT_PROFILE wins over AWS_PROFILE": {
        "credentials": "[a]\naws_access_key_id = a\naws_secret_access_key = a\n"
                    "[b]\naws_access_key_id = b\naws_secret_access_key = b\n",
        "env": {"AWS_PROFILE": "a", "AWS_DEFAULT_PROFILE": "b"}},
    "keys in the config file": {"config": "[default]\naws_access_key_id = cfg\naws_secret_access_key = c\n"
                                           "region = ca-central-1\n"},
    "credentials file over config file": {
        "config": "[profile p]\naws_access_key_id = cfg\naws_secret_access_key = c\n",
        "credentials": "[p]\naws_access_key_id = cred\naws_secret_access_key = c\n", "env": {"AWS_PROFILE": "p"}},
    "URL region over the profile's": {"config": "[default]\nregion = eu-west-3\n",
                                          "credentials": "[default]\naws_access_key_id = x\naws_secret_access_key = y\n",
                                          "region": "sa-east-1"},
}

TO_BOTOCORE = {
    "a role to assume": {"config": "[profile r]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = default\n"
                                    "[default]\naws_access_key_id = a\naws_secret_access_key = b\n",
                             "env": {"AWS_PROFILE": "r"}},
    "role beside static keys": {"config": "[default]\nrole_arn = arn:aws:iam::1:role/x\ncredential_source = Environment\n",
                                    "credentials": "[default]\naws_access_key_id = a\naws_secret_access_key = b\n"},
    "a credential process": {"config": "[default]\ncredential_process = /bin/false\n"},
    "SSO": {"config": "[default]\nsso_session = s\nsso_account_id = 1\nsso_role_name = r\n"},
    "web identity from the environment": {
        "credentials": "[default]\naws_access_key_id = a\naws_secret_access_key = b\n",
        "env": {"AWS_WEB_IDENTITY_TOKEN_FILE": "/nonexistent", "AWS_ROLE_ARN": "arn:aws:iam::1:role/x"}},
    "a nested s3 section": {"config": "[default]\ns3 =\n  addressing_style = virtual\n",
                                "credentials": "[default]\naws_access_key_id = a\naws_secret_access_key = b\n"},
    "FIPS endpoints": {"credentials": "[default]\naws_access_key_id = a\naws_secret_access_key = b\n",
                           "env": {"AWS_USE_FIPS_ENDPOINT": "true"}},
    "a proxy": {"credentials": "[default]\naws_access_key_id = a\naws_secret_access_key = b\n",
                    "env": {"HTTPS_PROXY": "http://127.0.0.1:3128"}},
    "half the keys": {"env": {"AWS_ACCESS_KEY_ID": "a"}},
    "no credentials (container or instance roles)": {},
    "a profile that does not exist": {"env": {"AWS_PROFILE": "nope", "AWS_ACCESS_KEY_ID": "a",
                                               "AWS_SECRET_ACCESS_KEY": "b"}},
    "no region for AWS itself": {"env": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}, "endpoint": None,
                                     "region": None},
    "another partition": {"env": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}, "endpoint": None,
                              "region": "cn-north-1"},
    "an endpoint with a path": {"env": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"},
                                    "endpoint": "http://127.0.0.1:9000/s3"},
    "[default] and [profile default]": {"config": "[default]\nregion = eu-west-1\n[profile default]\nregion = "
                                                   "eu-west-2\n",
                                            "env": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}},
}


def _botocore_view(endpoint: str | None, region: str | None) -> tuple[object, str | None]:
    """What botocore resolves in this environment: (access key, secret, token) or None, and the client's region."""
    import botocore.session

    session = botocore.session.get_session()
    found = session.get_credentials()
    creds = None if found is None else (found.access_key, found.secret_key, found.token)
    client = session.create_client("s3", endpoint_url=endpoint, region_name=region)
    return creds, client.meta.region_name


@pytest.mark.parametrize("case", sorted(SAME_AS_BOTOCORE))
def test_settings_are_botocores(case: str, aws_env: Callable[..., None]) -> None:
    spec: dict = SAME_AS_BOTOCORE[case]
    aws_env(spec.get("config", ""), spec.get("credentials", ""), **spec.get("env", {}))
    endpoint, region = "http://127.0.0.1:9", spec.get("region")
    settings = s3read.resolve(BUCKET, endpoint, region)
    assert settings is not None, case
    creds, botocore_region = _botocore_view(endpoint, region)
    c = settings.credentials
    assert (c.access_key, c.secret_key, c.token) == creds
    assert settings.region == botocore_region


@pytest.mark.parametrize("case", sorted(TO_BOTOCORE))
def test_other_configurations_go_to_botocore(case: str, aws_env: Callable[..., None]) -> None:
    spec: dict = TO_BOTOCORE[case]
    aws_env(spec.get("config", ""), spec.get("credentials", ""), **spec.get("env", {}))
    endpoint = spec.get("endpoint", "http://127.0.0.1:9")
    assert s3read.resolve(BUCKET, endpoint, spec.get("region", "us-east-1")) is None


# -- real stores -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["moto", "ceph"])
def test_reads_without_botocore(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A writer (botocore) fills a namespace; a reader in a process of its own, credentials from a profile in the
    shared credentials file, reads everything back (Ceph checks the signatures) and never makes a botocore client."""
    server: servers.Server = request.getfixturevalue(f"{kind}_bucket")
    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}?endpoint={server.url}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    (tmp_path / "credentials").write_text(f"[ci]\naws_access_key_id = {server.env['AWS_ACCESS_KEY_ID']}\n"
                                          f"aws_secret_access_key = {server.env['AWS_SECRET_ACCESS_KEY']}\n")
    (tmp_path / "config").write_text("[profile ci]\nregion = us-east-1\n")
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"), AWS_CONFIG_FILE=str(tmp_path / "config"),
               AWS_PROFILE="ci", **_ISOLATION)
    blob = os.urandom(3 * 1024 * 1024 + 17)
    code = """
import sys
from pathlib import Path
from gaffer.cache.urls import open_tier
from gaffer.digest import digest_bytes, Digest
blob, url = Path(sys.argv[1]).read_bytes(), sys.argv[2]
digest, action, absent = digest_bytes(blob), digest_bytes(b"action"), digest_bytes(b"absent")
tier = open_tier(url, timeout=10)
if sys.argv[3] == "write":
    tier.write_blob(digest, blob)
    tier.write_action(action, b"result")
else:
    tier.check()
    assert tier.has_blob(digest) and not tier.has_blob(absent)
    assert tier.find_missing([digest, absent]) == [absent]
    assert tier.read_blob(digest) == blob and tier.read_blob(absent) is None
    assert tier.fetch_blob(digest, Path(sys.argv[1] + ".out")) and not tier.fetch_blob(absent, Path("unused"))
    assert Path(sys.argv[1] + ".out").read_bytes() == blob
    assert tier.read_action(action) == b"result" and tier.read_action(absent) is None
    assert "botocore.session" not in sys.modules, "a botocore client was made"  # the package alone: a check
tier.close()
print("ok")
"""
    (tmp_path / "blob").write_bytes(blob)
    for mode in ("write", "read"):
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "blob"), url, mode], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# -- a store that misbehaves on purpose ----------------------------------------------------------------------------


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    mode = "short"

    def do_GET(self) -> None:
        if self.mode == "short":  # promises more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.close_connection = True
        elif self.mode == "redirect":  # the bucket lives in another region
            self.send_response(301)
            self.send_header("x-amz-bucket-region", "eu-west-3")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            body = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>busy</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def misbehaving(aws_env: Callable[..., None]) -> Iterator[Callable[[str], S3Tier]]:
    aws_env(AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="b")
    handler = type("Handler", (_Misbehaving,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    tiers: list[S3Tier] = []

    def tier(mode: str) -> S3Tier:
        handler.mode = mode
        tiers.append(S3Tier(BUCKET, "p", endpoint=f"http://127.0.0.1:{server.server_port}", region="us-east-1",
                            timeout=5))
        return tiers[-1]

    yield tier
    for t in tiers:
        t.close()
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_a_body_cut_short_is_a_transient_error(misbehaving: Callable[[str], S3Tier], tmp_path: Path) -> None:
    tier = misbehaving("short")
    assert tier.reads_without_botocore
    digest = digest_bytes(b"x" * 1000)
    for read in (lambda: tier.read_blob(digest), lambda: tier.fetch_blob(digest, tmp_path / "out")):
        with pytest.raises(TierError) as e:
            read()
        assert e.value.transient and "IncompleteRead" in str(e.value) and "\n" not in str(e.value)


def test_a_store_error_keeps_its_code(misbehaving: Callable[[str], S3Tier]) -> None:
    tier = misbehaving("slowdown")
    with pytest.raises(TierError) as e:
        tier.read_action(digest_bytes(b"k"))
    assert e.value.transient and "SlowDown (HTTP 503)" in str(e.value)


def test_a_bucket_in_another_region_hands_over_to_botocore(misbehaving: Callable[[str], S3Tier]) -> None:
    tier = misbehaving("redirect")
    assert tier.reads_without_botocore
    with pytest.raises(TierError) as e:  # botocore gets the same answer from this server: an error, one line
        tier.read_blob(digest_bytes(b"k"))
    assert "\n" not in str(e.value)
    assert not tier.reads_without_botocore
