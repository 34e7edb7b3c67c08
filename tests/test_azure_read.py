"""The Azure tier's light read path (cache/azread.py) against azure-storage-blob, its reference: the same Shared Key
signature, the credentials it serves and those it leaves to the client library, and reads on Azurite (which checks
signatures and SAS tokens) that never make the client."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gaffer.cache.azblob import AzureBlobTier
from gaffer.cache.azread import API_VERSION, BlobReader, http_date, shared_key
from gaffer.digest import digest_bytes
from tests import servers
from tests.conftest import BUCKET
from tests.support import check_light_reads


@pytest.mark.parametrize("url, query", [
    ("http://127.0.0.1:10000/devstoreaccount1/gaffer-tests/team/cas/" + "ab" * 32, {}),
    ("https://acct.blob.core.windows.net/cache/a%20b/ac/ff", {}),
    ("https://acct.blob.core.windows.net/cache", {"restype": "container", "comp": "list", "maxresults": "1",
                                                 "prefix": "team%2Fx"}),
])
def test_shared_key_is_the_client_librarys(url: str, query: dict[str, str]) -> None:
    from azure.core.pipeline import PipelineContext, PipelineRequest
    from azure.core.rest import HttpRequest
    from azure.storage.blob._shared.authentication import SharedKeyCredentialPolicy

    for method in ("GET", "HEAD"):
        headers = {"x-ms-date": http_date(), "x-ms-version": API_VERSION}
        full = url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
        request = PipelineRequest(HttpRequest(method, full, headers=dict(headers)), PipelineContext(None))
        SharedKeyCredentialPolicy("acct", servers.AZURITE_KEY).on_request(request)
        mine = shared_key("acct", base64.b64decode(servers.AZURITE_KEY), method, urlsplit(url).path, query, headers)
        assert mine == request.http_request.headers["Authorization"]


def test_http_date_is_rfc_1123() -> None:
    moment = datetime(2026, 3, 1, 7, 5, 9, tzinfo=UTC).timestamp()
    assert http_date(moment) == "Sun, 01 Mar 2026 07:05:09 GMT"


def test_which_credentials_it_serves() -> None:
    endpoint = "http://127.0.0.1:1/acct"
    key = {"account_name": "acct", "account_key": servers.AZURITE_KEY}
    assert BlobReader.open(endpoint, "acct", "c", key, 1) is not None
    assert BlobReader.open(endpoint, "acct", "c", "?sv=2023-11-03&sig=x", 1) is not None
    assert BlobReader.open(endpoint, "acct", "c", {"account_name": "acct", "account_key": "not base64!"}, 1) is None
    assert BlobReader.open(endpoint, "acct", "c", object(), 1) is None  # a token credential: the client library's
    assert BlobReader.open(endpoint + "?x=1", "acct", "c", key, 1) is None


def test_reads_on_azurite_need_no_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    """A writer fills a namespace with the account key; readers with the key and with a read-only container SAS
    read everything back on Azurite without making the client."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    server: servers.Server = request.getfixturevalue("azurite_container")
    for var, value in server.env.items():
        monkeypatch.setenv(var, value)
    url = server.url
    namespace = uuid.uuid4().hex[:12]
    blob = b"x" * 700_000
    writer = AzureBlobTier(BUCKET, namespace, account=servers.AZURITE_ACCOUNT, endpoint=url, timeout=10)
    writer.write_blob(digest_bytes(blob), blob)
    writer.write_action(digest_bytes(b"action"), b"result")
    writer.close()
    sas = generate_container_sas(servers.AZURITE_ACCOUNT, BUCKET, account_key=servers.AZURITE_KEY,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    for credential in ("key", "sas"):
        if credential == "sas":
            monkeypatch.delenv("AZURE_STORAGE_KEY")
            monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", sas)
        tier = AzureBlobTier(BUCKET, namespace, account=servers.AZURITE_ACCOUNT, endpoint=url, timeout=10)
        check_light_reads(tier, blob, b"result", tmp_path)
        tier.close()
