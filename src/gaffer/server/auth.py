"""The bearer-token check both protocols of `gaffer serve` apply when it runs with --token-file."""

from __future__ import annotations

import hmac


class BearerToken:
    """`authorization: Bearer <token>` must carry the server's token; with no token the server is open."""

    def __init__(self, token: str | None) -> None:
        self._expected = f"Bearer {token}".encode() if token else None

    @property
    def required(self) -> bool:
        return self._expected is not None

    def allows(self, header: str | None) -> bool:
        if self._expected is None:
            return True
        # constant-time, so response timing does not reveal how much of a guessed token was right
        return header is not None and hmac.compare_digest(header.strip().encode(), self._expected)
