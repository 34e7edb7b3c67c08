"""AWS Signature Version 4 for S3 requests without a body (GET, HEAD), on the standard library alone.

The S3 tier's light read path (cache/s3read.py) signs with this instead of importing botocore (~0.2 s of CPU
before the first request). S3's flavour of SigV4: the path is signed as sent (URI-encoded once, not normalised),
the payload hash travels in `x-amz-content-sha256`, and every header sent is signed. tests/test_s3_read.py pins
the result to botocore's own signer, header for header.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def amz_date(now: datetime | None = None) -> str:
    """The request's timestamp as SigV4 wants it: `20260130T215501Z`, UTC."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def signed_headers(method: str, host: str, path: str, query: str, credentials: Credentials, region: str,
                   timestamp: str) -> dict[str, str]:
    """The headers to send with a bodiless S3 request: `host`, the payload hash, the date, the session token (if
    any) and the Authorization that signs them all. `path` is the URI-encoded path as sent; `query` the canonical
    query string (keys sorted, URI-encoded), empty for none; `host` includes a non-default port."""
    headers = {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": timestamp}
    if credentials.token:
        headers["x-amz-security-token"] = credentials.token
    names = sorted(headers)
    canonical = "\n".join([
        method, path, query,
        "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in names),
        ";".join(names), EMPTY_SHA256,
    ])
    day = timestamp[:8]
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{credentials.secret_key}".encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return headers
