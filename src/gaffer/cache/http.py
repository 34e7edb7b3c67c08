"""The HTTP tier: the Bazel HTTP cache protocol, `http(s)://[user:password@]host[:port]/prefix[?token_file=PATH]`.

GET/PUT/HEAD on `<prefix>/cas/<sha256>` (blobs) and `<prefix>/ac/<sha256>` (serialized ActionResults), as spoken
by bazel-remote, nginx with WebDAV, `gaffer serve` and most CI caches. 404 is a miss; 401/403 mean wrong
credentials (not worth retrying); 5xx, timeouts and connection errors are transient. Authentication: basic auth
from the URL's userinfo, or a bearer token (from `token_file` or the constructor).

Requests go over http.client (cache/httpconn.py: kept-alive connections, proxies from the environment), not
httpx: a build that only restores (a CI machine with an empty local cache) would spend ~0.1 s of CPU importing it.
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO
from urllib.parse import quote, unquote

from gaffer.cache.base import CacheTier, TierError, transient_status
from gaffer.cache.httpconn import Pool, Unreachable, basic_auth, chunks
from gaffer.cache.urls import checked_url, read_token, redact, split_url
from gaffer.digest import EMPTY_DIGEST, Digest


class HttpTier(CacheTier):
    """CAS + AC on a Bazel-protocol HTTP cache. Thread-safe: the connection pool is."""

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
        parts = split_url(self.base_url)
        self._path = quote(parts.path, safe="/%!$&'()*+,;=:@")  # as httpx encodes it
        self._headers = {"Authorization": f"Bearer {token}"} if token else \
            {"Authorization": basic_auth(*auth)} if auth else {}
        self._pool = Pool(parts.scheme, parts.netloc, timeout, os.environ.get("SSL_CERT_FILE") or None,
                          os.environ.get("SSL_CERT_DIR") or None)

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

    def _request(self, method: str, kind: str, digest: Digest,
                 body: bytes | IO[bytes] | None = None,
                 size: int | None = None) -> AbstractContextManager[http.client.HTTPResponse]:
        """Send a request for one entry; the caller turns `Unreachable` into a transient TierError. A blob's GET
        may take as long as its digest's size needs, even answered chunked (without a Content-Length)."""
        headers = dict(self._headers)
        if size is not None:
            headers["Content-Length"] = str(size)
        expect = digest.size_bytes if method == "GET" and kind == "cas" else 0
        return self._pool.request(method, f"{self._path}/{kind}/{digest.hash}", headers, body, expect)

    def _found(self, response: http.client.HTTPResponse, what: str) -> bool:
        """True for 2xx, False for 404; any other status raises TierError."""
        status = response.status
        if 200 <= status < 300:
            return True
        if status == 404:
            return False
        if status in (401, 403):
            raise TierError(self.name, f"{what}: HTTP {status} {response.reason}: check the user and "
                            "password in the URL or the token", transient=False)
        transient = transient_status(status)
        raise TierError(self.name, f"{what}: HTTP {status} {response.reason}", transient=transient)

    @staticmethod
    def _body(response: http.client.HTTPResponse, kind: str, digest: Digest) -> Iterator[bytes]:
        """A found entry's body. A blob's holds its digest's size: an answer announcing another size is refused
        before a byte is read (a 1 KiB blob's 4 GiB Content-Length would fill memory, or wait for bytes that never
        come), and a chunked one is not read past it."""
        if kind != "cas":
            return chunks(response)
        if response.length is not None and response.length != digest.size_bytes:
            raise Unreachable(f"Content-Length {response.length}, but the blob holds {digest.size_bytes} bytes")
        return chunks(response, digest.size_bytes)

    def _unreachable(self, e: Unreachable, what: str) -> TierError:
        return TierError(self.name, f"{what}: {e}", transient=True)

    # -- CAS ---------------------------------------------------------------------------------------------------

    def has_blob(self, digest: Digest) -> bool:
        what = f"HEAD {self._url('cas', digest)}"
        try:
            with self._request("HEAD", "cas", digest) as response:
                if not self._found(response, what):
                    return False
                length = response.getheader("Content-Length")
        except Unreachable as e:
            raise self._unreachable(e, what) from e
        return length is None or int(length) == digest.size_bytes

    def read_blob(self, digest: Digest) -> bytes | None:
        return self._get("cas", digest)

    def fetch_blob(self, digest: Digest, dest: Path) -> bool:
        what = f"GET {self._url('cas', digest)}"
        try:
            with self._request("GET", "cas", digest) as response:
                if not self._found(response, what):
                    return False
                body = self._body(response, "cas", digest)
                with open(dest, "wb") as f:
                    f.writelines(body)
        except Unreachable as e:
            raise self._unreachable(e, what) from e
        return True

    def write_blob(self, digest: Digest, data: bytes) -> None:
        self._put("cas", digest, data, len(data))

    def upload_blob(self, digest: Digest, path: Path) -> None:
        with open(path, "rb") as f:  # sent in 1 MiB blocks, with its Content-Length
            self._put("cas", digest, f, os.fstat(f.fileno()).st_size)

    # -- action cache ------------------------------------------------------------------------------------------

    def read_action(self, key: Digest) -> bytes | None:
        return self._get("ac", key)

    def write_action(self, key: Digest, result: bytes) -> None:
        self._put("ac", key, result, len(result))

    def _get(self, kind: str, digest: Digest) -> bytes | None:
        what = f"GET {self._url(kind, digest)}"
        try:
            with self._request("GET", kind, digest) as response:
                return b"".join(self._body(response, kind, digest)) if self._found(response, what) else None
        except Unreachable as e:
            raise self._unreachable(e, what) from e

    def _put(self, kind: str, digest: Digest, content: bytes | IO[bytes], size: int) -> None:
        what = f"PUT {self._url(kind, digest)}"
        try:
            with self._request("PUT", kind, digest, content, size) as response:
                found = self._found(response, what)
        except Unreachable as e:
            raise self._unreachable(e, what) from e
        if not found:
            raise TierError(self.name, f"{what}: HTTP 404: the server does not accept uploads there",
                            transient=False)

    # -- management --------------------------------------------------------------------------------------------

    def check(self) -> None:
        """HEAD the empty blob: 200 or 404 both prove the server answers and accepts our credentials."""
        self.has_blob(EMPTY_DIGEST)

    def close(self) -> None:
        super().close()
        self._pool.close()

