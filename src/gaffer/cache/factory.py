"""The one place that composes a cache from settings: for `gaffer run`, `gobuildcache` and `gaffer serve`.

Callers hand over settings already parsed and checked (their URLs included) and a local DiskStore opened with
their own rules (`open_local` for `run`, `clean` and `cache`; gobuildcache's in a private directory). Remote tiers are opened lazily, on first
use, so a build served from the local tier never imports botocore, redis or grpc; this module itself
imports only the standard library and the light cache modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gaffer.cache.base import CacheTier
    from gaffer.cache.disk import DiskStore
    from gaffer.cache.tiered import TieredCache
    from gaffer.config import Settings


def open_local(settings: Settings, report: Callable[[str], None] | None = None, *,
               full_is_read_only: bool = False, create: bool = True) -> DiskStore:
    """`gaffer run`'s (clean's, cache's) local tier from its settings; a directory that cannot be made is an
    environment problem (exit 3). `full_is_read_only` for a build: a full disk is then a warning, not a failure
    (maintenance, which frees space, keeps the store writable). `create=False`: a read-only view that makes
    nothing on disk (a dry run, `cache status`)."""
    from gaffer.cache.base import TierError
    from gaffer.cache.disk import DiskStore
    from gaffer.errors import EnvironmentProblem

    try:
        return DiskStore(settings.cache_dir, settings.max_size, report=report,
                         full_is_read_only=full_is_read_only, create=create)
    except TierError as e:
        raise EnvironmentProblem(f"local cache {e}") from None


def open_cache(local: DiskStore, remotes: Sequence[str], *, read_only: bool, timeout: float,
               report: Callable[[str], None]) -> TieredCache:
    """`local` first, then a resilient tier per URL in `remotes` (nearest first), each opened on first use."""
    from gaffer.cache.tiered import TieredCache

    if not remotes:  # a local build: no URL to open (cache.urls compiles regular expressions on import)
        return TieredCache(local, [], read_only=read_only, report=report)
    from gaffer.cache.urls import open_tier, redact

    def opener(url: str) -> Callable[[], CacheTier]:
        return lambda: open_tier(url, timeout=timeout)

    return TieredCache(local, [(redact(url), opener(url)) for url in remotes], read_only=read_only, report=report)


def open_backend(url: str, instance: str, *, timeout: float) -> CacheTier:
    """The tier `gaffer serve --backend URL` stores the REAPI instance `instance` in (already validated): the
    instance "" at the URL itself, a named one in its own namespace below it (a path, a key prefix, a REAPI
    instance name), so two instances never see each other's entries."""
    from urllib.parse import quote, urlencode

    from gaffer.cache.urls import DEFAULT_REDIS_PREFIX, checked_url, open_tier

    if instance:
        parts, params = checked_url(url)
        if parts.scheme in ("redis", "rediss"):  # the path is the database number: the key prefix takes it
            params["prefix"] = f"{params.get('prefix', DEFAULT_REDIS_PREFIX)}:{instance}"
            url = parts._replace(query=urlencode(params)).geturl()
        elif parts.scheme in ("grpc", "grpcs"):  # REAPI instance names nest: `base/instance`
            url = parts._replace(path=f"{parts.path.rstrip('/')}/{instance}").geturl()
        else:  # one path segment, as `gaffer serve` lays out its own directory: no instance inside another's
            url = parts._replace(path=f"{parts.path.rstrip('/')}/instances/{quote(instance, safe='')}").geturl()
    return open_tier(url, timeout=timeout)
