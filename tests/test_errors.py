"""Every mistake and every broken environment is one line and its documented exit status, never a traceback; and
gaffer never deletes a file it did not create. Through the real CLI, on real processes and file systems."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import NOBODY, gaffer_env, mounted, require, run_gaffer


def workspace(root: Path, graph: dict, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "graph.json").write_text(json.dumps(graph))
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def one_line(proc: subprocess.CompletedProcess[str], status: int) -> str:
    """The whole of stderr, which must be a single `gaffer: ...` line, with the process's exit status."""
    assert proc.returncode == status, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gaffer: "), proc.stderr
    return lines[0]


def no_traceback(proc: subprocess.CompletedProcess[str], status: int) -> None:
    assert "Traceback" not in proc.stderr and proc.returncode == status, proc.stderr


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return gaffer_env(tmp_path / "cache")


# --- the first build in a fresh checkout (no .gaffer/ yet) ----------------------------------------------------


@pytest.mark.parametrize(
    ("task", "status"),
    [
        ({"command": "exit 1", "inputs": ["in.txt"]}, 1),
        ({"command": "cat in.txt > out.txt", "inputs": ["in.txt"], "outputs": ["out.txt"], "cache": False}, 0),
    ],
    ids=["fails", "uncached"],
)
def test_first_build_that_records_no_task(tmp_path: Path, env: dict[str, str], task: dict, status: int) -> None:
    ws = workspace(tmp_path / "ws", {"t": task}, {"in.txt": "x\n"})
    no_traceback(run_gaffer(["run"], cwd=ws, env=env), status)


def test_first_build_interrupted_exits_130(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "echo started > fifo; exec sleep 60", "inputs": ["in.txt"]}},
                   {"in.txt": "x\n"})
    os.mkfifo(ws / "fifo")
    proc = subprocess.Popen([sys.executable, "-m", "gaffer", "run"], cwd=ws, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with open(ws / "fifo") as fifo:  # returns once the task has opened it for writing: it is running
        assert fifo.read() == "started\n"
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err


# --- an unusable local cache directory ------------------------------------------------------------------------
# Root ignores permission bits (and CI runs as root), so these run the CLI as an unprivileged user.


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A directory that user nobody can reach (pytest's tmp_path is private to root)."""
    require(os.geteuid() == 0 and shutil.which("setpriv") is not None, "running as nobody needs root and setpriv")
    path = Path(tempfile.mkdtemp(prefix="gaffer-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def as_nobody(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           sys.executable, "-m", "gaffer", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


NOBODY_GRAPH = {
    "a": {"command": "cat in.txt > a.txt", "inputs": ["in.txt"], "outputs": ["a.txt"]},
    "b": {"command": "cat in.txt in.txt > b.txt", "inputs": ["in.txt"], "outputs": ["b.txt"]},
}


def nobodys_workspace(shared: Path) -> Path:
    ws = workspace(shared / "ws", NOBODY_GRAPH, {"in.txt": "x\n"})
    for path in (ws, *ws.iterdir()):
        os.chown(path, NOBODY, NOBODY)
    return ws


def test_read_only_cache_directory_serves_hits_and_runs_misses(shared: Path) -> None:
    cache = shared / "cache"
    ws = nobodys_workspace(shared)
    env = gaffer_env(cache, XDG_CONFIG_HOME=str(shared / "xdg"))
    # root fills the cache with task a only; to nobody the directory is read-only (0755, root's)
    filled = workspace(shared / "root-ws", {"a": NOBODY_GRAPH["a"]}, {"in.txt": "x\n"})
    run_gaffer(["run"], cwd=filled, env=env, check=True)
    before = sorted(p.relative_to(cache) for p in cache.rglob("*") if "tmp" not in p.parts)

    proc = as_nobody(["run", "-j", "1", "--summary-json", "summary.json"], cwd=ws, env=env)
    no_traceback(proc, 0)
    status = {t["name"]: t["status"] for t in json.loads((ws / "summary.json").read_text())["tasks"]}
    assert status == {"a": "cached", "b": "executed"}
    assert (ws / "b.txt").read_text() == "x\nx\n"
    warnings = [line for line in proc.stderr.splitlines() if "read-only" in line]
    assert warnings == [(f"gaffer: warning: cache directory {cache} is read-only: its entries are used, nothing new"
                         " is stored")]
    assert sorted(p.relative_to(cache) for p in cache.rglob("*") if "tmp" not in p.parts) == before
    assert not [p for p in Path(tempfile.gettempdir()).glob(f"gaffer-{NOBODY}-*")]  # its private temp dir is gone

    for command in (["cache", "clean"], ["cache", "gc"], ["clean", "--all"]):
        assert one_line(as_nobody(command, cwd=ws, env=env), 3).startswith(f"gaffer: local cache {cache}: ")
    assert (ws / "a.txt").exists()


def test_serve_refuses_a_read_only_directory(shared: Path) -> None:
    """A server cannot fall back to running anything: dropping every upload would only look like a cache."""
    (shared / "store" / "tmp").mkdir(parents=True)
    proc = as_nobody(["serve", "--dir", str(shared / "store"), "--grpc", "127.0.0.1:0"], cwd=shared,
                     env=os.environ.copy())
    assert proc.returncode == 3 and proc.stderr.strip() == (
        f"gaffer serve: --dir {shared}/store: cannot write to the cache directory (read-only)")


@pytest.mark.parametrize("command", [["run"], ["clean", "--all"]])
def test_uncreatable_cache_directory_is_exit_3(shared: Path, command: list[str]) -> None:
    (shared / "root-only").mkdir(mode=0o755)
    ws = nobodys_workspace(shared)
    env = gaffer_env(shared / "root-only" / "cache", XDG_CONFIG_HOME=str(shared / "xdg"))
    line = one_line(as_nobody(command, cwd=ws, env=env), 3)
    assert line == (f"gaffer: local cache disk://{shared}/root-only/cache: cannot create cache directory:"
                    " Permission denied")


def test_cache_status_of_an_uncreatable_cache_directory_reads_it_empty(shared: Path) -> None:
    """`gaffer cache status` only reads: a cache directory that does not exist is an empty cache, not made."""
    (shared / "root-only").mkdir(mode=0o755, exist_ok=True)
    ws = nobodys_workspace(shared)
    env = gaffer_env(shared / "root-only" / "cache", XDG_CONFIG_HOME=str(shared / "xdg"))
    proc = as_nobody(["cache", "status"], cwd=ws, env=env)
    assert proc.returncode == 0 and "Blobs: 0" in proc.stdout, proc.stdout + proc.stderr
    assert not (shared / "root-only" / "cache").exists()


# --- the cache emptied under a running build ------------------------------------------------------------------


def test_cache_clean_while_a_build_runs(tmp_path: Path, env: dict[str, str]) -> None:
    """The middle task empties the cache the build is writing to; the build still finishes and stores results."""
    gaffer = f"{sys.executable} -m gaffer"
    ws = workspace(tmp_path / "ws", {
        "first": {"command": "mkdir -p d && cat in.txt > d/a", "inputs": ["in.txt"], "outputs": ["d"]},
        "clean": {"command": f"{gaffer} cache clean && echo c > c.txt", "deps": ["first"], "outputs": ["c.txt"],
                  "pass_env": ["GAFFER_CACHE_DIR", "PYTHONPATH"]},  # the nested gaffer: this build's cache
        "last": {"command": "cat d/a c.txt > last.txt", "deps": ["clean"], "outputs": ["last.txt"]},
    }, {"in.txt": "x\n"})
    orphan = tmp_path / "cache" / "tmp" / "4194305-1-dead"  # above any pid_max: left by a process long gone
    orphan.parent.mkdir(parents=True)
    orphan.write_text("partial")
    no_traceback(run_gaffer(["run", "-j", "1"], cwd=ws, env=env), 0)
    assert (ws / "last.txt").read_text() == "x\nc\n"
    assert not orphan.exists()
    shutil.rmtree(ws / ".gaffer")
    proc = run_gaffer(["run", "-j", "1", "--summary-json", "s.json"], cwd=ws, env=env, check=True)
    status = {t["name"]: t["status"] for t in json.loads((ws / "s.json").read_text())["tasks"]}
    assert status == {"first": "executed", "clean": "cached", "last": "cached"}, proc.stderr


# --- names and values a cache key cannot hold -----------------------------------------------------------------


def test_non_utf8_input_file_name_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "true", "inputs": ["src/*"]}}, {"src/ok.txt": ""})
    with open(os.fsencode(ws / "src") + b"/caf\xe9.txt", "wb"):
        pass
    line = one_line(run_gaffer(["run"], cwd=ws, env=env), 2)
    assert line == ("gaffer: graph.json: task 't': input file 'src/caf\\xe9.txt' has a name that is not UTF-8, which"
                    " cache keys cannot hold: rename it")


def test_non_utf8_env_value_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "true", "env": ["FLAVOUR"]}})
    env_bytes = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    env_bytes[b"FLAVOUR"] = b"caf\xe9"
    proc = subprocess.run([sys.executable, "-m", "gaffer", "run"], cwd=ws, env=env_bytes,  # type: ignore[arg-type]
                          capture_output=True, text=True, timeout=300, check=False)
    line = one_line(proc, 2)
    assert line == "gaffer: environment variable FLAVOUR is not UTF-8 text ('caf\\xe9'), which cache keys cannot hold"


def test_non_utf8_output_file_name_fails_the_task(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "mkdir -p out && touch out/caf$(printf '\\351').txt",
                                           "outputs": ["out"]}})
    proc = run_gaffer(["run"], cwd=ws, env=env)
    no_traceback(proc, 1)
    assert "  failed: t: output file 'out/caf\\xe9.txt' has a name that is not UTF-8" in proc.stderr


# --- report files, timeouts, outputs under a file, builds.log -------------------------------------------------


@pytest.mark.parametrize("flag", ["--summary-json", "--trace"])
def test_report_file_in_a_missing_directory_is_refused_before_building(
    tmp_path: Path, env: dict[str, str], flag: str
) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "touch ran", "outputs": ["ran"]}})
    line = one_line(run_gaffer(["run", flag, "no/such/dir/out.json"], cwd=ws, env=env), 2)
    assert line == f"gaffer: {flag} no/such/dir/out.json: directory {ws}/no/such/dir does not exist"
    assert not (ws / "ran").exists()


@pytest.mark.parametrize("timeout", [1e300, "100000000000d"])
def test_huge_timeout_is_a_graph_error(tmp_path: Path, env: dict[str, str], timeout: object) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "true", "timeout": timeout}})
    line = one_line(run_gaffer(["run"], cwd=ws, env=env), 2)
    assert "field 'timeout' must be at most a year" in line


def test_output_under_a_file_fails_the_task_and_keeps_the_file(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "true", "outputs": ["a.txt/b"]}}, {"a.txt": "mine\n"})
    proc = run_gaffer(["run"], cwd=ws, env=env)
    no_traceback(proc, 1)
    assert "  failed: t: declared output 'a.txt/b' was not created by the task" in proc.stderr
    assert (ws / "a.txt").read_text() == "mine\n"


def test_damaged_builds_log_lines_are_skipped(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "true"}})
    run_gaffer(["run"], cwd=ws, env=env, check=True)
    log = tmp_path / "cache" / "builds.log"
    with open(log, "ab") as f:
        f.write(b'{"hits": 1e400, "misses": 1}\n\xff\xfe\x00\n[1]\n"x"\n{"hits": -1, "misses": 0}\n{"hits": 3}\n'
                b'{"t": 1, "hits": 2, "misses": 0}\n{"hits": ' + b"[" * 100_000 + b"\n")
    proc = run_gaffer(["cache", "status"], cwd=ws, env=env)
    no_traceback(proc, 0)
    assert "Hit rate (last 2 builds): 66.7% (2 hits, 1 miss)" in proc.stdout


# --- gaffer never deletes a file it did not create ------------------------------------------------------------


@pytest.mark.parametrize(
    ("graph", "kept"),
    [
        ({"sort": {"command": "sort -o data.txt data.txt", "inputs": ["data.txt"], "outputs": ["data.txt"]}},
         "data.txt"),
        ({"docs": {"command": "true", "inputs": ["docs/intro.md"], "outputs": ["docs"]}}, "docs/intro.md"),
        ({"gen": {"command": "true", "outputs": ["gen"]}, "use": {"command": "true", "inputs": ["gen/a.h"]}},
         "gen/a.h"),
    ],
    ids=["own-output", "inside-own-output", "another-task-without-dep"],
)
def test_a_literal_input_under_an_output_is_a_graph_error_and_is_kept(
    tmp_path: Path, env: dict[str, str], graph: dict, kept: str
) -> None:
    ws = workspace(tmp_path / "ws", graph, {kept: "the user's own file\n"})
    line = one_line(run_gaffer(["run"], cwd=ws, env=env), 2)
    assert f"input '{kept}' is" in line
    assert (ws / kept).read_text() == "the user's own file\n"


# --- settings are checked even when nothing needs building ----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("grpc://host:notaport/x", "Port could not be cast to integer value as 'notaport'"),
        ("http://", "expected http(s)://HOST[:PORT]/PREFIX"),
        ("s3://", "expected s3://BUCKET/PREFIX"),
        ("s3://bucket/p?endpoint=ftp://x", "endpoint 'ftp://x' is not an http:// or https:// URL"),
        ("redis://host/zero", "the database 'zero' is not a number"),
        ("grpc://host/instance", "expected grpc://HOST:PORT[/INSTANCE]"),
        ("http://host/x?tokenfile=t", "unknown parameter 'tokenfile' (parameters: token_file)"),
        ("disk://relative", "expected disk:///ABSOLUTE/PATH"),
    ],
)
def test_bad_cache_url_on_a_no_op_build(tmp_path: Path, env: dict[str, str], url: str, complaint: str) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "touch out", "outputs": ["out"]}})
    run_gaffer(["run"], cwd=ws, env=env, check=True)
    for source, args, variables in (("--cache", ["--cache", url], {}), ("GAFFER_CACHE", [], {"GAFFER_CACHE": url})):
        line = one_line(run_gaffer(["run", *args], cwd=ws, env={**env, **variables}), 2)
        assert line.startswith(f"gaffer: {source}: cache URL {url}: ") and complaint in line, line
    assert not (ws / "relative").exists()


@pytest.mark.parametrize(
    ("args", "variables", "line"),
    [
        (["--cache-timeout", "100000000d"], {},
         "gaffer: --cache-timeout: the timeout must be more than 0 and at most a day, not 8.64e+12s"),
        ([], {"GAFFER_CACHE_TIMEOUT": "0s"},
         "gaffer: GAFFER_CACHE_TIMEOUT: the timeout must be more than 0 and at most a day, not 0s"),
    ],
)
def test_bad_cache_timeout_on_a_cold_and_a_no_op_build(
    tmp_path: Path, env: dict[str, str], args: list[str], variables: dict[str, str], line: str
) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "touch out", "outputs": ["out"]}})
    for _ in ("cold", "no-op"):
        assert one_line(run_gaffer(["run", "--cache", "http://127.0.0.1:1/x", *args], cwd=ws,
                                   env={**env, **variables}), 2) == line
        run_gaffer(["run"], cwd=ws, env=env, check=True)


def test_disk_store_survives_its_directory_being_removed(tmp_path: Path) -> None:
    """`rm -rf` of the cache between two writes of one process: the store makes its directories again."""
    from gaffer.cache.disk import DiskStore
    from gaffer.digest import digest_bytes

    store = DiskStore(tmp_path / "cache")
    store.write_blob(digest_bytes(b"one"), b"one")
    shutil.rmtree(tmp_path / "cache")
    (tmp_path / "file").write_text("two")
    store.put_file(tmp_path / "file")
    store.write_action(digest_bytes(b"key"), b"result")
    shutil.rmtree(tmp_path / "cache")
    store.write_blob(digest_bytes(b"three"), b"three")
    shutil.rmtree(tmp_path / "cache")
    store.close()  # accounts the size under the lock file, which is gone too
    store.gc()
    store.clean()
    assert DiskStore(tmp_path / "cache").status().blobs == 0


@pytest.mark.parametrize(("url", "module", "extra"), [
    ("redis://127.0.0.1:1/0", "redis", "redis"),
    ("s3://bucket/x", "botocore", "s3"),
    ("s3://bucket/x?endpoint=http://127.0.0.1:1&region=us-east-1", "botocore", "s3"),  # reads need no botocore
])
def test_remote_cache_without_its_extra_installed(
    tmp_path: Path, env: dict[str, str], url: str, module: str, extra: str
) -> None:
    """`pip install .` without the extra a URL's scheme needs: one line naming the package and the extra.
    The client library is made unfindable and unimportable, as if absent, by a finder that sitecustomize installs
    first on sys.meta_path (gaffer looks for some without importing them)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {module!r} or name.startswith({module + '.'!r}):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Absent())\n")
    ws = workspace(tmp_path / "ws", {"t": {"command": "touch out", "outputs": ["out"]}})
    proc = run_gaffer(["run", "--cache", url], cwd=ws,
                      env={**env, "PYTHONPATH": os.pathsep.join([str(hide), env.get("PYTHONPATH", "")]),
                           "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"})
    assert one_line(proc, 3) == (f"gaffer: {url}: needs the Python package {module!r}, which is not installed: "
                                 f"pip install 'gaffer[{extra}]'")


# --- a workspace on a full or read-only file system (mounted for the test: needs root) ------------------------


def test_full_workspace_disk_is_one_line_and_leaves_no_temp_file(tmp_path: Path, env: dict[str, str]) -> None:
    with mounted(tmp_path / "ws", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as ws:
        workspace(ws, {"a": {"command": "cat in.txt > a.txt", "inputs": ["in.txt"], "outputs": ["a.txt"]},
                       "fill": {"command": "cat /dev/zero > fill.bin", "deps": ["a"], "outputs": ["fill.bin"]}},
                  {"in.txt": "x\n"})
        proc = run_gaffer(["run", "-k"], cwd=ws, env=env)
        no_traceback(proc, 3)
        last = proc.stderr.splitlines()[-1]  # the build log's file that could not be written
        assert re.fullmatch(rf"gaffer: (cannot save the build log: )?{re.escape(str(ws))}/\.gaffer/\S+: No space left"
                            " on device", last), last
        assert sorted(p.name for p in (ws / ".gaffer").rglob("*") if ".tmp" in p.name) == []


def test_read_only_workspace_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "cat in.txt > o", "inputs": ["in.txt"], "outputs": ["o"]}},
                   {"in.txt": "x\n"})
    run_gaffer(["run"], cwd=ws, env=env, check=True)
    (ws / "in.txt").write_text("y\n")
    with mounted(tmp_path / "ro", "--bind", "-o", "ro", str(ws)) as ro:
        assert run_gaffer(["run", "--dry-run"], cwd=ro, env=env).returncode == 0
        for command in (["run"], ["clean"]):
            assert one_line(run_gaffer(command, cwd=ro, env=env), 3).endswith(": Read-only file system")


def test_full_cache_disk_warns_once_and_builds(tmp_path: Path) -> None:
    """The local cache's disk fills up during a build, and is full at the next: tasks (their stdout too) and
    builds succeed, nothing half-written stays in the cache, one warning each time."""
    with mounted(tmp_path / "cache", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as cache:
        env = gaffer_env(cache / "gaffer")
        ws = workspace(tmp_path / "ws", {
            "big": {"command": "head -c 1500000 /dev/zero > big.out; echo big", "outputs": ["big.out"]},
            "small": {"command": "echo small > small.out; echo small", "deps": ["big"], "outputs": ["small.out"]},
        })
        warning = f"gaffer: warning: cache directory {cache}/gaffer is full (No space left on device): its " \
                  "entries are used, nothing new is stored"
        for _ in range(2):
            proc = run_gaffer(["run", "-j", "1"], cwd=ws, env=env)
            assert proc.returncode == 0, proc.stderr
            assert proc.stderr.count(warning) == 1, proc.stderr
            assert (ws / "small.out").read_text() == "small\n" and (ws / "big.out").stat().st_size == 1500000
            assert list((cache / "gaffer" / "tmp").iterdir()) == []
            run_gaffer(["clean"], cwd=ws, env=env, check=True)
        assert run_gaffer(["cache", "verify"], cwd=ws, env=env).returncode == 0
        run_gaffer(["clean", "--all"], cwd=ws, env=env, check=True)  # maintenance may empty a full cache
        assert not (cache / "gaffer" / "cas").exists()


def test_a_disk_url_is_percent_decoded_as_a_file_url_is(tmp_path: Path, env: dict[str, str]) -> None:
    ws = workspace(tmp_path / "ws", {"t": {"command": "echo hi > out", "outputs": ["out"]}})
    shared = tmp_path / "shared cache"
    url = "disk://" + str(shared).replace(" ", "%20")
    run_gaffer(["run", "--cache", url], cwd=ws, env=env, check=True)
    assert (shared / "ac").is_dir() and not (tmp_path / "shared%20cache").exists()
