"""The one small interface every cache tier implements (disk, S3, Redis, HTTP, REAPI gRPC).

A tier stores two things, both in REAPI's formats:
  - the CAS: blobs by `Digest` (SHA-256 of the content);
  - the action cache (AC): serialized `ActionResult` protos by action key (also a `Digest`).
A tier moves bytes; it does not parse ActionResults and does not have to verify blobs: the tiered cache
verifies every downloaded blob against its digest before it is used or stored nearer.

Errors: a tier raises `TierError` for anything that went wrong talking to its store. `transient=True` means
"worth retrying" (timeouts, connection refused, 5xx); `transient=False` means retrying will not help
(bad credentials, missing bucket). A miss is not an error: reads return None/False.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from gaffer.digest import Digest


class TierError(Exception):
    def __init__(self, tier: str, message: str, transient: bool = True) -> None:
        super().__init__(f"{tier}: {message}")
        self.tier = tier
        self.transient = transient


class CacheTier(ABC):
    """A CAS + AC store. Implementations must be safe to call from several threads at once."""

    #: What the user wrote to name this tier (its URL without secrets): used in warnings and stats.
    name: str

    @abstractmethod
    def find_missing(self, digests: Sequence[Digest]) -> list[Digest]:
        """The subset of `digests` this tier does not hold."""

    @abstractmethod
    def read_blob(self, digest: Digest) -> bytes | None:
        """A small blob's bytes, or None if absent."""

    @abstractmethod
    def fetch_blob(self, digest: Digest, dest: Path) -> bool:
        """Stream a blob of any size into the file `dest` (created or truncated). False if absent."""

    @abstractmethod
    def write_blob(self, digest: Digest, data: bytes) -> None:
        """Store a small blob."""

    @abstractmethod
    def upload_blob(self, digest: Digest, path: Path) -> None:
        """Store a blob of any size, streamed from the file at `path`."""

    @abstractmethod
    def read_action(self, key: Digest) -> bytes | None:
        """The serialized ActionResult stored under `key`, or None."""

    @abstractmethod
    def write_action(self, key: Digest, result: bytes) -> None:
        """Store a serialized ActionResult under `key`."""

    def check(self) -> None:
        """Cheap start-up probe: raise TierError(transient=False) for wrong credentials or a missing bucket."""

    def close(self) -> None:
        """Release connections."""
