"""Google Cloud Storage reads without google-cloud-storage: JSON API GETs on http.client.

A CI machine with an empty local cache only reads, and importing google-cloud-storage (with google-api-core and
requests) costs ~0.25 s of CPU, as much as the whole restore from a warm local cache. This reader fetches an object
in one streamed GET (`alt=media`), its size from its metadata, and lists one object for the start-up check. It
signs nothing itself: an emulator (`STORAGE_EMULATOR_HOST`) is anonymous, as every Google client makes it, and
otherwise google-auth's own credentials (Application Default Credentials, the same ones the client library would
use) put their bearer token on each request, refreshing it through `TokenTransport` when it expires.
`GcsReader.endpoint` returns None where the client library would go elsewhere (an endpoint or universe override,
client certificates): the tier then uses the client library, as it does for every write.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from gaffer.cache.httpconn import Pool, Unreachable, chunks, read_small, requests_trust

DEFAULT_ENDPOINT = "https://storage.googleapis.com"
#: variables with which google-cloud-storage would send its requests elsewhere or otherwise: the client's business
_CLIENT_ONLY_ENV = ("API_ENDPOINT_OVERRIDE", "API_VERSION_OVERRIDE", "GOOGLE_CLOUD_UNIVERSE_DOMAIN",
                    "GOOGLE_API_USE_CLIENT_CERTIFICATE")


class GcsError(Exception):
    """An answer other than success or a missing object: the status and the JSON error's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status} {message}".strip())
        self.status = status
        self.message = message


def endpoint() -> str | None:
    """Where the JSON API is, as google-cloud-storage finds it: the emulator, else Google's; None when the
    environment asks the client library for something this reader does not do."""
    if any(os.environ.get(name) for name in _CLIENT_ONLY_ENV):
        return None
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        return emulator.rstrip("/") if "://" in emulator else f"http://{emulator.rstrip('/')}"
    return DEFAULT_ENDPOINT


class TokenTransport:
    """google-auth's transport interface (`google.auth.transport.Request`) on http.client, for refreshing tokens:
    google-auth's own transports import requests or urllib3 (~0.15 s of CPU)."""

    def __call__(self, url: str, method: str = "GET", body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float | None = None, **_: Any) -> Any:
        import google.auth.exceptions

        parts = urlsplit(url)
        pool = Pool(parts.scheme, parts.netloc, timeout or 30.0, *requests_trust())
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            with pool.request(method, target or "/", dict(headers or {}), body) as response:
                return _Response(response.status, dict(response.getheaders()), b"".join(chunks(response)))
        except Unreachable as e:
            raise google.auth.exceptions.TransportError(str(e)) from e
        finally:
            pool.close()


class _Response:
    """google-auth's `Response` interface."""

    def __init__(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.status = status
        self.headers = headers
        self.data = data


class GcsReader:
    """GET on one bucket over kept-alive connections; `credentials` (google-auth's) or None (anonymous).
    Thread-safe."""

    def __init__(self, base_url: str, bucket: str, credentials: Any, timeout: float) -> None:
        parts = urlsplit(base_url)
        self.credentials = credentials
        self._bucket = f"{parts.path.rstrip('/')}/storage/v1/b/{quote(bucket, safe='')}"
        self._media = f"{parts.path.rstrip('/')}/download/storage/v1/b/{quote(bucket, safe='')}"
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._pool = Pool(parts.scheme, parts.netloc, timeout, *requests_trust())
        self._auth_lock = threading.Lock()

    def size(self, name: str) -> int | None:
        """The object's size, or None if there is no such object."""
        with self._request(f"{self._bucket}/o/{quote(name, safe='')}", {"fields": "size"}) as response:
            if response is None:
                return None
            try:
                return int(json.loads(read_small(response))["size"])
            except (ValueError, KeyError, TypeError) as e:
                raise GcsError(response.status, "object metadata without a size") from e

    def read(self, name: str) -> bytes | None:
        with self._request(f"{self._media}/o/{quote(name, safe='')}", {"alt": "media"}) as response:
            return None if response is None else b"".join(chunks(response))

    def fetch(self, name: str, dest: Path) -> bool:
        """Stream the object into the file `dest` in one GET; False if there is no such object (nothing written)."""
        with self._request(f"{self._media}/o/{quote(name, safe='')}", {"alt": "media"}) as response:
            if response is None:
                return False
            with open(dest, "wb") as f:
                f.writelines(chunks(response))
            return True

    def list_one(self, prefix: str) -> bool:
        """List at most one object under `prefix`: False if the bucket does not exist."""
        with self._request(f"{self._bucket}/o", {"maxResults": "1", "prefix": prefix}) as response:
            return response is not None

    def _headers(self, url: str) -> dict[str, str]:
        """The bearer token (refreshed when it has expired) and quota project google-auth puts on a request."""
        headers: dict[str, str] = {}
        if self.credentials is not None:
            with self._auth_lock:
                self.credentials.before_request(TokenTransport(), "GET", url, headers)
        return headers

    @contextmanager
    def _request(self, path: str, query: dict[str, str]) -> Iterator[http.client.HTTPResponse | None]:
        """Yield a successful response, or None for a 404; anything else is raised as GcsError."""
        target = f"{path}?{urlencode(query)}"
        with self._pool.request("GET", target, self._headers(self._origin + target)) as response:
            if response.status == 404:
                yield None
            elif response.status >= 300:
                raise GcsError(response.status, _message(read_small(response)) or response.reason)
            else:
                yield response

    def close(self) -> None:
        self._pool.close()


def _message(body: bytes) -> str:
    """The message of a JSON API error document, "" if there is none."""
    try:
        return str(json.loads(body)["error"]["message"]).splitlines()[0]
    except (ValueError, KeyError, TypeError, IndexError):
        return ""
