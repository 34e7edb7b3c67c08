"""The Redis tier: `redis://[[user]:password@]host:port/db?prefix=gaffer&max_blob=64MiB` (`rediss://` for TLS).

Keys are `<prefix>:cas:<sha256>` and `<prefix>:ac:<sha256>`. Redis holds whole values in memory, so blobs larger
than `max_blob` are not stored at all (a later read is a miss and goes to the next tier); eviction is the server's
business (`maxmemory-policy allkeys-lru` suits a cache). CAS keys are written once (SET NX); action-cache entries
are overwritten, as REAPI's UpdateActionResult does.

Only `cache/urls.py` imports this module, and only for a redis(s):// URL, so redis-py never loads on the CLI hot
path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import redis.backoff
import redis.exceptions
import redis.retry

from gaffer.cache.base import CacheTier, TierError
from gaffer.cache.urls import DEFAULT_REDIS_PREFIX, checked_url, redact
from gaffer.digest import Digest
from gaffer.units import parse_size

DEFAULT_PREFIX = DEFAULT_REDIS_PREFIX
DEFAULT_MAX_BLOB = 64 * 1024 * 1024
_UNLINK_BATCH = 1000


class RedisTier(CacheTier):
    """CAS + AC in one Redis database under one key prefix. Thread-safe: redis-py's client pools connections."""

    def __init__(self, client: Any, *, prefix: str = DEFAULT_PREFIX, max_blob: int = DEFAULT_MAX_BLOB,
                 name: str = "redis") -> None:
        self.name = name
        self.prefix = prefix
        self.max_blob = max_blob
        self._redis = client

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 30.0) -> RedisTier:
        """Open a redis:// or rediss:// URL; `timeout` bounds connecting and each reply."""
        parts, params = checked_url(url)
        max_blob = parse_size(params.get("max_blob", DEFAULT_MAX_BLOB), f"{redact(url)}: max_blob")
        client = redis.Redis.from_url(
            parts._replace(query="").geturl(),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # one quick retry covers a pooled connection the server closed; the tiered cache retries the rest
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 1),
            health_check_interval=0,
        )
        return cls(client, prefix=params.get("prefix", DEFAULT_PREFIX), max_blob=max_blob, name=redact(url))

    def _key(self, kind: str, digest: Digest) -> str:
        return f"{self.prefix}:{kind}:{digest.hash}"

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn redis-py's errors into TierError: lost connections and timeouts are transient, the rest not."""
        try:
            yield
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError,
                redis.exceptions.NoPermissionError) as e:
            raise TierError(self.name, f"authentication failed ({e}): check the user and password in the URL",
                            transient=False) from e
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            raise TierError(self.name, f"{what}: {e}", transient=True) from e
        except redis.exceptions.RedisError as e:
            raise TierError(self.name, f"{what}: {e}", transient=False) from e

    # -- CAS ---------------------------------------------------------------------------------------------------

    def find_missing(self, digests: Sequence[Digest]) -> list[Digest]:
        if not digests:
            return []
        with self._guard("EXISTS"):
            pipe = self._redis.pipeline(transaction=False)
            for d in digests:
                pipe.exists(self._key("cas", d))
            found = pipe.execute()
        return [d for d, n in zip(digests, found, strict=True) if not n]

    def read_blob(self, digest: Digest) -> bytes | None:
        return self._get(self._key("cas", digest))

    def write_blob(self, digest: Digest, data: bytes) -> None:
        if len(data) <= self.max_blob:
            with self._guard("SET"):
                self._redis.set(self._key("cas", digest), data, nx=True)

    def upload_blob(self, digest: Digest, path: Path) -> None:
        if os.path.getsize(path) <= self.max_blob:
            super().upload_blob(digest, path)

    # -- action cache ------------------------------------------------------------------------------------------

    def read_action(self, key: Digest) -> bytes | None:
        return self._get(self._key("ac", key))

    def write_action(self, key: Digest, result: bytes) -> None:
        with self._guard("SET"):
            self._redis.set(self._key("ac", key), result)

    def _get(self, key: str) -> bytes | None:
        with self._guard("GET"):
            value = self._redis.get(key)
        return value  # type: ignore[no-any-return]  # redis-py types replies as Any; GET answers bytes or None

    # -- management --------------------------------------------------------------------------------------------

    def check(self) -> None:
        with self._guard("PING"):
            self._redis.ping()

    def clear(self) -> None:
        """Delete every CAS and AC key under this tier's prefix (gobuildcache `clear-remote`)."""
        with self._guard("clear"):
            for kind in ("cas", "ac"):
                batch: list[bytes] = []
                for key in self._redis.scan_iter(match=f"{_glob_escape(self.prefix)}:{kind}:*", count=1000):
                    batch.append(key)
                    if len(batch) == _UNLINK_BATCH:
                        self._redis.unlink(*batch)
                        batch.clear()
                if batch:
                    self._redis.unlink(*batch)

    def close(self) -> None:
        super().close()
        self._redis.close()


def _glob_escape(text: str) -> str:
    """Escape Redis MATCH pattern characters so a prefix is taken literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
