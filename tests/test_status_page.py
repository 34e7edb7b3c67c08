"""The status of `gaffer serve`: /status.json (its schema, the token), `gaffer status`, and the /status page in a
real headless Chromium (Debian's, driven by Selenium through Debian's chromedriver: no browser download).

One server for the module, with a read-write and a read-only token, and one real `gaffer worker` (max 2 jobs)
holding one action of each kind the page shows: one finished, one running (a long sleep), one queued for a
platform no worker has. Counters are shared across the tests, so each test compares before and after rather than
absolute numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest

from gaffer.monitor import render
from gaffer.protos import remote_execution_pb2 as re_pb2
from tests import servers
from tests.buildgrid import ReapiServer, start_gaffer_serve
from tests.reapi_client import Client, start_worker
from tests.support import gaffer_env, require, require_tool, run_gaffer

TOKEN = "status-test-token"
READ_TOKEN = "status-test-read-token"
BROWSER_TIMEOUT_S = 30.0
WAIT_S = 30.0
BUILD = str(uuid.uuid4())

_NUMBER = {"type": "number", "minimum": 0}
_COUNT = {"type": "integer", "minimum": 0}
_TEXT = {"type": "string"}
_BUILD = {"type": ["string", "null"]}


def _item(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": sorted(properties), "properties": properties}


#: The document as docs/remote-execution.md ("Status page and metrics") describes it.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["server", "time", "execution", "cache"],
    "properties": {
        "server": _TEXT,
        "time": _NUMBER,
        "execution": {"type": "boolean"},
        "cache": _item(store_bytes=_COUNT, max_bytes=_COUNT,
                       **{kind: _item(hits=_COUNT, misses=_COUNT, hit_rate={"type": ["number", "null"]})
                          for kind in ("ac", "cas")}),
        "workers": {"type": "array", "items": _item(
            name=_TEXT, session=_TEXT, max_jobs=_COUNT, held_blobs=_COUNT, held_bytes=_COUNT,
            last_seen_s_ago=_NUMBER, connected_s=_NUMBER, running={"type": "array", "items": _TEXT},
            platform={"type": "object", "additionalProperties": {"type": "array", "items": _TEXT}})},
        "queue_length": _COUNT,
        "queue": {"type": "array", "maxItems": 1000, "items": _item(operation=_TEXT, action=_TEXT, build=_BUILD,
                                                                    task=_BUILD,
                                                  queued_s_ago=_NUMBER, waiting_for=_TEXT)},
        "running": {"type": "array", "items": _item(operation=_TEXT, action=_TEXT, build=_BUILD, task=_BUILD,
                                                    worker=_TEXT, started_s_ago=_NUMBER, attempt=_COUNT)},
        "recent": {"type": "array", "maxItems": 100, "items": _item(
            operation=_TEXT, action=_TEXT, build=_BUILD, task=_BUILD, worker={"type": ["string", "null"]},
            queued_s=_NUMBER, ran_s={"type": ["number", "null"]}, finished_s_ago=_NUMBER,
            outcome={"type": "string", "pattern": "^(ok|failed|exit -?[0-9]+|cancelled|cached)$"})},
        "counters": _item(**{name: _NUMBER for name in (
            "actions_started", "actions_finished", "actions_failed", "actions_retried", "actions_cancelled",
            "queue_to_start_seconds_sum", "queue_to_start_count", "cache_hits", "cache_misses")}),
    },
    "if": {"properties": {"execution": {"const": True}}},
    "then": {"required": ["workers", "queue", "queue_length", "running", "recent", "counters"]},
}


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReapiServer]:
    """`gaffer serve` with a read-write token and a read-only one, a worker, and an action finished, one running
    and one queued (see the module's docstring)."""
    secrets = tmp_path_factory.mktemp("tokens")
    (secrets / "token").write_text(TOKEN)
    (secrets / "read-token").write_text(READ_TOKEN)
    server = start_gaffer_serve("--token-file", str(secrets / "token"), "--read-token-file",
                                str(secrets / "read-token"))
    worker = client = None
    streams: list[Any] = []
    try:
        worker = start_worker(server.grpc_address, "status", "--platform", "test=status", "--max-jobs", "2",
                              "--token-file", str(secrets / "token"),
                              directory=tmp_path_factory.mktemp("worker"))
        client = Client(server.grpc_address, token=TOKEN, build=BUILD)
        done = client.execute(client.action(["true"], platform={"test": "status"}))
        assert (done.status.code, done.result.exit_code) == (0, 0), done
        for argv, platform in ((["sleep", "600"], {"test": "status"}), (["true"], {"test": "status", "pool": "none"})):
            stream = client.start(client.action(argv, platform=platform), timeout=600)
            streams.append(stream)
            threading.Thread(target=_drain, args=(stream,), daemon=True).start()
        servers.wait_until(lambda: _has_work(server), "a running and a queued action", WAIT_S)
        yield server
    finally:
        for stream in streams:
            stream.cancel()
        if client is not None:
            client.close()
        if worker is not None:
            worker.stop()
        server.stop()


def _drain(stream: Any) -> None:
    """Follow an Execute stream until the module's end cancels it."""
    try:
        for _ in stream:
            pass
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            raise


def _has_work(server: ReapiServer) -> bool:
    status = _status(server)
    return bool(status["running"]) and bool(status["queue"])


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _status(serve: ReapiServer, token: str = TOKEN) -> dict[str, Any]:
    status, _, body = _get(f"{serve.http_url}/status.json", token)
    assert status == 200, body
    document: dict[str, Any] = json.loads(body)
    return document


def _token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "token"
    path.write_text(token + "\n")
    return path


def test_status_json_needs_a_token(serve: ReapiServer) -> None:
    status, headers, _ = _get(f"{serve.http_url}/status.json")
    assert status == 401 and headers.get("WWW-Authenticate") == "Bearer"
    assert _get(f"{serve.http_url}/status.json", "wrong")[0] == 401
    assert _get(f"{serve.http_url}/status.json", TOKEN)[0] == 200
    assert _get(f"{serve.http_url}/status.json", READ_TOKEN)[0] == 200  # looking is reading


def test_status_json_follows_its_schema_and_counts_action_cache_lookups(serve: ReapiServer) -> None:
    before = _status(serve)
    jsonschema.validate(before, SCHEMA)
    # one miss, then a hit, through the HTTP cache protocol
    key = "ab" * 32
    assert _get(f"{serve.http_url}/ac/{key}", TOKEN)[0] == 404
    body = re_pb2.ActionResult(exit_code=0).SerializeToString()
    put = urllib.request.Request(f"{serve.http_url}/ac/{key}", data=body, method="PUT",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(put, timeout=10) as response:
        assert response.status == 200
    assert _get(f"{serve.http_url}/ac/{key}", TOKEN)[0] == 200
    after = _status(serve)
    jsonschema.validate(after, SCHEMA)
    ac_before, ac_after = before["cache"]["ac"], after["cache"]["ac"]
    assert (ac_after["hits"], ac_after["misses"]) == (ac_before["hits"] + 1, ac_before["misses"] + 1)
    assert ac_after["hit_rate"] == pytest.approx(ac_after["hits"] / (ac_after["hits"] + ac_after["misses"]))


def test_status_json_shows_the_worker_and_its_actions(serve: ReapiServer) -> None:
    status = _status(serve)
    jsonschema.validate(status, SCHEMA)
    assert status["execution"] is True
    (worker,) = status["workers"]
    assert worker["name"].endswith("-status") and worker["max_jobs"] == 2
    assert worker["platform"]["test"] == ["status"] and worker["platform"]["linking"] == ["true"]
    (running,) = status["running"]
    assert worker["running"] == [running["operation"]]
    assert (running["build"], running["worker"], running["attempt"]) == (BUILD, worker["name"], 1)
    (queued,) = status["queue"]
    assert status["queue_length"] == 1
    assert queued["build"] == BUILD and "pool=none" in queued["waiting_for"], queued
    assert any(r["build"] == BUILD and r["outcome"] == "ok" and r["worker"] == worker["name"]
               for r in status["recent"]), status["recent"]
    assert status["counters"]["actions_started"] >= 2


def test_gaffer_status_says_when_the_queue_is_listed_in_part(serve: ReapiServer) -> None:
    """The document lists the oldest 1,000 queued actions and counts them all: the table's title says both."""
    status = _status(serve)
    status["queue_length"] = 5000
    lines = render(status, serve.http_url)
    assert "queue (5,000; the oldest 1 shown)" in lines
    assert any(line.startswith("execution: 1 worker (1 of 2 slots busy), 5,000 queued") for line in lines), lines


def test_gaffer_status_prints_no_control_character_a_client_or_worker_chose(serve: ReapiServer) -> None:
    """A build id, task or worker name is whatever a client's RequestMetadata or a worker said: printed raw, ESC
    [2J cleared the operator's terminal, and a newline broke the tables. Each such character is shown escaped."""
    status = _status(serve)
    hostile = "\x1b[2J\x1b]0;title\x07a\nb\rc\x9b"
    status["running"][0].update(build=hostile, task=hostile, worker=hostile)
    status["workers"][0]["name"] = hostile
    lines = render(status, serve.http_url)
    text = "\n".join(lines)
    assert not any(ch in text for ch in "\x1b\x07\r\x9b"), text
    assert "\\x1b[2J\\x1b]0;title\\x07a\\nb\\rc\\x9b" in text, text
    assert "\\x1b[2J" in text  # the build column: its first 8 characters, escaped


def test_status_page_is_self_contained(serve: ReapiServer) -> None:
    """The page is served without a token (it holds no data), loads nothing from elsewhere and says so in a CSP."""
    status, headers, body = _get(f"{serve.http_url}/status")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    html = body.decode()
    for external in ("src=", "href=", "@import", "url(", "http://", "https://"):
        assert external not in html, external
    assert 'fetch("status.json"' in html and "sessionStorage" in html


def test_gaffer_status_prints_the_tables(serve: ReapiServer, tmp_path: Path) -> None:
    env = gaffer_env(tmp_path / "cache")
    token = _token_file(tmp_path, READ_TOKEN)
    shown = run_gaffer(["status", "--server", serve.http_url, "--token-file", str(token)], tmp_path, env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("gaffer ") and lines[0].endswith(f" at {serve.http_url}")
    assert lines[1].startswith("action cache: ") and " hits (" in lines[1]
    assert lines[2].startswith("execution: 1 worker (1 of 2 slots busy), 1 queued, 1 running"), lines[2]
    worker = _status(serve)["workers"][0]["name"]
    for title in ("workers (1)", "queue (1)", "running (1)"):
        assert title in lines, (title, lines)
    (row,) = [line for line in lines if line.startswith(worker)]
    assert f"1/2  test [{BUILD[:8]}]" in row, row
    assert any("pool=none" in line for line in lines)
    raw = run_gaffer(["status", "--server", serve.http_url.removeprefix("http://"), "--token-file", str(token),
                      "--json"], tmp_path, env)
    assert raw.returncode == 0, raw.stderr
    jsonschema.validate(json.loads(raw.stdout), SCHEMA)


@pytest.mark.parametrize(("token", "url", "status", "message"), [
    (None, "{http}", 2, "{http}: the server needs a token: give --token-file FILE"),
    ("wrong", "{http}", 2, "{http}: the server refused the token in {token_file}"),
    (TOKEN, "http://127.0.0.1:{free}", 3, "http://127.0.0.1:{free}: cannot reach the server: Connection refused"),
    (TOKEN, "grpc://{grpc}", 2, ("--server grpc://{grpc}: give the http://HOST:PORT address of gaffer serve's --http "
                                "port (the status is not served on the gRPC port)")),
    (TOKEN, "{http}/nothing", 2, "{http}/nothing: no status there: is it gaffer serve's --http address?"),
    (TOKEN, "http://{grpc}", 2, ("http://{grpc}: the answer is not HTTP: is it gaffer serve's --http address "
                                 "(not its --grpc one)?")),
])
def test_gaffer_status_errors_are_one_line(serve: ReapiServer, tmp_path: Path, token: str | None, url: str,
                                           status: int, message: str) -> None:
    token_file = _token_file(tmp_path, token) if token else None
    where = {"http": serve.http_url, "grpc": serve.grpc_address, "free": servers.free_port(), "token_file": token_file}
    args = ["status", "--server", url.format(**where)] + (["--token-file", str(token_file)] if token_file else [])
    failed = run_gaffer(args, tmp_path, gaffer_env(tmp_path / "cache"))
    assert (failed.returncode, failed.stdout, failed.stderr) == (status, "", f"gaffer: {message.format(**where)}\n")


def test_a_connection_closed_without_an_answer_is_an_unreachable_server(tmp_path: Path) -> None:
    """A server that closes the connection without answering (it died, a proxy cut it) raised RemoteDisconnected,
    an HTTPException and an OSError both: it was reported as "the answer is not HTTP" (exit 2), a usage error,
    while the server simply cannot be reached (exit 3)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def close_each() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)  # the request, then nothing

        closer = threading.Thread(target=close_each, daemon=True)
        closer.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        failed = run_gaffer(["status", "--server", url], tmp_path, gaffer_env(tmp_path / "cache"))
        closer.join(WAIT_S)
    assert (failed.returncode, failed.stdout, failed.stderr) == (
        3, "", f"gaffer: {url}: cannot reach the server: Remote end closed connection without response\n")


@pytest.mark.parametrize("host", ["127.0.0.1:{free}", "nonexistent.invalid:{free}"])
def test_gaffer_status_hides_the_password_in_the_server_url(host: str, tmp_path: Path) -> None:
    """A server URL with user:password@ that cannot be reached or resolved: the error named the URL whole, the
    password with it, on a terminal or in a CI log."""
    url = f"http://user:secret@{host.format(free=servers.free_port())}"
    failed = run_gaffer(["status", "--server", url], tmp_path, gaffer_env(tmp_path / "cache"))
    assert (failed.returncode, failed.stdout) == (3, "")
    assert failed.stderr.startswith(f"gaffer: {url.replace(':secret@', ':***@')}: cannot reach the server: ")
    assert "secret" not in failed.stderr


@pytest.fixture(scope="module")
def cache_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`gaffer serve --http` alone, open: a cache server that executes nothing. Its HTTP URL."""
    workdir = tmp_path_factory.mktemp("cache-only")
    port = servers.free_port()
    log = workdir / "serve.log"
    proc = servers._spawn([sys.executable, "-m", "gaffer.server.main", "--dir", str(workdir / "store"),
                           "--http", f"127.0.0.1:{port}"], log)
    url = f"http://127.0.0.1:{port}"
    try:
        servers.wait_until(servers.http_answers(f"{url}/status.json"), "gaffer serve --http", WAIT_S, proc, log)
        yield url
    finally:
        servers._terminate(proc)


def test_a_server_without_grpc_shows_its_cache_alone(cache_only: str, tmp_path: Path) -> None:
    status, _, body = _get(f"{cache_only}/status.json")
    document = json.loads(body)
    assert status == 200 and document["execution"] is False and "workers" not in document
    jsonschema.validate(document, SCHEMA)
    shown = run_gaffer(["status", "--server", cache_only], tmp_path, gaffer_env(tmp_path / "cache"))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[2:] == ["execution: not served (cache statistics only)"]


# -- the page in a real browser --------------------------------------------------------------------------------


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium under Selenium, through Debian's chromedriver (no download: both are given)."""
    browser = require_tool("chromium")
    driver_path = require_tool("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require(False, "selenium is not installed (pip install -e '.[test]')")
        raise
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                 "--disable-gpu", "--no-first-run"):
        options.add_argument(flag)  # --no-sandbox: Chromium refuses to start as root without it (CI runs as root)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """The whole page as a PNG under tmp_path (and in $GAFFER_SCREENSHOT_DIR when it is set)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(900, int(height) + 40))
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), "the browser took no screenshot"
    if os.environ.get("GAFFER_SCREENSHOT_DIR"):
        target = Path(os.environ["GAFFER_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def test_status_page_in_headless_chromium(serve: ReapiServer, chromium: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(chromium, BROWSER_TIMEOUT_S)
    chromium.get(f"{serve.http_url}/status")
    wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())  # no token yet: the form
    assert not chromium.find_element(By.ID, "status").is_displayed()

    chromium.find_element(By.ID, "token").send_keys("wrong")
    chromium.find_element(By.ID, "login-submit").click()
    wait.until(lambda d: "refused" in d.find_element(By.ID, "login-why").text)

    chromium.find_element(By.ID, "token").send_keys(TOKEN)
    chromium.find_element(By.ID, "login-submit").click()
    wait.until(lambda d: d.find_element(By.ID, "status").is_displayed())
    wait.until(lambda d: "updated" in d.find_element(By.ID, "updated").text)
    cards = chromium.find_element(By.ID, "cards").text
    assert "ACTION CACHE HIT RATE" in cards.upper()
    assert chromium.execute_script("return sessionStorage.getItem('gaffer-status-token')") == TOKEN
    assert not chromium.find_element(By.ID, "no-execution").is_displayed()
    worker = _status(serve)["workers"][0]["name"]
    tables = {name: chromium.find_element(By.ID, name).text for name in ("workers", "queue", "running", "recent")}
    assert worker in tables["workers"] and "1/2" in tables["workers"] and BUILD[:8] in tables["workers"]
    assert "pool=none" in tables["queue"] and BUILD[:8] in tables["queue"]
    assert worker in tables["running"] and BUILD[:8] in tables["running"]
    assert "ok" in tables["recent"].split()
    # it refreshes by itself: the time of the last update changes without any action of ours
    first = chromium.find_element(By.ID, "updated").text
    wait.until(lambda d: d.find_element(By.ID, "updated").text != first)
    errors = [entry for entry in chromium.get_log("browser")
              if entry["level"] == "SEVERE" and "401 (Unauthorized)" not in entry["message"]]
    assert errors == [], errors
    assert _screenshot(chromium, tmp_path, "status").stat().st_size > 10_000


def test_status_page_of_a_cache_only_server(cache_only: str, chromium: Any, tmp_path: Path) -> None:
    """No token, nothing executed: the page shows the cache and says there is no execution service."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium.get(f"{cache_only}/status")
    WebDriverWait(chromium, BROWSER_TIMEOUT_S).until(lambda d: d.find_element(By.ID, "no-execution").is_displayed())
    assert not chromium.find_element(By.ID, "login").is_displayed()
    assert not chromium.find_element(By.ID, "execution").is_displayed()
    assert "STORE" in chromium.find_element(By.ID, "cards").text.upper()
    _screenshot(chromium, tmp_path, "status-cache-only")
