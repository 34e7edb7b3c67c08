"""The Google Cloud Storage tier: `gs://bucket/prefix`.

Objects are `<prefix>/cas/<sha256>` and `<prefix>/ac/<sha256>`, as on the S3 tier. Credentials come from
Google's standard chain (Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, `gcloud auth
application-default login`, the metadata server on Google Cloud); `STORAGE_EMULATOR_HOST` points the tier at an
emulator (anonymous, as every Google client does). CAS objects are written once (`ifGenerationMatch=0`: an
object that is already there is a success and costs no overwrite); action-cache entries are overwritten.
Blobs over the client's multipart limit (8 MiB) go up as resumable uploads in `chunk_size` pieces, and downloads
stream into the file: memory stays bounded whatever the blob's size.

Reads (an object in one streamed GET, its size, the start-up listing) go through cache/gcsread.py on http.client
with the same credentials (google-auth's), so a build that only restores never imports google-cloud-storage
(~0.25 s of CPU); writes and `clear` use the client library, imported on first use, as do reads when the
environment points the client library elsewhere (an endpoint or universe override, client certificates).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from gaffer.cache.base import LOOKUP_WORKERS, CacheTier, TierError, transient_status
from gaffer.cache.gcsread import GcsError, GcsReader, endpoint
from gaffer.cache.httpconn import Unreachable
from gaffer.cache.urls import checked_url, redact
from gaffer.digest import Digest

MULTIPART_LIMIT = 8 * 1024 * 1024  # the client sends blobs up to this size in one request, bigger ones resumably
RESUMABLE_CHUNK = 8 * 1024 * 1024  # a multiple of 256 KiB, as GCS requires; bigger blobs go up in pieces this size
_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
T = TypeVar("T")


def credentials() -> Any:
    """Anonymous credentials for an emulator (`STORAGE_EMULATOR_HOST`), else Application Default Credentials
    (google.auth.credentials.Credentials); none anywhere is a lasting TierError, raised by `GcsTier` with its name."""
    import google.auth
    import google.auth.credentials

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return google.auth.credentials.AnonymousCredentials()
    try:
        creds, _project = google.auth.default(scopes=[_SCOPE])
    except OSError as e:  # GOOGLE_APPLICATION_CREDENTIALS names a directory, or a file that cannot be read
        import google.auth.exceptions

        raise google.auth.exceptions.DefaultCredentialsError(f"cannot read {e.filename}: {e.strerror}") from None
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
        self._client: Any = None  # the storage.Client, made on first use
        self._creds: Any = None
        self._reader: GcsReader | None = None
        # installed? writes need it: fail at open (one line), not mid-build; finding it imports nothing of it
        if importlib.util.find_spec("google.cloud.storage") is None:
            raise ModuleNotFoundError("No module named 'google.cloud.storage'", name="google.cloud.storage")

    def _resolve(self) -> Any:
        """The credentials, found once: finding them may take a request (the metadata server), and having none
        is then a TierError like any other. The reader comes with them, unless the client library is needed."""
        with self._lock:
            if self._creds is None:
                self._creds = credentials()
                base = endpoint()
                if base is not None:
                    anonymous = os.environ.get("STORAGE_EMULATOR_HOST")
                    self._reader = GcsReader(base, self.bucket, None if anonymous else self._creds, self.timeout)
            return self._creds

    def _connect(self) -> Any:
        """The client, made on first use."""
        creds = self._resolve()
        with self._lock:
            if self._client is None:
                import requests.adapters
                from google.auth.transport.requests import AuthorizedSession
                from google.cloud import storage

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

    def _blob(self, key: str, **options: Any) -> Any:
        return self._connect().bucket(self.bucket).blob(key, **options)

    def _error(self, e: Exception, what: str) -> TierError:
        """One TierError for any client failure: 5xx, throttling and network trouble are transient."""
        import google.auth.exceptions

        bucket = self.bucket
        if isinstance(e, google.auth.exceptions.DefaultCredentialsError):
            return TierError(self.name, "no Google credentials (set GOOGLE_APPLICATION_CREDENTIALS to a key file, or "
                             "run `gcloud auth application-default login`)", transient=False)
        denied = isinstance(e, google.auth.exceptions.RefreshError)
        if not denied and self._client is not None:
            import google.api_core.exceptions as api
            import requests.exceptions

            denied = isinstance(e, (api.Forbidden, api.Unauthorized))
            if isinstance(e, api.GoogleAPICallError) and not denied:
                status = int(e.code or 0)
                return TierError(self.name, f"{what}: HTTP {status} {e.message}", transient=transient_status(status))
            if isinstance(e, (requests.exceptions.ConnectionError,  # refused, reset, connect timeouts, DNS
                              requests.exceptions.Timeout,
                              requests.exceptions.ChunkedEncodingError)):  # a connection closed mid-response
                return TierError(self.name, f"{what}: {type(e).__name__}", transient=True)  # (no URL repeated)
        if denied:
            return TierError(self.name, f"access to bucket {bucket!r} denied ({type(e).__name__}): check the "
                             "credentials and the bucket's IAM roles", transient=False)
        if isinstance(e, google.auth.exceptions.TransportError):
            return TierError(self.name, f"{what}: {type(e).__name__}", transient=True)
        return TierError(self.name, f"{what}: {e}", transient=False)

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except GcsError as e:
            if e.status in (401, 403):
                raise TierError(self.name, f"access to bucket {self.bucket!r} denied (HTTP {e.status}): check the "
                                "credentials and the bucket's IAM roles", transient=False) from e
            raise TierError(self.name, f"{what}: {e}", transient=transient_status(e.status)) from e
        except Unreachable as e:
            raise TierError(self.name, f"{what}: {e}", transient=True) from e
        except Exception as e:
            import google.auth.exceptions

            if isinstance(e, google.auth.exceptions.GoogleAuthError):
                raise self._error(e, what) from e
            if self._client is None:  # the client library was never used: not one of its errors
                raise
            import google.api_core.exceptions as api
            import requests.exceptions

            if isinstance(e, (api.GoogleAPICallError, requests.exceptions.RequestException)):
                raise self._error(e, what) from e
            raise

    def _read_with(self, what: str, light: Callable[[GcsReader], T], full: Callable[[], T]) -> T:
        """A read through gcsread.py unless the client library is needed."""
        with self._guard(what):
            self._resolve()
            reader = self._reader
            return light(reader) if reader is not None else full()

    # -- CAS ---------------------------------------------------------------------------------------------------

    def has_blob(self, digest: Digest) -> bool:
        key = self._key("cas", digest)
        return self._read_with(f"stat {key}", lambda r: r.size(key) == digest.size_bytes,
                               lambda: self._size(key) == digest.size_bytes)

    def _size(self, key: str) -> int | None:
        found = self._connect().bucket(self.bucket).get_blob(key, timeout=self.timeout, retry=None)
        return None if found is None else int(found.size)

    def read_blob(self, digest: Digest) -> bytes | None:
        return self._read(self._key("cas", digest))

    def fetch_blob(self, digest: Digest, dest: Path) -> bool:
        key = self._key("cas", digest)
        return self._read_with(f"GET {key}", lambda r: r.fetch(key, dest), lambda: self._fetch(key, dest))

    def _fetch(self, key: str, dest: Path) -> bool:
        blob = self._blob(key)
        import google.api_core.exceptions as api

        try:
            with open(dest, "wb") as f:
                blob.download_to_file(f, timeout=self.timeout, retry=None, checksum=None)
        except api.NotFound:
            with suppress(FileNotFoundError):
                os.unlink(dest)
            return False
        return True

    def write_blob(self, digest: Digest, data: bytes) -> None:
        key = self._key("cas", digest)
        with self._guard(f"PUT {key}"):
            blob = self._blob(key)
            import google.api_core.exceptions as api

            with suppress(api.PreconditionFailed):  # 412: already there
                blob.upload_from_string(data, if_generation_match=0, timeout=self.timeout, retry=None, checksum=None)

    def upload_blob(self, digest: Digest, path: Path) -> None:
        key = self._key("cas", digest)
        with self._guard(f"upload {key}"):
            blob = self._blob(key, chunk_size=self.chunk_size)
            import google.api_core.exceptions as api

            # A resumable upload carries the precondition too, but not every GCS implementation enforces it there
            # (fake-gcs-server does not): ask first, so a big blob is sent once and never replaced.
            if digest.size_bytes > MULTIPART_LIMIT and self._size(key) == digest.size_bytes:
                return
            with suppress(api.PreconditionFailed):
                blob.upload_from_filename(str(path), if_generation_match=0, timeout=self.timeout, retry=None,
                                          checksum=None)

    # -- action cache ------------------------------------------------------------------------------------------

    def read_action(self, key: Digest) -> bytes | None:
        return self._read(self._key("ac", key))

    def write_action(self, key: Digest, result: bytes) -> None:
        object_key = self._key("ac", key)
        with self._guard(f"PUT {object_key}"):
            self._blob(object_key).upload_from_string(result, timeout=self.timeout, retry=None, checksum=None)

    def _read(self, key: str) -> bytes | None:
        return self._read_with(f"GET {key}", lambda r: r.read(key), lambda: self._read_full(key))

    def _read_full(self, key: str) -> bytes | None:
        blob = self._blob(key)
        import google.api_core.exceptions as api

        try:
            return bytes(blob.download_as_bytes(timeout=self.timeout, retry=None, checksum=None))
        except api.NotFound:
            return None

    # -- management --------------------------------------------------------------------------------------------

    def _list(self, prefix: str, **options: Any) -> Iterator[Any]:
        client = self._connect()
        return iter(client.list_blobs(self.bucket, prefix=prefix, timeout=self.timeout, retry=None, **options))

    def check(self) -> None:
        # Listing (one object at most) needs only the object permissions the tier needs anyway, where reading the
        # bucket's metadata would need storage.buckets.get.
        what = f"bucket {self.bucket!r}"
        if not self._read_with(f"list {what}", lambda r: r.list_one(self.prefix), self._list_one):
            raise TierError(self.name, f"{what} does not exist", transient=False)

    def _list_one(self) -> bool:
        import google.api_core.exceptions as api

        try:
            list(self._list(self.prefix, max_results=1))
        except api.NotFound:
            return False
        return True

    def clear(self) -> None:
        """Delete every CAS and AC object under this tier's prefix (gobuildcache `clear-remote`)."""
        base = f"{self.prefix}/" if self.prefix else ""
        with self._guard(f"clear {self.name}"):
            self._connect()
            import google.api_core.exceptions as api

            for kind in ("cas/", "ac/"):
                for blob in self._list(base + kind):
                    with suppress(api.NotFound):
                        blob.delete(timeout=self.timeout, retry=None)

    def close(self) -> None:
        super().close()
        if self._reader is not None:
            self._reader.close()
        if self._client is not None:
            self._client.close()
