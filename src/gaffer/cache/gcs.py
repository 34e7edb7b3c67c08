"""The Google Cloud Storage tier: `gs://bucket/prefix`.

Objects are `<prefix>/cas/<sha256>` and `<prefix>/ac/<sha256>`, as on the S3 tier. Credentials come from
Google's standard chain (Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, `gcloud auth
application-default login`, the metadata server on Google Cloud); `STORAGE_EMULATOR_HOST` points the tier at an
emulator (anonymous, as every Google client does). CAS objects are written once (`ifGenerationMatch=0`: an
object that is already there is a success and costs no overwrite); action-cache entries are overwritten.
Blobs over the client's multipart limit (8 MiB) go up as resumable uploads in `chunk_size` pieces, and downloads
stream into the file: memory stays bounded whatever the blob's size.

Only `cache/urls.py` imports this module, and only for a gs:// URL, so google-cloud-storage never loads on the
CLI hot path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import google.api_core.exceptions as api
import google.auth
import google.auth.credentials
import google.auth.exceptions
import requests.adapters
import requests.exceptions
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage

from gaffer.cache.base import LOOKUP_WORKERS, CacheTier, TierError, transient_status
from gaffer.cache.urls import checked_url, redact
from gaffer.digest import Digest

MULTIPART_LIMIT = 8 * 1024 * 1024  # the client sends blobs up to this size in one request, bigger ones resumably
RESUMABLE_CHUNK = 8 * 1024 * 1024  # a multiple of 256 KiB, as GCS requires; bigger blobs go up in pieces this size
_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
_TRANSIENT_ERRORS = (
    requests.exceptions.ConnectionError,  # refused, reset, connect timeouts, DNS
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,  # a connection closed mid-response
    google.auth.exceptions.TransportError,
)


def credentials() -> google.auth.credentials.Credentials:
    """Anonymous credentials for an emulator (`STORAGE_EMULATOR_HOST`), else Application Default Credentials;
    none anywhere is a lasting TierError, raised by `GcsTier` with its name."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return google.auth.credentials.AnonymousCredentials()
    creds, _project = google.auth.default(scopes=[_SCOPE])
    return creds


class GcsTier(CacheTier):
    """CAS + AC in one bucket under one object prefix. Thread-safe: one client, a pooled HTTP session."""

    def __init__(self, bucket: str, prefix: str = "", *, timeout: float = 30.0, chunk_size: int = RESUMABLE_CHUNK,
                 name: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.name = name or f"gs://{bucket}/{self.prefix}".rstrip("/")
        self.timeout = timeout
        self.chunk_size = chunk_size
        self._lock = threading.Lock()
        self._client: storage.Client | None = None

    def _connect(self) -> storage.Client:
        """The client, made on first use: finding credentials may take a request (the metadata server), and
        having none is then a TierError like any other."""
        with self._lock:
            if self._client is None:
                creds = credentials()
                session = AuthorizedSession(creds)
                # a connection per parallel lookup, rather than requests' 10 (and a warning for each one dropped)
                adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=LOOKUP_WORKERS)
                session.mount("https://", adapter)
                session.mount("http://", adapter)
                self._client = storage.Client(project=None, credentials=creds, _http=session)
            return self._client

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 30.0, **options: Any) -> GcsTier:
        """Open `gs://bucket[/prefix]`; `options` go to the constructor."""
        parts, _ = checked_url(url)
        return cls(parts.netloc, parts.path, timeout=timeout, name=redact(url), **options)

    # -- keys and errors ---------------------------------------------------------------------------------------

    def _key(self, kind: str, digest: Digest) -> str:
        return f"{self.prefix}/{kind}/{digest.hash}" if self.prefix else f"{kind}/{digest.hash}"

    def _blob(self, key: str, **options: Any) -> storage.Blob:
        return self._connect().bucket(self.bucket).blob(key, **options)

    def _error(self, e: Exception, what: str) -> TierError:
        """One TierError for any client failure: 5xx, throttling and network trouble are transient."""
        bucket = self.bucket
        if isinstance(e, google.auth.exceptions.DefaultCredentialsError):
            return TierError(self.name, "no Google credentials (set GOOGLE_APPLICATION_CREDENTIALS to a key file, or "
                             "run `gcloud auth application-default login`)", transient=False)
        if isinstance(e, (api.Forbidden, api.Unauthorized, google.auth.exceptions.RefreshError)):
            return TierError(self.name, f"access to bucket {bucket!r} denied ({type(e).__name__}): check the "
                             "credentials and the bucket's IAM roles", transient=False)
        if isinstance(e, api.GoogleAPICallError):
            status = int(e.code or 0)
            return TierError(self.name, f"{what}: HTTP {status} {e.message}", transient=transient_status(status))
        if isinstance(e, _TRANSIENT_ERRORS):  # their text repeats the whole URL: the type says enough
            return TierError(self.name, f"{what}: {type(e).__name__}", transient=True)
        return TierError(self.name, f"{what}: {e}", transient=False)

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except (api.GoogleAPICallError, google.auth.exceptions.GoogleAuthError,
                requests.exceptions.RequestException) as e:
            raise self._error(e, what) from e

    # -- CAS ---------------------------------------------------------------------------------------------------

    def has_blob(self, digest: Digest) -> bool:
        key = self._key("cas", digest)
        with self._guard(f"stat {key}"):
            found = self._connect().bucket(self.bucket).get_blob(key, timeout=self.timeout, retry=None)
        return found is not None and found.size == digest.size_bytes

    def read_blob(self, digest: Digest) -> bytes | None:
        return self._read(self._key("cas", digest))

    def fetch_blob(self, digest: Digest, dest: Path) -> bool:
        key = self._key("cas", digest)
        with self._guard(f"GET {key}"):
            try:
                with open(dest, "wb") as f:
                    self._blob(key).download_to_file(f, timeout=self.timeout, retry=None, checksum=None)
            except api.NotFound:
                with suppress(FileNotFoundError):
                    os.unlink(dest)
                return False
        return True

    def write_blob(self, digest: Digest, data: bytes) -> None:
        key = self._key("cas", digest)
        with self._guard(f"PUT {key}"), suppress(api.PreconditionFailed):  # 412: already there
            self._blob(key).upload_from_string(data, if_generation_match=0, timeout=self.timeout, retry=None,
                                               checksum=None)

    def upload_blob(self, digest: Digest, path: Path) -> None:
        key = self._key("cas", digest)
        with self._guard(f"upload {key}"), suppress(api.PreconditionFailed):
            # A resumable upload carries the precondition too, but not every GCS implementation enforces it there
            # (fake-gcs-server does not): ask first, so a big blob is sent once and never replaced.
            if digest.size_bytes > MULTIPART_LIMIT and self.has_blob(digest):
                return
            self._blob(key, chunk_size=self.chunk_size).upload_from_filename(
                str(path), if_generation_match=0, timeout=self.timeout, retry=None, checksum=None)

    # -- action cache ------------------------------------------------------------------------------------------

    def read_action(self, key: Digest) -> bytes | None:
        return self._read(self._key("ac", key))

    def write_action(self, key: Digest, result: bytes) -> None:
        object_key = self._key("ac", key)
        with self._guard(f"PUT {object_key}"):
            self._blob(object_key).upload_from_string(result, timeout=self.timeout, retry=None, checksum=None)

    def _read(self, key: str) -> bytes | None:
        with self._guard(f"GET {key}"):
            try:
                return bytes(self._blob(key).download_as_bytes(timeout=self.timeout, retry=None, checksum=None))
            except api.NotFound:
                return None

    # -- management --------------------------------------------------------------------------------------------

    def _list(self, prefix: str, **options: Any) -> Iterator[storage.Blob]:
        client = self._connect()
        return iter(client.list_blobs(self.bucket, prefix=prefix, timeout=self.timeout, retry=None, **options))

    def check(self) -> None:
        # Listing (one object at most) needs only the object permissions the tier needs anyway, where reading the
        # bucket's metadata would need storage.buckets.get.
        what = f"bucket {self.bucket!r}"
        with self._guard(f"list {what}"):
            try:
                list(self._list(self.prefix, max_results=1))
            except api.NotFound:
                raise TierError(self.name, f"{what} does not exist", transient=False) from None

    def clear(self) -> None:
        """Delete every CAS and AC object under this tier's prefix (gobuildcache `clear-remote`)."""
        base = f"{self.prefix}/" if self.prefix else ""
        with self._guard(f"clear {self.name}"):
            for kind in ("cas/", "ac/"):
                for blob in self._list(base + kind):
                    with suppress(api.NotFound):
                        blob.delete(timeout=self.timeout, retry=None)

    def close(self) -> None:
        super().close()
        if self._client is not None:
            self._client.close()
