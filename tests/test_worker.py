"""`gaffer worker` processes taking actions from `gaffer serve`, submitted by a client written from the REAPI protos.

Each test gives its workers and actions a platform property of its own (`test=<name>`), so the workers of one test
never take another test's actions. Tests follow the workers through their log lines, never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from gaffer.actions import host_properties
from gaffer.cache.disk import DiskStore
from gaffer.digest import digest_bytes
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos import remote_execution_pb2_grpc as re_grpc
from gaffer.server.packs import PACKS, read_table
from tests import servers
from tests.buildgrid import ReapiServer, start_gaffer_serve
from tests.reapi_client import Client, Submitted, Worker, digest_of, start_worker

BOT_TIMEOUT = "3s"  # a killed worker's actions are requeued this long after its last call


@pytest.fixture(scope="module")
def serve() -> Iterator[ReapiServer]:
    server = start_gaffer_serve("--bot-timeout", BOT_TIMEOUT, "--memory", "0")  # blobs read from disk only
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


def test_a_platform_key_given_twice_matches_either_value(client: Client, workers: Callable[..., Worker]) -> None:
    workers("pools", "--platform", "test=pools", "--platform", "pool=small", "--platform", "pool=large",
            "--no-link")
    for pool in ("small", "large"):
        response = client.execute(client.action(["echo", pool], platform={"test": "pools", "pool": pool}))
        assert response.result.execution_metadata.worker.endswith("-pools")


def test_reconnection_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    from gaffer.worker.session import BACKOFF_CAP_S, BACKOFF_START_S, Backoff

    backoff = Backoff()
    delays = [backoff.next() for _ in range(12)]
    bounds = [min(BACKOFF_CAP_S, BACKOFF_START_S * 2**i) for i in range(12)]
    assert all(bound / 2 <= delay <= bound for delay, bound in zip(delays, bounds, strict=True)), delays
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next() <= BACKOFF_START_S


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


def test_a_worker_started_on_a_killed_ones_directory_kills_the_actions_it_left(
        client: Client, workers: Callable[..., Worker], tmp_path: Path) -> None:
    """An action runs in a session of its own, so it outlived a worker killed with SIGKILL (or the OOM killer),
    running on beside the actions the next worker takes. That worker, on the same directory, kills it first."""
    first = workers("orphans", "--platform", "test=orphans")
    pid_file = tmp_path / "pid"
    script = f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; sleep 60 & wait"
    stream = client.start(client.action(["sh", "-c", script], platform={"test": "orphans"}))
    try:
        servers.wait_until(pid_file.exists, "the action to start", 30, first.proc, first.log)
        pid = int(pid_file.read_text())
        first.proc.kill()
        first.proc.wait()
        assert Path(f"/proc/{pid}").exists()  # the action, orphaned
        first.log.rename(first.log.with_name("first.log"))  # the next one's log, on the same directory, starts anew
        workers("orphans", "--platform", "test=none")
        servers.wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), "the orphan to be killed", 10)
    finally:
        stream.cancel()  # type: ignore[attr-defined]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_an_output_path_escaping_the_exec_root_is_refused(client: Client, workers: Callable[..., Worker]) -> None:
    workers("escape", "--platform", "test=escape")
    submitted = client.action(["sh", "-c", "echo x > ../../escaped"], outputs=["../../escaped"],
                              platform={"test": "escape"})
    response = client.execute(submitted)
    assert response.status.code == code_pb2.INVALID_ARGUMENT, response.status
    assert "unsafe output path '../../escaped'" in response.status.message


def test_a_malformed_command_is_refused_once_not_retried_as_a_worker_fault(
        client: Client, workers: Callable[..., Worker]) -> None:
    """What the action asks for and no worker could do is INVALID_ARGUMENT at its first attempt, never an INTERNAL
    fault of the worker tried on three of them."""
    worker = workers("malformed", "--platform", "test=malformed")
    platform = {"test": "malformed"}
    for submitted, message in (
            (client.action(["true"], platform=platform, timeout_s=-5), "negative timeout"),
            (client.action(["true"], platform=platform, timeout_s=1e11), "timeout longer than"),
            (client.action(["env"], platform=platform, env={"A=B": "c"}), "environment variable 'A=B'"),
            (client.action(["env"], platform=platform, env={"A": "c\0d"}), "environment variable 'A'"),
            (client.action(["echo", "a\0b"], platform=platform), "argument 'a\\x00b'"),
            (client.action(["sh", "-c", "echo x > f"], outputs=["."], platform=platform), "unsafe output path '.'")):
        response = client.execute(submitted)
        assert response.status.code == code_pb2.INVALID_ARGUMENT, (message, response.status)
        assert message in response.status.message, response.status.message
    assert "INTERNAL" not in worker.text() and "requeued" not in worker.text(), worker.text()


def test_an_output_symlink_pointing_outside_fails_the_action_and_is_not_cached(
        client: Client, workers: Callable[..., Worker]) -> None:
    """A result that cannot hold every output it made (a symlink to an absolute path) is no success: with its
    other outputs dropped, a cached exit 0 would be a hit missing files the command did make. The command's exit
    status and logs still reach the client (they were dropped: a failing command's errors were lost)."""
    workers("abslink", "--platform", "test=abslink")
    submitted = client.action(["sh", "-c", "echo x > f; ln -s /etc/hostname link; echo out; echo err >&2; exit 3"],
                              outputs=["f", "link"], platform={"test": "abslink"})
    response = client.execute(submitted, skip_cache_lookup=False)
    assert response.status.code == code_pb2.INVALID_ARGUMENT, response
    assert "symlink link points to an absolute path" in response.status.message, response.status.message
    assert response.result.exit_code == 3, response
    assert client.read(response.result.stdout_digest) == b"out\n"
    assert client.read(response.result.stderr_digest) == b"err\n"
    assert not response.result.output_files and not response.result.output_symlinks, response
    cache = re_grpc.ActionCacheStub(client.channel)
    with pytest.raises(grpc.RpcError) as missed:
        cache.GetActionResult(re_pb2.GetActionResultRequest(action_digest=submitted.action_digest), timeout=30)
    assert missed.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_worker_holding_more_blobs_than_one_message_carries_reports_them_all(
        serve: ReapiServer, workers: Callable[..., Worker], tmp_path: Path) -> None:
    """80,000 blobs named in one InventoryReport are ~5.6 MB, past the 5 MiB a gaffer serve accepts: the report
    was refused, every time (each lease's report starts over), and the server never learnt what the worker held."""
    count = 80_000
    cache = DiskStore(tmp_path / "worker-many" / "blobs")
    for i in range(count):
        data = b"%08d" % i
        path = cache.blob_path(digest_bytes(data))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    workers("many", "--platform", "test=many")

    def reported() -> bool:
        with urllib.request.urlopen(f"{serve.http_url}/status.json", timeout=10) as reply:
            status = json.load(reply)
        return any(w["name"].endswith("-many") and w["held_blobs"] == count for w in status["workers"])

    servers.wait_until(reported, f"the server knows the worker holds {count} blobs", 30)


def test_an_input_root_sharing_a_directory_too_often_is_refused_at_once(
        client: Client, workers: Callable[..., Worker]) -> None:
    """Eight levels of 20 names for one subdirectory are 10 small messages but 2.5e10 paths: the worker expanded
    them for minutes and gigabytes before refusing (its lease uncancellable meanwhile). Counted over the distinct
    directories first, it is refused before anything is expanded."""
    worker = workers("dag", "--platform", "test=dag")
    data = b"leaf\n"
    level = re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=digest_of(data))]).SerializeToString()
    blobs = [data, level]
    for _ in range(8):
        level = re_pb2.Directory(directories=[re_pb2.DirectoryNode(name=f"d{i:02d}", digest=digest_of(level))
                                              for i in range(20)]).SerializeToString()
        blobs.append(level)
    client.upload(blobs)
    command = re_pb2.Command(arguments=["true"], platform=re_pb2.Platform(properties=[
        re_pb2.Platform.Property(name=k, value=v) for k, v in sorted({**host_properties(), "test": "dag"}.items())]))
    action = re_pb2.Action(command_digest=digest_of(command.SerializeToString()), input_root_digest=digest_of(level))
    client.upload([command.SerializeToString(), action.SerializeToString()])
    submitted = Submitted(action, digest_of(action.SerializeToString()), {})
    response = client.execute(submitted, timeout=30)
    assert response.status.code == code_pb2.INVALID_ARGUMENT, response.status
    assert "input root: too many entries" in response.status.message, response.status.message
    worker.wait_for(r"lease \S+: done in \S+, INVALID_ARGUMENT")


def test_sighup_drains_the_worker_as_sigterm_does(client: Client, workers: Callable[..., Worker],
                                                   tmp_path: Path) -> None:
    """A closed terminal's SIGHUP killed the worker on the spot: its running action went on, orphaned, and the
    server learnt only --bot-timeout later. It now stops as on SIGTERM: no more work, the running action reports.
    A closed terminal usually sends SIGHUP twice: the second (unlike a second SIGTERM) does not kill the action."""
    worker = workers("hup", "--platform", "test=hup")
    started, release = tmp_path / "started", tmp_path / "release"
    stream = client.start(client.action(
        ["sh", "-c", f"touch {started}; while [ ! -e {release} ]; do sleep 0.01; done; echo finished"],
        platform={"test": "hup"}))
    servers.wait_until(started.exists, "the action to start", 30, worker.proc, worker.log)
    os.kill(worker.proc.pid, signal.SIGHUP)  # a closed terminal: bash forwards it, then the kernel sends it again
    os.kill(worker.proc.pid, signal.SIGHUP)
    worker.wait_for("SIGHUP: taking no more work")
    worker.proc.send_signal(signal.SIGHUP)  # one more, surely after the first was handled: ignored too
    worker.wait_for("SIGHUP: already stopping, ignored")
    release.touch()
    response = _response(stream)
    assert response.status.code == code_pb2.OK and response.result.exit_code == 0, response
    assert client.read(response.result.stdout_digest) == b"finished\n"
    assert worker.proc.wait(30) == 0, worker.text()


def test_a_workers_name_reaches_the_servers_log_escaped(serve: ReapiServer, workers: Callable[..., Worker]) -> None:
    """A worker's name (and a lease's failure message) is the worker's word: written raw to the server's log, ESC
    [2J cleared the operator's terminal. Every control character is escaped."""
    worker = workers("esc\x1b[2J", "--platform", "test=esc")
    worker.proc.kill()
    worker.proc.wait()
    servers.wait_until(lambda: "-esc\\x1b[2J stopped updating its session" in serve.log.read_text(errors="replace"),
                       "the server to drop the killed worker", 30, serve.proc, serve.log)
    assert "\x1b" not in serve.log.read_text(errors="replace")


def _lose(store: Path, hash_: str) -> None:
    """Take a blob from the server's disk behind its back: its file, or its bytes in the pack of its batch (a
    packed blob is checked whenever it is read: then a miss too)."""
    path = store / "cas" / hash_[:2] / hash_
    if path.exists():
        path.unlink()
        return
    for pack in (store / PACKS).iterdir():
        for found, offset, size in read_table(str(pack)):
            if found == hash_:
                with open(pack, "r+b") as f:
                    f.seek(offset)
                    f.write(bytes(size))
                return
    raise AssertionError(f"blob {hash_} is not on the server's disk")


def test_an_input_blob_lost_after_queueing_fails_the_lease_naming_it(serve: ReapiServer, client: Client,
                                                                      workers: Callable[..., Worker]) -> None:
    submitted = client.action(["cat", "in.txt"], files={"in.txt": b"soon gone\n"}, platform={"test": "lost"})
    stream = client.start(submitted)
    next(stream)  # queued: the server checked that it has every input; no worker can take it yet
    lost = digest_of(b"soon gone\n")
    _lose(serve.workdir / "store", lost.hash)
    worker = workers("lost", "--platform", "test=lost")
    response = _response(stream)
    assert response.status.code == code_pb2.FAILED_PRECONDITION, response.status
    failure = error_details_pb2.PreconditionFailure()
    assert response.status.details[0].Unpack(failure)
    assert [(v.type, v.subject) for v in failure.violations] == [("MISSING", f"blobs/{lost.hash}/10")]
    worker.wait_for(r"lease \S+: done in \S+, FAILED_PRECONDITION: .* file in.txt ")


def test_one_worker_per_directory(serve: ReapiServer, workers: Callable[..., Worker], tmp_path: Path) -> None:
    workers("first", "--platform", "test=dir")
    proc = subprocess.run(_worker_argv(serve.grpc_address, tmp_path / "worker-first"), env=_env(), capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.endswith("another gaffer worker uses this directory (give each worker its own)\n"), proc.stderr


def test_a_worker_removes_the_temp_files_a_killed_one_left(workers: Callable[..., Worker], tmp_path: Path) -> None:
    """A worker killed mid-lease leaves its action's stdout and stderr files, or a blob it was fetching, in its blob
    cache's temp directory, outside the cache's bound: the next worker on the directory removes them."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    tmp = tmp_path / "worker-restarted" / "blobs" / "tmp"
    tmp.mkdir(parents=True)
    left = tmp / f"{gone.pid}-1-aaaaaaaa"
    left.write_bytes(b"half a blob")
    workers("restarted", "--platform", "test=restarted")
    assert not left.exists()


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


def test_the_blob_cache_stays_within_its_bound(client: Client, workers: Callable[..., Worker],
                                               tmp_path: Path) -> None:
    worker = workers("small", "--platform", "test=small", "--max-size", "1MiB")
    for _ in range(5):
        submitted = client.action(["wc", "-c", "in.bin"], files={"in.bin": os.urandom(400 * 1024)},
                                  platform={"test": "small"})
        assert client.read(client.execute(submitted).result.stdout_digest) == b"409600 in.bin\n"
    assert worker.stop() == 0, worker.text()  # every lease's eviction done
    assert "evicted" in worker.text()
    held = sum(f.stat().st_size for f in (tmp_path / "worker-small" / "blobs" / "cas").rglob("*") if f.is_file())
    assert 400 * 1024 <= held <= 1024 * 1024


def test_a_worker_reconnects_to_a_restarted_server(tmp_path: Path) -> None:
    port = servers.free_port()
    workdir = tmp_path / "serve"
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    log = worker_dir / "worker.log"
    # The worker starts first: no server yet, so it backs off and retries.
    proc = servers._spawn(_worker_argv(f"127.0.0.1:{port}", worker_dir), log, _env())
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


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GAFFER_")}


def _worker_argv(address: str, directory: Path) -> list[str]:
    return [sys.executable, "-m", "gaffer", "worker", "--server", address, "--name", f"restart-{uuid.uuid4().hex[:6]}",
            "--dir", str(directory), "--platform", "test=restart"]


def test_worker_usage_errors_are_one_line(tmp_path: Path) -> None:
    env = _env()
    for args, message, status in (
            (["--server", "nowhere"], "--server: 'nowhere': expected HOST:PORT", 2),
            (["--server", "127.0.0.1:1", "--platform", "novalue"], "--platform: 'novalue': expected KEY=VALUE", 2),
            (["--server", "grpc://127.0.0.1:1"], "--server: 'grpc://127.0.0.1:1': expected HOST:PORT", 2),
            (["--server", "127.0.0.1:1", "--max-jobs", "5000"], "--max-jobs: '5000' is not a number of jobs from 1 to 1024",
             2),
            (["--server", "127.0.0.1:1", "--dir", "/dev/null"],
             "--dir /dev/null: cannot create the directory: a file is in the way", 3),
            ([], "no server to work for", 2)):
        proc = subprocess.run([sys.executable, "-m", "gaffer", "worker", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == status and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("gaffer worker: ") and message in proc.stderr, proc.stderr


def test_a_worker_the_server_refuses_as_malformed_exits_at_once(serve: ReapiServer, tmp_path: Path) -> None:
    """An instance name the server refuses is refused again at every retry: one line and exit 2, not a loop."""
    argv = [*_worker_argv(serve.grpc_address, tmp_path / "bad-instance"), "--instance", "../x"]
    refused = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines()[-1].startswith(
        f"gaffer worker: {serve.grpc_address} refuses the worker: INVALID_ARGUMENT: invalid instance name '../x'"
    ), refused.stderr


def test_a_worker_needs_the_servers_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    server = start_gaffer_serve("--token-file", str(token), workdir=tmp_path / "serve")
    try:
        refused = subprocess.run(_worker_argv(server.grpc_address, tmp_path / "refused"), env=_env(),
                                 capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.splitlines()[-1].startswith(f"gaffer worker: {server.grpc_address} refuses the worker: "
                                                           "UNAUTHENTICATED"), refused.stderr
        assert refused.stderr.endswith("(see --token-file)\n")
        worker = start_worker(server.grpc_address, "token", "--platform", "test=restart", "--token-file", str(token),
                              directory=tmp_path / "worker")
        client = Client(server.grpc_address, token="s3cret")
        response = client.execute(client.action(["echo", "with a token"], platform={"test": "restart"}))
        assert client.read(response.result.stdout_digest) == b"with a token\n"
        client.close()
        assert worker.stop() == 0, worker.text()
    finally:
        server.stop()


def test_an_action_that_exceeds_its_timeout_fails_once_and_is_not_retried(
        client: Client, workers: Callable[..., Worker]) -> None:
    worker = workers("timeout", "--platform", "test=timeout")
    submitted = client.action(["sh", "-c", f"echo {uuid.uuid4().hex} >> runs.log; echo before; sleep 60"],
                              timeout_s=1, platform={"test": "timeout"})
    response = client.execute(submitted)
    assert response.status.code == code_pb2.DEADLINE_EXCEEDED, response.status
    assert client.read(response.result.stdout_digest) == b"before\n", "what it wrote before the timeout is kept"
    worker.wait_for(r"lease \S+: ")
    assert len(worker.text().split("running")) - 1 == 1, worker.text()  # one attempt: its own timeout, not a fault
