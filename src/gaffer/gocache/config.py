"""gobuildcache's configuration: the Go gobuildcache program's environment variables, plus gaffer's cache URLs and read-only mode.

    BACKEND_TYPE      disk (default) or s3
    CACHE_DIR         the local tier for BACKEND_TYPE=disk (default /tmp/gobuildcache)
    S3_BUCKET         required for s3;  S3_PREFIX (default ""); AWS_ENDPOINT_URL / AWS_REGION as boto3 reads them
    S3_TMP_DIR        the local tier for BACKEND_TYPE=s3 (default /tmp/gobuildcache-s3)
    DEBUG=true        log every request on stderr (and the stats line at close)
    GOBUILDCACHE_CACHE=url[,url]   more tiers behind the local one, nearest first (else GAFFER_CACHE):
                      s3://bucket/prefix?endpoint=..., redis://host:port/db, http(s)://host/prefix, grpc://host:port
    GOBUILDCACHE_READ_ONLY=1       read from remote tiers, never write to them (untrusted CI)
    GOBUILDCACHE_STATS=1           print the stats line at close without DEBUG
    GOBUILDCACHE_TIMEOUT=10s       bound on each remote request (a stuck remote is then dropped for the build)

Parsed before the capabilities line goes out (it only reads the environment), so a wrong value is one line on
stderr and exit status 2 rather than a confusing failure in the middle of a build.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from gaffer.errors import UserError
from gaffer.units import parse_duration

DEFAULT_CACHE_DIR = "/tmp/gobuildcache"
DEFAULT_S3_TMP_DIR = "/tmp/gobuildcache-s3"
DEFAULT_TIMEOUT_S = 10.0
BACKENDS = ("disk", "s3")
# Kept equal to gaffer.cache.urls._SCHEMES (a test checks): not imported, to keep start-up light.
TIER_SCHEMES = ("disk", "s3", "redis", "rediss", "http", "https", "grpc", "grpcs")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class Config:
    """The checked settings. A plain class: `typing` (for NamedTuple) would cost start-up time before the
    capabilities line."""

    __slots__ = ("debug", "local_dir", "read_only", "remotes", "stats", "timeout")

    def __init__(self, local_dir: str, remotes: tuple[str, ...], *, read_only: bool, debug: bool, stats: bool,
                 timeout: float) -> None:
        self.local_dir = local_dir  # absolute: every DiskPath handed to go lies below it
        self.remotes = remotes  # tier URLs behind the local tier, nearest first
        self.read_only = read_only
        self.debug = debug
        self.stats = stats
        self.timeout = timeout  # seconds, per remote request


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UserError(f"{name}: {env[name]!r} is not a boolean (use true or false)")


def _timeout(env: Mapping[str, str]) -> float:
    text = env.get("GOBUILDCACHE_TIMEOUT", "").strip()
    timeout = parse_duration(text, "GOBUILDCACHE_TIMEOUT") if text else DEFAULT_TIMEOUT_S
    if not timeout > 0:
        raise UserError(f"GOBUILDCACHE_TIMEOUT: {text!r} must be more than zero (example: 10s)")
    return timeout


def _cache_urls(env: Mapping[str, str]) -> tuple[str, list[str]]:
    """(the variable the URLs came from, the URLs): GOBUILDCACHE_CACHE wins over gaffer's general GAFFER_CACHE."""
    for name in ("GOBUILDCACHE_CACHE", "GAFFER_CACHE"):
        if env.get(name, "").strip():
            urls = [u.strip() for u in env[name].split(",") if u.strip()]
            for url in urls:
                scheme = url.partition("://")[0].lower() if "://" in url else ""
                if scheme not in TIER_SCHEMES:
                    raise UserError(
                        f"{name}: {url!r} is not a cache URL (examples: s3://bucket/prefix, redis://127.0.0.1:6379/0,"
                        " http://host/cache, grpc://host:8980, disk:///var/cache/gaffer)"
                    )
            return name, urls
    return "", []


def _s3_url(env: Mapping[str, str]) -> str:
    """The s3:// tier URL for the BACKEND_TYPE=s3 variables."""
    from urllib.parse import quote, urlencode

    bucket = env.get("S3_BUCKET", "").strip()
    if not bucket:
        raise UserError("S3_BUCKET: required when BACKEND_TYPE=s3 (example: S3_BUCKET=my-build-cache)")
    if "/" in bucket or any(c.isspace() for c in bucket):
        raise UserError(f"S3_BUCKET: {bucket!r} is not a bucket name (a prefix goes in S3_PREFIX)")
    query = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        query["endpoint"] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        query["region"] = region
    url = f"s3://{bucket}/{quote(env.get('S3_PREFIX', '').lstrip('/'), safe='/')}"
    return url + (f"?{urlencode(query)}" if query else "")


def load_config(env: Mapping[str, str] = os.environ) -> Config:
    """Read and check every variable; raise UserError naming the first wrong one."""
    backend = env.get("BACKEND_TYPE", "").strip().lower() or "disk"
    if backend not in BACKENDS:
        raise UserError(
            f"BACKEND_TYPE: {env['BACKEND_TYPE']!r} is not a backend (disk or s3; redis, http and grpc tiers are"
            " named by URL in GOBUILDCACHE_CACHE)"
        )
    dir_var, default_dir = ("S3_TMP_DIR", DEFAULT_S3_TMP_DIR) if backend == "s3" else ("CACHE_DIR", DEFAULT_CACHE_DIR)
    remotes = [_s3_url(env)] if backend == "s3" else []
    urls_var, urls = _cache_urls(env)
    local_dir = env.get(dir_var, "").strip()
    if not local_dir and urls and urls[0].lower().startswith("disk://"):
        # gaffer's own tier list starts with its local disk tier: share it (Go entries next to everything else)
        local_dir = urls.pop(0)[len("disk://") :]
        if not local_dir.startswith("/"):
            raise UserError(f"{urls_var}: a disk:// URL needs an absolute path (example: disk:///var/cache/gaffer)")
    remotes += urls
    return Config(
        os.path.abspath(os.path.expanduser(local_dir or default_dir)),
        tuple(remotes),
        read_only=_flag(env, "GOBUILDCACHE_READ_ONLY"),
        debug=_flag(env, "DEBUG"),
        stats=_flag(env, "GOBUILDCACHE_STATS"),
        timeout=_timeout(env),
    )
