"""The HTTP tier: the Bazel HTTP cache protocol, `http(s)://[user:password@]host[:port]/prefix[?token_file=PATH]`.

GET/PUT/HEAD on `<prefix>/cas/<sha256>` (blobs) and `<prefix>/ac/<sha256>` (serialized ActionResults), as spoken
by bazel-remote, nginx with WebDAV, `gaffer serve` and most CI caches. 404 is a miss; 401/403 mean wrong
credentials (not worth retrying); 5xx, timeouts and connection errors are transient. Authentication: basic auth
from the URL's userinfo, or a bearer token (from `token_file` or the constructor).

Only `cache/urls.py` imports this module, and only for an http(s):// URL, so httpx never loads on the CLI hot path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from urllib.parse import unquote

import httpx

from gaffer.cache.base import LOOKUP_WORKERS, CacheTier, TierError, transient_status
from gaffer.cache.urls import checked_url, read_token, redact
from gaffer.digest import EMPTY_DIGEST, Digest

_CHUNK = 1024 * 1024


class HttpTier(CacheTier):
    """CAS + AC on a Bazel-protocol HTTP cache. Thread-safe: an httpx.Client may be shared by threads."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: tuple[str, str] | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        name: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name or self.base_url
        self._client = httpx.Client(
            auth=httpx.BasicAuth(*auth) if auth else None,
            headers={"Authorization": f"Bearer {token}"} if token else None,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=LOOKUP_WORKERS, max_keepalive_connections=LOOKUP_WORKERS),
            # An SSL context (loading the CA bundle: 60-100 ms) only where TLS is used.
            verify=self.base_url.startswith("https://"),
        )

    @classmethod
    def from_url(cls, url: str, *, token: str | None = None, timeout: float = 30.0) -> HttpTier:
        """Open an http(s):// cache URL; `token` overrides `?token_file=`."""
        parts, params = checked_url(url)
        if token is None and "token_file" in params:
            token = read_token(Path(params["token_file"]), f"cache URL {redact(url)}")
        auth = None
        if parts.username is not None or parts.password is not None:
            auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        host = parts.netloc.rpartition("@")[2]
        return cls(f"{parts.scheme}://{host}{parts.path}", auth=auth, token=token, timeout=timeout,
                   name=redact(url))

    def _url(self, kind: str, digest: Digest) -> str:
        return f"{self.base_url}/{kind}/{digest.hash}"

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except httpx.TransportError as e:  # refused, reset, timeouts, broken responses
            raise TierError(self.name, f"{what}: {type(e).__name__}: {e}", transient=True) from e

    def _found(self, response: httpx.Response, what: str) -> bool:
        """True for 2xx, False for 404; any other status raises TierError."""
        status = response.status_code
        if 200 <= status < 300:
            return True
        if status == 404:
            return False
        if status in (401, 403):
            raise TierError(self.name, f"{what}: HTTP {status} {response.reason_phrase}: check the user and "
                            "password in the URL or the token", transient=False)
        transient = transient_status(status)
        raise TierError(self.name, f"{what}: HTTP {status} {response.reason_phrase}", transient=transient)

    # -- CAS ---------------------------------------------------------------------------------------------------

    def has_blob(self, digest: Digest) -> bool:
        url = self._url("cas", digest)
        with self._guard(f"HEAD {url}"):
            response = self._client.head(url)
        if not self._found(response, f"HEAD {url}"):
            return False
        length = response.headers.get("content-length")
        return length is None or int(length) == digest.size_bytes

    def read_blob(self, digest: Digest) -> bytes | None:
        return self._get(self._url("cas", digest))

    def fetch_blob(self, digest: Digest, dest: Path) -> bool:
        url = self._url("cas", digest)
        with self._guard(f"GET {url}"), self._client.stream("GET", url) as response:
            if not self._found(response, f"GET {url}"):
                return False
            with open(dest, "wb") as f:
                f.writelines(response.iter_bytes(_CHUNK))
        return True

    def write_blob(self, digest: Digest, data: bytes) -> None:
        self._put(self._url("cas", digest), data)

    def upload_blob(self, digest: Digest, path: Path) -> None:
        with open(path, "rb") as f:  # httpx streams a file object in chunks, with its Content-Length
            self._put(self._url("cas", digest), f, os.fstat(f.fileno()).st_size)

    # -- action cache ------------------------------------------------------------------------------------------

    def read_action(self, key: Digest) -> bytes | None:
        return self._get(self._url("ac", key))

    def write_action(self, key: Digest, result: bytes) -> None:
        self._put(self._url("ac", key), result)

    def _get(self, url: str) -> bytes | None:
        with self._guard(f"GET {url}"):
            response = self._client.get(url)
        return response.content if self._found(response, f"GET {url}") else None

    def _put(self, url: str, content: bytes | IO[bytes], size: int | None = None) -> None:
        headers = {"Content-Length": str(size)} if size is not None else None
        with self._guard(f"PUT {url}"):
            response = self._client.put(url, content=content, headers=headers)
        if not self._found(response, f"PUT {url}"):
            raise TierError(self.name, f"PUT {url}: HTTP 404: the server does not accept uploads there",
                            transient=False)

    # -- management --------------------------------------------------------------------------------------------

    def check(self) -> None:
        """HEAD the empty blob: 200 or 404 both prove the server answers and accepts our credentials."""
        self.has_blob(EMPTY_DIGEST)

    def close(self) -> None:
        super().close()
        self._client.close()

