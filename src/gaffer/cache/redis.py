"""The Redis tier: `redis://[[user]:password@]host:port/db?prefix=gaffer&max_blob=64MiB` (`rediss://` for TLS).

Keys are `<prefix>:cas:<sha256>` and `<prefix>:ac:<sha256>`. Redis holds whole values in memory, so blobs larger
than `max_blob` are not stored at all (a later read is a miss and goes to the next tier); eviction is the server's
business (`maxmemory-policy allkeys-lru` suits a cache). CAS keys are written once (SET NX), except over a value that
failed verification (`replace_blob`); action-cache entries are overwritten, as REAPI's UpdateActionResult does.

Reads (GET, EXISTS, PING) go through cache/redisread.py over plain sockets, so a build that only restores never
imports redis-py (~0.14 s of CPU, asyncio included); writes, `clear` and TLS (`rediss://`, every request) use
redis-py, imported on first use.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from gaffer.cache.base import CacheTier, TierError
from gaffer.cache.httpconn import Unreachable
from gaffer.cache.redisread import RedisReader, ReplyError
from gaffer.cache.urls import DEFAULT_REDIS_PREFIX, checked_url, redact
from gaffer.digest import Digest
from gaffer.units import parse_size

DEFAULT_PREFIX = DEFAULT_REDIS_PREFIX
DEFAULT_MAX_BLOB = 64 * 1024 * 1024
_UNLINK_BATCH = 1000
T = TypeVar("T")


class RedisTier(CacheTier):
    """CAS + AC in one Redis database under one key prefix. Thread-safe: the reader and redis-py's client pool
    connections."""

    def __init__(self, client: Callable[[], Any], *, reader: RedisReader | None = None,
                 prefix: str = DEFAULT_PREFIX, max_blob: int = DEFAULT_MAX_BLOB, name: str = "redis") -> None:
        self.name = name
        self.prefix = prefix
        self.max_blob = max_blob
        self._make_client = client
        self._client: Any = None
        self._lock = threading.Lock()
        self._reader = reader

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 30.0) -> RedisTier:
        """Open a redis:// or rediss:// URL; `timeout` bounds connecting and each reply."""
        parts, params = checked_url(url)
        max_blob = parse_size(params.get("max_blob", DEFAULT_MAX_BLOB), f"{redact(url)}: max_blob")
        # installed? writes need it: fail at open (one line), not mid-build; finding it imports nothing of it
        if importlib.util.find_spec("redis") is None:
            raise ModuleNotFoundError("No module named 'redis'", name="redis")

        def client() -> Any:
            import redis
            import redis.backoff
            import redis.retry

            return redis.Redis.from_url(
                parts._replace(query="").geturl(),
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # one quick retry covers a pooled connection the server closed; the tiered cache retries the rest
                retry=redis.retry.Retry(redis.backoff.NoBackoff(), 1),
                health_check_interval=0,
            )

        # AUTH as redis-py sends it: with a password (an empty one is none), the user's name if there is one; a
        # user without a password, and TLS, are left to redis-py
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        reader = None
        if parts.scheme == "redis" and not (username and password is None):
            reader = RedisReader(parts.hostname or "", parts.port or 6379, int(parts.path.strip("/") or 0),
                                 username, password, timeout)
        return cls(client, reader=reader, prefix=params.get("prefix", DEFAULT_PREFIX), max_blob=max_blob,
                   name=redact(url))

    def _redis(self) -> Any:
        """redis-py's client, made on first use."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _key(self, kind: str, digest: Digest) -> str:
        return f"{self.prefix}:{kind}:{digest.hash}"

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn either client's errors into TierError: lost connections and timeouts are transient, the rest not."""
        try:
            yield
        except ReplyError as e:
            if e.authentication:
                raise self._denied(e) from e
            raise TierError(self.name, f"{what}: {e}", transient=e.transient) from e
        except Unreachable as e:
            raise TierError(self.name, f"{what}: {e}", transient=True) from e
        except Exception as e:
            if self._client is None:  # redis-py was never used: not one of its errors
                raise
            import redis.exceptions

            if isinstance(e, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError,
                              redis.exceptions.NoPermissionError)):
                raise self._denied(e) from e
            if isinstance(e, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
                raise TierError(self.name, f"{what}: {e}", transient=True) from e
            if isinstance(e, redis.exceptions.RedisError):
                raise TierError(self.name, f"{what}: {e}", transient=False) from e
            raise

    def _denied(self, e: Exception) -> TierError:
        return TierError(self.name, f"authentication failed ({e}): check the user and password in the URL",
                         transient=False)

    def _read(self, what: str, light: Callable[[RedisReader], T], full: Callable[[Any], T]) -> T:
        with self._guard(what):
            return light(self._reader) if self._reader is not None else full(self._redis())

    # -- CAS ---------------------------------------------------------------------------------------------------

    def find_missing(self, digests: Sequence[Digest]) -> list[Digest]:
        if not digests:
            return []
        keys = [self._key("cas", d) for d in digests]

        def full(client: Any) -> list[bool]:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.exists(key)
            return [bool(n) for n in pipe.execute()]

        found = self._read("EXISTS", lambda r: r.exists(keys), full)
        return [d for d, here in zip(digests, found, strict=True) if not here]

    def read_blob(self, digest: Digest) -> bytes | None:
        return self._get(self._key("cas", digest), digest.size_bytes)

    def write_blob(self, digest: Digest, data: bytes) -> None:
        self._set_blob(digest, data, once=True)

    def upload_blob(self, digest: Digest, path: Path) -> None:
        if os.path.getsize(path) <= self.max_blob:
            super().upload_blob(digest, path)

    def replace_blob(self, digest: Digest, path: Path) -> None:
        """SET without NX: the value under the key failed verification."""
        if os.path.getsize(path) <= self.max_blob:
            self._set_blob(digest, Path(path).read_bytes(), once=False)

    def _set_blob(self, digest: Digest, data: bytes, once: bool) -> None:
        if len(data) <= self.max_blob:
            with self._guard("SET"):
                self._redis().set(self._key("cas", digest), data, nx=once)

    # -- action cache ------------------------------------------------------------------------------------------

    def read_action(self, key: Digest) -> bytes | None:
        return self._get(self._key("ac", key))

    def write_action(self, key: Digest, result: bytes) -> None:
        with self._guard("SET"):
            self._redis().set(self._key("ac", key), result)

    def _get(self, key: str, size: int = 0) -> bytes | None:
        value = self._read("GET", lambda r: r.get(key, size), lambda client: client.get(key))
        return value  # type: ignore[no-any-return]  # redis-py types replies as Any; GET answers bytes or None

    # -- management --------------------------------------------------------------------------------------------

    def check(self) -> None:
        self._read("PING", lambda r: r.ping(), lambda client: client.ping())

    def clear(self) -> None:
        """Delete every CAS and AC key under this tier's prefix (gobuildcache `clear-remote`)."""
        with self._guard("clear"):
            client = self._redis()
            for kind in ("cas", "ac"):
                batch: list[bytes] = []
                for key in client.scan_iter(match=f"{_glob_escape(self.prefix)}:{kind}:*", count=1000):
                    batch.append(key)
                    if len(batch) == _UNLINK_BATCH:
                        client.unlink(*batch)
                        batch.clear()
                if batch:
                    client.unlink(*batch)

    def close(self) -> None:
        super().close()
        if self._reader is not None:
            self._reader.close()
        if self._client is not None:
            self._client.close()


def _glob_escape(text: str) -> str:
    """Escape Redis MATCH pattern characters so a prefix is taken literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
