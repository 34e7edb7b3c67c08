"""S3 reads without botocore: signed GET and HEAD on http.client, for the configurations that need nothing more.

A CI machine with an empty local cache only reads from S3, and importing botocore and creating its S3 client
cost ~0.2 s of CPU before the first request: as much as the whole restore from a warm local cache. So the S3
tier reads through this module when `S3Reader.open` can settle, without botocore, exactly what botocore would use;
in every other case it returns None and the tier uses botocore for everything (so the two never disagree):

- credentials: static keys in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (botocore's first source), else the
  profile's static keys in the shared credentials file, then in the config file. A profile with any other
  setting (a role to assume, a credential process, SSO, web identity, FIPS or dual-stack endpoints, an
  `s3` section...) goes to botocore, and so does no credentials at all (container and instance roles: only
  botocore asks those).
- environment: an `AWS_*` variable this module does not read, or a proxy variable, goes to botocore.
- endpoint: a custom endpoint (path-style, as the tier configures botocore), or AWS's standard partition with a
  region from the URL, AWS_DEFAULT_REGION or the profile; virtual-hosted for bucket names that allow it.
  tests/test_s3_read.py checks the URLs against botocore's.
- a bucket in another region than the one configured (a redirect naming `x-amz-bucket-region`) is reported as
  `Redirected`, and the tier hands that and every later request to botocore, which follows such redirects.
"""

from __future__ import annotations

import configparser
import http.client
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from gaffer.cache.base import write_chunks, write_hashed
from gaffer.cache.httpconn import Pool, chunks, read_small
from gaffer.cache.sigv4 import Credentials, amz_date, signed_headers
from gaffer.digest import Digest

#: AWS_* variables whose meaning this module implements (or that do not touch S3 requests); any other: botocore.
_UNDERSTOOD_ENV = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CA_BUNDLE",
    "AWS_EC2_METADATA_DISABLED", "AWS_PAGER", "AWS_DEFAULT_OUTPUT", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
})
#: profile settings likewise (besides `cli_*`, the AWS CLI's own)
_UNDERSTOOD_PROFILE = frozenset({
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_security_token", "region", "output",
    "ca_bundle", "max_attempts", "retry_mode",
})
_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy")
#: AWS's standard partition (botocore's partitions.json): other partitions have other domains and rules
_AWS_REGION = re.compile(r"(us|eu|ap|sa|ca|me|af|il|mx)-\w+-\d+")
#: bucket names usable as a host name (botocore's rule for virtual-hosted addressing over https: no dots)
_DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_REGION_NAME = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")  # botocore's validate_region_name
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")


class S3Error(Exception):
    """An S3 answer other than success or 404-for-a-key: the status and S3's error code ("" when it has no body)."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"HTTP {status} {code}".strip())
        self.status = status
        self.code = code


class Redirected(Exception):
    """The bucket answered from another region: botocore's region redirector is needed."""


@dataclass(frozen=True)
class Settings:
    """What a request needs: where to send it and how to sign it."""

    credentials: Credentials
    region: str
    scheme: str
    host: str  # with the port when it is not the scheme's default
    base: str  # the path before the key: "/bucket/" (path-style) or "/" (virtual-hosted)
    ca_bundle: str | None


def _read_ini(path: str) -> configparser.RawConfigParser | None:
    """An AWS config or credentials file; None when it cannot be read or parsed (botocore will say why)."""
    parser = configparser.RawConfigParser()
    try:
        with open(os.path.expandvars(os.path.expanduser(path)), encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        return configparser.RawConfigParser()
    except (OSError, UnicodeDecodeError, configparser.Error):
        return None
    return parser


def _profile_section(parser: configparser.RawConfigParser, name: str, config_file: bool) -> dict[str, str] | None:
    """The profile's settings; None when one is not understood (a nested value is one: it starts with a newline)."""
    sections = [s for s in ([f"profile {name}", name] if config_file and name == "default" else
                            [f"profile {name}"] if config_file else [name]) if parser.has_section(s)]
    if len(sections) > 1:
        return None  # both [default] and [profile default]: which wins is botocore's business
    values = dict(parser.items(sections[0])) if sections else {}
    for key, value in values.items():
        if not (key in _UNDERSTOOD_PROFILE or key.startswith("cli_")) or value.startswith("\n"):
            return None
    return values


def _static_keys(values: dict[str, str]) -> Credentials | None:
    access, secret = values.get("aws_access_key_id"), values.get("aws_secret_access_key")
    if not access or not secret:
        return None
    return Credentials(access, secret, values.get("aws_session_token") or values.get("aws_security_token") or None)


def resolve(bucket: str, endpoint: str | None, region: str | None) -> Settings | None:
    """Everything a signed read needs, when the environment and the AWS files hold nothing this module does not
    implement; else None (use botocore). `endpoint` is the custom endpoint the tier configured, if any."""
    env = os.environ
    if any(k.startswith("AWS_") and k not in _UNDERSTOOD_ENV for k in env) or \
            any(env.get(k) or env.get(k.upper()) for k in _PROXY_ENV):
        return None
    profile_name = env.get("AWS_DEFAULT_PROFILE") or env.get("AWS_PROFILE") or "default"
    config = _read_ini(env.get("AWS_CONFIG_FILE") or "~/.aws/config")
    shared = _read_ini(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials")
    if config is None or shared is None:
        return None
    profile = _profile_section(config, profile_name, config_file=True)
    in_shared = _profile_section(shared, profile_name, config_file=False)
    if profile is None or in_shared is None:
        return None
    if profile_name != "default" and not profile and not in_shared:
        return None  # botocore: "The config profile could not be found"
    access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if access and secret:
        credentials: Credentials | None = Credentials(
            access, secret, env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None)
    elif access or secret:
        return None  # partial: botocore's error
    else:
        credentials = _static_keys(in_shared) or _static_keys(profile)
    if credentials is None:
        return None
    region = region or env.get("AWS_DEFAULT_REGION") or profile.get("region")
    if region is not None and not _REGION_NAME.fullmatch(region):
        return None  # botocore's InvalidRegionError
    ca_bundle = env.get("AWS_CA_BUNDLE") or profile.get("ca_bundle")
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment or \
                parts.path.strip("/"):
            return None
        return Settings(credentials, region or "us-east-1", parts.scheme, _host(parts.scheme, parts.netloc),
                        f"/{quote(bucket, safe='')}/", ca_bundle)
    if not region or not _AWS_REGION.fullmatch(region):
        return None  # no region (botocore finds the bucket's) or another partition
    domain = "s3.amazonaws.com" if region == "us-east-1" else f"s3.{region}.amazonaws.com"
    if _DNS_BUCKET.fullmatch(bucket):
        return Settings(credentials, region, "https", f"{bucket}.{domain}", "/", ca_bundle)
    return Settings(credentials, region, "https", domain, f"/{quote(bucket, safe='')}/", ca_bundle)


def _host(scheme: str, netloc: str) -> str:
    """The Host header botocore signs: the port only when it is not the scheme's default."""
    default = ":443" if scheme == "https" else ":80"
    return netloc.removesuffix(default)


class S3Reader:
    """GET and HEAD on one bucket, signed, over kept-alive connections. Thread-safe."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings = settings
        self._pool = Pool(settings.scheme, settings.host, timeout, settings.ca_bundle)

    @classmethod
    def open(cls, bucket: str, endpoint: str | None, region: str | None, timeout: float) -> S3Reader | None:
        settings = resolve(bucket, endpoint, region)
        return None if settings is None else cls(settings, timeout)

    def url(self, key: str) -> str:
        """Where a request for `key` goes (no request is made): for the tests that compare it with botocore's."""
        s = self.settings
        return f"{s.scheme}://{s.host}{s.base}{quote(key, safe='/~')}"

    # -- requests ----------------------------------------------------------------------------------------------

    def head(self, key: str) -> int | None:
        """The object's size, or None if there is no such key."""
        with self._request("HEAD", self.settings.base + quote(key, safe="/~")) as response:
            if response.status == 404:
                return None
            return int(response.getheader("Content-Length", "-1"))

    def head_bucket(self) -> bool:
        """Does the bucket exist (and may these credentials read it)? False for a 404."""
        with self._request("HEAD", self.settings.base) as response:
            return response.status != 404

    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None if there is no such key."""
        with self._get(key) as response:
            return None if response is None else b"".join(chunks(response))

    def fetch(self, key: str, dest: Path) -> bool:
        """Stream the object into the file `dest`; False if there is no such key (nothing written)."""
        with self._get(key) as response:
            return write_chunks(dest, None if response is None else chunks(response))

    def fetch_hashed(self, key: str, dest: Path) -> Digest | None:
        """`fetch`, hashing the object as it is written: the digest of what `dest` holds, None if there is no
        such key."""
        with self._get(key) as response:
            return write_hashed(dest, None if response is None else chunks(response))

    @contextmanager
    def _get(self, key: str) -> Iterator[http.client.HTTPResponse | None]:
        with self._request("GET", self.settings.base + quote(key, safe="/~")) as response:
            if response.status != 404:
                yield response
                return
            code = _code(response)
            if code == "NoSuchBucket":
                raise S3Error(404, code)
            yield None

    @contextmanager
    def _request(self, method: str, path: str) -> Iterator[http.client.HTTPResponse]:
        """A signed request; yield a successful response or a 404. S3 errors and redirects are raised."""
        s = self.settings
        headers = signed_headers(method, s.host, path, "", s.credentials, s.region, amz_date())
        with self._pool.request(method, path, headers) as response:
            status = response.status
            if status in (301, 307, 400) and response.getheader("x-amz-bucket-region"):
                raise Redirected(response.getheader("x-amz-bucket-region"))
            if status >= 300 and status != 404:
                raise S3Error(status, _code(response) if method == "GET" else "")
            yield response

    def close(self) -> None:
        self._pool.close()


def _code(response: http.client.HTTPResponse) -> str:
    """S3's error code from an error document, "" when there is none."""
    match = _ERROR_CODE.search(read_small(response))
    return match.group(1).decode("utf-8", "replace") if match else ""
