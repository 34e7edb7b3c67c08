"""REAPI servers for the tests and benchmarks/bench_server.py: `gaffer serve` and BuildGrid.

BuildGrid (the reference REAPI server) lives in its own venv, .venv-buildgrid (scripts/install-buildgrid.sh),
because it pins its own grpcio/protobuf. It takes 2-8 s to start, so tests share one session-scoped server.
`gaffer serve` starts on port 0 and says which ports it got on stderr; both are polled until they answer.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import servers
from tests.support import NOBODY, REPO, require, require_tool

BGD = REPO / ".venv-buildgrid" / "bin" / "bgd"
_LISTENING = re.compile(r"gaffer serve: grpc on [^:]+:(\d+)(?:, http on [^:]+:(\d+))?")


@dataclass
class ReapiServer:
    """A running REAPI server process: its gRPC address (and HTTP URL for gaffer serve), state dir and log."""

    name: str
    grpc_address: str
    workdir: Path
    proc: subprocess.Popen[bytes]
    log: Path
    http_url: str = ""
    started_in_s: float = 0.0

    @property
    def url(self) -> str:
        """The cache URL of the default ("") instance."""
        return f"grpc://{self.grpc_address}"

    def stop(self) -> None:
        servers._terminate(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def grpc_answers(address: str) -> Callable[[], bool]:
    """Readiness probe: GetCapabilities on the default instance succeeds."""

    def probe() -> bool:
        import grpc

        from gaffer.protos import remote_execution_pb2 as re_pb2
        from gaffer.protos import remote_execution_pb2_grpc as re_grpc

        with grpc.insecure_channel(address) as channel:
            try:
                re_grpc.CapabilitiesStub(channel).GetCapabilities(re_pb2.GetCapabilitiesRequest(), timeout=0.5)
            except grpc.RpcError:
                return False
        return True

    return probe


def start_gaffer_serve(*args: str, workdir: Path | None = None, env: dict[str, str] | None = None,
                       fd_limit: int | None = None,
                       command: Sequence[str] = (sys.executable, "-m", "gaffer.server.main")) -> ReapiServer:
    """`python -m gaffer.server.main --grpc 127.0.0.1:0 --http 127.0.0.1:0 --dir <workdir>/store *args`, under
    `prlimit --nofile=N:N` with `fd_limit`; `command` in place of `python -m gaffer.server.main`."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="gaffer-serve-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "serve.log"
    start = log.stat().st_size if log.exists() else 0  # a restart on the same workdir appends to the log
    argv = [*command, "--dir", str(workdir / "store"),
            "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", *args]
    if fd_limit is not None:
        argv = [require_tool("prlimit"), f"--nofile={fd_limit}:{fd_limit}", "--", *argv]
    t0 = time.perf_counter()
    proc = servers._spawn(argv, log, {**os.environ, **env} if env else None)
    found: list[re.Match[str]] = []

    def listening() -> bool:
        match = _LISTENING.search(log.read_bytes()[start:].decode(errors="replace")) if log.exists() else None
        if match:
            found.append(match)
        return match is not None

    try:
        servers.wait_until(listening, "gaffer serve", servers.START_TIMEOUT_S, proc, log)
    except BaseException:
        servers._terminate(proc)
        raise
    grpc_port, http_port = found[0].group(1), found[0].group(2)
    return ReapiServer("gaffer", f"127.0.0.1:{grpc_port}", workdir, proc, log, f"http://127.0.0.1:{http_port}",
                       time.perf_counter() - t0)


def buildgrid_config(port: int, workdir: Path, storage: str) -> str:
    """A cache-only BuildGrid: CAS, ByteStream, ActionCache (and the Capabilities it always adds), instance "".

    storage "memory": an LRU in memory (tests); "disk": blobs as files under workdir/cas (benchmarks), the
    action cache an in-memory LRU over that storage either way."""
    store = (f"  - !disk-storage &store\n    path: {workdir / 'cas'}\n" if storage == "disk"
             else "  - !lru-storage &store\n    size: 2048M\n")
    return f"""server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
grpc-server-options:
  grpc.so_reuseport: 0
authorization:
  method: none
thread-pool-size: 32
storages:
{store}caches:
  - !lru-action-cache &ac
    storage: *store
    max-cached-refs: 1000000
    allow-updates: true
    cache-failed-actions: true
instances:
  - name: ""
    services:
      - !action-cache
        cache: *ac
      - !cas
        storage: *store
      - !bytestream
        storage: *store
"""


def buildgrid_installed() -> bool:
    return BGD.exists()


def start_buildgrid(storage: str = "memory") -> ReapiServer:
    """`bgd server start` with `buildgrid_config(storage)` on a free loopback port, polled until it answers."""
    return _start_bgd("gaffer-buildgrid-", lambda port, workdir: buildgrid_config(port, workdir, storage))


def _start_bgd(prefix: str, config_for: Callable[[int, Path], str]) -> ReapiServer:
    """`bgd server start` with the configuration `config_for(port, workdir)` gives, polled until it answers."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    port = servers.free_port()
    config = workdir / "buildgrid.yml"
    config.write_text(config_for(port, workdir))
    log = workdir / "bgd.log"
    address = f"127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = servers._spawn([str(BGD), "server", "start", str(config)], log)
    try:
        servers.wait_until(grpc_answers(address), "BuildGrid", servers.START_TIMEOUT_S, proc, log)
    except BaseException:
        servers._terminate(proc)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return ReapiServer("buildgrid", address, workdir, proc, log, started_in_s=time.perf_counter() - t0)


@pytest.fixture(scope="session")
def buildgrid() -> Iterator[ReapiServer]:
    """BuildGrid 0.4.4 with an in-memory cache, instance "" (started once: it takes seconds)."""
    require(buildgrid_installed(), "BuildGrid is not installed (scripts/install-buildgrid.sh)")
    server = start_buildgrid("memory")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gaffer_serve() -> Iterator[ReapiServer]:
    """`gaffer serve` on a fresh store, open (no token), gRPC and HTTP on free ports."""
    server = start_gaffer_serve()
    yield server
    server.stop()


def serve_s3_backend(bucket: servers.Server, prefix: str) -> tuple[str, dict[str, str]]:
    """The `--backend` URL of `prefix` in the test bucket on `bucket` (moto or Ceph), and the credentials."""
    from tests.conftest import BUCKET

    return f"s3://{BUCKET}/{prefix}?endpoint={bucket.url}&region=us-east-1", bucket.env


@pytest.fixture(scope="session")
def gaffer_serve_s3(moto_bucket: servers.Server) -> Iterator[ReapiServer]:
    """`gaffer serve --backend s3://...` on moto, open, gRPC and HTTP on free ports: no local store of record."""
    url, env = serve_s3_backend(moto_bucket, f"serve-{uuid.uuid4().hex[:8]}")
    server = start_gaffer_serve("--backend", url, env=env)
    yield server
    server.stop()


def stop_signal(server: ReapiServer, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Send `sig` and return the exit status."""
    server.proc.send_signal(sig)
    return server.proc.wait(timeout)


# -- BuildGrid's execution service (Execution + Bots), on a private PostgreSQL ------------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def postgres_installed() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "postgres").exists()


def _as_unprivileged() -> list[str]:
    """PostgreSQL refuses to run as root: as root (CI), run it as nobody; else as the user running the tests."""
    if os.geteuid() != 0:
        return []
    return [require_tool("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def start_postgres() -> servers.Server:
    """A private PostgreSQL 15 cluster in a temp dir, on a free loopback port, trust auth for user `bgd`.

    Never the Debian package's cluster or service: initdb makes a fresh data directory, and `postgres` runs in
    the foreground as the fixture's child (SIGINT, a fast shutdown, stops it; it dies with the test process)."""
    workdir = Path(tempfile.mkdtemp(prefix="gaffer-pg-"))
    os.chmod(workdir, 0o755)  # nobody must reach the data directory inside
    data = workdir / "data"
    data.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(data, NOBODY, NOBODY)
    log = workdir / "postgres.log"
    user = _as_unprivileged()
    init = subprocess.run([*user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "bgd", "--auth=trust",
                           "-E", "UTF8", "--no-sync"], capture_output=True, text=True, check=False)
    if init.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    port = servers.free_port()
    argv = [*user, str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(data),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=200"]
    proc = servers._spawn(argv, log)

    def ready() -> bool:
        return subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)],
                              check=False).returncode == 0

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: does not wait for BuildGrid's connections
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    try:
        servers.wait_until(ready, "PostgreSQL", servers.START_TIMEOUT_S, proc, log)
    except BaseException:
        stop()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return servers.Server("postgres", port, f"postgresql+psycopg2://bgd@127.0.0.1:{port}/postgres", workdir, stop)


def buildgrid_execution_config(port: int, database: str) -> str:
    """CAS, ByteStream, ActionCache, Execution and Bots on instance "", the scheduler's state in `database`.
    Actions match workers on OSFamily, ISA (always) and linking; `_gaffer_*` worker properties are not matched."""
    return f"""server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
grpc-server-options:
  grpc.so_reuseport: 0
authorization:
  method: none
thread-pool-size: 32
connections:
  - !sql-connection &sql
    connection-string: {database}
    pool-size: 10
    pool-timeout: 30
    max-overflow: 20
storages:
  - !lru-storage &store
    size: 512M
caches:
  - !lru-action-cache &ac
    storage: *store
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *store
    action-cache: *ac
    bot-session-keepalive-timeout: 30
    property-set: !dynamic-property-set
      match-property-keys: [linking, pool]
instances:
  - name: ""
    services:
      - !action-cache
        cache: *ac
      - !execution
        scheduler: *scheduler
      - !cas
        storage: *store
      - !bytestream
        storage: *store
"""


@dataclass
class BuildGridExecution:
    """BuildGrid with its execution service and the PostgreSQL it keeps its scheduler's state in."""

    server: ReapiServer
    postgres: servers.Server

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            self.postgres.stop()


def start_buildgrid_execution() -> BuildGridExecution:
    postgres = start_postgres()
    try:
        migrate = subprocess.run([str(BGD), "migrate", "apply", postgres.url], capture_output=True, text=True,
                                 check=False)
        if migrate.returncode != 0:
            raise RuntimeError(f"bgd migrate apply failed:\n{migrate.stdout}\n{migrate.stderr}")
        server = _start_bgd("gaffer-buildgrid-exec-", lambda port, _workdir: buildgrid_execution_config(port, postgres.url))
    except BaseException:
        postgres.stop()
        raise
    return BuildGridExecution(server, postgres)


@pytest.fixture(scope="session")
def buildgrid_execution() -> Iterator[BuildGridExecution]:
    """BuildGrid 0.4.4 with Execution + Bots (what gaffer workers and REAPI clients use), on a private PostgreSQL
    cluster, instance "" (started once per session: it takes seconds)."""
    require(buildgrid_installed(), "BuildGrid is not installed (scripts/install-buildgrid.sh)")
    require(postgres_installed(), f"PostgreSQL 15 is not installed ({PG_BIN})")
    bg = start_buildgrid_execution()
    yield bg
    bg.stop()
