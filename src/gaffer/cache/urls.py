"""Open a cache tier from the URL a user wrote, and show URLs without their secrets.

    disk:///var/cache/gaffer
    s3://bucket/prefix?endpoint=http://127.0.0.1:7480&region=us-east-1
    gs://bucket/prefix                                               (Google Cloud Storage)
    azblob://container/prefix?account=NAME[&endpoint=URL]            (Azure Blob Storage)
    redis://[:password@]host:6379/0?prefix=gaffer&max_blob=64MiB     (rediss:// for TLS)
    http(s)://[user:password@]host[:port]/prefix?token_file=PATH     (the Bazel HTTP cache protocol)
    grpc(s)://host:port/instance                                     (REAPI: gaffer serve, bazel-remote, ...)

Light on purpose (standard library only): each tier's module, and the client library it needs (botocore,
google-cloud-storage, azure-storage-blob, redis, grpc), is imported only when a URL of its scheme is opened.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from gaffer.errors import EnvironmentProblem, UserError
from gaffer.units import parse_size

if TYPE_CHECKING:  # a no-op build checks URLs: it must not import the tier machinery (thread pools, logging)
    from gaffer.cache.base import CacheTier

DEFAULT_REDIS_PREFIX = "gaffer"  # redis:// keys are `<prefix>:cas:<sha256>` without ?prefix=
_SECRET_PARAM = re.compile(r"token|secret|passw|key|sig|credential|auth", re.IGNORECASE)


def redact(url: str) -> str:
    """`url` fit for logs and stats: the userinfo password and secret-looking query values become `***`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hash_sign, fragment = query.partition("#")
        fields = []
        for field in query.split("&"):
            key, eq, _ = field.partition("=")
            secret = eq and _SECRET_PARAM.search(key) and not key.lower().endswith("file")
            fields.append(f"{key}=***" if secret else field)
        tail = f"{path}?{'&'.join(fields)}{hash_sign}{fragment}"
    return f"{scheme}://{netloc}{tail}"


def bad_url(url: str, what: str) -> UserError:
    """The one-line error for a cache URL the user got wrong."""
    return UserError(f"cache URL {redact(url)}: {what}")


def read_token(path: str | os.PathLike[str], where: str) -> str:
    """The bearer token in the file at `path` (one token, no spaces); `where` names the setting that gave the path
    in the one-line UserError for a file that cannot be read or holds no usable token."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise UserError(f"{where}: cannot read token_file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{where}: token_file {path} is not text") from None
    if not token or any(c.isspace() for c in token):
        raise UserError(f"{where}: token_file {path} must hold one token without spaces")
    return token


def split_url(url: str) -> SplitResult:
    """`urlsplit`, with its ValueError (bad port, unbalanced IPv6 brackets) turned into a UserError."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError as e:
        raise bad_url(url, str(e)) from None
    return parts


def query_params(url: str, parts: SplitResult, allowed: Collection[str]) -> dict[str, str]:
    """The URL's query as a dict; an unknown, repeated or empty parameter is a UserError listing `allowed`."""
    known = ", ".join(sorted(allowed)) or "none"
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise bad_url(url, f"malformed query string (parameters: {known})") from None
    for key, value in pairs:
        if key not in allowed:
            raise bad_url(url, f"unknown parameter {key!r} (parameters: {known})")
        if key in params:
            raise bad_url(url, f"parameter {key!r} given twice")
        if not value:
            raise bad_url(url, f"parameter {key!r} has no value")
        params[key] = value
    return params


def disk_path(url: str) -> str:
    """The directory a disk:// URL names, percent-decoded as a file URL is (disk:///a%20b is "/a b")."""
    parts, _ = checked_url(url)
    return unquote(parts.path)


def _open_disk(url: str, timeout: float) -> CacheTier:
    from gaffer.cache.disk import DiskStore

    return DiskStore(disk_path(url))


def _open_s3(url: str, timeout: float) -> CacheTier:
    from gaffer.cache.s3 import S3Tier

    return S3Tier.from_url(url, timeout=timeout)


def _open_gcs(url: str, timeout: float) -> CacheTier:
    from gaffer.cache.gcs import GcsTier

    return GcsTier.from_url(url, timeout=timeout)


def _open_azblob(url: str, timeout: float) -> CacheTier:
    from gaffer.cache.azblob import AzureBlobTier

    return AzureBlobTier.from_url(url, timeout=timeout)


def _open_redis(url: str, timeout: float) -> CacheTier:
    from gaffer.cache.redis import RedisTier

    return RedisTier.from_url(url, timeout=timeout)


def _open_http(url: str, timeout: float) -> CacheTier:
    from gaffer.cache.http import HttpTier

    return HttpTier.from_url(url, timeout=timeout)


def _open_grpc(url: str, timeout: float) -> CacheTier:
    from gaffer.cache.grpc import GrpcTier

    return GrpcTier.from_url(url, timeout=timeout)


def _disk_shape(parts: SplitResult, params: dict[str, str]) -> str | None:
    if not parts.netloc + parts.path:
        return "no directory (example: disk:///var/cache/gaffer)"
    if parts.netloc or not parts.path.startswith("/"):
        return "expected disk:///ABSOLUTE/PATH (three slashes: a directory is never relative to the workspace)"
    return None


def _s3_shape(parts: SplitResult, params: dict[str, str]) -> str | None:
    return _bucket_shape(parts, "s3://BUCKET/PREFIX (example: s3://my-cache/ci?region=eu-west-1)") or \
        _endpoint_shape(params)


def _bucket_shape(parts: SplitResult, example: str) -> str | None:
    """What is wrong with a `SCHEME://BUCKET/PREFIX` URL's bucket part, or None."""
    if not parts.netloc or "@" in parts.netloc or ":" in parts.netloc:
        return f"expected {example}"
    return None


def _gcs_shape(parts: SplitResult, params: dict[str, str]) -> str | None:
    return _bucket_shape(parts, "gs://BUCKET/PREFIX (example: gs://my-cache/ci)")


def _azblob_shape(parts: SplitResult, params: dict[str, str]) -> str | None:
    problem = _bucket_shape(parts, "azblob://CONTAINER/PREFIX?account=NAME (example: "
                                   "azblob://cache/ci?account=mystorage)")
    if problem:
        return problem
    if "account" not in params:
        return "account= is required (the storage account's name: azblob://CONTAINER/PREFIX?account=NAME)"
    return _endpoint_shape(params)


def _endpoint_shape(params: dict[str, str]) -> str | None:
    endpoint = params.get("endpoint")
    if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
        return f"endpoint {endpoint!r} is not an http:// or https:// URL"
    return None


def _redis_shape(parts: SplitResult, params: dict[str, str]) -> str | None:
    if not parts.hostname:
        return "expected redis://[:PASSWORD@]HOST[:PORT][/DB] (example: redis://127.0.0.1:6379/0)"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"the database {db!r} is not a number"
    if "max_blob" in params:
        parse_size(params["max_blob"], f"{redact(parts.geturl())}: max_blob")
    return None


def _http_shape(parts: SplitResult, params: dict[str, str]) -> str | None:
    if not parts.hostname:
        return "expected http(s)://HOST[:PORT]/PREFIX (example: https://cache.example.com/ci)"
    return None


def _grpc_shape(parts: SplitResult, params: dict[str, str]) -> str | None:
    if not parts.hostname or not (parts.port or parts.scheme == "grpcs"):
        return "expected grpc://HOST:PORT[/INSTANCE] or grpcs://HOST[:PORT][/INSTANCE]"
    if "ca" in params and parts.scheme != "grpcs":
        return "ca= needs a grpcs:// URL"
    return None


class _Scheme(NamedTuple):
    """What a scheme's URL may hold, checked with the standard library alone, and how to open its tier."""

    params: tuple[str, ...]
    shape: Callable[[SplitResult, dict[str, str]], str | None]  # what is wrong with the URL, or None
    opener: Callable[[str, float], CacheTier]
    extra: str | None = None  # the pip extra that installs its client library (None: gaffer's own dependencies)


_SCHEMES: dict[str, _Scheme] = {
    "disk": _Scheme((), _disk_shape, _open_disk),
    "s3": _Scheme(("endpoint", "region"), _s3_shape, _open_s3, "s3"),
    "gs": _Scheme((), _gcs_shape, _open_gcs, "gcs"),
    "azblob": _Scheme(("account", "endpoint"), _azblob_shape, _open_azblob, "azure"),
    "redis": _Scheme(("prefix", "max_blob"), _redis_shape, _open_redis, "redis"),
    "rediss": _Scheme(("prefix", "max_blob"), _redis_shape, _open_redis, "redis"),
    "http": _Scheme(("token_file",), _http_shape, _open_http),
    "https": _Scheme(("token_file",), _http_shape, _open_http),
    "grpc": _Scheme(("token_file", "ca"), _grpc_shape, _open_grpc),
    "grpcs": _Scheme(("token_file", "ca"), _grpc_shape, _open_grpc),
}


def _scheme(url: str) -> _Scheme:
    name, sep, _ = url.partition("://")
    scheme = _SCHEMES.get(name.lower()) if sep else None
    if scheme is None:
        what = f"unknown scheme {name!r}" if sep else "not a URL"
        raise bad_url(url, f"{what} (supported: {', '.join(s + '://' for s in _SCHEMES)})")
    return scheme


def checked_url(url: str) -> tuple[SplitResult, dict[str, str]]:
    """`url` split, with its query parameters, after checking its shape for its scheme; anything wrong is a
    one-line UserError. Cheap (no client library), so settings check every URL at start, even when the build
    turns out to need no remote at all; each tier's `from_url` starts from it."""
    scheme = _scheme(url)
    parts = split_url(url)
    params = query_params(url, parts, scheme.params)
    problem = scheme.shape(parts, params)
    if problem:
        raise bad_url(url, problem)
    return parts, params


def open_tier(url: str, *, timeout: float = 30.0) -> CacheTier:
    """The tier `url` names; `timeout` (seconds) bounds each request. Bad URLs raise a one-line UserError."""
    scheme = _scheme(url)
    if not timeout > 0:
        raise UserError(f"cache timeout must be positive, not {timeout}")
    try:
        return scheme.opener(url, timeout)
    except ModuleNotFoundError as e:  # installed without the extra this scheme needs
        if scheme.extra is None:
            raise
        raise EnvironmentProblem(f"{redact(url)}: needs the Python package {e.name!r}, which is not installed: "
                                 f"pip install 'gaffer[{scheme.extra}]'") from None
