"""The S3 tier: `s3://bucket/prefix?endpoint=URL&region=R` (AWS, Ceph radosgw, MinIO, moto...).

Objects are `<prefix>/cas/<sha256>` and `<prefix>/ac/<sha256>`, so several caches can share a bucket without
seeing each other's entries. Credentials come from the standard AWS chain (environment, profile, instance role);
`AWS_ENDPOINT_URL` works as with any AWS SDK. CAS objects are written once (`If-None-Match: *`): a blob that is
already there is a success and costs no overwrite. Action-cache entries are overwritten, as REAPI's
UpdateActionResult does, so a stale entry can be replaced by a fresh result.

Reads (GET, HEAD) go through cache/s3read.py when it can settle the credentials, region and endpoint without
botocore: a build that only restores (a CI machine with an empty local cache) then never imports botocore (~0.2 s
of CPU). Writes, listing, multipart uploads, and every request when s3read.py cannot settle that, use a botocore
client (not boto3: ~50 ms less; its resource layer is never used), created on first use. Multipart uploads go
through s3transfer (boto3's own transfer manager), imported only for a blob that needs one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from gaffer.cache.base import LOOKUP_WORKERS, CacheTier, TierError, transient_status
from gaffer.cache.httpconn import Unreachable
from gaffer.cache.s3read import Redirected, S3Error, S3Reader
from gaffer.cache.urls import bad_url, checked_url, redact
from gaffer.digest import Digest, digest_file

MULTIPART_THRESHOLD = 64 * 1024 * 1024  # bigger uploads go in parts, several at once
MULTIPART_CHUNK = 16 * 1024 * 1024
_CHUNK = 1024 * 1024
_DENIED = frozenset({
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "ExpiredToken", "TokenRefreshRequired",
})
_TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "Throttling", "ThrottlingException", "InternalError"})
# Answers of a store that does not implement conditional PUT: retry plainly and stop sending the header.
_NO_CONDITIONAL_PUT = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest"})
T = TypeVar("T")

_loader_lock = threading.Lock()
_loader: Any = None


def _new_session() -> Any:
    """A fresh botocore session (a shared one is not thread-safe, and each reads the credential chain anew) that
    shares the service-model loader: parsing botocore's JSON models is most of a client's creation time."""
    import botocore.session

    global _loader
    core = botocore.session.get_session()
    with _loader_lock:
        if _loader is None:
            _loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _loader)
    return core


class S3Tier(CacheTier):
    """CAS + AC in one bucket under one key prefix. Thread-safe: the reader and botocore clients are."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        timeout: float = 30.0,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        name: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.name = name or f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.multipart_threshold = multipart_threshold
        self._conditional_put = True
        self._endpoint, self._region, self._timeout = endpoint, region, timeout
        custom_endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self._path_style = bool(custom_endpoint)
        self._client_lock = threading.Lock()
        self._client: Any = None
        import botocore  # noqa: F401 - installed? writes need it: fail at open (one line), not mid-build
        #: None: botocore for everything (a configuration s3read.py leaves to it, or a bucket in another region)
        self._reader = S3Reader.open(bucket, custom_endpoint, region, timeout)
        if self._reader is None:
            self._open_client()

    @property
    def reads_without_botocore(self) -> bool:
        return self._reader is not None

    def _open_client(self) -> None:
        """Create the botocore client now. An invalid endpoint or region fails here as a bad URL (botocore's
        ValueError); credentials botocore cannot use (a key id without its secret, an AWS_PROFILE no config file
        has) as a lasting TierError: wrong credentials, one warning."""
        import botocore.exceptions

        try:
            self._s3()
        except ValueError:
            raise
        except botocore.exceptions.BotoCoreError as e:
            raise self._error(e, "credentials") from None

    def _s3(self) -> Any:
        """The botocore client, created on first use."""
        with self._client_lock:
            if self._client is None:
                from botocore.config import Config

                config = Config(
                    connect_timeout=self._timeout,
                    read_timeout=self._timeout,
                    retries={"max_attempts": 2, "mode": "standard"},  # the tiered cache retries too
                    max_pool_connections=LOOKUP_WORKERS,
                    # path-style for self-hosted stores: their DNS rarely resolves bucket.host names
                    s3={"addressing_style": "path" if self._path_style else "auto"},
                    # flexible checksums (CRC32 headers) are not understood by Ceph or older MinIO; digests verify
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                self._client = _new_session().create_client("s3", endpoint_url=self._endpoint,
                                                            region_name=self._region, config=config)
            return self._client

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 30.0, **options: Any) -> S3Tier:
        """Open `s3://bucket[/prefix][?endpoint=URL][&region=R]`; `options` go to the constructor."""
        parts, params = checked_url(url)
        endpoint = params.get("endpoint")
        try:
            return cls(parts.netloc, parts.path, endpoint=endpoint, region=params.get("region"), timeout=timeout,
                       name=redact(url), **options)
        except ValueError as e:  # botocore: invalid endpoint or region
            raise bad_url(url, str(e)) from None

    # -- keys and errors ---------------------------------------------------------------------------------------

    def _key(self, kind: str, digest: Digest) -> str:
        return f"{self.prefix}/{kind}/{digest.hash}" if self.prefix else f"{kind}/{digest.hash}"

    def _answer(self, code: str, status: int, what: str) -> TierError:
        """One TierError for an S3 error answer, from either client: store-side 5xx and throttling are transient."""
        if code == "NoSuchBucket":
            return TierError(self.name, f"bucket {self.bucket!r} does not exist", transient=False)
        if status == 403 or code in _DENIED:
            return TierError(self.name, f"access to bucket {self.bucket!r} denied ({code or status}): check the "
                             "AWS credentials and the bucket policy", transient=False)
        transient = transient_status(status) or code in _TRANSIENT_CODES
        answer = f"HTTP {status}" if code in ("", str(status)) else f"{code} (HTTP {status})"
        return TierError(self.name, f"{what}: {answer}", transient=transient)

    def _error(self, e: Exception, what: str) -> TierError:
        """One TierError for any botocore failure: network trouble is transient."""
        import botocore.exceptions

        if isinstance(e, botocore.exceptions.ClientError):
            return self._answer(*self._code(e), what)
        if isinstance(e, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
            return TierError(self.name, "no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                             "AWS_PROFILE)", transient=False)
        if isinstance(e, (botocore.exceptions.HTTPClientError,  # read timeouts, connections closed mid-response
                          botocore.exceptions.ConnectionError,  # refused, connect timeouts, DNS
                          botocore.exceptions.IncompleteReadError)):
            # their text repeats the whole endpoint URL: the type says enough
            return TierError(self.name, f"{what}: {type(e).__name__}", transient=True)
        return TierError(self.name, f"{what}: {e}", transient=False)

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except S3Error as e:
            raise self._answer(e.code, e.status, what) from e
        except Unreachable as e:
            raise TierError(self.name, f"{what}: {e}", transient=True) from e
        except Exception as e:
            if self._client is None:  # botocore was never used: not one of its errors
                raise
            import botocore.exceptions

            if isinstance(e, (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)):
                raise self._error(e, what) from e
            raise

    @staticmethod
    def _code(e: Any) -> tuple[str, int]:
        """The S3 error code and HTTP status of a botocore ClientError."""
        return (str(e.response.get("Error", {}).get("Code", "")),
                int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)))

    def _read(self, what: str, light: Callable[[S3Reader], T], full: Callable[[], T]) -> T:
        """A read through s3read.py when it can, else (or once the bucket turned out to be in another region)
        through botocore, with every failure turned into a TierError."""
        with self._guard(what):
            reader = self._reader
            if reader is not None:
                try:
                    return light(reader)
                except Redirected:
                    self._reader = None
                    reader.close()
            return full()

    def _get(self, key: str) -> Any:
        """The GetObject response (body not read yet), or None if there is no such key."""
        import botocore.exceptions

        try:
            return self._s3().get_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            code, status = self._code(e)
            if status == 404 and code != "NoSuchBucket":
                return None
            raise

    def _exists(self, key: str, size: int) -> bool:
        import botocore.exceptions

        try:
            head = self._s3().head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            if self._code(e)[1] == 404:
                return False
            raise
        return int(head.get("ContentLength", -1)) == size

    # -- CAS ---------------------------------------------------------------------------------------------------

    def has_blob(self, digest: Digest) -> bool:
        key = self._key("cas", digest)
        return self._read(f"HEAD {key}", lambda r: r.head(key) == digest.size_bytes,
                          lambda: self._exists(key, digest.size_bytes))

    def read_blob(self, digest: Digest) -> bytes | None:
        return self._read_object(self._key("cas", digest))

    def fetch_blob(self, digest: Digest, dest: Path) -> bool:
        key = self._key("cas", digest)
        return self._read(f"GET {key}", lambda r: r.fetch(key, dest), lambda: self._fetch(key, dest))

    def fetch_hashed(self, digest: Digest, dest: Path) -> Digest | None:
        key = self._key("cas", digest)
        return self._read(f"GET {key}", lambda r: r.fetch_hashed(key, dest),
                          lambda: digest_file(dest) if self._fetch(key, dest) else None)

    def _fetch(self, key: str, dest: Path) -> bool:
        # One streamed GET rather than download_fileobj: its ranged parts send If-Match with the ETag, which
        # Ceph rejects, and a content-addressed object cannot change under us anyway.
        response = self._get(key)
        if response is None:
            return False
        body = response["Body"]
        try:
            with open(dest, "wb") as f:
                f.writelines(body.iter_chunks(_CHUNK))
        finally:
            body.close()
        return True

    def write_blob(self, digest: Digest, data: bytes) -> None:
        self._put_once(self._key("cas", digest), data)

    def upload_blob(self, digest: Digest, path: Path) -> None:
        key = self._key("cas", digest)
        if os.path.getsize(path) < self.multipart_threshold:
            with open(path, "rb") as f:
                self._put_once(key, f)
            return
        with self._guard(f"upload {key}"):
            client = self._s3()
            from s3transfer.manager import TransferConfig, TransferManager

            transfer = TransferConfig(multipart_threshold=self.multipart_threshold,
                                      multipart_chunksize=MULTIPART_CHUNK, max_request_concurrency=4)
            # Multipart uploads cannot be conditional everywhere: ask first, so a big blob is sent only once.
            if self._exists(key, digest.size_bytes):
                return
            with TransferManager(client, transfer) as manager:
                manager.upload(str(path), self.bucket, key).result()

    def _put_once(self, key: str, body: bytes | IO[bytes]) -> None:
        """PUT unless the object exists; a store without conditional PUT just gets a plain (idempotent) PUT."""
        with self._guard(f"PUT {key}"):
            client = self._s3()
            import botocore.exceptions

            while True:
                conditional = {"IfNoneMatch": "*"} if self._conditional_put else {}
                try:
                    client.put_object(Bucket=self.bucket, Key=key, Body=body, **conditional)
                    return
                except botocore.exceptions.ClientError as e:
                    code, status = self._code(e)
                    # 412: already there; 409 ConditionalRequestConflict: a concurrent PUT of the same content
                    if conditional and (status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict")):
                        return
                    if not conditional or not (status == 501 or code in _NO_CONDITIONAL_PUT):
                        raise
                    self._conditional_put = False
                    if not isinstance(body, bytes):
                        body.seek(0)

    # -- action cache ------------------------------------------------------------------------------------------

    def read_action(self, key: Digest) -> bytes | None:
        return self._read_object(self._key("ac", key))

    def write_action(self, key: Digest, result: bytes) -> None:
        object_key = self._key("ac", key)
        with self._guard(f"PUT {object_key}"):
            self._s3().put_object(Bucket=self.bucket, Key=object_key, Body=result)

    def _read_object(self, key: str) -> bytes | None:
        def full() -> bytes | None:
            response = self._get(key)
            return None if response is None else bytes(response["Body"].read())

        return self._read(f"GET {key}", lambda r: r.read(key), full)

    # -- management --------------------------------------------------------------------------------------------

    def check(self) -> None:
        what = f"HEAD bucket {self.bucket!r}"
        if not self._read(what, lambda r: r.head_bucket(), lambda: self._bucket_exists(what)):
            raise TierError(self.name, f"bucket {self.bucket!r} does not exist", transient=False)

    def _bucket_exists(self, what: str) -> bool:
        import botocore.exceptions

        try:
            self._s3().head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as e:
            if self._code(e)[1] == 404:
                return False
            raise self._error(e, what) from e
        return True

    def clear(self) -> None:
        """Delete every CAS and AC object under this tier's prefix (gobuildcache `clear-remote`)."""
        base = f"{self.prefix}/" if self.prefix else ""
        with self._guard(f"clear {self.name}"), ThreadPoolExecutor(LOOKUP_WORKERS) as pool:
            client = self._s3()
            paginator = client.get_paginator("list_objects_v2")
            for kind in ("cas/", "ac/"):
                for page in paginator.paginate(Bucket=self.bucket, Prefix=base + kind):
                    keys = [obj["Key"] for obj in page.get("Contents", [])]
                    # one DELETE per key: DeleteObjects needs a checksum header that not every store accepts
                    list(pool.map(lambda k: client.delete_object(Bucket=self.bucket, Key=k), keys))

    def close(self) -> None:
        super().close()
        if self._reader is not None:
            self._reader.close()
        with self._client_lock:
            if self._client is not None:
                self._client.close()
