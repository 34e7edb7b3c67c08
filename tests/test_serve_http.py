"""`gaffer serve`'s HTTP side under hostile clients (loopback, bounded counts): idle and slow connections, huge
headers, ambiguous framing, stalled uploads, shutdown with clients mid-request, and read-only tokens."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from gaffer.cache.base import TierError
from gaffer.cache.grpc import GrpcTier
from gaffer.digest import Digest, digest_bytes
from gaffer.protos import remote_execution_pb2 as re_pb2
from tests.buildgrid import ReapiServer, start_gaffer_serve
from tests.servers import wait_until


def _blob(size: int) -> tuple[Digest, bytes]:
    data = os.urandom(size)
    return digest_bytes(data), data


def _address(server: ReapiServer) -> tuple[str, int]:
    host, port = server.http_url.removeprefix("http://").split(":")
    return host, int(port)


def _connect(server: ReapiServer, timeout: float = 10) -> socket.socket:
    return socket.create_connection(_address(server), timeout=timeout)


def _exchange(server: ReapiServer, request: bytes) -> bytes:
    """Send raw bytes on a fresh connection; everything the server answers until it closes the connection."""
    with _connect(server) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _no_traceback(server: ReapiServer) -> None:
    log = server.log.read_text()
    assert "Traceback" not in log and "Error" not in log, log


def _stops_cleanly(server: ReapiServer) -> None:
    """SIGTERM: exit status 0, and nothing in the log that looks like a traceback."""
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    _no_traceback(server)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ReapiServer]:
    s = start_gaffer_serve("--client-timeout", "2s", workdir=tmp_path)
    yield s
    s.stop()


@pytest.fixture
def many_fds() -> Iterator[None]:
    """This test process holds more than a thousand sockets at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard file descriptor limit ({hard}) is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- connections, headers ---------------------------------------------------------------------------------------


def test_stalled_connections_beyond_the_fd_limit_do_not_starve_an_honest_client(
    tmp_path: Path, many_fds: None
) -> None:
    """1,100 connections that send `GET /cas/` and stall, against a server limited to 1,024 file descriptors:
    a new client is still served, over HTTP and gRPC, and the server does not spin."""
    server = start_gaffer_serve(workdir=tmp_path, fd_limit=1024)
    digest, data = _blob(1000)
    try:
        with ExitStack() as stack:
            for _ in range(1100):
                conn = stack.enter_context(_connect(server))
                conn.sendall(b"GET /cas/")
            cpu = _cpu_seconds(server.proc.pid)
            with httpx.Client(base_url=server.http_url, timeout=10) as client:
                for _ in range(20):
                    assert client.put(f"/cas/{digest.hash}", content=data).status_code == 200
                    assert client.get(f"/cas/{digest.hash}").content == data
            tier = GrpcTier.from_url(server.url)
            assert tier.find_missing([digest]) == [] and tier.read_blob(digest) == data
            tier.close()
            assert _cpu_seconds(server.proc.pid) - cpu < 2.0
        _stops_cleanly(server)
    finally:
        server.stop()


def test_huge_headers_are_refused_early_and_memory_stays_bounded(server: ReapiServer) -> None:
    """100 connections each sending 100 header lines of 60 KiB: each is answered 400 at the first long line."""
    rss = _rss_bytes(server.proc.pid)
    line = b"X-Filler: " + b"a" * (60 * 1024) + b"\r\n"
    with ExitStack() as stack:
        conns = [stack.enter_context(_connect(server)) for _ in range(100)]
        for conn in conns:
            conn.sendall(b"GET /cas/" + b"a" * 64 + b" HTTP/1.1\r\nHost: x\r\n")
        for conn in conns:
            try:
                for _ in range(100):
                    conn.sendall(line)
            except OSError:  # the server closed the connection while we were still sending
                pass
            try:
                answer = conn.recv(100)
            except ConnectionResetError:  # closed with our unread lines in its buffer
                answer = b""
            assert answer == b"" or b" 400 " in answer
    assert _rss_bytes(server.proc.pid) - rss < 64 * 1024 * 1024
    _no_traceback(server)


def test_a_client_that_stops_mid_headers_or_idles_is_disconnected(server: ReapiServer) -> None:
    """--client-timeout 2s: counted from the connection's start for its first request, from the last reply after."""
    with _connect(server) as slow, _connect(server) as idle:
        slow.sendall(b"GET /cas/")
        idle.sendall(f"GET /cas/{'a' * 64} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert idle.recv(1000).startswith(b"HTTP/1.1 404")
        t0 = time.monotonic()
        assert slow.recv(1000) == b"" and idle.recv(1000) == b""  # closed by the server
        assert time.monotonic() - t0 < 8


# -- framing ------------------------------------------------------------------------------------------------------


def test_a_get_body_is_never_parsed_as_the_next_request(server: ReapiServer) -> None:
    digest, data = _blob(64)
    smuggled = (f"PUT /cas/{digest.hash} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data
    last = f"GET /cas/{'b' * 64} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    answer = _exchange(server, (f"GET /cas/{'a' * 64} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(smuggled)}\r\n\r\n")
                       .encode() + smuggled + last)
    assert answer.count(b"HTTP/1.1 ") == 2 and answer.count(b"HTTP/1.1 404 ") == 2  # the two GETs, no PUT
    with httpx.Client(base_url=server.http_url) as client:
        assert client.get(f"/cas/{digest.hash}").status_code == 404
    assert GrpcTier.from_url(server.url).find_missing([digest]) == [digest]


@pytest.mark.parametrize("headers", [
    "Content-Length: 64\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding: chunked\r\nContent-Length: 64",
    "Content-Length: 64\r\nContent-Length: 64",
    "Content-Length: 64\r\nContent-Length: 65",
    "Content-Length: \u00b2",
    "Content-Length: " + "9" * 5000,
    "Content-Length: -64",
])
def test_ambiguous_or_malformed_framing_is_a_400_without_a_traceback(server: ReapiServer, headers: str) -> None:
    digest, data = _blob(64)
    request = f"PUT /cas/{digest.hash} HTTP/1.1\r\nHost: x\r\n{headers}\r\n\r\n".encode() + b"40\r\n" + data
    assert _status(_exchange(server, request)) == 400
    assert GrpcTier.from_url(server.url).find_missing([digest]) == [digest]
    _no_traceback(server)


def test_an_aborted_large_get_logs_nothing(server: ReapiServer) -> None:
    digest, data = _blob(8 * 1024 * 1024)
    with httpx.Client(base_url=server.http_url) as client:
        assert client.put(f"/cas/{digest.hash}", content=data).status_code == 200
    for _ in range(3):
        with _connect(server) as conn:
            conn.sendall(f"GET /cas/{digest.hash} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert conn.recv(100).startswith(b"HTTP/1.1 200")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0  # every handler has finished, and logged what it would
    _no_traceback(server)


# -- uploads: size bound, body timeout ----------------------------------------------------------------------------


def test_a_stalled_upload_is_cut_by_the_body_timeout_and_counts_against_max_size(tmp_path: Path) -> None:
    server = start_gaffer_serve("--client-timeout", "1s", "--max-size", "10MiB", workdir=tmp_path)
    try:
        big, _ = _blob(1)
        huge = _exchange(server, f"PUT /cas/{big.hash} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**12}\r\n"
                                 "Connection: close\r\n\r\n".encode())
        assert _status(huge) == 413
        with httpx.Client(base_url=server.http_url, timeout=10) as client:
            with _connect(server) as stalled:
                stalled.sendall(f"PUT /cas/{big.hash} HTTP/1.1\r\nHost: x\r\nContent-Length: {8 * 1024 * 1024}\r\n"
                                "Expect: 100-continue\r\n\r\n".encode())
                assert stalled.recv(100).startswith(b"HTTP/1.1 100")  # the upload is in flight
                stalled.sendall(b"x" * (2 * 1024 * 1024))
                digest, data = _blob(4 * 1024 * 1024)
                assert client.put(f"/cas/{digest.hash}", content=data).status_code == 507  # 8 + 4 MiB > 10 MiB
                t0 = time.monotonic()
                answer = b""
                while chunk := stalled.recv(65536):  # the server cuts it after a second without data
                    answer += chunk
                assert time.monotonic() - t0 < 10 and b" 200 " not in answer
            assert client.put(f"/cas/{digest.hash}", content=data).status_code == 200
            assert client.get(f"/cas/{digest.hash}").content == data
        temp = tmp_path / "store" / "tmp"
        assert not temp.exists() or list(temp.iterdir()) == []  # the cut upload's temp file is gone
        _stops_cleanly(server)
    finally:
        server.stop()


# -- shutdown -----------------------------------------------------------------------------------------------------


def test_sigterm_with_clients_mid_headers_and_mid_body_ends_within_the_grace_period(server: ReapiServer) -> None:
    digest, _ = _blob(1000)
    with _connect(server) as headers, _connect(server) as body:
        headers.sendall(b"GET /cas/" + digest.hash.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        body.sendall(f"PUT /cas/{digest.hash} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        assert body.recv(100).startswith(b"HTTP/1.1 100")
        body.sendall(b"x" * 10)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(25) == 0  # the grace period is 30 s; the stalled body is cut after 2 s
        assert time.monotonic() - t0 < 25
    _no_traceback(server)


def test_a_second_sigterm_exits_at_once(server: ReapiServer) -> None:
    """An upload still trickling in keeps the first SIGTERM waiting (the grace period); the second ends it."""
    digest, _ = _blob(1000)
    stop = threading.Event()
    with _connect(server) as body:
        body.sendall(f"PUT /cas/{digest.hash} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        assert body.recv(100).startswith(b"HTTP/1.1 100")

        def trickle() -> None:
            while not stop.wait(0.2):  # a byte well within each --client-timeout of 2 s: never cut for stalling
                try:
                    body.sendall(b"x")
                except OSError:
                    return

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            server.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: "SIGTERM: stopping" in server.log.read_text(), "the first SIGTERM", 10, server.proc)
            assert server.proc.poll() is None  # waiting for the upload
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(5) != 0
        finally:
            stop.set()
            sender.join()
    assert "again: exiting now" in server.log.read_text()


# -- tokens -------------------------------------------------------------------------------------------------------


def test_a_read_token_reads_but_never_writes(tmp_path: Path) -> None:
    (tmp_path / "rw").write_text("writer-secret\n")
    (tmp_path / "ro").write_text("reader-secret\n")
    server = start_gaffer_serve("--token-file", str(tmp_path / "rw"), "--read-token-file", str(tmp_path / "ro"),
                                workdir=tmp_path / "s")
    try:
        digest, data = _blob(100)
        other, other_data = _blob(100)
        key = _blob(8)[0]
        result = re_pb2.ActionResult(stdout_digest=re_pb2.Digest(hash=digest.hash, size_bytes=digest.size_bytes))
        writer = GrpcTier(server.grpc_address, token="writer-secret")
        writer.write_blob(digest, data)
        writer.write_action(key, result.SerializeToString(deterministic=True))
        reader = GrpcTier(server.grpc_address, token="reader-secret")
        assert reader.find_missing([digest, other]) == [other]
        assert reader.read_blob(digest) == data and reader.read_action(key) is not None
        for write in (lambda: reader.write_blob(other, other_data), lambda: reader.write_blobs([(other, other_data)]),
                      lambda: reader.write_action(other, b"")):
            with pytest.raises(TierError) as e:
                write()
            assert "PERMISSION_DENIED" in str(e.value)
        large, large_data = _blob(3 * 1024 * 1024)  # ByteStream.Write
        with pytest.raises(TierError) as e:
            reader.write_blob(large, large_data)
        assert "PERMISSION_DENIED" in str(e.value)
        reading = {"Authorization": "Bearer reader-secret"}
        with httpx.Client(base_url=server.http_url, headers=reading) as client:
            assert client.get(f"/cas/{digest.hash}").content == data
            assert client.head(f"/cas/{digest.hash}").status_code == 200
            assert client.get(f"/ac/{key.hash}").status_code == 200
            assert client.get("/metrics").status_code == 200
            assert client.put(f"/cas/{other.hash}", content=other_data).status_code == 403
            assert client.put(f"/ac/{other.hash}", content=b"").status_code == 403
            assert client.put(f"/cas/{other.hash}", content=other_data,
                              headers={"Authorization": "Bearer nobody"}).status_code == 401
            assert client.put(f"/cas/{other.hash}", content=other_data,
                              headers={"Authorization": "Bearer writer-secret"}).status_code == 200
        assert writer.read_blob(other) == other_data
    finally:
        server.stop()


def test_a_read_token_alone_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ro").write_text("reader-secret\n")
    run = subprocess.run([sys.executable, "-m", "gaffer.server.main", "--dir", str(tmp_path / "s"), "--http",
                          "127.0.0.1:0", "--read-token-file", str(tmp_path / "ro")],
                         check=False, capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "--read-token-file" in run.stderr


def test_a_read_token_equal_to_the_read_write_one_is_refused(tmp_path: Path) -> None:
    """A read-only token that is the read-write one passes every check as the latter: it could write."""
    (tmp_path / "rw").write_text("one-secret\n")
    (tmp_path / "ro").write_text("one-secret")
    run = subprocess.run([sys.executable, "-m", "gaffer.server.main", "--dir", str(tmp_path / "s"), "--http",
                          "127.0.0.1:0", "--token-file", str(tmp_path / "rw"), "--read-token-file", str(tmp_path / "ro")],
                         check=False, capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "the read-only token is the read-write token" in run.stderr
