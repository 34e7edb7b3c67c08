"""`gaffer worker` as a bot of BuildGrid's execution service: a client written from the REAPI protos submits
actions to BuildGrid, which hands them to a gaffer worker over the Remote Workers API (BuildGrid sends the Action
itself as the lease payload, and reads the worker's capacity from its `capacity` config)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.rpc import code_pb2, error_details_pb2

from gaffer.cache.disk import DiskStore
from gaffer.digest import Digest
from gaffer.execute.base import task_environment
from gaffer.execute.local import ProcessRunner
from gaffer.execute.sandbox import run_action
from gaffer.graph.model import DEFAULT_PASS_ENV
from gaffer.protos import remote_execution_pb2 as re_pb2
from tests import servers
from tests.buildgrid import BuildGridExecution
from tests.reapi_client import Client, Submitted, Worker, start_worker


@pytest.fixture(scope="module")
def worker(buildgrid_execution: BuildGridExecution, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = start_worker(buildgrid_execution.server.grpc_address, "bg", "--max-jobs", "2",
                     directory=tmp_path_factory.mktemp("worker"))
    yield w
    assert w.stop() == 0, w.text()  # SIGTERM: a clean exit


@pytest.fixture(scope="module")
def client(buildgrid_execution: BuildGridExecution) -> Iterator[Client]:
    c = Client(buildgrid_execution.server.grpc_address)
    yield c
    c.close()


def _local_result(submitted: Submitted, tmp_path: Path) -> re_pb2.ActionResult:
    """The same action run by `gaffer run --sandbox`'s code on this machine, from a local store."""
    store = DiskStore(tmp_path / "local")
    for data in submitted.blobs.values():
        store.put_file(_file(tmp_path, data))
    digest = Digest(submitted.action_digest.hash, submitted.action_digest.size_bytes)
    done = run_action(digest, store, tmp_path / "exec", task_environment((), DEFAULT_PASS_ENV), ProcessRunner())
    return done.result


def _file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path


def _without_metadata(result: re_pb2.ActionResult) -> bytes:
    copy = re_pb2.ActionResult()
    copy.CopyFrom(result)
    copy.ClearField("execution_metadata")
    return copy.SerializeToString(deterministic=True)


def test_worker_runs_buildgrid_actions_as_a_local_run_does(worker: Worker, client: Client, tmp_path: Path) -> None:
    submitted = client.action(
        ["sh", "-c", ("echo out; echo err >&2; mkdir -p d/e; tr a-z A-Z < in.txt > d/e/up.txt; "
                      "cp in.txt copy.txt; ln -s copy.txt link; exit 3")],
        files={"in.txt": b"hello worker\n"}, outputs=["d", "copy.txt", "link"])
    response = client.execute(submitted)
    assert response.status.code == code_pb2.OK, response.status
    result = response.result
    assert result.exit_code == 3
    assert client.read(result.stdout_digest) == b"out\n"
    assert client.read(result.stderr_digest) == b"err\n"
    assert result.execution_metadata.worker.endswith("-bg")
    (copy,) = result.output_files
    assert copy.path == "copy.txt" and client.read(copy.digest) == b"hello worker\n"
    assert [(s.path, s.target) for s in result.output_symlinks] == [("link", "copy.txt")]
    tree = re_pb2.Tree.FromString(client.read(result.output_directories[0].tree_digest))
    assert [f.name for f in tree.children[0].files] == ["up.txt"]
    assert _without_metadata(result) == _without_metadata(_local_result(submitted, tmp_path))
    worker.wait_for(r"lease \S+: done in \S+, exit 3")


def test_missing_input_blob_fails_the_lease_with_failed_precondition(worker: Worker, client: Client) -> None:
    submitted = client.action(["cat", "gone.txt"], files={"gone.txt": b"never uploaded\n"}, upload=False)
    file_hash = next(h for h, data in submitted.blobs.items() if data == b"never uploaded\n")
    client.upload([data for h, data in submitted.blobs.items() if h != file_hash])
    response = client.execute(submitted)
    assert response.status.code == code_pb2.FAILED_PRECONDITION, response.status
    failure = error_details_pb2.PreconditionFailure()
    assert response.status.details[0].Unpack(failure)
    assert [(v.type, v.subject) for v in failure.violations] == [("MISSING", f"blobs/{file_hash}/15")]


def test_output_path_escaping_the_exec_root_is_refused(worker: Worker, client: Client) -> None:
    submitted = client.action(["sh", "-c", "echo x > ../escaped"], outputs=["../escaped"])
    response = client.execute(submitted)
    assert response.status.code == code_pb2.INVALID_ARGUMENT, response.status
    assert "unsafe output path '../escaped'" in response.status.message


def test_a_cancelled_operation_kills_its_action_on_the_worker(worker: Worker, client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "still-running"
    submitted = client.action(["sh", "-c", f"sleep 60; touch {marker}"])
    stream = client.start(submitted)
    operation = next(stream).name
    running = worker.wait_for(r"lease (\S+): running", count=_count(worker, "running") + 1)
    client.cancel(operation)
    done = worker.wait_for(rf"lease {running.group(1)}: done in ([0-9.]+)s, CANCELLED")
    assert float(done.group(1)) < 50 and not marker.exists()  # killed, not waited for
    stream.cancel()  # type: ignore[attr-defined]


def _count(worker: Worker, what: str) -> int:
    return len(re.findall(rf"lease \S+: {what}", worker.text()))


def test_sigterm_lets_the_running_action_finish_and_report(buildgrid_execution: BuildGridExecution, client: Client,
                                                            tmp_path: Path) -> None:
    draining = start_worker(buildgrid_execution.server.grpc_address, "drain", "--platform", "pool=drain",
                            directory=tmp_path / "worker")
    started, release = tmp_path / "started", tmp_path / "release"
    submitted = client.action(
        ["sh", "-c", f"touch {started}; while [ ! -e {release} ]; do sleep 0.01; done; echo finished"],
        platform={"pool": "drain"})
    stream = client.start(submitted)
    servers.wait_until(started.exists, "the action to start", 30, draining.proc, draining.log)
    draining.proc.send_signal(signal.SIGTERM)
    draining.wait_for("SIGTERM: taking no more work")
    release.touch()
    *_, last = stream
    response = re_pb2.ExecuteResponse()
    last.response.Unpack(response)
    assert response.status.code == code_pb2.OK and response.result.exit_code == 0, response
    assert client.read(response.result.stdout_digest) == b"finished\n"
    assert draining.proc.wait(30) == 0, draining.text()
    assert "gaffer worker: stopped" in draining.text()


def test_the_packaged_postgresql_cluster_is_left_alone(buildgrid_execution: BuildGridExecution) -> None:
    """BuildGrid's database is a private cluster on its own port: Debian's own cluster stays down."""
    assert buildgrid_execution.postgres.port != 5432
    clusters = shutil.which("pg_lsclusters")
    if clusters is None:
        return
    listing = subprocess.run([clusters, "-h"], capture_output=True, text=True, check=True).stdout
    assert all(" online" not in line for line in listing.splitlines()), listing
