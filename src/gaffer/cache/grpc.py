"""The REAPI gRPC tier: `grpc://host:port[/instance]` or `grpcs://...` (gaffer serve, bazel-remote, BuildGrid...).

Small blobs travel in batches (FindMissingBlobs, BatchUpdateBlobs, BatchReadBlobs) bounded by the batch limit the
server announces in its Capabilities; larger ones stream through ByteStream in fixed-size chunks so memory stays
flat whatever the blob size. Action results use the ActionCache service.

Only `cache/urls.py` imports this module, and only for a grpc(s):// URL, so grpc never loads on the CLI hot path.
"""

from __future__ import annotations

import copy
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

# gRPC's C core logs to stderr on its own (a failed TLS handshake, an unusable CA file: lines of `E1201 12:00:00
# ssl_transport_security.cc...`) what the one warning naming the tier already says. Read once, at import.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
import grpc
from google.rpc import status_pb2

from gaffer.cache.base import CacheTier, TierError, write_chunks, write_hashed
from gaffer.cache.urls import bad_url, checked_url, read_token, redact
from gaffer.digest import Digest
from gaffer.protos import bytestream_pb2, bytestream_pb2_grpc, wire
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos import remote_execution_pb2_grpc as re_grpc
from gaffer.protos.digests import from_proto, to_proto

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_BATCH_LIMIT = 4 * 1024 * 1024  # what servers commonly accept when they announce no limit
BATCH_ENTRY_OVERHEAD = 128  # per-blob bytes a batch message adds around the data (digest, tags, status)
FIND_MISSING_CHUNK = 16384  # digests per FindMissingBlobs request: ~1.3 MB, well under message limits
STREAM_CHUNK = 1024 * 1024  # ByteStream message size: few messages, far below the usual 4 MiB cap
MIN_STREAM_RATE = 1024 * 1024  # bytes/s a stream may fall to before its deadline (timeout + size/rate) hits
# Worth a retry. DATA_LOSS too: a server that found a blob corrupt evicts it, so the retry is a clean miss.
TRANSIENT = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED, grpc.StatusCode.DATA_LOSS,
})
_CODES = {code.value[0]: code for code in grpc.StatusCode}
T = TypeVar("T")


def _read_ca(url: str, ca_file: Path) -> bytes:
    try:
        return ca_file.read_bytes()
    except OSError as e:
        raise bad_url(url, f"cannot read ca file {ca_file}: {e.strerror}") from None


class GrpcTier(CacheTier):
    """CAS + AC on a REAPI server, one instance name. Thread-safe: gRPC channels and stubs are."""

    def __init__(
        self,
        target: str,
        instance: str = "",
        *,
        tls: bool = False,
        ca_file: Path | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        name: str | None = None,
    ) -> None:
        self.name = name or f"{'grpcs' if tls else 'grpc'}://{target}/{instance}".rstrip("/")
        self.instance = instance
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str | bytes], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
            ("grpc.primary_user_agent", "gaffer"),
        ]
        if tls:
            roots = ca_file.read_bytes() if ca_file else None
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots), options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._cas = re_grpc.ContentAddressableStorageStub(self._channel)
        self._ac = re_grpc.ActionCacheStub(self._channel)
        self._capabilities = re_grpc.CapabilitiesStub(self._channel)
        self._bytestream = bytestream_pb2_grpc.ByteStreamStub(self._channel)
        # The two reads blobs arrive by, decoded by hand: each blob's bytes a view of the reply, where protobuf's
        # parser and its field access copied them twice (a cold `go build std` reads 160 MiB)
        self._read_chunks = self._channel.unary_stream(
            "/google.bytestream.ByteStream/Read", request_serializer=bytestream_pb2.ReadRequest.SerializeToString,
            response_deserializer=wire.read_stream_chunk)
        self._batch_read = self._channel.unary_unary(
            "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs",
            request_serializer=re_pb2.BatchReadBlobsRequest.SerializeToString,
            response_deserializer=wire.read_batch_read_blobs)
        self._batch_limit: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> GrpcTier:
        """Open `grpc[s]://host:port[/instance][?token_file=PATH][&ca=PATH]`; `token` overrides token_file."""
        parts, params = checked_url(url)
        tls = parts.scheme == "grpcs"
        host, port = parts.hostname or "", parts.port or 443
        if token is None and "token_file" in params:
            token = read_token(Path(params["token_file"]), f"cache URL {redact(url)}")
        ca_file = Path(params["ca"]) if "ca" in params else None
        if ca_file is not None and not ca_file.is_file():
            raise bad_url(url, f"ca file {ca_file} does not exist")
        if ca_file is not None and b"-----BEGIN CERTIFICATE-----" not in _read_ca(url, ca_file):
            raise bad_url(url, f"ca file {ca_file} holds no PEM certificate")
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        instance = parts.path.strip("/")
        name = f"{parts.scheme}://{target}/{instance}".rstrip("/")
        return cls(target, instance, tls=tls, ca_file=ca_file, token=token, timeout=timeout, name=name)

    @property
    def channel(self) -> grpc.Channel:
        """The channel, for the other REAPI services on the same server (remote execution's Execution)."""
        return self._channel

    @property
    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """What every call sends: the credentials, and the headers of `with_headers`."""
        return self._metadata

    def with_headers(self, headers: Sequence[tuple[str, str | bytes]]) -> GrpcTier:
        """This tier sending `headers` too on every call (REAPI's RequestMetadata, per task): the same channel
        and stubs, so a view costs nothing and closing it is closing this tier."""
        view = copy.copy(self)
        view._metadata = (*self._metadata, *headers)
        return view

    # -- CacheTier ---------------------------------------------------------------------------------------------

    def check(self) -> None:
        """Ask the server's Capabilities: it must serve this instance and SHA-256; learn its batch limit."""
        caps = self._call("GetCapabilities", self._capabilities.GetCapabilities,
                          re_pb2.GetCapabilitiesRequest(instance_name=self.instance))
        cache = caps.cache_capabilities
        if cache.digest_functions and re_pb2.DigestFunction.SHA256 not in cache.digest_functions:
            raise TierError(self.name, "the server does not offer SHA-256 digests", transient=False)
        with self._lock:
            self._batch_limit = cache.max_batch_total_size_bytes or DEFAULT_BATCH_LIMIT

    def find_missing(self, digests: Sequence[Digest]) -> list[Digest]:
        missing: list[Digest] = []
        for start in range(0, len(digests), FIND_MISSING_CHUNK):
            request = re_pb2.FindMissingBlobsRequest(
                instance_name=self.instance, blob_digests=[to_proto(d) for d in digests[start:start + FIND_MISSING_CHUNK]]
            )
            response = self._call("FindMissingBlobs", self._cas.FindMissingBlobs, request)
            missing.extend(from_proto(d) for d in response.missing_blob_digests)
        return missing

    def read_blob(self, digest: Digest) -> bytes | None:
        if self.batchable(digest.size_bytes):
            data = self.read_blobs([digest]).get(digest)
            return None if data is None else bytes(data)
        chunks = self._read_stream(digest)
        return None if chunks is None else b"".join(chunks)

    def fetch_blob(self, digest: Digest, dest: Path) -> bool:
        if self.batchable(digest.size_bytes):
            return super().fetch_blob(digest, dest)
        return write_chunks(dest, self._read_stream(digest))

    def fetch_hashed(self, digest: Digest, dest: Path) -> Digest | None:
        if self.batchable(digest.size_bytes):  # a batch of one: the blob hashed and written from the reply
            data = self.read_blobs([digest]).get(digest)
            return write_hashed(dest, None if data is None else [data])
        return write_hashed(dest, self._read_stream(digest))

    def write_blob(self, digest: Digest, data: bytes) -> None:
        self.write_blobs([(digest, data)])

    def upload_blob(self, digest: Digest, path: Path) -> None:
        if self.batchable(digest.size_bytes):
            super().upload_blob(digest, path)
            return
        with open(path, "rb") as f:
            self._write_stream(digest, iter(lambda: f.read(STREAM_CHUNK), b""))

    def read_action(self, key: Digest) -> bytes | None:
        request = re_pb2.GetActionResultRequest(instance_name=self.instance, action_digest=to_proto(key))
        try:
            result: re_pb2.ActionResult = self._ac.GetActionResult(request, timeout=self.timeout,
                                                                   metadata=self._metadata)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._error("GetActionResult", e) from e
        return result.SerializeToString(deterministic=True)

    def write_action(self, key: Digest, result: bytes) -> None:
        from google.protobuf.message import DecodeError

        try:
            action_result = re_pb2.ActionResult.FromString(result)
        except DecodeError as e:
            raise TierError(self.name, f"not a serialized ActionResult: {e}", transient=False) from e
        request = re_pb2.UpdateActionResultRequest(
            instance_name=self.instance, action_digest=to_proto(key), action_result=action_result
        )
        self._call("UpdateActionResult", self._ac.UpdateActionResult, request)

    def close(self) -> None:
        super().close()
        self._channel.close()

    # -- batches ------------------------------------------------------------------------------------------------

    def read_blobs(self, digests: Sequence[Digest]) -> dict[Digest, bytes | memoryview]:
        """The blobs the server holds among `digests` (absent ones are left out); large ones are streamed."""
        found: dict[Digest, bytes | memoryview] = {}
        small = []
        for d in dict.fromkeys(digests):
            if d.size_bytes == 0:
                found[d] = b""  # REAPI: the empty blob is always present
            elif self.batchable(d.size_bytes):
                small.append(d)
            else:
                chunks = self._read_stream(d)
                if chunks is not None:
                    found[d] = b"".join(chunks)
        for batch in self._batches(small):
            request = re_pb2.BatchReadBlobsRequest(instance_name=self.instance, digests=[to_proto(d) for d in batch])
            replies: list[wire.BlobRead] = self._call("BatchReadBlobs", self._batch_read, request,
                                                      size=sum(d.size_bytes for d in batch))
            for r in replies:
                if r.code == grpc.StatusCode.NOT_FOUND.value[0]:
                    continue
                if r.code != 0:
                    raise self._failure("BatchReadBlobs", _CODES.get(r.code, grpc.StatusCode.UNKNOWN), r.message)
                found[r.digest] = r.data
        return found

    def write_blobs(self, blobs: Sequence[tuple[Digest, bytes]]) -> None:
        """Store blobs: batched up to the server's limit, larger ones streamed."""
        small = {}
        for digest, data in blobs:
            if self.batchable(digest.size_bytes):
                small[digest] = data
            else:
                self._write_stream(digest, (data[i:i + STREAM_CHUNK] for i in range(0, len(data), STREAM_CHUNK)))
        for batch in self._batches(list(small)):
            request = re_pb2.BatchUpdateBlobsRequest(
                instance_name=self.instance,
                requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=to_proto(d), data=small[d]) for d in batch],
            )
            response = self._call("BatchUpdateBlobs", self._cas.BatchUpdateBlobs, request,
                                  size=sum(d.size_bytes for d in batch))
            for r in response.responses:
                self._check_status("BatchUpdateBlobs", r.status)

    # -- internals ---------------------------------------------------------------------------------------------

    def _limit(self) -> int:
        if self._batch_limit is None:
            self.check()
        assert self._batch_limit is not None
        return self._batch_limit

    def batchable(self, size: int) -> bool:
        """Whether a blob of this size fits one batch request (larger ones are streamed through ByteStream)."""
        return size + BATCH_ENTRY_OVERHEAD <= self._limit()

    def _batches(self, digests: list[Digest]) -> Iterator[list[Digest]]:
        """Split small blobs into groups whose total (with per-entry overhead) fits the server's batch limit."""
        limit = self._limit()
        batch: list[Digest] = []
        total = 0
        for d in digests:
            cost = d.size_bytes + BATCH_ENTRY_OVERHEAD
            if batch and total + cost > limit:
                yield batch
                batch, total = [], 0
            batch.append(d)
            total += cost
        if batch:
            yield batch

    def _resource(self, digest: Digest, upload: bool) -> str:
        path = f"blobs/{digest.hash}/{digest.size_bytes}"
        if upload:
            path = f"uploads/{uuid.uuid4()}/{path}"
        return f"{self.instance}/{path}" if self.instance else path

    def _deadline(self, size: int) -> float:
        return self.timeout + size / MIN_STREAM_RATE

    def _read_stream(self, digest: Digest) -> Iterator[memoryview] | None:
        """A ByteStream Read as an iterator of chunks (views of the messages that carried them), or None if the
        blob is absent.

        The first response is awaited here so NOT_FOUND is a miss rather than an error halfway through a file.
        """
        request = bytestream_pb2.ReadRequest(resource_name=self._resource(digest, upload=False))
        try:
            responses = self._read_chunks(request, timeout=self._deadline(digest.size_bytes), metadata=self._metadata)
            first = next(responses, None)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._error("ByteStream.Read", e) from e

        def chunks() -> Iterator[memoryview]:
            if first is not None:
                yield first
            try:
                yield from responses
            except grpc.RpcError as e:
                raise self._error("ByteStream.Read", e) from e
            finally:
                responses.cancel()  # a no-op once the stream is done; frees the call if the reader gave up

        return chunks()

    def _write_stream(self, digest: Digest, chunks: Iterator[bytes]) -> None:
        resource = self._resource(digest, upload=True)

        def requests() -> Iterator[bytestream_pb2.WriteRequest]:
            offset = 0
            pending = next(chunks, b"")
            while True:
                following = next(chunks, None)
                yield bytestream_pb2.WriteRequest(
                    resource_name=resource if offset == 0 else "", write_offset=offset,
                    finish_write=following is None, data=pending,
                )
                if following is None:
                    return
                offset += len(pending)
                pending = following

        response = self._call("ByteStream.Write", self._bytestream.Write, requests(), size=digest.size_bytes)
        if response.committed_size not in (digest.size_bytes, -1):
            raise TierError(self.name, f"ByteStream.Write of {digest} committed only {response.committed_size} bytes")

    def _call(self, method: str, rpc: Callable[..., T], request: object, *, size: int = 0) -> T:
        """Invoke one RPC with this tier's deadline and credentials; map gRPC failures to TierError."""
        try:
            return rpc(request, timeout=self._deadline(size), metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._error(method, e) from e

    def _error(self, method: str, e: grpc.RpcError) -> TierError:
        return self._failure(method, e.code(), e.details())

    def _check_status(self, method: str, status: status_pb2.Status) -> None:
        if status.code != 0:
            raise self._failure(method, _CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message)

    def _failure(self, method: str, code: grpc.StatusCode, details: str | None) -> TierError:
        """One TierError for a failed call or a failed entry of a batch: the codes worth a retry are transient."""
        return TierError(self.name, f"{method}: {code.name}: {details}", transient=code in TRANSIENT)

