"""The Azure Blob Storage tier: `azblob://container/prefix?account=NAME[&endpoint=URL]`.

Blobs are `<prefix>/cas/<sha256>` and `<prefix>/ac/<sha256>` in one container. The endpoint is the account's
(`https://NAME.blob.core.windows.net`) unless `endpoint=` or a connection string's BlobEndpoint names another
(Azurite, a private endpoint). Credentials, the first found: `AZURE_STORAGE_CONNECTION_STRING` (its AccountKey
or SharedAccessSignature), `AZURE_STORAGE_KEY`, `AZURE_STORAGE_SAS_TOKEN`, else azure-identity's
`DefaultAzureCredential` (environment, workload and managed identity, the Azure CLI's login) when it is installed.
CAS blobs are written once (`If-None-Match: *`: a blob that is already there is a success and costs no
overwrite); action-cache entries are overwritten. Big blobs go up in blocks and come down in ranged pieces, so
memory stays bounded whatever the blob's size.

Reads (GET, HEAD, the start-up listing) go through cache/azread.py when the credentials are an account key or a
SAS token: one streamed GET per blob and no client library to import (~0.35 s of CPU), which a build that only
restores never needs. Writes, `clear`, and every request under a token credential use azure-storage-blob, imported
on first use.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from gaffer.cache.azread import BlobError, BlobReader
from gaffer.cache.base import LOOKUP_WORKERS, CacheTier, TierError, transient_status
from gaffer.cache.httpconn import Unreachable
from gaffer.cache.urls import checked_url, redact
from gaffer.digest import Digest

SINGLE_PUT_LIMIT = 8 * 1024 * 1024  # bigger blobs go up in blocks of BLOCK bytes, then one commit
BLOCK = 4 * 1024 * 1024
# Downloads come in ranged pieces of this size. Small on purpose: the client reads a piece with `list(stream)`,
# which takes the stream's length as a size hint (one pointer per byte: eight times the piece), then joins it.
GET_PIECE = 512 * 1024
READ_SIZE = 256 * 1024  # socket reads: azure-core's default of 4 KiB costs a Python call per 4 KiB
T = TypeVar("T")
_NO_CREDENTIALS = ("no Azure credentials (set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_KEY, or sign in "
                   "for DefaultAzureCredential)")


def credential(account: str, env: Mapping[str, str] = os.environ) -> tuple[Any, str | None]:
    """What signs the requests (an account key, a SAS token or a token credential) and the blob endpoint a
    connection string names, if any. Raises ValueError, with the reason, when none can be had."""
    connection = env.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection:
        fields = dict(field.partition("=")[::2] for field in connection.split(";") if field)
        named = fields.get("AccountName")
        if named and named != account:
            raise ValueError(f"AZURE_STORAGE_CONNECTION_STRING is for the account {named!r}, not {account!r}")
        if fields.get("AccountKey"):
            return {"account_name": account, "account_key": fields["AccountKey"]}, fields.get("BlobEndpoint")
        if fields.get("SharedAccessSignature"):
            return fields["SharedAccessSignature"], fields.get("BlobEndpoint")
        raise ValueError("AZURE_STORAGE_CONNECTION_STRING has neither AccountKey nor SharedAccessSignature")
    if env.get("AZURE_STORAGE_KEY"):
        return {"account_name": account, "account_key": env["AZURE_STORAGE_KEY"]}, None
    if env.get("AZURE_STORAGE_SAS_TOKEN"):
        return env["AZURE_STORAGE_SAS_TOKEN"], None
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise ValueError(_NO_CREDENTIALS.replace("sign in for", "install azure-identity for")) from None
    return DefaultAzureCredential(), None


class AzureBlobTier(CacheTier):
    """CAS + AC in one container under one name prefix. Thread-safe: one client over a pooled HTTP session."""

    def __init__(self, container: str, prefix: str = "", *, account: str, endpoint: str | None = None,
                 timeout: float = 30.0, single_put_limit: int = SINGLE_PUT_LIMIT, name: str | None = None) -> None:
        self.container = container
        self.prefix = prefix.strip("/")
        self.account = account
        self.endpoint = endpoint
        self.name = name or f"azblob://{container}/{self.prefix}".rstrip("/")
        self.timeout = timeout
        self.single_put_limit = single_put_limit
        self._lock = threading.Lock()
        self._client: Any = None  # the ContainerClient, made on first use
        self._reader: BlobReader | None = None
        self._credential: tuple[Any, str] | None = None
        # installed? writes need it: fail at open (one line), not mid-build; finding it imports nothing of it
        if importlib.util.find_spec("azure.storage.blob") is None:
            raise ModuleNotFoundError("No module named 'azure.storage.blob'", name="azure.storage.blob")

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 30.0, **options: Any) -> AzureBlobTier:
        """Open `azblob://container[/prefix]?account=NAME[&endpoint=URL]`; `options` go to the constructor."""
        parts, params = checked_url(url)
        return cls(parts.netloc, parts.path, account=params["account"], endpoint=params.get("endpoint"),
                   timeout=timeout, name=redact(url), **options)

    def _resolve(self) -> tuple[Any, str]:
        """The credential and the endpoint, found once, so missing credentials are a TierError like any other."""
        with self._lock:
            if self._credential is None:
                try:
                    cred, named_endpoint = credential(self.account)
                except ValueError as e:
                    raise TierError(self.name, str(e), transient=False) from None
                endpoint = self.endpoint or named_endpoint or f"https://{self.account}.blob.core.windows.net"
                self._credential = cred, endpoint
                self._reader = BlobReader.open(endpoint, self.account, self.container, cred, self.timeout)
            return self._credential

    def _connect(self) -> Any:
        """The ContainerClient, made on first use."""
        cred, endpoint = self._resolve()
        with self._lock:
            if self._client is None:
                import requests
                import requests.adapters
                from azure.core.pipeline.transport import RequestsTransport
                from azure.storage.blob import ContainerClient

                session = requests.Session()
                # a connection per parallel lookup, rather than requests' 10 (and a warning for each one dropped)
                adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=LOOKUP_WORKERS)
                session.mount("https://", adapter)
                session.mount("http://", adapter)
                transport = RequestsTransport(session=session, session_owner=True, connection_timeout=self.timeout,
                                              read_timeout=self.timeout, connection_data_block_size=READ_SIZE)
                self._client = ContainerClient(
                    endpoint, self.container, credential=cred, transport=transport,
                    retry_total=0,  # the tiered cache retries, with its own backoff
                    max_single_put_size=self.single_put_limit, max_block_size=BLOCK,
                    max_single_get_size=GET_PIECE, max_chunk_get_size=GET_PIECE)
            return self._client

    # -- keys and errors ---------------------------------------------------------------------------------------

    def _key(self, kind: str, digest: Digest) -> str:
        return f"{self.prefix}/{kind}/{digest.hash}" if self.prefix else f"{kind}/{digest.hash}"

    def _answer(self, code: str | None, status: int | None, what: str, denied: bool = False) -> TierError:
        """The TierError for an error answer from either client: 5xx and throttling are transient."""
        if code == "ContainerNotFound":
            return TierError(self.name, f"container {self.container!r} does not exist", transient=False)
        if status == 403 or denied:
            return TierError(self.name, f"access to container {self.container!r} denied ({code or status}): check "
                             "the credentials and the container's roles", transient=False)
        return TierError(self.name, f"{what}: {code or 'HTTP'} (HTTP {status})",
                         transient=transient_status(status or 0))

    def _error(self, e: Exception, what: str) -> TierError:
        """One TierError for any client library failure: 5xx, throttling and network trouble are transient."""
        import azure.core.exceptions as az

        status = getattr(e, "status_code", None)
        code = getattr(getattr(e, "error_code", None), "value", getattr(e, "error_code", None))  # an enum or a str
        if isinstance(e, az.ClientAuthenticationError) and status is None:  # no token: DefaultAzureCredential
            return TierError(self.name, f"{_NO_CREDENTIALS}: {str(e).splitlines()[0]}", transient=False)
        denied = isinstance(e, az.ClientAuthenticationError)
        if denied or code == "ContainerNotFound" or isinstance(e, az.HttpResponseError) and status:
            return self._answer(code, status, what, denied)
        if isinstance(e, (az.ServiceRequestError, az.ServiceResponseError)):  # refused, reset, timeouts: their
            return TierError(self.name, f"{what}: {type(e).__name__}", transient=True)  # text repeats the URL
        return TierError(self.name, f"{what}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                         transient=False)

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except BlobError as e:
            raise self._answer(e.code, e.status, what) from e
        except Unreachable as e:
            raise TierError(self.name, f"{what}: {e}", transient=True) from e
        except Exception as e:
            if self._client is None and not isinstance(e, ValueError):  # the client library was never used
                raise
            import azure.core.exceptions as az

            if isinstance(e, (az.AzureError, ValueError)):  # ValueError: an account key that is not base64
                raise self._error(e, what) from e
            raise

    def _read_with(self, what: str, light: Callable[[BlobReader], T], full: Callable[[], T]) -> T:
        """A read through azread.py when the credentials allow it, else through the client library."""
        with self._guard(what):
            self._resolve()
            reader = self._reader
            return light(reader) if reader is not None else full()

    @staticmethod
    def _absent(e: Any) -> bool:
        """A missing blob (a miss), not a missing container (an error)."""
        return bool(getattr(e, "error_code", None) != "ContainerNotFound")

    # -- CAS ---------------------------------------------------------------------------------------------------

    def has_blob(self, digest: Digest) -> bool:
        key = self._key("cas", digest)
        return self._read_with(f"HEAD {key}", lambda r: r.head(key) == digest.size_bytes,
                               lambda: self._size(key) == digest.size_bytes)

    def _size(self, key: str) -> int | None:
        import azure.core.exceptions as az

        try:
            return int(self._connect().get_blob_client(key).get_blob_properties().size)
        except az.ResourceNotFoundError as e:
            if self._absent(e):
                return None
            raise

    def read_blob(self, digest: Digest) -> bytes | None:
        return self._read(self._key("cas", digest))

    def fetch_blob(self, digest: Digest, dest: Path) -> bool:
        key = self._key("cas", digest)
        return self._read_with(f"GET {key}", lambda r: r.fetch(key, dest), lambda: self._fetch(key, dest))

    def _fetch(self, key: str, dest: Path) -> bool:
        import azure.core.exceptions as az

        try:
            download = self._connect().download_blob(key)
        except az.ResourceNotFoundError as e:
            if self._absent(e):
                return False
            raise
        with open(dest, "wb") as f:
            download.readinto(f)
        return True

    def write_blob(self, digest: Digest, data: bytes) -> None:
        self._put_once(self._key("cas", digest), data, len(data))

    def upload_blob(self, digest: Digest, path: Path) -> None:
        key = self._key("cas", digest)
        # Blocks are staged unconditionally and only the commit carries If-None-Match: ask first, so a big blob
        # that is already there is not sent again.
        if digest.size_bytes > self.single_put_limit and self.has_blob(digest):
            return
        with open(path, "rb") as f:
            self._put_once(key, f, os.fstat(f.fileno()).st_size)

    def _put_once(self, key: str, data: Any, size: int) -> None:
        """Store `key` unless it exists (`If-None-Match: *`): one that is already there is a success."""
        with self._guard(f"PUT {key}"):
            client = self._connect()
            import azure.core.exceptions as az

            with suppress(az.ResourceExistsError, az.ResourceModifiedError):
                client.upload_blob(key, data, length=size, overwrite=False)

    # -- action cache ------------------------------------------------------------------------------------------

    def read_action(self, key: Digest) -> bytes | None:
        return self._read(self._key("ac", key))

    def write_action(self, key: Digest, result: bytes) -> None:
        name = self._key("ac", key)
        with self._guard(f"PUT {name}"):
            self._connect().upload_blob(name, result, length=len(result), overwrite=True)

    def _read(self, key: str) -> bytes | None:
        return self._read_with(f"GET {key}", lambda r: r.read(key), lambda: self._read_full(key))

    def _read_full(self, key: str) -> bytes | None:
        import azure.core.exceptions as az

        try:
            return bytes(self._connect().download_blob(key).readall())
        except az.ResourceNotFoundError as e:
            if self._absent(e):
                return None
            raise

    # -- management --------------------------------------------------------------------------------------------

    def check(self) -> None:
        # Listing (one blob at most) needs only the data permissions the tier needs anyway, where reading the
        # container's properties may need more.
        def full() -> None:
            pages = self._connect().list_blobs(name_starts_with=self.prefix or None, results_per_page=1).by_page()
            next(pages, None)

        self._read_with(f"list container {self.container!r}", lambda r: r.list_one(self.prefix or None), full)

    def clear(self) -> None:
        """Delete every CAS and AC blob under this tier's prefix (gobuildcache `clear-remote`)."""
        base = f"{self.prefix}/" if self.prefix else ""
        client = self._connect()
        import azure.core.exceptions as az

        with self._guard(f"clear {self.name}"):
            for kind in ("cas/", "ac/"):
                for blob in client.list_blobs(name_starts_with=base + kind):
                    with suppress(az.ResourceNotFoundError):
                        client.delete_blob(blob.name)

    def close(self) -> None:
        super().close()
        if self._reader is not None:
            self._reader.close()
        if self._client is not None:
            self._client.close()
