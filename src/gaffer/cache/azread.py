"""Azure Blob reads without azure-storage-blob: GET, HEAD and a one-blob listing on http.client, signed with the
account key (Shared Key) or carrying a SAS token.

A CI machine with an empty local cache only reads, and importing azure-storage-blob and azure-core cost ~0.35 s
of CPU; the client also fetches a blob in 512 KiB ranged pieces (to bound its memory), one request each. This reader
streams a blob in one GET. It serves the credentials the Azure tier finds itself (an account key or a SAS token, from
the environment or a connection string); a token credential (azure-identity's DefaultAzureCredential) leaves every
request to the client library, and so do writes. tests/test_azure_read.py pins the signature to the client
library's own signer, and Azurite checks it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from gaffer.cache.httpconn import Pool, chunks, requests_trust

API_VERSION = "2023-11-03"  # the REST API version of the requests; every current Azure and Azurite serves it
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class BlobError(Exception):
    """An answer other than success or a missing blob: the status and Azure's `x-ms-error-code` ("" if none)."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"HTTP {status} {code}".strip())
        self.status = status
        self.code = code


def http_date(now: float | None = None) -> str:
    """RFC 1123, as `x-ms-date` wants it, whatever the process's locale."""
    t = time.gmtime(now)
    return f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} " \
           f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"


def shared_key(account: str, key: bytes, method: str, path: str, query: dict[str, str],
               headers: dict[str, str]) -> str:
    """The `Authorization` value for a bodiless request: Shared Key over the verb, the x-ms-* headers, the account
    and the (URI-encoded) path, and the query parameters (decoded, sorted)."""
    x_ms = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()) if k.startswith("x-ms-"))
    resource = f"/{account}{path}" + "".join(f"\n{k.lower()}:{unquote(v)}" for k, v in sorted(query.items()))
    to_sign = f"{method}\n" + "\n" * 11 + x_ms + resource  # the 11 standard headers: none is sent
    signature = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
    return f"SharedKey {account}:{signature}"


class BlobReader:
    """GET and HEAD on one container over kept-alive connections. Thread-safe."""

    def __init__(self, endpoint: str, account: str, container: str, *, key: bytes | None, sas: str | None,
                 timeout: float) -> None:
        parts = urlsplit(endpoint)
        self.account = account
        self.key = key
        self.sas = sas
        self._base = f"{parts.path.rstrip('/')}/{quote(container, safe='')}"
        self._pool = Pool(parts.scheme, parts.netloc, timeout, *requests_trust())

    @classmethod
    def open(cls, endpoint: str, account: str, container: str, credential: object,
             timeout: float) -> BlobReader | None:
        """A reader for an account key ({"account_name", "account_key"}) or a SAS token (a str); None for anything
        else (a token credential, a key that is not base64, an endpoint with a query): the client library's."""
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            return None
        if isinstance(credential, str):
            return cls(endpoint, account, container, key=None, sas=credential.lstrip("?"), timeout=timeout)
        if isinstance(credential, dict) and set(credential) == {"account_name", "account_key"}:
            try:
                key = base64.b64decode(credential["account_key"], validate=True)
            except (binascii.Error, ValueError):
                return None
            return cls(endpoint, account, container, key=key, sas=None, timeout=timeout)
        return None

    # -- requests ----------------------------------------------------------------------------------------------

    def head(self, name: str) -> int | None:
        """The blob's size, or None if there is no such blob."""
        with self._request("HEAD", self._path(name)) as response:
            return None if response is None else int(response.getheader("Content-Length", "-1"))

    def read(self, name: str) -> bytes | None:
        with self._request("GET", self._path(name)) as response:
            return None if response is None else b"".join(chunks(response))

    def fetch(self, name: str, dest: Path) -> bool:
        """Stream the blob into the file `dest` in one GET; False if there is no such blob (nothing written)."""
        with self._request("GET", self._path(name)) as response:
            if response is None:
                return False
            with open(dest, "wb") as f:
                f.writelines(chunks(response))
            return True

    def list_one(self, prefix: str | None) -> None:
        """List at most one blob (under `prefix`): proves the container exists and the credentials may read it."""
        query = {"restype": "container", "comp": "list", "maxresults": "1"}
        if prefix:
            query["prefix"] = prefix
        with self._request("GET", self._base, query):
            pass

    def _path(self, name: str) -> str:
        return f"{self._base}/{quote(name, safe='/~')}"

    @contextmanager
    def _request(self, method: str, path: str,
                 query: dict[str, str] | None = None) -> Iterator[http.client.HTTPResponse | None]:
        """Yield a successful response, or None for a missing blob; anything else is raised as BlobError."""
        query = {k: quote(v, safe="") for k, v in (query or {}).items()}
        headers = {"x-ms-date": http_date(), "x-ms-version": API_VERSION}
        if self.key is not None:
            headers["Authorization"] = shared_key(self.account, self.key, method, path, query, headers)
        params = [f"{k}={v}" for k, v in query.items()] + ([self.sas] if self.sas else [])
        target = f"{path}?{'&'.join(params)}" if params else path
        with self._pool.request(method, target, headers) as response:
            status = response.status
            code = response.getheader("x-ms-error-code", "")
            if status == 404 and code != "ContainerNotFound" and not query:  # a missing blob, as the client
                yield None  # library judges it; a listing's 404 is the container's
            elif status >= 300:
                raise BlobError(status, code)
            else:
                yield response

    def close(self) -> None:
        self._pool.close()
