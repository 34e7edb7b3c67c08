"""The Redis tier's light read path (cache/redisread.py) on a real redis-server: reads from another database
without redis-py, connections the server closed are replaced, and error replies are classified as redis-py does."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from gaffer.cache.base import TierError
from gaffer.cache.redisread import ReplyError
from gaffer.cache.urls import open_tier
from gaffer.digest import digest_bytes
from tests import servers
from tests.support import check_light_reads


def test_reads_need_no_redis_py(redis_server: servers.Server, tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/3?prefix={uuid.uuid4().hex[:8]}"
    blob = b"z" * 3_000_000
    writer = open_tier(url, timeout=10)
    writer.write_blob(digest_bytes(blob), blob)
    writer.write_action(digest_bytes(b"action"), b"result")
    writer.close()
    tier = open_tier(url, timeout=10)
    check_light_reads(tier, blob, b"result", tmp_path)
    assert tier.find_missing([digest_bytes(blob), digest_bytes(b"absent")]) == [digest_bytes(b"absent")]
    tier.close()
    elsewhere = open_tier(url.replace("/3?", "/4?"), timeout=10)  # SELECT: another database holds nothing
    assert elsewhere.read_blob(digest_bytes(blob)) is None
    elsewhere.close()


def test_connections_the_server_closed_are_replaced(redis_server: servers.Server) -> None:
    import redis

    url = f"redis://127.0.0.1:{redis_server.port}/0?prefix={uuid.uuid4().hex[:8]}"
    tier = open_tier(url, timeout=10)
    tier.check()  # a pooled connection now
    admin = redis.Redis(port=redis_server.port)
    killed = admin.client_kill_filter(_type="normal", skipme=True)
    admin.close()
    assert killed >= 1
    assert tier.read_blob(digest_bytes(b"nothing")) is None  # on a new connection, no error
    tier.close()


@pytest.mark.parametrize("reply, authentication, transient", [
    ("WRONGPASS invalid username-password pair or user is disabled.", True, False),
    ("NOAUTH Authentication required.", True, False),
    ("ERR invalid password", True, False),
    ("LOADING Redis is loading the dataset in memory", False, True),
    ("ERR max number of clients reached", False, True),
    ("READONLY You can't write against a read only replica.", False, False),
])
def test_error_replies_are_classified_as_redis_py_does(reply: str, authentication: bool, transient: bool) -> None:
    import redis.exceptions
    from redis._parsers.base import BaseParser

    theirs = BaseParser.parse_error(reply)
    denied = isinstance(theirs, (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError))
    assert denied == authentication  # the tier asks this first: redis-py's AuthenticationError is a ConnectionError
    assert (not denied and isinstance(theirs, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))) == \
        transient
    mine = ReplyError(reply)
    assert (mine.authentication, mine.transient) == (authentication, transient)
    assert str(mine) == str(theirs)


def test_an_unreachable_server_is_transient() -> None:
    tier = open_tier(f"redis://127.0.0.1:{servers.free_port()}/0", timeout=2)
    with pytest.raises(TierError) as e:
        tier.read_action(digest_bytes(b"k"))
    assert e.value.transient and "ConnectionRefusedError" in str(e.value)
    tier.close()
