"""The GCS tier's light read path (cache/gcsread.py): where it sends requests, google-auth's tokens refreshed over
http.client and carried on each read, and reads on fake-gcs-server that never make the client library."""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gaffer.cache.base import TierError
from gaffer.cache.gcs import GcsTier
from gaffer.cache.gcsread import DEFAULT_ENDPOINT, GcsReader, endpoint
from gaffer.digest import digest_bytes
from tests import servers
from tests.conftest import BUCKET
from tests.support import check_light_reads


def test_endpoint_is_the_client_librarys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STORAGE_EMULATOR_HOST", "API_ENDPOINT_OVERRIDE", "API_VERSION_OVERRIDE",
                "GOOGLE_CLOUD_UNIVERSE_DOMAIN", "GOOGLE_API_USE_CLIENT_CERTIFICATE"):
        monkeypatch.delenv(var, raising=False)
    assert endpoint() == DEFAULT_ENDPOINT
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")
    assert endpoint() == "http://127.0.0.1:4443"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "https://gcs.internal/")
    assert endpoint() == "https://gcs.internal"
    monkeypatch.setenv("API_ENDPOINT_OVERRIDE", "https://elsewhere")  # the client library's business
    assert endpoint() is None


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A token endpoint (POST: a token, or a refusal) and an object's metadata (GET), recording what arrives."""

    seen: list[tuple[str, str, str | None]]
    refuse = False

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append(("POST", self.path, None))
        status, body = (400, {"error": "invalid_grant"}) if self.refuse else \
            (200, {"access_token": f"tok-{len(self.seen)}", "expires_in": 3600, "token_type": "Bearer"})
        self._answer(status, body)

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, self.headers.get("Authorization")))
        self._answer(200, {"size": "5"})

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Recorder", (_Recorder,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _user_credentials(token_uri: str) -> object:
    import google.oauth2.credentials

    return google.oauth2.credentials.Credentials(None, refresh_token="r", client_id="id", client_secret="s",
                                                 token_uri=token_uri)


def test_tokens_are_refreshed_over_http_client_and_sent(recorder: tuple[str, type[_Recorder]]) -> None:
    url, handler = recorder
    reader = GcsReader(url, "b", _user_credentials(f"{url}/token"), timeout=5)
    assert reader.size("team/cas/x") == 5
    assert reader.size("team/cas/x") == 5
    reader.close()
    assert handler.seen[0][:2] == ("POST", "/token")  # one refresh, then the token is reused
    assert handler.seen[1:] == [("GET", "/storage/v1/b/b/o/team%2Fcas%2Fx?fields=size", "Bearer tok-1")] * 2


def test_a_refused_refresh_is_one_lasting_error(recorder: tuple[str, type[_Recorder]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url, handler = recorder
    handler.refuse = True
    for var, value in servers.ISOLATED_CLOUD_ENV.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    tier = GcsTier("b", "team", timeout=5)
    creds = _user_credentials(f"{url}/token")
    tier._creds, tier._reader = creds, GcsReader(url, "b", creds, timeout=5)  # ADC against this server
    with pytest.raises(TierError) as e:
        tier.read_blob(digest_bytes(b"x"))
    assert not e.value.transient and "denied (RefreshError)" in str(e.value) and "\n" not in str(e.value)
    tier.close()


def test_reads_on_fake_gcs_need_no_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    server: servers.Server = request.getfixturevalue("gcs_bucket")
    for var, value in server.env.items():
        monkeypatch.setenv(var, value)
    namespace = uuid.uuid4().hex[:12]
    blob = b"y" * 700_000
    writer = GcsTier(BUCKET, namespace, timeout=10)
    writer.write_blob(digest_bytes(blob), blob)
    writer.write_action(digest_bytes(b"action"), b"result")
    writer.close()
    tier = GcsTier(BUCKET, namespace, timeout=10)
    check_light_reads(tier, blob, b"result", tmp_path)
    tier.close()
    missing = GcsTier("no-such-bucket", "x", timeout=10)
    with pytest.raises(TierError) as e:
        missing.check()
    assert "does not exist" in str(e.value) and not e.value.transient
    missing.close()
