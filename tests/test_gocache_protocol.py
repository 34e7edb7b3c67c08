"""gobuildcache's GOCACHEPROG protocol, driven over pipes by a Python client playing `go`'s part.

Each test starts the real `gobuildcache` program on a fresh CACHE_DIR. The go-driven tests are in test_gocache_go.py.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gaffer.cache.disk import DiskStore
from gaffer.cache.tiered import TieredCache
from gaffer.cache.trusted import settled
from gaffer.digest import Digest, digest_bytes
from gaffer.errors import UserError
from gaffer.gocache import entry as entry_module
from gaffer.gocache import prefetch as prefetch_module
from gaffer.gocache.config import load_config
from gaffer.gocache.entry import (
    CorruptEntry,
    GoEntry,
    action_key,
    decode_entry,
    encode_entry,
)
from gaffer.gocache.prefetch import BadList, Prefetch, decode_list, encode_list, find_scope, list_key
from gaffer.gocache.protocol import Hit, MalformedRequest, fast_request, hit_line, parse_line, reply_line, rfc3339
from tests.servers import free_port
from tests.support import NOBODY, fill_disk, mounted, require, require_tool, wait_for

REPLY_TIMEOUT_S = 20.0
CAPABILITIES = {"ID": 0, "KnownCommands": ["get", "put", "close"]}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def gobuildcache_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a test's gobuildcache: only what the test sets, none of the machine's cache settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("BACKEND_TYPE", "CACHE_DIR", "S3_BUCKET", "S3_TMP_DIR", "DEBUG", "GAFFER_CACHE")
           and not k.startswith("GOBUILDCACHE_")}
    env["CACHE_DIR"] = str(cache_dir)
    env.update(extra)
    return env


class Client:
    """`go`'s side of the pipes: send requests (and bodies), read replies with a deadline."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = (), cwd: Path | None = None,
                 program: Sequence[str] = ()) -> None:
        """`program`: the command to run instead of the installed gobuildcache."""
        self.proc = subprocess.Popen([*(program or [require_tool("gobuildcache")]), *args], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
        self._replies: queue.Queue[dict[str, object] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._replies.put(json.loads(line))
        self._replies.put(None)

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:  # it stopped reading: right, when the input is garbage
            pass

    def send(self, request: dict[str, object], body: bytes | None = None, *, spaced: bool = False) -> None:
        """One request as Go writes it: the compact JSON line (`spaced`: with json's default spaces, which Go never
        writes), a blank line, then the body string if there is one."""
        data = json.dumps(request, separators=None if spaced else (",", ":")).encode() + b"\n\n"
        if body:
            data += b'"' + base64.b64encode(body) + b'"\n'
        self.send_raw(data)

    def reply(self) -> dict[str, object]:
        reply = self._replies.get(timeout=REPLY_TIMEOUT_S)
        assert reply is not None, f"gobuildcache closed stdout early; stderr: {self.finish()[1]}"
        return reply

    def replies(self, n: int) -> dict[int, dict[str, object]]:
        out = {}
        for _ in range(n):
            r = self.reply()
            out[int(r["ID"])] = r  # type: ignore[call-overload]
        return out

    def get(self, request_id: int, action_id: bytes) -> dict[str, object]:
        self.send({"ID": request_id, "Command": "get", "ActionID": b64(action_id)})
        return self.reply()

    def put(self, request_id: int, action_id: bytes, body: bytes, output_field: str = "OutputID") -> dict[str, object]:
        request: dict[str, object] = {"ID": request_id, "Command": "put", "ActionID": b64(action_id),
                                      output_field: b64(hashlib.sha256(body).digest())}
        if body:
            request["BodySize"] = len(body)
        self.send(request, body)
        return self.reply()

    def close(self, request_id: int = 999) -> dict[str, object]:
        self.send({"ID": request_id, "Command": "close"})
        return self.reply()

    def finish(self) -> tuple[int, str]:
        """Close stdin, wait for the exit; (status, stderr)."""
        assert self.proc.stdin is not None and self.proc.stderr is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        status = self.proc.wait(timeout=REPLY_TIMEOUT_S)
        self.stderr = self.proc.stderr.read().decode()
        self._reader.join(timeout=REPLY_TIMEOUT_S)
        return status, self.stderr


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def client(cache_dir: Path) -> Iterator[Client]:
    c = Client(gobuildcache_env(cache_dir))
    assert c.reply() == CAPABILITIES
    yield c
    if c.proc.poll() is None:
        c.proc.kill()
        c.proc.wait()


def test_capabilities_come_first_before_any_input(cache_dir: Path) -> None:
    c = Client(gobuildcache_env(cache_dir))
    assert c.reply() == CAPABILITIES  # nothing was written to its stdin yet
    assert c.close(7) == {"ID": 7}
    assert c.finish()[0] == 0


def test_put_then_get_returns_outputid_size_time_and_a_stable_diskpath(client: Client, cache_dir: Path) -> None:
    body = os.urandom(100_000)
    action = b"a" * 32
    assert client.get(1, action) == {"ID": 1, "Miss": True}
    before = datetime.now(UTC)
    put = client.put(2, action, body)
    put_path = Path(str(put["DiskPath"]))
    assert put_path.is_absolute() and put_path.suffix == "" and put_path.read_bytes() == body
    got = client.get(3, action)
    assert got["OutputID"] == b64(hashlib.sha256(body).digest())
    assert got["Size"] == len(body)
    assert got["DiskPath"] == str(put_path)
    put_time = datetime.fromisoformat(str(got["Time"]))
    assert before.timestamp() - 1 <= put_time.timestamp() <= time.time() + 1
    assert str(got["Time"]).endswith("Z") and len(str(got["Time"])) == len("2006-01-02T15:04:05.000000000Z")
    assert put_path.is_relative_to(cache_dir)
    assert client.close() == {"ID": 999}
    assert client.finish()[0] == 0
    assert put_path.read_bytes() == body  # and it is still there after close: it is the cache itself


def test_zero_size_put_has_no_body_line(client: Client) -> None:
    put = client.put(1, b"empty", b"")
    assert Path(str(put["DiskPath"])).read_bytes() == b""
    got = client.get(2, b"empty")
    assert not got.get("Miss") and got.get("Size", 0) == 0
    assert Path(str(got["DiskPath"])).stat().st_size == 0
    assert got["OutputID"] == b64(hashlib.sha256(b"").digest())


def test_go_1_23_objectid_field_name_is_accepted(client: Client) -> None:
    client.put(1, b"old-go", b"body", output_field="ObjectID")
    assert client.get(2, b"old-go")["OutputID"] == b64(hashlib.sha256(b"body").digest())


def test_a_get_in_another_json_shape_is_answered_alike(client: Client) -> None:
    """Go's gets take the fast path; the same get written with spaces goes through json and gets the same reply."""
    action = hashlib.sha256(b"shape").digest()
    client.put(1, action, b"body")
    fast = client.get(2, action)
    client.send({"ID": 2, "Command": "get", "ActionID": b64(action)}, spaced=True)
    assert client.reply() == fast and fast["Size"] == 4


def test_gets_sent_together_are_all_answered(client: Client) -> None:
    """Replies to gets that arrive together go back together: none may be held once the input runs dry (held
    too long, `go` and gobuildcache would wait on each other for ever: this test would time out)."""
    actions = [hashlib.sha256(b"%d" % i).digest() for i in range(40)]
    for i in range(0, 40, 2):
        client.put(i + 1, actions[i], b"body %d" % i)
    client.send_raw(b"".join(b'{"ID":%d,"Command":"get","ActionID":"%s"}\n\n' % (100 + i, b64(a).encode())
                             for i, a in enumerate(actions)))
    replies = client.replies(40)
    for i in range(40):
        if i % 2:
            assert replies[100 + i] == {"ID": 100 + i, "Miss": True}
        else:
            assert Path(str(replies[100 + i]["DiskPath"])).read_bytes() == b"body %d" % i
    assert client.get(200, actions[0])["Size"] == len(b"body 0")  # and the session goes on


def test_a_go_shaped_request_is_read_as_json_reads_it() -> None:
    """The fast path that reads Go's gets, puts and closes without json: the lines Go writes take it, and any line
    it takes (random edits of Go's lines) must be the request (and BodySize) json.loads and the field checks make
    of it."""
    seed = int(os.environ.get("GAFFER_TEST_SEED", "12"))
    rnd = random.Random(seed)
    an_id, other_id = b64(hashlib.sha256(b"x").digest()).encode(), b64(hashlib.sha256(b"y").digest()).encode()
    go_lines = [b'{"ID":7,"Command":"get","ActionID":"%s"}\n' % an_id,
                b'{"ID":1067,"Command":"close"}\n',
                b'{"ID":12,"Command":"put","ActionID":"%s","OutputID":"%s"}\n' % (an_id, other_id),
                b'{"ID":9,"Command":"put","ActionID":"%s","OutputID":"%s","BodySize":1048576}\n' % (an_id, other_id)]
    for go_line in go_lines:
        assert fast_request(go_line) is not None and fast_request(go_line) == parse_line(go_line, "line 1")
    taken = {b"get": 0, b"put": 0}
    alphabet = b'{}":,0123456789 -+=/\\\nAQgwIDgetclos' + bytes(range(0x80, 0x84))
    for _ in range(int(os.environ.get("GAFFER_TEST_EXAMPLES", "3000"))):
        line = bytearray(rnd.choice(go_lines))
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randrange(len(line))
            what = rnd.random()
            if what < 0.4:
                line[at] = rnd.choice(alphabet)
            elif what < 0.7:
                del line[at]
            else:
                line.insert(at, rnd.choice(alphabet))
        fast = fast_request(bytes(line))
        if fast is None:
            continue
        taken[b"put" if b"put" in line else b"get"] += 1
        try:
            general: object = parse_line(bytes(line), "line 1")
        except MalformedRequest as e:
            general = e
        assert fast == general, f"seed {seed}: {bytes(line)!r}"
    for line in (b'{"ID":007,"Command":"get","ActionID":"%s"}\n', b'{"ID":-1,"Command":"get","ActionID":"%s"}\n',
                 b'{"ID":1,"Command":"get","ActionID":"%s"}\r\n', b'{"ID":1,"Command":"get","ActionID":"%s","X":1}\n',
                 b'{"ID":1, "Command":"get","ActionID":"%s"}\n', b'{"ID":1,"Command":"put","ActionID":"%s"}\n',
                 b'{"ID":1,"Command":"close","ActionID":"%s"}\n', b'{"ID":1,"Command":"get"}\n%s',
                 b'{"ID":' + b"9" * 5000 + b',"Command":"get","ActionID":"%s"}\n',  # int() refuses 5,000 digits
                 b'{"ID":1,"Command":"put","ActionID":"%s","OutputID":"%%s","BodySize":0010}\n',
                 b'{"ID":1,"Command":"put","ActionID":"%s","OutputID":"%%s","BodySize":-1}\n',
                 b'{"ID":1,"Command":"put","ActionID":"%s","OutputID":"%%s","BodySize":9999999999999}\n',  # too big
                 b'{"ID":1,"Command":"put","ActionID":"%s","OutputID":"%%s","ObjectID":"%%s"}\n'):  # Go 1.23's
        filled = line % b64(b"y" * 32).encode()
        filled = filled.replace(b"%s", b64(b"z" * 32).encode())
        assert fast_request(filled) is None, line  # left to json (and its checks)
    assert min(taken.values()) > 50, f"seed {seed}: too few edited lines took the fast path to test it: {taken}"


def test_reply_lines_are_what_json_writes() -> None:
    """Replies are formatted without json; byte for byte what json.dumps (compact) writes, whatever the path."""
    seed = int(os.environ.get("GAFFER_TEST_SEED", "13"))
    rnd = random.Random(seed)
    odd = ['"', "\\", "\t", "\n", "\x00", "\x1f", "\x7f", "\x80", "é", "\u2028", "🎉", " ", "~", "/"]
    for _ in range(int(os.environ.get("GAFFER_TEST_EXAMPLES", "500"))):
        path = "/tmp/cache/cas/ab/" + "".join(rnd.choice(odd) if rnd.random() < 0.1 else rnd.choice("abc09-_.")
                                               for _ in range(rnd.randint(0, 30)))
        hit = Hit(rnd.randbytes(rnd.choice([0, 1, 32])), rnd.choice([0, 1, 1 << 40]),
                  rnd.choice([0, 1_764_540_000_123_456_789, rnd.randrange(1 << 62)]), path)
        request_id = rnd.choice([0, 1, rnd.randrange(1 << 62)])
        expected = {"ID": request_id, "OutputID": b64(hit.output_id), "Size": hit.size,
                    "Time": rfc3339(hit.put_time_ns), "DiskPath": path}
        assert hit_line(request_id, hit) == _json_line(expected), f"seed {seed}: {path!r}"
        assert hit_line(request_id, None) == _json_line({"ID": request_id, "Miss": True})
        assert reply_line(request_id, disk_path=path) == _json_line({"ID": request_id, "DiskPath": path})
        assert reply_line(request_id, err=path) == _json_line({"ID": request_id, "Err": path})
        assert reply_line(request_id) == _json_line({"ID": request_id})


def test_times_are_what_datetime_writes_whichever_seconds_come_first() -> None:
    """rfc3339 keeps each whole second it formatted: times within a second and across seconds, in any order."""
    rnd = random.Random(int(os.environ.get("GAFFER_TEST_SEED", "12")))
    base = 1_764_560_000 * 10**9
    times = [base + rnd.randrange(5 * 10**9) for _ in range(200)] + [0, 10**9 - 1, 2**62]
    for time_ns in times + times[::-1]:
        expected = datetime.fromtimestamp(time_ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert rfc3339(time_ns) == f"{expected}.{time_ns % 10**9:09d}Z"


def _json_line(reply: dict[str, object]) -> bytes:
    return json.dumps(reply, separators=(",", ":")).encode() + b"\n"


def test_entries_survive_the_process_and_are_shared(cache_dir: Path) -> None:
    first = Client(gobuildcache_env(cache_dir))
    first.reply()
    first.put(1, b"k", b"shared body")
    first.close()
    assert first.finish()[0] == 0
    second = Client(gobuildcache_env(cache_dir))
    second.reply()
    assert Path(str(second.get(1, b"k")["DiskPath"])).read_bytes() == b"shared body"
    second.close()
    second.finish()


class _StallingHttpCache(http.server.BaseHTTPRequestHandler):
    """A Bazel HTTP cache that holds nothing and answers a GET of an action only once the test says so."""

    server: _StallingServer

    def do_HEAD(self) -> None:
        self._reply(404)

    def do_GET(self) -> None:
        if "/ac/" in self.path:
            with self.server.arrived:
                self.server.waiting += 1
                self.server.arrived.notify_all()
            self.server.release.wait(REPLY_TIMEOUT_S)
        self._reply(404)

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._reply(200)

    def _reply(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _StallingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StallingHttpCache)
        self.release = threading.Event()
        self.arrived = threading.Condition()
        self.waiting = 0  # action GETs that arrived and wait for `release`

    def wait_for(self, n: int) -> bool:
        """Have n action GETs arrived and are all waiting at once?"""
        with self.arrived:
            return self.arrived.wait_for(lambda: self.waiting >= n, timeout=REPLY_TIMEOUT_S)


@pytest.fixture
def stalling_remote() -> Iterator[_StallingServer]:
    server = _StallingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=REPLY_TIMEOUT_S)


def test_replies_go_out_of_order_when_a_request_stalls(cache_dir: Path, stalling_remote: _StallingServer) -> None:
    """A get that waits on a slow remote tier must not hold up the requests behind it: a put and a local hit are
    answered first, and the stalled get follows when the remote answers."""
    port = stalling_remote.server_address[1]
    c = Client(gobuildcache_env(cache_dir, GOBUILDCACHE_CACHE=f"http://127.0.0.1:{port}/go",
                                GOBUILDCACHE_TIMEOUT="60s"))
    try:
        c.reply()
        c.send({"ID": 1, "Command": "get", "ActionID": b64(b"on the remote, slowly")})
        c.send({"ID": 2, "Command": "put", "ActionID": b64(b"local"), "OutputID": b64(b"o"), "BodySize": 3}, b"abc")
        assert c.reply()["ID"] == 2
        c.send({"ID": 3, "Command": "get", "ActionID": b64(b"local")})
        assert c.reply()["ID"] == 3
        stalling_remote.release.set()
        assert c.reply() == {"ID": 1, "Miss": True}
        assert c.close() == {"ID": 999}
        assert c.finish()[0] == 0
    finally:
        if c.proc.poll() is None:
            c.proc.kill()


def test_gets_through_a_slow_remote_are_in_flight_together(cache_dir: Path,
                                                            stalling_remote: _StallingServer) -> None:
    """`go` sends many gets at once: the remote lookups overlap (bounded by the pool) instead of queueing one
    behind another, so a slow remote costs one round trip for the batch, not one per entry."""
    port = stalling_remote.server_address[1]
    c = Client(gobuildcache_env(cache_dir, GOBUILDCACHE_CACHE=f"http://127.0.0.1:{port}/go",
                                GOBUILDCACHE_TIMEOUT="60s"))
    try:
        c.reply()
        for i in range(6):
            c.send({"ID": i + 1, "Command": "get", "ActionID": b64(b"remote %d" % i)})
        assert stalling_remote.wait_for(6), f"only {stalling_remote.waiting} of 6 gets reached the remote at once"
        stalling_remote.release.set()
        assert c.replies(6) == {i: {"ID": i, "Miss": True} for i in range(1, 7)}
        assert c.close() == {"ID": 999}
        assert c.finish()[0] == 0
    finally:
        if c.proc.poll() is None:
            c.proc.kill()


def test_many_concurrent_requests_each_get_their_own_reply(client: Client) -> None:
    bodies = {i: os.urandom(i * 997) for i in range(1, 60)}
    for i, body in bodies.items():
        request: dict[str, object] = {"ID": i, "Command": "put", "ActionID": b64(b"%d" % i),
                                      "OutputID": b64(hashlib.sha256(body).digest()), "BodySize": len(body)}
        client.send(request, body)
    puts = client.replies(len(bodies))
    assert sorted(puts) == sorted(bodies)
    for i in bodies:
        client.send({"ID": 1000 + i, "Command": "get", "ActionID": b64(b"%d" % i)})
    gets = client.replies(len(bodies))
    for i, body in bodies.items():
        assert Path(str(gets[1000 + i]["DiskPath"])).read_bytes() == body
        assert gets[1000 + i]["Size"] == len(body)


def test_eof_without_close_keeps_the_puts_and_exits_cleanly(cache_dir: Path) -> None:
    c = Client(gobuildcache_env(cache_dir))
    c.reply()
    c.send({"ID": 1, "Command": "put", "ActionID": b64(b"x"), "OutputID": b64(b"y"), "BodySize": 5}, b"hello")
    status, stderr = c.finish()
    assert status == 0, stderr
    assert c.reply()["ID"] == 1  # the reply was written before exit
    again = Client(gobuildcache_env(cache_dir))
    again.reply()
    assert again.get(1, b"x")["Size"] == 5
    again.close()
    again.finish()


@pytest.mark.parametrize(
    ("stdin", "complaint"),
    [
        (b"this is not json\n", "line 1 is not JSON: 'this is not json'"),
        (b"\x00\xff\xfe garbage\n", "line 1 is not JSON"),
        (b"[" * 100_000 + b"\n", "line 1 is not JSON"),
        (b"x" * (2 << 20), "line 1 is longer than 1048576 bytes"),
        (b'["get"]\n', "expected a JSON object"),
        (b'{"Command":"get","ActionID":"YQ=="}\n', "ID must be a non-negative integer"),
        (b'{"ID":"1","Command":"get","ActionID":"YQ=="}\n', "ID must be a non-negative integer"),
        (b'{"ID":1,"ActionID":"YQ=="}\n', "Command must be a string"),
        (b'{"ID":1,"Command":"get","ActionID":"not base64!"}\n', "ActionID is not base64"),
        (b'{"ID":1,"Command":"get"}\n', "ActionID must be a base64 string"),
        (b'{"ID":1,"Command":"put","ActionID":"YQ==","OutputID":"YQ==","BodySize":-1}\n', "BodySize must be"),
        (b'{"ID":1,"Command":"put","ActionID":"YQ==","BodySize":3}\n"YWJj"\n', "OutputID must be"),
        (b'{"ID":1,"Command":"put","ActionID":"YQ==","OutputID":"YQ==","BodySize":3}\n\n', "end of input before"),
        (b'{"ID":1,"Command":"put","ActionID":"YQ==","OutputID":"YQ==","BodySize":3}\n{"ID":2}\n', "base64 JSON str"),
        (b'{"ID":1,"Command":"put","ActionID":"YQ==","OutputID":"YQ==","BodySize":9}\n"YWJj"\n', "has 3 bytes"),
        (b'{"ID":1,"Command":"put","ActionID":"YQ==","OutputID":"YQ==","BodySize":3}\n"Y*Jj"\n', "not base64"),
        (b'{"ID":1,"Command":"put","ActionID":"YQ==","OutputID":"YQ==","BodySize":4611686018427387904}\n"YWJj"\n',
         "BodySize 4611686018427387904 is more than gobuildcache accepts (4 GiB)"),
    ],
)
def test_malformed_input_is_one_clear_line_and_a_nonzero_exit(cache_dir: Path, stdin: bytes, complaint: str) -> None:
    c = Client(gobuildcache_env(cache_dir))
    assert c.reply() == CAPABILITIES
    c.send_raw(stdin)
    status, stderr = c.finish()  # does not hang: the process exits on its own, stdin still open until here
    assert status == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gobuildcache: malformed request on stdin: ") and complaint in lines[0], lines[0]


def test_malformed_input_exits_without_waiting_for_eof(cache_dir: Path) -> None:
    c = Client(gobuildcache_env(cache_dir))
    c.reply()
    c.send_raw(b"garbage\n")  # stdin stays open: go would still be there
    assert c.proc.wait(timeout=REPLY_TIMEOUT_S) == 2


def test_requests_already_accepted_are_answered_before_a_malformed_line(cache_dir: Path) -> None:
    c = Client(gobuildcache_env(cache_dir))
    c.reply()
    c.send({"ID": 1, "Command": "put", "ActionID": b64(b"ok"), "OutputID": b64(b"o"), "BodySize": 2}, b"ok")
    c.send_raw(b"}{\n")
    assert c.reply()["ID"] == 1
    assert c.finish()[0] == 2


def test_an_unknown_command_is_an_error_reply_not_a_crash(client: Client) -> None:
    client.send({"ID": 5, "Command": "get2", "ActionID": b64(b"a")})
    reply = client.reply()
    assert reply["ID"] == 5 and "unknown command 'get2'" in str(reply["Err"])
    assert client.get(6, b"a") == {"ID": 6, "Miss": True}


@pytest.mark.parametrize("size", [16, 3 << 20], ids=["small, checked on the reader thread", "big, on the pool"])
def test_a_corrupt_local_blob_is_a_miss(client: Client, size: int) -> None:
    original = os.urandom(size)
    victim = hashlib.sha256(b"victim").digest()  # an ActionID as go's: its gets are read by the fast path
    path = Path(str(client.put(1, victim, original)["DiskPath"]))
    assert client.get(2, victim)["Size"] == size
    path.write_bytes(bytes([original[0] ^ 1]) + original[1:])  # same size, one bit flipped
    assert client.get(3, victim) == {"ID": 3, "Miss": True}
    assert not path.exists()  # evicted, so the rebuild's put stores it again
    assert Path(str(client.put(4, victim, original)["DiskPath"])).read_bytes() == original
    assert client.get(5, victim)["DiskPath"] == str(path)
    client.close()
    assert "corrupt cache blob" in client.finish()[1]


def test_a_trusted_blob_edited_in_place_is_a_miss(cache_dir: Path) -> None:
    """A blob hashed once is trusted by later sessions while its file is unchanged; an edit that keeps its size
    and mtime still changes its ctime, so the next session hashes it, finds it corrupt and answers a miss."""
    original = os.urandom(3 << 20)  # big: a trusted one is answered on the reader thread, an edited one is not
    first = Client(gobuildcache_env(cache_dir))
    first.reply()
    path = Path(str(first.put(1, b"victim", original)["DiskPath"]))
    while not settled(path.stat()):  # waiting on the clock: a signature within its timestamp tick is not recorded
        time.sleep(0.1)
    assert first.get(2, b"victim")["Size"] == len(original)  # hashed, and its signature recorded
    first.close()
    assert first.finish()[0] == 0
    assert DiskStore(cache_dir).trusts_blob(digest_bytes(original))
    before = path.stat()
    with open(path, "r+b") as f:
        f.write(bytes([original[0] ^ 1]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = Client(gobuildcache_env(cache_dir))
    second.reply()
    assert second.get(1, b"victim") == {"ID": 1, "Miss": True}
    second.close()
    assert "corrupt cache blob" in second.finish()[1] and not path.exists()


def test_a_damaged_action_entry_is_a_miss(client: Client, cache_dir: Path) -> None:
    damaged = hashlib.sha256(b"damaged").digest()
    client.put(1, damaged, b"body")
    key = action_key(damaged)
    DiskStore(cache_dir).write_action(key, b"\x12\xff\xff")  # intact on disk, but not a Go entry
    assert client.get(2, damaged) == {"ID": 2, "Miss": True}
    client.close()
    assert "is damaged" in client.finish()[1]


@pytest.mark.parametrize("seconds", [2**40, 2**62], ids=["year 36812, which go cannot read", "past time_t"])
def test_an_entry_with_a_put_time_go_cannot_read_is_a_damaged_entry(client: Client, cache_dir: Path,
                                                                     seconds: int) -> None:
    """An entry's put time comes from whoever wrote it (another machine's gobuildcache, through a shared remote):
    one outside years 0-9999 is no time go can parse. It is a damaged entry, a miss, never a reply go rejects nor a
    lost reply (a crash answering it would leave go waiting)."""
    action_id = hashlib.sha256(b"timeless").digest()
    client.put(1, action_id, b"body")
    DiskStore(cache_dir).write_action(action_key(action_id), encode_entry(
        GoEntry(hashlib.sha256(b"body").digest(), digest_bytes(b"body"), seconds * 10**9)))
    assert client.get(2, action_id) == {"ID": 2, "Miss": True}
    assert "DiskPath" in client.put(3, action_id, b"body")
    assert client.get(4, action_id)["Size"] == 4
    client.close()
    status, stderr = client.finish()
    assert status == 0 and "is damaged (put time out of range)" in stderr, stderr


def test_a_local_disk_fault_on_put_is_an_err_reply(cache_dir: Path) -> None:
    cache_dir.mkdir()
    (cache_dir / "cas").write_text("a file where the CAS directory should be")
    c = Client(gobuildcache_env(cache_dir))
    c.reply()
    reply = c.put(1, b"a", b"body")
    assert "DiskPath" not in reply and "cannot store the entry locally" in str(reply["Err"])
    assert c.get(2, b"a") == {"ID": 2, "Miss": True}
    c.close()
    assert c.finish()[0] == 0


def test_a_directory_in_place_of_a_blob_or_an_entry_is_a_miss_and_the_put_replaces_it(client: Client,
                                                                                    cache_dir: Path) -> None:
    """Something that is not a file where a blob or an entry belongs (a directory made by mistake) is a miss, and
    the rebuild's put stores the entry anyway: refusing the put would fail go's build."""
    action_id = hashlib.sha256(b"dir").digest()
    path = Path(str(client.put(1, action_id, b"body")["DiskPath"]))
    path.unlink()
    (path / "inside").mkdir(parents=True)
    assert client.get(2, action_id) == {"ID": 2, "Miss": True}
    reply = client.put(3, action_id, b"body")
    assert reply.get("DiskPath") == str(path) and path.read_bytes() == b"body", reply
    assert client.get(4, action_id)["DiskPath"] == str(path)
    entry = DiskStore(cache_dir)._action_path(action_key(action_id))
    os.unlink(entry)
    os.mkdir(entry)
    assert client.get(5, action_id) == {"ID": 5, "Miss": True}
    assert "DiskPath" in client.put(6, action_id, b"body")
    assert client.get(7, action_id)["DiskPath"] == str(path)
    client.close()
    assert client.finish()[0] == 0


def test_a_put_after_the_cache_was_cleared_under_the_session_stores_its_blob_again(client: Client,
                                                                                 cache_dir: Path) -> None:
    """`gobuildcache clear` while a build runs: a put of content this session stored before the clear names a
    file that exists (go reads it at once), not the one the clear removed."""
    first = Path(str(client.put(1, b"a", b"same output")["DiskPath"]))
    cleared = subprocess.run([require_tool("gobuildcache"), "clear-local"], check=False, env=gobuildcache_env(cache_dir),
                             capture_output=True, timeout=REPLY_TIMEOUT_S)
    assert cleared.returncode == 0 and not first.exists(), cleared.stderr
    again = Path(str(client.put(2, b"b", b"same output")["DiskPath"]))
    assert again.read_bytes() == b"same output"
    assert client.get(3, b"b")["DiskPath"] == str(again)
    client.close()
    assert client.finish()[0] == 0


def test_a_disk_that_fills_up_before_close_still_gets_the_close_reply(tmp_path: Path) -> None:
    """The cache's disk fills up after the last put: close still answers (go waits for it) and the program exits
    0, with one line naming the directory; the entries stored stay good."""
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as disk:
        cache = disk / "cache"
        c = Client(gobuildcache_env(cache, GOBUILDCACHE_STATS="1"))
        c.reply()
        stored = Path(str(c.put(1, b"a", b"body")["DiskPath"]))
        fill_disk(disk)
        assert c.close() == {"ID": 999}
        status, stderr = c.finish()
        assert status == 0, stderr
        assert f"{cache}" in stderr and "No space left on device" in stderr and stderr.rstrip().endswith(" errors")
        (disk / "filler").unlink()
        again = Client(gobuildcache_env(cache))
        again.reply()
        assert again.get(2, b"a")["DiskPath"] == str(stored) and stored.read_bytes() == b"body"
        again.close()
        assert again.finish()[0] == 0


def test_a_full_cache_disk_gives_go_its_files_from_elsewhere_and_stores_nothing(tmp_path: Path) -> None:
    """go fails its build on a put's Err. The cache's disk is full: each put still answers with a file holding
    the body (in a temp directory of the session's own, removed at exit), nothing is stored, one warning."""
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as disk:
        cache = disk / "cache"
        c = Client(gobuildcache_env(cache, TMPDIR=str(tmp_path)))
        c.reply()
        stored = Path(str(c.put(1, b"a", b"stored before")["DiskPath"]))
        fill_disk(disk)
        bodies = {b"b": os.urandom(300_000), b"c": b"small", b"d": b"small"}
        paths = {}
        for n, (action_id, body) in enumerate(bodies.items(), start=2):
            reply = c.put(n, action_id, body)
            assert "Err" not in reply, reply
            paths[action_id] = Path(str(reply["DiskPath"]))
            assert paths[action_id].read_bytes() == body and not paths[action_id].is_relative_to(disk)
        assert c.get(10, b"a")["DiskPath"] == str(stored)
        assert c.get(11, b"b") == {"ID": 11, "Miss": True}
        assert c.close() == {"ID": 999}
        status, stderr = c.finish()
        assert status == 0, stderr
        assert stderr.count(f"cache directory {cache} is full") == 1, stderr
        assert not any(p.exists() for p in paths.values() if p != stored)


def test_a_full_disk_that_takes_no_entry_for_a_stored_blob_warns_once(tmp_path: Path) -> None:
    """A put whose body is stored already (another ActionID, same output) gets its DiskPath, but its entry cannot
    be written on a full disk: the same one warning as a put whose body cannot be stored, not silence."""
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as disk:
        cache = disk / "cache"
        c = Client(gobuildcache_env(cache, TMPDIR=str(tmp_path)))
        c.reply()
        stored = Path(str(c.put(1, b"a", b"the same output")["DiskPath"]))
        fill_disk(disk)
        for n, action_id in enumerate((b"b", b"c"), start=2):
            assert c.put(n, action_id, b"the same output")["DiskPath"] == str(stored)
        assert c.get(5, b"b") == {"ID": 5, "Miss": True}
        assert c.close() == {"ID": 999}
        status, stderr = c.finish()
        assert status == 0, stderr
        assert stderr.count(f"cache directory {cache} is full") == 1, stderr


def _waits_for_a_lock(pid: int) -> bool:
    """Is process `pid` blocked on a file lock (a "->" line of /proc/locks)?"""
    return any(line.split()[1:2] == ["->"] and line.split()[5:6] == [str(pid)]
               for line in Path("/proc/locks").read_text().splitlines())


def test_an_interrupted_close_still_removes_the_files_kept_for_a_full_disk(tmp_path: Path) -> None:
    """Ctrl-C while close flushes the cache (here: waiting for the store's lock) must not leave behind the
    directory holding go's outputs from the full-disk puts."""
    import fcntl

    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as disk:
        cache = disk / "cache"
        c = Client(gobuildcache_env(cache, TMPDIR=str(tmp_path)))
        c.reply()
        c.put(1, b"a", b"stored before")
        fill_disk(disk)
        kept = Path(str(c.put(2, b"b", b"kept elsewhere")["DiskPath"]))
        assert kept.is_relative_to(tmp_path) and not kept.is_relative_to(disk)
        with open(cache / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            c.send({"ID": 999, "Command": "close"})
            wait_for(lambda: _waits_for_a_lock(c.proc.pid), "close to wait for the store's lock")
            c.proc.send_signal(signal.SIGINT)
            status, _ = c.finish()
        assert status == 130
        assert not kept.parent.exists()


def test_an_unreachable_remote_costs_one_warning_and_never_an_err(cache_dir: Path) -> None:
    """Nothing listens at the remote tier's port: puts still answer with a DiskPath, gets of unknown keys miss,
    and the session ends normally with one warning naming the tier. (S3 killed under a real go build is in
    test_gocache_go.py; an HTTP tier keeps this one fast.)"""
    remote = f"http://127.0.0.1:{free_port()}/go"
    c = Client(gobuildcache_env(cache_dir, GOBUILDCACHE_CACHE=remote, GOBUILDCACHE_STATS="1"))
    c.reply()
    assert c.get(1, b"unknown") == {"ID": 1, "Miss": True}
    put = c.put(2, b"a", b"body")
    assert "Err" not in put and Path(str(put["DiskPath"])).read_bytes() == b"body"
    assert c.get(3, b"a")["Size"] == 4
    assert c.close() == {"ID": 999}
    status, stderr = c.finish()
    assert status == 0
    assert stderr.count("continuing without it") == 1 and remote in stderr
    assert stderr.splitlines()[-1].endswith("(disabled)")


def test_debug_logs_each_request_and_the_stats_line(cache_dir: Path) -> None:
    c = Client(gobuildcache_env(cache_dir, DEBUG="true"))
    c.reply()
    c.put(1, b"a", b"12345")
    c.get(2, b"a")
    c.get(3, b"b")
    c.close(4)
    status, stderr = c.finish()
    assert status == 0
    assert "#1 put" in stderr and "#2 get" in stderr and "hit 5 B" in stderr and "#3 get" in stderr
    assert "stats: 2 gets, 1 hits, 1 misses, 1 puts, 5 B read, 5 B written, 0.00s on remote tiers, 0 errors" in stderr


def test_stats_alone_is_one_line(cache_dir: Path) -> None:
    c = Client(gobuildcache_env(cache_dir, GOBUILDCACHE_STATS="1"))
    c.reply()
    c.get(1, b"a")
    c.close()
    assert c.finish()[1].strip().splitlines() == [
        "gobuildcache: stats: 1 gets, 0 hits, 1 misses, 0 puts, 0 B read, 0 B written, 0.00s on remote tiers, 0 errors"
    ]


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"BACKEND_TYPE": "ftp"}, "BACKEND_TYPE: 'ftp' is not one of disk, s3"),
        ({"BACKEND_TYPE": "s3"}, "S3_BUCKET: required when BACKEND_TYPE=s3"),
        ({"DEBUG": "maybe"}, "DEBUG: 'maybe' is not a boolean"),
        ({"GOBUILDCACHE_READ_ONLY": "2"}, "GOBUILDCACHE_READ_ONLY: '2' is not a boolean"),
        ({"GOBUILDCACHE_CACHE": "ftp://host/x"}, "GOBUILDCACHE_CACHE: cache URL ftp://host/x: unknown scheme 'ftp'"),
        ({"GOBUILDCACHE_TIMEOUT": "soon"}, "GOBUILDCACHE_TIMEOUT: 'soon' is not a duration"),
        ({"CACHE_DIR": "/tmp/go\ncache"}, "CACHE_DIR: '/tmp/go\\ncache' has a line break, which go cannot"),
        ({"CACHE_DIR": os.fsdecode(b"/tmp/go\xffcache")}, "CACHE_DIR: '/tmp/go\\udcffcache' is not UTF-8, which go"),
        ({"BACKEND_TYPE": "s3", "S3_BUCKET": "b", "S3_PREFIX": os.fsdecode(b"go\xff")}, "S3_PREFIX: 'go\\udcff' is not UTF-8"),
        ({"BACKEND_TYPE": "s3", "S3_BUCKET": "b", "AWS_REGION": os.fsdecode(b"\xff")}, "AWS_REGION: '\\udcff' is not UTF-8"),
        ({"GOBUILDCACHE_CACHE": os.fsdecode(b"http://h/\xff")}, "GOBUILDCACHE_CACHE: 'http://h/\\udcff' is not UTF-8"),
    ],
)
def test_bad_environment_is_one_line_and_exit_2_before_the_capabilities(
    cache_dir: Path, env: dict[str, str], complaint: str
) -> None:
    result = subprocess.run([require_tool("gobuildcache")], check=False, env=gobuildcache_env(cache_dir, **env),
                            input=b"", capture_output=True, timeout=REPLY_TIMEOUT_S)
    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gobuildcache: {complaint}"), lines


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"GOBUILDCACHE_CACHE": "grpc://[::1"}, "GOBUILDCACHE_CACHE: cache URL grpc://[::1: Invalid IPv6 URL"),
        ({"GAFFER_CACHE": "http://127.0.0.1:99999/go"}, "GAFFER_CACHE: cache URL http://127.0.0.1:99999/go: Port out of"),
        ({"BACKEND_TYPE": "s3", "S3_BUCKET": "b", "AWS_ENDPOINT_URL": "localhost:9000"},
         "s3 backend (S3_BUCKET, S3_PREFIX, AWS_ENDPOINT_URL, AWS_REGION): cache URL s3://b/"),
    ],
)
def test_a_malformed_remote_url_is_one_line_and_exit_2_before_any_request(
    cache_dir: Path, env: dict[str, str], complaint: str
) -> None:
    """The rest of a URL (past its scheme) is checked once the capabilities line is out, not at the tier's first
    use: a mistake in a setting ends the command with one line naming the setting, as any other wrong setting."""
    c = Client(gobuildcache_env(cache_dir, **env))
    assert c.reply() == CAPABILITIES
    status, stderr = c.finish()
    assert status == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gobuildcache: {complaint}"), lines


def test_bad_arguments_and_help(cache_dir: Path) -> None:
    tool = require_tool("gobuildcache")
    bad = subprocess.run([tool, "purge"], check=False, env=gobuildcache_env(cache_dir), capture_output=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.decode().count("\n") == 1 and "'purge'" in bad.stderr.decode()
    usage = subprocess.run([tool, "--help"], check=False, env=gobuildcache_env(cache_dir), capture_output=True, timeout=30)
    assert usage.returncode == 0 and b"CACHE_DIR" in usage.stdout and b"clear-remote" in usage.stdout


def test_clear_local_empties_the_local_tier(client: Client, cache_dir: Path) -> None:
    client.put(1, b"a", b"body")
    client.close()
    client.finish()
    tool = require_tool("gobuildcache")
    for command in ("clear-local", "clear"):
        result = subprocess.run([tool, command], check=False, env=gobuildcache_env(cache_dir), capture_output=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode() == f"cleared disk://{cache_dir}\n"
    assert not any((cache_dir / "cas").rglob("*")) and not any((cache_dir / "ac").rglob("*"))
    remote = subprocess.run([tool, "clear-remote"], check=False, env=gobuildcache_env(cache_dir), capture_output=True, timeout=30)
    assert remote.returncode == 2 and b"no remote tier is configured" in remote.stderr


def test_gocache_main_is_the_same_program(cache_dir: Path) -> None:
    """`gaffer gocache` calls gocache_main(argv): the same session as the console script."""
    code = "import sys; from gaffer.gocache.main import gocache_main; sys.exit(gocache_main(sys.argv[1:]))"
    request = b'{"ID":1,"Command":"get","ActionID":"YQ=="}\n{"ID":2,"Command":"close"}\n'
    result = subprocess.run([sys.executable, "-c", code], check=False, env=gobuildcache_env(cache_dir), input=request,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        CAPABILITIES, {"ID": 1, "Miss": True}, {"ID": 2}]


# -- the stored entry is a REAPI ActionResult ---------------------------------------------------------------------


def test_entries_are_byte_identical_to_protobufs_actionresult() -> None:
    from gaffer.protos import remote_execution_pb2 as re_pb2

    for body, put_time_ns in ((b"", 1_700_000_000_000_000_000), (b"x" * 300, 1_700_000_000_123_456_789)):
        entry = GoEntry(hashlib.sha256(body).digest(), digest_bytes(body), put_time_ns)
        message = re_pb2.ActionResult()
        message.output_files.add(path=f"go-output/{entry.output_id.hex()}",
                                 digest=re_pb2.Digest(hash=entry.body.hash, size_bytes=entry.body.size_bytes))
        message.execution_metadata.worker = "gobuildcache"
        message.execution_metadata.worker_completed_timestamp.FromNanoseconds(put_time_ns)
        assert encode_entry(entry) == message.SerializeToString(deterministic=True)
        # and protobuf's own bytes, with fields this program never writes, still decode
        message.stdout_raw = b"ignored"
        message.execution_metadata.queued_timestamp.FromNanoseconds(1)
        assert decode_entry(message.SerializeToString()) == entry


def _general_decode(data: bytes) -> GoEntry | str:
    """decode_entry without its positional fast path: the reference it must agree with."""
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(entry_module, "_decode_canonical", lambda data: None)
            return decode_entry(data)
    except CorruptEntry:
        return "corrupt"


def test_the_positional_fast_path_agrees_with_the_general_parser() -> None:
    """decode_entry reads the layout encode_entry writes by position: on every entry it must give what the general
    parser gives, and on damaged bytes either decline (the general parser then judges) or agree with it."""
    seed = int(os.environ.get("GAFFER_TEST_SEED", "11"))
    rnd = random.Random(seed)
    for _ in range(int(os.environ.get("GAFFER_TEST_EXAMPLES", "2000"))):
        entry = GoEntry(rnd.randbytes(rnd.choice([0, 1, 32, 58, 59, 80])),
                        Digest(rnd.randbytes(32).hex(), rnd.choice([0, 1, 127, 128, 1 << 20, 1 << 40])),
                        rnd.choice([0, 5, 10**9, 1_764_540_000_123_456_789, 1_764_540_000 * 10**9]))
        data = encode_entry(entry)
        assert entry_module._decode_canonical(data) in (entry, None) and decode_entry(data) == entry, f"seed {seed}"
        damaged = bytearray(data)
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randrange(len(damaged))
            if rnd.random() < 0.5:
                damaged[at] = rnd.randrange(256)
            elif rnd.random() < 0.5:
                del damaged[at]
            else:
                damaged.insert(at, rnd.randrange(256))
        fast = entry_module._decode_canonical(bytes(damaged))
        assert fast is None or fast == _general_decode(bytes(damaged)), f"seed {seed}: {bytes(damaged)!r}"


@pytest.mark.parametrize("data", [b"\xff", b"\x12\x05abc", b"", b"\x20\x01", b"\x12\x03\x0a\x01z"])
def test_anything_else_is_a_corrupt_entry(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(data)


# -- configuration ------------------------------------------------------------------------------------------------


def test_seed_s3_variables_become_an_s3_tier_behind_s3_tmp_dir() -> None:
    config = load_config({"BACKEND_TYPE": "S3", "S3_BUCKET": "team-cache", "S3_PREFIX": "go builds/",
                          "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1"})
    assert config.local_dir == "/tmp/gobuildcache-s3"
    assert config.remotes == (
        "s3://team-cache/go%20builds/?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-west-1",)
    assert load_config({"BACKEND_TYPE": "s3", "S3_BUCKET": "b", "S3_TMP_DIR": "rel"}).local_dir == os.path.abspath("rel")


def test_cache_urls_add_tiers_and_a_leading_disk_url_is_the_local_tier() -> None:
    default = load_config({})
    assert (default.local_dir, default.remotes, default.read_only, default.timeout) == (
        "/tmp/gobuildcache", (), False, 10.0)
    gaffer = load_config({"GAFFER_CACHE": "disk:///var/cache/gaffer, redis://127.0.0.1:6379/0"})
    assert (gaffer.local_dir, gaffer.remotes) == ("/var/cache/gaffer", ("redis://127.0.0.1:6379/0",))
    assert load_config({"GAFFER_CACHE": "disk:///var/my%20cache"}).local_dir == "/var/my cache"  # as gaffer run
    own = load_config({"CACHE_DIR": "/c", "GOBUILDCACHE_CACHE": "disk:///shared,http://h/go",
                       "GAFFER_CACHE": "redis://ignored", "GOBUILDCACHE_READ_ONLY": "yes"})
    assert (own.local_dir, own.remotes, own.read_only) == ("/c", ("disk:///shared", "http://h/go"), True)
    with pytest.raises(UserError, match="absolute path"):
        load_config({"GOBUILDCACHE_CACHE": "disk://relative"})


def test_gocache_accepts_exactly_the_cache_schemes_gaffer_opens() -> None:
    """gobuildcache keeps its own list of schemes (importing cache.urls would slow its start-up): keep them equal."""
    from gaffer.cache import urls
    from gaffer.config import TIER_SCHEMES

    assert set(TIER_SCHEMES) == set(urls._SCHEMES)


# --- the local directory must be this user's: the defaults sit in /tmp, where anyone can create them first ------


@pytest.fixture
def sticky_tmp(tmp_path: Path) -> Path:
    """A world-writable sticky directory like /tmp (the real /tmp/gobuildcache is not for tests to touch)."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


def test_a_new_local_directory_is_private(sticky_tmp: Path) -> None:
    c = Client(gobuildcache_env(sticky_tmp / "gobuildcache"))
    assert c.reply() == CAPABILITIES
    assert c.put(1, b"a", b"body")["DiskPath"]
    c.close()
    assert c.finish()[0] == 0
    assert (sticky_tmp / "gobuildcache").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("planted", ["directory", "symlink"])
@pytest.mark.parametrize("args", [(), ("clear-local",)])
def test_a_local_directory_of_another_user_is_refused(sticky_tmp: Path, planted: str, args: tuple[str, ...]) -> None:
    """Another user made the directory (or a symlink to theirs) first: they could plant entries, so refuse."""
    require(os.geteuid() == 0, "chown to another user needs root")
    theirs = sticky_tmp / "theirs"
    theirs.mkdir(mode=0o777)
    os.chown(theirs, NOBODY, NOBODY)
    path = sticky_tmp / "gobuildcache"
    if planted == "symlink":
        path.symlink_to(theirs)
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    else:
        path = theirs
    c = Client(gobuildcache_env(path), args)
    if not args:
        assert c.reply() == CAPABILITIES
    status, stderr = c.finish()
    assert status == 3, stderr
    assert stderr.strip() == (f"gobuildcache: local cache directory {path} belongs to another user (uid {NOBODY}),"
                              " who could plant cache entries in it: remove it, or set CACHE_DIR (S3_TMP_DIR for"
                              " s3) to a directory of your own")
    assert not any(theirs.iterdir())


# -- prefetch: the previous command's entries, fetched into an empty local tier -----------------------------------


@pytest.fixture
def module(tmp_path: Path) -> Path:
    """A Go module's directory: the scope of the prefetch list (gobuildcache runs there, as go starts it)."""
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "go.mod").write_text("module example.com/prefetched\n\ngo 1.22\n")
    return tmp_path / "mod"


def _remote_session(module: Path, local: Path, remote: Path, **env: str) -> Client:
    c = Client(gobuildcache_env(local, GOBUILDCACHE_CACHE=f"disk://{remote}", **env), cwd=module)
    assert c.reply() == CAPABILITIES
    return c


def _previous_build(module: Path, tmp_path: Path, bodies: dict[bytes, bytes]) -> Path:
    """One session on its own local tier that puts `bodies` (ActionID -> body) and gets the first again: its
    list and entries land in the remote (a disk:// tier, whose files the tests can damage). The remote's path."""
    remote = tmp_path / "remote"
    c = _remote_session(module, tmp_path / "first-machine", remote)
    for i, (action, body) in enumerate(bodies.items()):
        assert "Err" not in c.put(i + 1, action, body)
    assert not c.get(100, next(iter(bodies))).get("Miss")
    assert c.close() == {"ID": 999}
    assert c.finish()[0] == 0
    return remote


def _scope_list(module: Path, remote: Path) -> tuple[DiskStore, Digest]:
    """The remote store and the digest of the list stored there for `module` (as gobuildcache run from the test
    process, its parent, finds its scope)."""
    store = DiskStore(remote)
    data = store.read_action(list_key(find_scope(str(module), gobuildcache_env(remote), os.getpid())))
    assert data is not None, "no prefetch list in the remote"
    return store, decode_entry(data).body


BODIES = {b"action %d" % i: os.urandom(100 + i) for i in range(5)}


def _local_blobs(local: Path) -> set[bytes]:
    """The ActionIDs of BODIES whose blob is in the local tier `local`, whole (a prefetch brings the blobs; the
    entries stay in its memory, then in the list it stores at close)."""
    store = DiskStore(local)
    return {action for action, body in BODIES.items()
            if store.blob_path(digest_bytes(body)).is_file()
            and store.blob_path(digest_bytes(body)).read_bytes() == body}


def _local_entries(local: Path) -> set[bytes]:
    """The ActionIDs of BODIES with an action-cache entry of their own in the local tier `local`."""
    store = DiskStore(local)
    return {action for action in BODIES if store.read_action(action_key(action)) is not None}


def _gets_all_hit(c: Client) -> None:
    for i, (action, body) in enumerate(BODIES.items()):
        got = c.get(i + 1, action)
        assert not got.get("Miss"), f"entry {i} missed"
        assert Path(str(got["DiskPath"])).read_bytes() == body


def test_a_build_stores_its_list_and_the_next_one_prefetches_it_into_an_empty_local_tier(
        module: Path, tmp_path: Path) -> None:
    remote = _previous_build(module, tmp_path, BODIES)
    store, listed = _scope_list(module, remote)
    data = store.read_blob(listed)
    assert data is not None
    scope = find_scope(str(module), gobuildcache_env(remote), os.getpid())
    assert {a for a, _ in decode_list(data, scope)} == set(BODIES)
    local = tmp_path / "ci-machine"
    c = _remote_session(module, local, remote, GOBUILDCACHE_STATS="1")
    wait_for(lambda: _local_blobs(local) == set(BODIES), "every listed blob prefetched before go asks for any")
    last = list(BODIES)[-1]
    got = c.get(1, last)
    assert Path(str(got["DiskPath"])).read_bytes() == BODIES[last] and got["DiskPath"] == str(
        DiskStore(local).blob_path(digest_bytes(BODIES[last])))
    c.close()
    status, stderr = c.finish()
    assert status == 0 and "prefetched 5 entries (" in stderr, stderr


def test_prefetched_entries_are_served_without_the_remote_and_recorded_by_the_local_list(
        module: Path, tmp_path: Path) -> None:
    """The entries a prefetch brought are answered from its memory (the remote is gone by then), and no action-cache
    file is written for each: the list stored in the local tier at close is their record, so a second command on
    the same machine hits them all, still without the remote."""
    remote = _previous_build(module, tmp_path, BODIES)
    local = tmp_path / "ci-machine"
    c = _remote_session(module, local, remote)
    wait_for(lambda: _local_blobs(local) == set(BODIES), "every listed blob prefetched")
    moved = tmp_path / "remote-gone"
    remote.rename(moved)  # from here on, any remote lookup misses
    _gets_all_hit(c)
    c.close()
    assert c.finish()[0] == 0
    assert _local_entries(local) == set()  # one file fewer per entry; the local list records them
    again = _remote_session(module, local, remote)
    _gets_all_hit(again)
    again.close()
    assert again.finish() == (0, "")


def test_a_damaged_local_list_or_blob_is_a_miss_never_a_wrong_hit(module: Path, tmp_path: Path) -> None:
    """The local list only points at blobs, which are checked: a blob damaged after the prefetch is a miss; a
    list damaged in the local tier is ignored (every entry a miss, the remote being gone)."""
    remote = _previous_build(module, tmp_path, BODIES)
    local = tmp_path / "ci-machine"
    c = _remote_session(module, local, remote)
    wait_for(lambda: _local_blobs(local) == set(BODIES), "every listed blob prefetched")
    _gets_all_hit(c)
    c.close()
    assert c.finish()[0] == 0
    assert _local_entries(local) == set()  # the local list is the only record of the entries
    remote.rename(tmp_path / "remote-gone")
    store = DiskStore(local)
    damaged = list(BODIES)[2]
    blob = store.blob_path(digest_bytes(BODIES[damaged]))
    blob.write_bytes(os.urandom(len(BODIES[damaged])))
    again = _remote_session(module, local, remote)
    assert again.get(1, damaged) == {"ID": 1, "Miss": True}
    kept = next(iter(BODIES))
    assert Path(str(again.get(2, kept)["DiskPath"])).read_bytes() == BODIES[kept]
    again.close()
    assert again.finish()[0] == 0
    key = list_key(find_scope(str(module), gobuildcache_env(local), os.getpid()))
    data = store.read_action(key)
    assert data is not None
    listed = store.blob_path(decode_entry(data).body)
    raw = listed.read_bytes()
    listed.write_bytes(raw[:-2] + bytes([raw[-2] ^ 1]) + raw[-1:])  # still a list that parses: only its digest tells
    third = _remote_session(module, local, remote)
    assert third.get(1, kept) == {"ID": 1, "Miss": True}
    third.close()
    status, stderr = third.finish()
    assert status == 0 and "corrupt cache blob" in stderr


def test_prefetch_is_off_with_its_setting(module: Path, tmp_path: Path) -> None:
    remote = _previous_build(module, tmp_path, BODIES)
    c = _remote_session(module, tmp_path / "ci", remote, GOBUILDCACHE_PREFETCH="0")
    assert not c.get(1, next(iter(BODIES))).get("Miss")
    c.close()
    assert c.finish()[0] == 0
    assert _local_entries(tmp_path / "ci") == {next(iter(BODIES))}  # fetched when asked for, entry and all


def _replace_list(remote: Path, module: Path, data: bytes) -> None:
    """Store `data` as the list of `module`'s scope in the remote (what a damaged or foreign list looks like)."""
    store, _ = _scope_list(module, remote)
    digest = digest_bytes(data)
    store.write_blob(digest, data)
    store.write_action(list_key(find_scope(str(module), gobuildcache_env(remote), os.getpid())),
                       encode_entry(GoEntry(b"", digest, time.time_ns())))


@pytest.mark.parametrize("kind", ["garbage", "foreign", "truncated", "bad line", "year 10000"])
def test_a_bad_or_foreign_list_is_ignored_and_the_gets_still_hit(module: Path, tmp_path: Path, kind: str) -> None:
    remote = _previous_build(module, tmp_path, BODIES)
    store, listed = _scope_list(module, remote)
    good = store.read_blob(listed)
    assert good is not None
    entries = {action: GoEntry(b"out", digest_bytes(body), 1) for action, body in BODIES.items()}
    bad = {
        "garbage": os.urandom(300),
        "foreign": encode_list("module example.com/other .\nbuild\n\n", entries),
        "truncated": good[:-10],
        "bad line": good + b"zz 00 " + b"0" * 64 + b" 1 1\n",
        # a put time go cannot read in a reply's Time (its year has five digits): go's build would stop on it
        "year 10000": good + f"ab 00 {listed.hash} {listed.size_bytes} {entry_module.MAX_PUT_TIME_NS}\n".encode(),
    }[kind]
    _replace_list(remote, module, bad)
    local = tmp_path / "ci"
    c = _remote_session(module, local, remote)
    first = next(iter(BODIES))
    assert Path(str(c.get(1, first)["DiskPath"])).read_bytes() == BODIES[first]  # through the normal path
    c.close()
    status, stderr = c.finish()
    assert status == 0
    assert "list of the previous build is unusable" in stderr
    assert _local_blobs(local) == {first}  # nothing else was brought


def test_a_list_naming_a_blob_the_remote_lost_is_a_miss_for_that_entry_only(module: Path, tmp_path: Path) -> None:
    remote = _previous_build(module, tmp_path, BODIES)
    lost, kept = list(BODIES)[1], list(BODIES)[2]
    DiskStore(remote).blob_path(digest_bytes(BODIES[lost])).unlink()
    local = tmp_path / "ci"
    c = _remote_session(module, local, remote)
    wait_for(lambda: _local_blobs(local) == set(BODIES) - {lost}, "the blobs that are there prefetched")
    assert c.get(1, lost) == {"ID": 1, "Miss": True}
    assert Path(str(c.get(2, kept)["DiskPath"])).read_bytes() == BODIES[kept]
    c.close()
    status, stderr = c.finish()
    assert status == 0 and stderr == ""
    assert _local_blobs(local) == set(BODIES) - {lost}


def test_prefetched_blobs_are_verified(module: Path, tmp_path: Path) -> None:
    """A blob the remote holds damaged is neither stored nor answered: the entry is a miss."""
    remote = _previous_build(module, tmp_path, BODIES)
    damaged = list(BODIES)[3]
    DiskStore(remote).blob_path(digest_bytes(BODIES[damaged])).write_bytes(os.urandom(len(BODIES[damaged])))
    local = tmp_path / "ci"
    c = _remote_session(module, local, remote)
    wait_for(lambda: _local_blobs(local) == set(BODIES) - {damaged}, "the undamaged blobs prefetched")
    assert c.get(1, damaged) == {"ID": 1, "Miss": True}
    c.close()
    assert c.finish()[0] == 0
    assert _local_blobs(local) == set(BODIES) - {damaged}


def test_the_scope_is_the_module_and_directory_and_the_list_checks_it(tmp_path: Path) -> None:
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "go.mod").write_text('module "example.com/a" // the module\n')
    (tmp_path / "b").mkdir()
    env = {"GOOS": "linux"}
    root = find_scope(str(tmp_path / "a"), env, os.getpid())
    assert root.startswith("module example.com/a .\n")
    assert find_scope(str(tmp_path / "a" / "sub"), env, os.getpid()).startswith("module example.com/a sub\n")
    assert find_scope(str(tmp_path / "a"), {"GOOS": "darwin"}, os.getpid()) != root
    assert find_scope(str(tmp_path / "b"), env, os.getpid()).startswith(f"dir {tmp_path / 'b'}\n")
    entries = {b"id": GoEntry(b"out", digest_bytes(b"x"), 5)}
    assert decode_list(encode_list(root, entries), root) == list(entries.items())
    with pytest.raises(BadList):
        decode_list(encode_list(root, entries), root + "x")


def test_a_directory_whose_name_is_not_utf8_has_a_scope_and_a_list(tmp_path: Path) -> None:
    """go runs where the user is, and a directory's name may be any bytes: the scope's list is stored and read
    there as anywhere else (the scope's text was not UTF-8, and the session crashed at start)."""
    where = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    where.mkdir()
    for _ in range(2):
        c = _remote_session(where, tmp_path / "local", tmp_path / "remote")
        assert c.put(1, b"a", b"body")["DiskPath"]
        assert c.get(2, b"a")["Size"] == 4
        assert c.close() == {"ID": 999}
        assert c.finish() == (0, "")
    scope = find_scope(str(where), {}, os.getpid())
    assert decode_list(encode_list(scope, {b"a": GoEntry(b"o", digest_bytes(b"body"), 1)}), scope)


class _GatedTier(DiskStore):
    """A disk tier (a real store) whose reads of one blob wait until the test opens the gate."""

    def __init__(self, root: Path, gated: Digest) -> None:
        super().__init__(root)
        self.gated = gated
        self.waiting = threading.Event()
        self.gate = threading.Event()

    def _pass(self, digests: Sequence[Digest]) -> None:
        if self.gated in digests:
            self.waiting.set()
            assert self.gate.wait(REPLY_TIMEOUT_S)

    def read_blobs(self, digests: Sequence[Digest]) -> dict[Digest, bytes]:
        self._pass(digests)
        return super().read_blobs(digests)

    def fetch_blob(self, digest: Digest, dest: Path) -> bool:
        self._pass([digest])
        return super().fetch_blob(digest, dest)


def test_a_get_fetches_its_entry_itself_when_the_prefetch_has_not_reached_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """go's demand goes first: while the one prefetch worker is stuck on the first group, a get for an entry of a
    later group fetches that group on its own thread (verified, as the workers do) instead of waiting its turn."""
    monkeypatch.setattr(prefetch_module, "WORKERS", 1)
    monkeypatch.setattr(prefetch_module, "FIRST_GROUP", 1)  # groups of 1, then 2 blobs
    scope = "module example.com/gated .\nbuild\n\n"
    bodies = [os.urandom(200 + i) for i in range(3)]
    entries = {b"action %d" % i: GoEntry(b"out %d" % i, digest_bytes(body), 1) for i, body in enumerate(bodies)}
    remote = _GatedTier(tmp_path / "remote", digest_bytes(bodies[0]))
    for body in bodies:
        remote.write_blob(digest_bytes(body), body)
    listed = encode_list(scope, entries)
    remote.write_blob(digest_bytes(listed), listed)
    remote.write_action(list_key(scope), encode_entry(GoEntry(b"", digest_bytes(listed), 1)))
    tiered = TieredCache(DiskStore(tmp_path / "local"), [remote])
    prefetch = Prefetch(tiered, scope, report=pytest.fail)
    prefetch.start()
    try:
        assert remote.waiting.wait(REPLY_TIMEOUT_S), "the worker never started the first group"
        first, last = next(iter(entries)), list(entries)[-1]
        assert prefetch.entry(last) == entries[last]  # fetched here: the worker is still held at the gate
        assert tiered.local.read_blob(digest_bytes(bodies[2])) == bodies[2]
        assert prefetch.ready(first) is None
    finally:
        remote.gate.set()
    assert prefetch.entry(first) == entries[first]  # waited for the worker's group
    prefetch.store({})
    assert prefetch.fetched == 3
    tiered.close()
