"""gobuildcache's configuration: its settings from gaffer.config's table (the Go gobuildcache program's variables
BACKEND_TYPE, CACHE_DIR, S3_BUCKET, S3_PREFIX, S3_TMP_DIR, DEBUG and gaffer's GOBUILDCACHE_* are that front end's
aliases there), turned into the local tier and the remote tier URLs.

Read before the capabilities line goes out, so a wrong value is one line on stderr and exit status 2 rather
than a confusing failure in the middle of a build.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from gaffer.config import GOCACHE, Settings, load_nearest
from gaffer.errors import UserError

S3_SOURCE = "s3 backend (S3_BUCKET, S3_PREFIX, AWS_ENDPOINT_URL, AWS_REGION)"  # what the s3 tier's URL is made of


class Config:
    """The checked settings. A plain class: `typing` (for NamedTuple) would cost start-up time before the
    capabilities line."""

    __slots__ = ("debug", "local_dir", "prefetch", "read_only", "remote_sources", "remotes", "sources", "stats",
                 "timeout")

    def __init__(self, local_dir: str, remotes: tuple[str, ...], *, read_only: bool, debug: bool, stats: bool,
                 timeout: float, sources: dict[str, str | None], prefetch: bool,
                 remote_sources: tuple[str, ...] = ()) -> None:
        self.local_dir = local_dir  # absolute: every DiskPath handed to go lies below it
        self.remotes = remotes  # tier URLs behind the local tier, nearest first
        self.remote_sources = remote_sources  # where each of them came from, for its errors
        self.read_only = read_only
        self.debug = debug
        self.stats = stats
        self.timeout = timeout  # seconds, per remote request
        self.sources = sources  # setting -> where its value came from (gaffer.config.Settings.sources)
        self.prefetch = prefetch  # with remotes: fetch the previous command's entries at start-up


def _s3_url(s: Settings, env: Mapping[str, str]) -> str:
    """The s3:// tier URL for the s3 backend's settings."""
    from urllib.parse import quote, urlencode

    bucket = s.s3_bucket
    where = s.sources["s3_bucket"] or "S3_BUCKET"
    if not bucket:
        raise UserError("S3_BUCKET: required when BACKEND_TYPE=s3 (example: S3_BUCKET=my-build-cache)")
    if "/" in bucket or any(c.isspace() for c in bucket):
        raise UserError(f"{where}: {bucket!r} is not a bucket name (a prefix goes in S3_PREFIX)")
    _utf8(bucket, where)
    query = {}
    for key, names in (("endpoint", ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")),
                       ("region", ("AWS_REGION", "AWS_DEFAULT_REGION"))):
        name = next((n for n in names if env.get(n)), None)
        if name is not None:
            query[key] = _utf8(env[name], name)
    prefix = _utf8(s.s3_prefix, s.sources["s3_prefix"] or "S3_PREFIX")
    url = f"s3://{bucket}/{quote(prefix.lstrip('/'), safe='/')}"
    return url + (f"?{urlencode(query)}" if query else "")


def _check_disk_paths(local_dir: str, where: str) -> None:
    """Refuse a local directory go could not use the DiskPaths below: a hit it cannot open it rebuilds, silently,
    so such a cache would never serve a build."""
    if "\n" in local_dir:  # go lists each DiskPath on a line of its own for the compiler and the linker
        raise UserError(f"{where}: {local_dir!r} has a line break, which go cannot pass on to its compiler and "
                        "linker: choose another directory")
    _utf8(local_dir, where, "which go needs to read the paths it is sent: choose another directory")


def _utf8(text: str, where: str, why: str = "") -> str:
    """`text`, refused if it holds bytes that are not UTF-8 (os.fsdecode's surrogates from the environment): no
    URL, JSON or S3 key can carry them."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise UserError(f"{where}: {text!r} is not UTF-8" + (f", {why}" if why else "")) from None
    return text


def load_config(env: Mapping[str, str] = os.environ, cwd: str = ".") -> Config:
    """Read and check every setting (gaffer.toml: the nearest from `cwd` upward, then the user's); raise
    UserError naming the first wrong one."""
    s = load_nearest(GOCACHE, {}, env, cwd)
    s3 = s.backend_type == "s3"
    dir_setting = "s3_tmp_dir" if s3 else "cache_dir"
    local_dir = s.s3_tmp_dir if s3 else s.cache_dir
    where = s.sources[dir_setting] or dir_setting.upper()
    remotes = [_s3_url(s, env)] if s3 else []
    urls = [_utf8(url, s.sources["remotes"] or "GAFFER_CACHE") for url in s.remotes]
    if s.sources[dir_setting] is None and urls and urls[0].lower().startswith("disk://"):
        # gaffer's own tier list starts with its local disk tier: share it (Go entries next to everything else)
        local_dir = urls.pop(0)[len("disk://") :]
        if "%" in local_dir:  # percent-decoded as gaffer's disk tier decodes it (urllib only for such a URL)
            from urllib.parse import unquote

            local_dir = unquote(local_dir)
        where = s.sources["remotes"] or "GAFFER_CACHE"
        if not local_dir.startswith("/"):
            raise UserError(f"{where}: a disk:// URL needs an absolute path (example: disk:///var/cache/gaffer)")
    _check_disk_paths(local_dir, where)
    sources = [S3_SOURCE] * len(remotes) + [s.sources["remotes"] or "GAFFER_CACHE"] * len(urls)
    remotes += urls
    return Config(os.path.abspath(local_dir), tuple(remotes), read_only=s.read_only, debug=s.debug, stats=s.stats,
                  timeout=s.timeout, sources=s.sources, prefetch=s.prefetch, remote_sources=tuple(sources))


def check_remotes(config: Config) -> None:
    """Check the remote tier URLs in full (host, port, parameters), past the scheme `load_config` checked: a
    UserError naming the setting. Run once the capabilities line is out (the check imports urllib.parse)."""
    from gaffer.config import check_urls

    for url, where in zip(config.remotes, config.remote_sources, strict=True):
        check_urls([url], where)
