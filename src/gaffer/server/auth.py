"""The bearer-token check both protocols of `gaffer serve` apply: one decision, made as soon as a request's
headers (HTTP) or metadata (gRPC) are in, before any body is read.

With --token-file the server has a read-write token; with --read-token-file as well, a second token that may
read but never write, so CI jobs that build untrusted code can pull from the cache and never poison it.
"""

from __future__ import annotations

import enum
import hmac

# The gRPC methods that change the store or run things: a read-only token is refused them.
GRPC_WRITES = frozenset({
    "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs",
    "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult",
    "/google.bytestream.ByteStream/Write",
    "/build.bazel.remote.execution.v2.Execution/Execute",
    "/google.longrunning.Operations/CancelOperation",
    "/google.devtools.remoteworkers.v1test2.Bots/CreateBotSession",
    "/google.devtools.remoteworkers.v1test2.Bots/UpdateBotSession",
    "/gaffer.worker.v1.Inventory/Report",
})


class Refusal(enum.Enum):
    """Why a request is refused: no valid token (HTTP 401, UNAUTHENTICATED), or a read-only token asking to
    write (HTTP 403, PERMISSION_DENIED)."""

    UNAUTHENTICATED = "this server requires authorization: Bearer <token>"
    READ_ONLY = "this token may read from the cache but not write to it, nor execute actions"


class BearerToken:
    """`authorization: Bearer <token>` must carry one of the server's tokens; with none the server is open."""

    def __init__(self, token: str | None, read_token: str | None = None) -> None:
        self._write = f"Bearer {token}".encode() if token else None
        self._read = f"Bearer {read_token}".encode() if read_token else None

    @property
    def required(self) -> bool:
        return self._write is not None

    def refusal(self, header: str | None, write: bool) -> Refusal | None:
        """None when `header` may make this request (`write`: it would change the store), else why not."""
        if self._write is None:
            return None
        given = (header or "").strip().encode()
        # constant-time, both tokens always compared, so response timing reveals nothing of a guessed token
        writer = hmac.compare_digest(given, self._write)
        reader = self._read is not None and hmac.compare_digest(given, self._read)
        if writer or (reader and not write):
            return None
        return Refusal.READ_ONLY if reader else Refusal.UNAUTHENTICATED
