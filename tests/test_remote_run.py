"""`gaffer run --remote`: real `gaffer serve` and `gaffer worker` processes on loopback, real builds.

Each test's commands carry a marker of their own, so their actions never meet another test's in the shared
server's action cache; "ran N actions" is read from the server's /status.json counters.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import servers
from tests.buildgrid import BuildGridExecution, ReapiServer, start_gaffer_serve
from tests.reapi_client import Worker, start_worker
from tests.support import gaffer_env, go_env, require_example, run_gaffer, summary

CLOSED_PORT_URL = f"grpc://127.0.0.1:{servers.free_port()}"  # nothing listens there


@dataclass
class Farm:
    """A gaffer serve and its workers."""

    server: ReapiServer
    workers: list[Worker] = field(default_factory=list)
    workdir: Path = Path()

    @property
    def url(self) -> str:
        return self.server.url

    def status(self) -> dict:
        with urllib.request.urlopen(f"{self.server.http_url}/status.json", timeout=10) as response:
            return json.loads(response.read())

    def started(self) -> int:
        """Actions the server has sent to workers so far."""
        return int(self.metric('gaffer_actions_total{event="started"}'))

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"{self.server.http_url}/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    def add_worker(self, name: str, *args: str, env: dict[str, str] | None = None) -> Worker:
        """`gaffer worker --server ... --name NAME`, once its session is open."""
        worker = start_worker(self.server.grpc_address, name, *args, directory=self.workdir / f"worker-{name}",
                              env=env)
        self.workers.append(worker)
        return worker

    def stop_worker(self, worker: Worker) -> None:
        worker.stop()
        self.workers.remove(worker)

    def stop(self) -> None:
        for worker in list(self.workers):
            self.stop_worker(worker)
        self.server.stop()


def start_farm(workdir: Path, workers: int, *worker_args: str, env: dict[str, str] | None = None,
               serve_args: Sequence[str] = ()) -> Farm:
    workdir.mkdir(parents=True, exist_ok=True)
    farm = Farm(start_gaffer_serve(*serve_args, workdir=workdir / "serve"), workdir=workdir)
    try:
        for i in range(workers):
            farm.add_worker(f"w{i + 1}", *worker_args, env=env)
    except BaseException:
        farm.stop()
        raise
    return farm


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """One server and two workers (one action each at a time), shared by this module's tests."""
    f = start_farm(tmp_path_factory.mktemp("farm"), 2)
    yield f
    f.stop()


def write_workspace(ws: Path, marker: str) -> None:
    """A small graph with what outputs can hold: an executable file, a directory with a subdirectory, an empty
    directory and a symlink, and a dependency chain through them."""
    ws.mkdir(parents=True)
    (ws / "src").mkdir()
    (ws / "src" / "words.txt").write_text("alpha\nbeta\ngamma\n")
    (ws / "src" / "big.bin").write_bytes((marker.encode() * 8192)[:256 * 1024])  # 256 KiB, this test's own
    tasks = {
        "gen": {"command": f"mkdir -p out/sub out/empty && sort -r src/words.txt > out/sub/sorted.txt && "
                           f"printf '#!/bin/sh\\necho {marker}\\n' > out/run.sh && chmod 755 out/run.sh && "
                           f"ln -s sub/sorted.txt out/link && echo gen-says-{marker}",
                "inputs": ["src/words.txt"], "outputs": ["out"]},
        "big": {"command": "sha256sum src/big.bin > big.sum", "inputs": ["src/big.bin"], "outputs": ["big.sum"]},
        "use": {"command": "sh out/run.sh > used.txt && cat out/link big.sum >> used.txt && chmod 600 used.txt",
                "deps": ["gen", "big"], "outputs": ["used.txt"]},
    }
    (ws / "graph.json").write_text(json.dumps({"tasks": tasks}))


def snapshot(ws: Path) -> dict[str, tuple[str, object]]:
    """Every path below `ws` except gaffer's state: (kind and mode, content or target)."""
    found: dict[str, tuple[str, object]] = {}
    for path in sorted(ws.rglob("*")):
        rel = path.relative_to(ws).as_posix()
        if rel.startswith(".gaffer") or rel == "graph.json":
            continue
        st = path.lstat()
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = (f"dir {st.st_mode & 0o777:o}", None)
        else:
            found[rel] = (f"file {st.st_mode & 0o777:o}", path.read_bytes())
    return found


def gaffer(ws: Path, *args: str, cache: str = "cache", env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    """`gaffer run ARGS --summary-json` in `ws` with a private local cache; the summary beside `ws`."""
    environment = gaffer_env(ws.parent / f"{ws.name}-{cache}", **(env or {}))
    return run_gaffer(["run", *args, "--summary-json", str(ws.parent / f"{ws.name}-summary.json")], cwd=ws,
                      env=environment)


def statuses(ws: Path) -> dict[str, str]:
    return summary(ws.parent / f"{ws.name}-summary.json")["status"]


def test_remote_build_is_byte_identical_to_a_local_one_and_a_fresh_checkout_comes_from_the_action_cache(
        farm: Farm, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    local, remote, again = tmp_path / "local", tmp_path / "remote", tmp_path / "again"
    for ws in (local, remote, again):
        write_workspace(ws, marker)
    assert gaffer(local).returncode == 0
    before = farm.started()
    proc = gaffer(remote, "--remote", farm.url)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(remote) == snapshot(local)
    assert farm.started() == before + 3
    assert statuses(remote) == {"gen": "executed", "big": "executed", "use": "executed"}
    assert "Completed gen (" in proc.stderr and " on worker " in proc.stderr, proc.stderr
    assert f"gen-says-{marker}" in proc.stdout  # the task's stdout, shown as for a local task

    proc = gaffer(again, "--remote", farm.url)  # another checkout, another local cache
    assert proc.returncode == 0, proc.stderr
    assert snapshot(again) == snapshot(local)
    assert farm.started() == before + 3  # answered by the action cache: no worker ran anything
    assert statuses(again) == {"gen": "cached", "big": "cached", "use": "cached"}
    assert f"gen-says-{marker}" in proc.stdout  # its stdout replayed

    proc = gaffer(again, "--remote", farm.url)
    assert proc.returncode == 0 and "Build completed" in proc.stderr and farm.started() == before + 3


def test_sources_are_uploaded_once_across_builds(farm: Farm, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    first, second = tmp_path / "first", tmp_path / "second"
    for ws in (first, second):
        write_workspace(ws, marker)
    received = farm.metric("gaffer_received_bytes_total")
    assert gaffer(first, "--remote", farm.url, "big").returncode == 0
    uploaded = farm.metric("gaffer_received_bytes_total") - received
    assert uploaded >= 256 * 1024  # the source went up (and the worker's small output)

    # Another checkout, another task reading the same source: only the new task's messages and output move.
    graph = json.loads((second / "graph.json").read_text())
    graph["tasks"]["count"] = {"command": "wc -c < src/big.bin > count.txt", "inputs": ["src/big.bin"],
                               "outputs": ["count.txt"]}
    (second / "graph.json").write_text(json.dumps(graph))
    received = farm.metric("gaffer_received_bytes_total")
    proc = gaffer(second, "--remote", farm.url, "count")
    assert proc.returncode == 0, proc.stderr
    assert (second / "count.txt").read_text().strip() == str(256 * 1024)
    assert farm.metric("gaffer_received_bytes_total") - received < 64 * 1024


def test_a_failing_command_reports_its_exit_code_and_stderr_as_a_local_failure_does(farm: Farm,
                                                                                   tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    results = {}
    for where in ("local", "remote"):
        ws = tmp_path / where
        ws.mkdir()
        (ws / "graph.json").write_text(json.dumps({"tasks": {"bad": {
            "command": f"echo out-{marker}; echo err-{marker} >&2; exit 3", "outputs": ["never.txt"]}}}))
        proc = gaffer(ws, *(("--remote", farm.url) if where == "remote" else ()))
        results[where] = proc
        assert proc.returncode == 1
        assert f"err-{marker}" in proc.stderr and f"out-{marker}" in proc.stdout
        assert "FAILED bad (" in proc.stderr and "): exited with status 3" in proc.stderr, proc.stderr
    before = farm.started()
    assert gaffer(tmp_path / "remote", "--remote", farm.url).returncode == 1  # a failure is never cached
    assert farm.started() == before + 1



def test_a_task_whose_output_cannot_be_stored_remotely_shows_its_logs(farm: Farm, tmp_path: Path) -> None:
    """An output the worker cannot store (a symlink to an absolute path) fails the action: the command's stdout
    and stderr were dropped with its outputs, so a failing command's own errors never reached the user."""
    marker = uuid.uuid4().hex
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({"tasks": {"abs": {
        "command": f"ln -s /etc/hostname link; echo out-{marker}; echo err-{marker} >&2; exit 3",
        "outputs": ["link"]}}}))
    proc = gaffer(ws, "--remote", farm.url)
    assert proc.returncode == 1
    assert "symlink link points to an absolute path" in proc.stderr, proc.stderr
    assert f"err-{marker}" in proc.stderr and f"out-{marker}" in proc.stdout, (proc.stdout, proc.stderr)


def test_a_task_past_its_timeout_fails_as_it_does_here(farm: Farm, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({"tasks": {"slow": {
        "command": f"sleep 30 # {uuid.uuid4().hex}", "outputs": ["never.txt"], "timeout": "1s"}}}))
    proc = gaffer(ws, "--remote", farm.url)
    assert proc.returncode == 1
    assert "FAILED slow (" in proc.stderr and "): timed out after 1s" in proc.stderr, proc.stderr

def test_an_unreachable_remote_falls_back_to_local_with_one_warning(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write_workspace(ws, "fallback")
    proc = gaffer(ws, "--remote", CLOSED_PORT_URL)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "is unreachable" in warnings[0] and "running tasks here" in warnings[0], warnings
    assert statuses(ws) == {"gen": "executed", "big": "executed", "use": "executed"}

    other = tmp_path / "other"
    write_workspace(other, "no-fallback")
    proc = gaffer(other, "--remote", CLOSED_PORT_URL, "--no-remote-fallback")
    assert proc.returncode == 3
    assert proc.stderr.startswith("gaffer: remote ") and "unreachable" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (other / "out").exists()
    env_proc = gaffer(other, env={"GAFFER_REMOTE": CLOSED_PORT_URL, "GAFFER_REMOTE_FALLBACK": "0"})
    assert env_proc.returncode == 3



def test_the_remote_url_carries_the_token_as_a_cache_url_does(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("remote-execution-token\n")
    f = start_farm(tmp_path / "farm", 1, "--token-file", str(token), serve_args=("--token-file", str(token)))
    try:
        ws, other = tmp_path / "ws", tmp_path / "other"
        for w in (ws, other):
            write_workspace(w, uuid.uuid4().hex)
        proc = gaffer(ws, "--remote", f"{f.url}?token_file={token}")
        assert proc.returncode == 0, proc.stderr
        assert statuses(ws) == {"gen": "executed", "big": "executed", "use": "executed"}
        proc = gaffer(other, "--remote", f.url)  # no token: refused before anything is built
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "UNAUTHENTICATED" in proc.stderr, proc.stderr
        assert not (other / "out").exists()
    finally:
        f.stop()


def test_an_action_no_worker_can_take_says_why_it_waits_and_ctrl_c_stops_the_build(tmp_path: Path) -> None:
    f = start_farm(tmp_path / "farm", 1, serve_args=("--unmatched-timeout", "1s"))
    try:
        ws = tmp_path / "ws"
        ws.mkdir()
        (ws / "graph.json").write_text(json.dumps({"platform": {"pool": "gpu"}, "tasks": {
            "train": {"command": "echo never > model.txt", "outputs": ["model.txt"]}}}))
        err = tmp_path / "stderr"
        with open(err, "wb") as stderr:
            client = subprocess.Popen([sys.executable, "-m", "gaffer", "run", "--remote", f.url], cwd=ws,
                                      env=gaffer_env(tmp_path / "cache"), stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            servers.wait_until(lambda: "train: queued: " in err.read_text(), "the reason it waits", 60, client, err)
            assert "pool=gpu" in err.read_text().split("train: queued: ")[1].splitlines()[0], err.read_text()
            client.send_signal(signal.SIGINT)
            assert client.wait(timeout=30) == 130
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        assert "FAILED train" in err.read_text() and "interrupted" in err.read_text()
        assert f.started() == 0
    finally:
        f.stop()

def test_remote_false_and_cache_false_tasks_run_here(farm: Farm, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    marker = uuid.uuid4().hex
    (ws / "graph.json").write_text(json.dumps({"tasks": {
        "here": {"command": f"pwd > here.txt # {marker}", "outputs": ["here.txt"], "remote": False},
        "always": {"command": f"pwd > always.txt # {marker}", "outputs": ["always.txt"], "cache": False},
        "there": {"command": f"pwd > there.txt # {marker}", "outputs": ["there.txt"]},
    }}))
    before = farm.started()
    proc = gaffer(ws, "--remote", farm.url)
    assert proc.returncode == 0, proc.stderr
    assert farm.started() == before + 1
    root = str(ws.resolve())
    assert (ws / "here.txt").read_text().strip() == root
    assert (ws / "always.txt").read_text().strip() == root
    assert (ws / "there.txt").read_text().strip() != root  # a worker's exec root


def test_an_artifact_passes_from_one_worker_to_a_dependent_on_another(tmp_path: Path) -> None:
    """The producer runs while only worker A is connected; then A leaves and B joins: the dependent runs on B,
    with the producer's output fetched from the server's CAS (this machine does not upload it again)."""
    f = start_farm(tmp_path / "farm", 1)
    try:
        ws = tmp_path / "ws"
        ws.mkdir()
        (ws / "graph.json").write_text(json.dumps({"tasks": {
            "make": {"command": "seq 1 5000 > numbers.txt", "outputs": ["numbers.txt"]},
            "sum": {"command": "awk '{s += $1} END {print s}' numbers.txt > sum.txt", "deps": ["make"],
                    "outputs": ["sum.txt"]},
        }}))
        assert gaffer(ws, "--remote", f.url, "make").returncode == 0
        first = f.status()["recent"]
        received = f.metric("gaffer_received_bytes_total")
        f.stop_worker(f.workers[0])
        f.add_worker("other")
        proc = gaffer(ws, "--remote", f.url, "--remote-download=minimal", "sum")
        assert proc.returncode == 0, proc.stderr
        assert (ws / "sum.txt").read_text().strip() == str(5000 * 5001 // 2)
        assert f.metric("gaffer_received_bytes_total") - received < (ws / "numbers.txt").stat().st_size
        recent = [*first, *f.status()["recent"]]
        ran = {r["task"]: r["worker"] for r in recent}  # the task names and builds: the client's RequestMetadata
        assert ran["make"] != ran["sum"], ran
        assert len({r["build"] for r in recent}) == 2, recent
    finally:
        f.stop()


def test_minimal_download_keeps_outputs_remote_and_reruns_their_producer_when_the_remote_lost_them(
        tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "in.txt").write_text("one\n")
    (ws / "graph.json").write_text(json.dumps({"tasks": {
        "mid": {"command": "seq 1 100 > mid.txt", "outputs": ["mid.txt"]},
        "top": {"command": "cat in.txt mid.txt | wc -l > top.txt", "deps": ["mid"], "inputs": ["in.txt"],
                "outputs": ["top.txt"]},
        "here": {"command": "tail -n 1 mid.txt > here.txt", "deps": ["mid"], "outputs": ["here.txt"],
                 "remote": False},
    }}))
    f = start_farm(tmp_path / "farm1", 1)
    try:
        proc = gaffer(ws, "--remote", f.url, "--remote-download=minimal", "top")
        assert proc.returncode == 0, proc.stderr
        assert (ws / "top.txt").read_text().strip() == "101"
        assert not (ws / "mid.txt").exists()  # left on the remote, recorded by digest
        assert f.started() == 2
        proc = gaffer(ws, "--remote", f.url, "--remote-download=minimal", "top")
        assert proc.returncode == 0 and f.started() == 2 and statuses(ws) == {"mid": "cached", "top": "cached"}
    finally:
        f.stop()
    f = start_farm(tmp_path / "farm2", 1)  # a remote that has lost everything
    try:
        (ws / "in.txt").write_text("one\ntwo\n")
        proc = gaffer(ws, "--remote", f.url, "--remote-download=minimal", "top")
        assert proc.returncode == 0, proc.stderr
        assert (ws / "top.txt").read_text().strip() == "102"
        assert f.started() == 2  # the producer ran again, then the task that needs its output
        proc = gaffer(ws, "--remote", f.url, "--remote-download=minimal", "here")  # runs here: needs mid.txt
        assert proc.returncode == 0, proc.stderr
        assert (ws / "here.txt").read_text() == "100\n" and f.started() == 2
        (ws / "mid.txt").unlink()
        proc = gaffer(ws, "--remote", f.url, "--remote-download=minimal", "mid")  # now a target: it comes back
        assert proc.returncode == 0 and (ws / "mid.txt").read_text().splitlines()[-1] == "100"
    finally:
        f.stop()


def test_the_go_example_built_on_three_workers_is_byte_identical_to_a_local_build(tmp_path: Path) -> None:
    example = require_example()
    env = go_env()
    passed = [arg for name in ("GOCACHE", "GOPATH", "GOPROXY", "GOTELEMETRY") for arg in ("--env-pass", name)]
    f = start_farm(tmp_path / "farm", 3, *passed, env=env)  # one persistent GOCACHE: no cold standard library
    try:
        local, remote = tmp_path / "local", tmp_path / "remote"
        for ws in (local, remote):
            shutil.copytree(example, ws, ignore=shutil.ignore_patterns(".gaffer"))
        assert gaffer(local, env=env).returncode == 0
        proc = gaffer(remote, "--remote", f.url, "-j", "6", env=env)
        assert proc.returncode == 0, proc.stderr
        assert snapshot(remote) == snapshot(local)
        busy = [w.name for w in f.workers if ": running" in w.text()]
        assert len(busy) >= 2, busy
    finally:
        f.stop()


def test_a_no_op_build_with_a_remote_configured_imports_no_grpc(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write_workspace(ws, "no-op")
    env = gaffer_env(tmp_path / "cache", GAFFER_REMOTE=CLOSED_PORT_URL)
    assert run_gaffer(["run"], cwd=ws, env=env).returncode == 0  # built here (fallback): a full record
    code = ("import sys; from gaffer.cli import main; status = main(['run']); "
            "print(status, sorted(m for m in ('grpc', 'google.protobuf') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ws, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.strip() == "0 []", proc.stdout + proc.stderr


def test_the_remote_field_of_a_task(tmp_path: Path) -> None:
    from gaffer.errors import UserError
    from gaffer.graph import load_graph

    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps({"tasks": {"a": {"command": "true", "remote": False}, "b": {"command": "true"}}}))
    tasks = load_graph(str(graph)).tasks
    assert not tasks["a"].remote and tasks["b"].remote
    graph.write_text(json.dumps({"tasks": {"a": {"command": "true", "remote": "no"}}}))
    with pytest.raises(UserError, match="field 'remote' must be true or false"):
        load_graph(str(graph))


def test_a_server_restarted_mid_action_gets_it_again_and_the_build_succeeds(tmp_path: Path) -> None:
    """The operation stream breaks, `WaitExecution` re-attaches once the server is back, learns the new server
    never knew the operation (NOT_FOUND), and the client submits the action once more (docs/remote-execution.md)."""
    f = start_farm(tmp_path / "farm", 1)
    client = None
    try:
        ws, gate = tmp_path / "ws", tmp_path / "gate"
        ws.mkdir()
        (ws / "graph.json").write_text(json.dumps({"tasks": {"slow": {
            "command": f"while [ ! -e {gate} ]; do sleep 0.05; done; echo done > out.txt", "outputs": ["out.txt"]}}}))
        client = subprocess.Popen([sys.executable, "-m", "gaffer", "run", "--remote", f.url], cwd=ws,
                                  env=gaffer_env(tmp_path / "cache"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        f.workers[0].wait_for(r"lease \S+: running", timeout=60)
        port = f.server.grpc_address.rpartition(":")[2]
        servers._terminate(f.server.proc)
        f.server = start_gaffer_serve("--grpc", f"127.0.0.1:{port}", workdir=f.server.workdir)
        gate.touch()
        _, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        assert (ws / "out.txt").read_text() == "done\n"
        assert "slow: executing on " in err, err  # its stage, as a line when not on a TTY
        assert f.started() >= 1  # submitted again: the restarted server ran it
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        f.stop()


def test_gaffer_run_on_buildgrids_execution_service_with_a_gaffer_worker(buildgrid_execution: BuildGridExecution,
                                                                        tmp_path: Path) -> None:
    worker = start_worker(buildgrid_execution.server.grpc_address, "client", directory=tmp_path / "worker")
    try:
        url = f"grpc://{buildgrid_execution.server.grpc_address}"
        marker = uuid.uuid4().hex
        local, remote, again = tmp_path / "local", tmp_path / "remote", tmp_path / "again"
        for ws in (local, remote, again):
            write_workspace(ws, marker)
        assert gaffer(local).returncode == 0
        proc = gaffer(remote, "--remote", url)
        assert proc.returncode == 0, proc.stderr + worker.text()
        assert snapshot(remote) == snapshot(local)
        assert statuses(remote) == {"gen": "executed", "big": "executed", "use": "executed"}
        ran = len(re.findall(r"lease \S+: running", worker.text()))
        assert ran == 3, worker.text()
        proc = gaffer(again, "--remote", url)
        assert proc.returncode == 0 and snapshot(again) == snapshot(local)
        assert statuses(again) == {"gen": "cached", "big": "cached", "use": "cached"}  # BuildGrid's action cache
        assert len(re.findall(r"lease \S+: running", worker.text())) == ran

        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "graph.json").write_text(json.dumps({"tasks": {"bad": {
            "command": f"echo err-{marker} >&2; exit 3", "outputs": ["never.txt"]}}}))
        proc = gaffer(bad, "--remote", url)
        assert proc.returncode == 1 and f"err-{marker}" in proc.stderr
        assert "): exited with status 3" in proc.stderr
    finally:
        worker.stop()


class _LyingExecution:
    """A REAPI server on loopback that holds every blob and answers every Execute at once with `result`: a damaged
    or hostile remote whose ActionResult names blobs by malformed digests."""

    def __init__(self, result: object) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import grpc

        from gaffer.protos import execution_service_pb2_grpc
        from gaffer.protos import remote_execution_pb2 as re_pb2
        from gaffer.protos import remote_execution_pb2_grpc as re_grpc

        class Capabilities(re_grpc.CapabilitiesServicer):  # type: ignore[misc]
            def GetCapabilities(self, request: object, context: object) -> re_pb2.ServerCapabilities:
                return re_pb2.ServerCapabilities(
                    cache_capabilities=re_pb2.CacheCapabilities(digest_functions=[re_pb2.DigestFunction.SHA256]),
                    execution_capabilities=re_pb2.ExecutionCapabilities(exec_enabled=True))

        class Cas(re_grpc.ContentAddressableStorageServicer):  # type: ignore[misc]
            def FindMissingBlobs(self, request: object, context: object) -> re_pb2.FindMissingBlobsResponse:
                return re_pb2.FindMissingBlobsResponse()

        class Execution(execution_service_pb2_grpc.ExecutionServicer):  # type: ignore[misc]
            def Execute(self, request: object, context: object) -> Iterator[object]:
                from google.longrunning import operations_pb2

                op = operations_pb2.Operation(name="lie", done=True)
                op.response.Pack(re_pb2.ExecuteResponse(result=result))
                yield op

        self.server = grpc.server(ThreadPoolExecutor(4))
        re_grpc.add_CapabilitiesServicer_to_server(Capabilities(), self.server)
        re_grpc.add_ContentAddressableStorageServicer_to_server(Cas(), self.server)
        execution_service_pb2_grpc.add_ExecutionServicer_to_server(Execution(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


@pytest.mark.parametrize("exit_code", [1, 0])
def test_malformed_log_digests_from_a_remote_remove_nothing_here(tmp_path: Path, exit_code: int) -> None:
    """A failed (or unusable) result's stdout and stderr are fetched by digest into the local cache: a hash such as
    "../victim" named a path beside the cache directory, and the check for a directory in a blob's place removed
    it whole ("..": the directory holding the cache)."""
    from gaffer.protos import remote_execution_pb2 as re_pb2

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("not the cache's")
    result = re_pb2.ActionResult(exit_code=exit_code, stdout_digest=re_pb2.Digest(hash="../victim", size_bytes=3),
                                 stderr_digest=re_pb2.Digest(hash="..", size_bytes=3))
    server = _LyingExecution(result)
    try:
        ws = tmp_path / "ws"
        ws.mkdir()
        (ws / "in.txt").write_text("an input: the local cache gets its cas/ directory")
        (ws / "graph.json").write_text(json.dumps({"tasks": {"t": {
            "command": "cp in.txt out.txt", "inputs": ["in.txt"], "outputs": ["out.txt"]}}}))
        proc = gaffer(ws, "--remote", f"grpc://127.0.0.1:{server.port}", "--no-remote-fallback")
    finally:
        server.server.stop(None)
    assert (victim / "precious").read_text() == "not the cache's" and (ws / "graph.json").exists()
    assert (tmp_path / "ws-cache" / "cas").is_dir()  # so the hashes did name paths outside the cache
    assert proc.returncode == 1 and "FAILED t (" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
