"""Session-scoped real servers on loopback, started on first use and stopped when the session ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import servers
from tests.support import require_tool


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[servers.Server]:
    """moto's in-memory S3 server (any credentials accepted)."""
    require_tool("moto_server")
    server = servers.start_moto_s3()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ceph_s3() -> Iterator[servers.Server]:
    """A real S3: one-node Ceph with radosgw (credentials in `server.env`)."""
    for tool in ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin"):
        require_tool(tool)
    server = servers.start_ceph_rgw()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.Server]:
    """redis-server without persistence or password."""
    server = servers.start_redis(require_tool("redis-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nginx_cache() -> Iterator[servers.Server]:
    """nginx serving the Bazel HTTP cache protocol, no authentication."""
    server = servers.start_nginx_cache(require_tool("nginx"))
    yield server
    server.stop()
