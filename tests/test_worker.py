"""`gaffer worker` processes taking actions from `gaffer serve`, submitted by a client written from the REAPI protos.

Each test gives its workers and actions a platform property of its own (`test=<name>`), so the workers of one test
never take another test's actions. Tests follow the workers through their log lines, never by sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2

from gaffer.protos import remote_execution_pb2 as re_pb2
from tests import servers
from tests.buildgrid import ReapiServer, start_gaffer_serve
from tests.reapi_client import Client, Worker, start_worker

BOT_TIMEOUT = "3s"  # a killed worker's actions are requeued this long after its last call


@pytest.fixture(scope="module")
def serve() -> Iterator[ReapiServer]:
    server = start_gaffer_serve("--bot-timeout", BOT_TIMEOUT)
    yield server
    server.stop()


@pytest.fixture
def client(serve: ReapiServer) -> Iterator[Client]:
    c = Client(serve.grpc_address)
    yield c
    c.close()


@pytest.fixture
def workers(serve: ReapiServer, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start `gaffer worker`s on the module's server (stopped, and checked to exit 0, at the end)."""
    started: list[Worker] = []

    def start(name: str, *args: str, address: str = serve.grpc_address) -> Worker:
        worker = start_worker(address, name, *args, directory=tmp_path / f"worker-{name}")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            assert worker.stop() == 0, worker.text()


def _response(stream: Iterator[object]) -> re_pb2.ExecuteResponse:
    *_, last = stream
    response = re_pb2.ExecuteResponse()
    assert last.response.Unpack(response)  # type: ignore[attr-defined]
    return response


def test_a_worker_runs_an_action_from_gaffer_serve(client: Client, workers: Callable[..., Worker]) -> None:
    worker = workers("basic", "--platform", "test=basic")
    submitted = client.action(["sh", "-c", "cat in.txt; mkdir out; echo made > out/file; echo warn >&2"],
                              files={"in.txt": b"input\n"}, outputs=["out"], platform={"test": "basic"})
    response = client.execute(submitted)
    assert response.status.code == code_pb2.OK, response.status
    result = response.result
    assert result.exit_code == 0
    assert client.read(result.stdout_digest) == b"input\n" and client.read(result.stderr_digest) == b"warn\n"
    tree = re_pb2.Tree.FromString(client.read(result.output_directories[0].tree_digest))
    (made,) = tree.root.files
    assert made.name == "file" and client.read(made.digest) == b"made\n"
    assert result.execution_metadata.worker.endswith("-basic")
    worker.wait_for(r"lease \S+: done in \S+, exit 0")
    assert "no blob reports" not in worker.text()  # gaffer serve has the Inventory service


def test_a_no_link_worker_never_gets_a_link_action(client: Client, workers: Callable[..., Worker]) -> None:
    workers("nolink", "--platform", "test=link", "--no-link", "--max-jobs", "2")
    workers("link", "--platform", "test=link")
    ran = []
    for i in range(6):
        submitted = client.action(["echo", f"link step {i}"], platform={"test": "link", "linking": "true"})
        ran.append(client.execute(submitted).result.execution_metadata.worker)
    assert all(name.endswith("-link") for name in ran), ran


def test_an_action_on_a_worker_killed_mid_action_runs_again_elsewhere(client: Client, workers: Callable[..., Worker],
                                                                      tmp_path: Path) -> None:
    first, second = workers("kill-a", "--platform", "test=kill"), workers("kill-b", "--platform", "test=kill")
    marks = tmp_path / "marks"
    marks.mkdir()
    script = (f"echo $$ >> {marks}/pids; "
              f"if [ ! -e {marks}/first ]; then touch {marks}/first; sleep 60; fi; echo second attempt")
    stream = client.start(client.action(["sh", "-c", script], platform={"test": "kill"}))
    try:
        servers.wait_until((marks / "first").exists, "the first attempt", 30)
        victim = next(w for w in (first, second) if ": running" in w.text())
        survivor = second if victim is first else first
        victim.proc.kill()
        victim.proc.wait()
        response = _response(stream)
        assert response.status.code == code_pb2.OK and response.result.exit_code == 0, response
        assert client.read(response.result.stdout_digest) == b"second attempt\n"
        assert response.result.execution_metadata.worker.endswith(f"-{survivor.name}")
    finally:
        for pid in (marks / "pids").read_text().split():  # the killed worker's action outlives it
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_an_output_path_escaping_the_exec_root_is_refused(client: Client, workers: Callable[..., Worker]) -> None:
    workers("escape", "--platform", "test=escape")
    submitted = client.action(["sh", "-c", "echo x > ../../escaped"], outputs=["../../escaped"],
                              platform={"test": "escape"})
    response = client.execute(submitted)
    assert response.status.code == code_pb2.INVALID_ARGUMENT, response.status
    assert "unsafe output path '../../escaped'" in response.status.message


def test_actions_sharing_a_large_input_go_to_the_worker_holding_it(client: Client, workers: Callable[..., Worker],
                                                                    tmp_path: Path) -> None:
    workers("near", "--platform", "test=locality")
    workers("far", "--platform", "test=locality")
    big = os.urandom(2 * 1024 * 1024)
    ran = []
    for i in range(6):
        submitted = client.action(["sh", "-c", f"wc -c < big.bin; echo {i}"], files={"big.bin": big},
                                  platform={"test": "locality"})
        ran.append(client.execute(submitted).result.execution_metadata.worker)
    assert len(set(ran)) == 1, ran  # the first one's worker holds the input from then on


def test_a_worker_reconnects_to_a_restarted_server(tmp_path: Path) -> None:
    port = servers.free_port()
    workdir = tmp_path / "serve"
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    log = worker_dir / "worker.log"
    # The worker starts first: no server yet, so it backs off and retries.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAFFER_")}
    proc = servers._spawn([*_worker_argv(f"127.0.0.1:{port}", worker_dir)], log, env)
    worker = Worker(proc, log, "restart")
    server = None
    try:
        worker.wait_for(r"cannot open a session: UNAVAILABLE.*retrying in", count=2)
        server = start_gaffer_serve("--grpc", f"127.0.0.1:{port}", "--grace", "1s", workdir=workdir)
        worker.wait_for(r"session \S+ opened")
        c = Client(server.grpc_address)
        started, release = tmp_path / "started", tmp_path / "release"
        stream = c.start(c.action(["sh", "-c", f"touch {started}; while [ ! -e {release} ]; do sleep 0.01; done"],
                                  platform={"test": "restart"}))
        servers.wait_until(started.exists, "the action to start", 30, proc, log)
        server.proc.kill()  # a crash: the session dies with the server
        server.proc.wait()
        with pytest.raises(grpc.RpcError):  # the client's stream breaks with the server
            list(stream)
        c.close()
        worker.wait_for(r"the server is unreachable: UNAVAILABLE.*retrying in")
        server = start_gaffer_serve("--grpc", f"127.0.0.1:{port}", "--grace", "1s", workdir=workdir)
        worker.wait_for(r"session \S+ lost \(NOT_FOUND.*1 running leases finish unreported")
        worker.wait_for(r"session \S+ opened", count=2)
        release.touch()
        worker.wait_for(r"lease \S+: done in \S+, exit 0 \(no longer wanted by the server: not reported\)")
        c = Client(server.grpc_address)
        response = c.execute(c.action(["echo", "after the restart"], platform={"test": "restart"}))
        assert c.read(response.result.stdout_digest) == b"after the restart\n"
        c.close()
    finally:
        assert worker.stop() == 0, worker.text()
        if server is not None:
            server.stop()


def _worker_argv(address: str, directory: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "gaffer", "worker", "--server", address, "--name", f"restart-{uuid.uuid4().hex[:6]}",
            "--dir", str(directory), "--platform", "test=restart"]


def test_worker_usage_errors_are_one_line(tmp_path: Path) -> None:
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("GAFFER_")}
    for args, message in ((["--server", "nowhere"], "--server: 'nowhere': expected HOST:PORT"),
                          (["--server", "127.0.0.1:1", "--platform", "novalue"], "--platform: 'novalue': expected KEY=VALUE"),
                          ([], "no server to work for")):
        proc = subprocess.run([sys.executable, "-m", "gaffer", "worker", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("gaffer worker: ") and message in proc.stderr, proc.stderr
