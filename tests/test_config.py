"""One configuration system: for each front end (`gaffer run`, `gaffer serve`, `gobuildcache`) a flag wins over
an environment variable, which wins over gaffer.toml (the project's over the user's), which wins over the default;
gobuildcache's Go variables are aliases of the same settings; a bad value is one line naming its source; and the
table of settings is what --help and the docs show."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gaffer.config import CC, GOCACHE, RUN, SERVE, SETTINGS, WORKER, settings_of
from tests.support import REPO, gaffer_env, require_tool, run_gaffer

GO_VARIABLES = ("BACKEND_TYPE", "CACHE_DIR", "S3_BUCKET", "S3_PREFIX", "S3_TMP_DIR", "DEBUG")


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No GAFFER_*, GOBUILDCACHE_* or Go-program variables from the machine; the user config dir under tmp_path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GAFFER_", "GOBUILDCACHE_")) and k not in GO_VARIABLES}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), XDG_CACHE_HOME=str(tmp_path / "xdg-cache"), **extra)
    return env


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def user_toml(tmp_path: Path, text: str) -> Path:
    return write(tmp_path / "xdg" / "gaffer" / "gaffer.toml", text)


# -- gaffer run (and cache, clean): gaffer.toml beside the graph ---------------------------------------------------


def cache_status(cwd: Path, env: dict[str, str], *args: str) -> tuple[str, int]:
    """(the local cache directory, its size bound) as `gaffer cache status --json` resolves them."""
    import json

    status = json.loads(run_gaffer(["cache", "status", "--json", *args], cwd=cwd, env=env, check=True).stdout)
    return status["dir"], status["max_size"]


def test_run_precedence_flag_env_toml_default(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    env = clean_env(tmp_path)
    assert cache_status(ws, env) == (str(tmp_path / "xdg-cache" / "gaffer"), 10 * 1024**3)
    user_toml(tmp_path, "[cache]\ndir = 'user-cache'\nmax_size = '1MiB'\n")
    assert cache_status(ws, env) == (str(tmp_path / "xdg" / "gaffer" / "user-cache"), 1024**2)
    write(ws / "gaffer.toml", "[cache]\ndir = 'project-cache'\n")  # the project's wins key by key
    assert cache_status(ws, env) == (str(ws / "project-cache"), 1024**2)
    (ws / "sub").mkdir()  # no graph to stand beside: `gaffer cache` finds the nearest one upward
    assert cache_status(ws / "sub", env) == (str(ws / "project-cache"), 1024**2)
    env.update(GAFFER_CACHE_DIR=str(tmp_path / "env-cache"), GAFFER_CACHE_MAX_SIZE="2MiB")
    assert cache_status(ws, env) == (str(tmp_path / "env-cache"), 2 * 1024**2)
    flags = ("--cache-dir", str(tmp_path / "flag-cache"), "--cache-max-size", "3MiB")
    assert cache_status(ws, env, *flags) == (str(tmp_path / "flag-cache"), 3 * 1024**2)


def test_run_reads_the_gaffer_toml_beside_the_graph_not_the_working_directory(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write(ws / "graph.json", '{"t": {"command": "echo t > t.txt", "outputs": ["t.txt"]}}')
    write(ws / "gaffer.toml", "[cache]\ndir = 'beside-the-graph'\n")
    write(tmp_path / "gaffer.toml", "[cache]\ndir = 'in-the-cwd'\n")
    run_gaffer(["run", "--graph", str(ws / "graph.json")], cwd=tmp_path, env=clean_env(tmp_path), check=True)
    assert (ws / "beside-the-graph" / "cas").is_dir()
    assert not (tmp_path / "in-the-cwd").exists()


@pytest.mark.parametrize(("source", "where"), [
    ("flag", "--cache-timeout"), ("env", "GAFFER_CACHE_TIMEOUT"), ("project", "gaffer.toml: [cache] timeout"),
    ("user", "xdg/gaffer/gaffer.toml: [cache] timeout"),
])
def test_run_bad_value_is_one_line_naming_its_source(tmp_path: Path, source: str, where: str) -> None:
    ws = tmp_path / "ws"
    write(ws / "graph.json", '{"t": {"command": "true"}}')
    env = clean_env(tmp_path, **({"GAFFER_CACHE_TIMEOUT": "soon"} if source == "env" else {}))
    if source == "project":
        write(ws / "gaffer.toml", "[cache]\ntimeout = 'soon'\n")
    if source == "user":
        user_toml(tmp_path, "[cache]\ntimeout = 'soon'\n")
    proc = run_gaffer(["run", *(["--cache-timeout", "soon"] if source == "flag" else [])], cwd=ws, env=env)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert re.fullmatch(rf"gaffer: (\S*/)?{re.escape(where)}: 'soon' is not a duration \(.*\)\n", proc.stderr), \
        proc.stderr


def test_a_negative_size_in_gaffer_toml_is_refused_as_in_a_variable(tmp_path: Path) -> None:
    """A TOML integer is no string to parse: `max_size = -5` must not become a bound that evicts everything."""
    ws = tmp_path / "ws"
    write(ws / "graph.json", '{"t": {"command": "true"}}')
    write(ws / "gaffer.toml", "[cache]\nmax_size = -5\n")
    proc = run_gaffer(["run"], cwd=ws, env=clean_env(tmp_path))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.endswith("gaffer.toml: [cache] max_size: -5 is not a size (examples: 500MB, 10GiB, 1048576)\n")


def test_a_boolean_in_gaffer_toml_may_be_1_or_0_as_its_error_says() -> None:
    from gaffer.config import parse_bool
    from gaffer.errors import UserError

    assert parse_bool(1, "[run] sandbox") is True and parse_bool(0, "[run] sandbox") is False
    with pytest.raises(UserError, match=r"^\[run\] sandbox: 2 is not a boolean \(use true or false, 1 or 0\)$"):
        parse_bool(2, "[run] sandbox")


# -- gaffer serve: gaffer.toml from the working directory upward, then the user's --------------------------------


def serve_store_line(cwd: Path, env: dict[str, str], *args: str) -> str:
    """`gaffer serve`'s listening line, `... store DIR (0 B of SIZE)`, then stop it with SIGTERM."""
    proc = subprocess.Popen([sys.executable, "-m", "gaffer", "serve", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # written once it listens, or the one line of an error
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    match = re.search(r"; store (.*)$", line.strip())
    assert match, line
    return match.group(1)


def test_serve_precedence_flag_env_toml_default_with_the_toml_found_upward(tmp_path: Path) -> None:
    project = tmp_path / "project"
    cwd = project / "sub" / "deeper"
    cwd.mkdir(parents=True)
    env = clean_env(tmp_path, GAFFER_SERVE_HTTP="127.0.0.1:0")
    default = serve_store_line(cwd, env)
    assert default == f"{tmp_path / 'xdg-cache' / 'gaffer' / 'serve'} (0 B of 10.0 GiB)"
    user_toml(tmp_path, "[serve]\ndir = 'user-store'\nmax_size = '1MiB'\nmemory = 0\n")
    assert serve_store_line(cwd, env) == f"{tmp_path / 'xdg' / 'gaffer' / 'user-store'} (0 B of 1.0 MiB)"
    write(project / "gaffer.toml", "[serve]\ndir = 'project-store'\n")  # nearest upward; wins key by key
    assert serve_store_line(cwd, env) == f"{project / 'project-store'} (0 B of 1.0 MiB)"
    env.update(GAFFER_SERVE_DIR=str(tmp_path / "env-store"), GAFFER_SERVE_MAX_SIZE="2MiB")
    assert serve_store_line(cwd, env) == f"{tmp_path / 'env-store'} (0 B of 2.0 MiB)"
    flagged = serve_store_line(cwd, env, "--dir", str(tmp_path / "flag-store"), "--max-size", "3MiB")
    assert flagged == f"{tmp_path / 'flag-store'} (0 B of 3.0 MiB)"


@pytest.mark.parametrize(("source", "where"), [
    ("flag", "--threads"), ("env", "GAFFER_SERVE_THREADS"), ("project", "gaffer.toml: [serve] threads"),
])
def test_serve_bad_value_is_one_line_naming_its_source(tmp_path: Path, source: str, where: str) -> None:
    cwd = tmp_path / "project" / "sub"
    cwd.mkdir(parents=True)
    if source == "project":
        write(tmp_path / "project" / "gaffer.toml", "[serve]\nthreads = 0\n")
    env = clean_env(tmp_path, **({"GAFFER_SERVE_THREADS": "0"} if source == "env" else {}))
    proc = run_gaffer(["serve", "--grpc", "127.0.0.1:0", *(["--threads", "0"] if source == "flag" else [])],
                      cwd=cwd, env=env)
    assert proc.returncode == 2, proc.stderr
    assert re.fullmatch(rf"gaffer serve: (\S*/)?{re.escape(where)}: '?0'? is not a positive number of threads\n",
                        proc.stderr), proc.stderr


@pytest.mark.parametrize(("args", "where"), [
    (["serve", "--grpc", "grpc://127.0.0.1:0"], "gaffer serve: --grpc"),
    (["serve", "--http", "http://127.0.0.1:0"], "gaffer serve: --http"),
    (["worker", "--server", "grpc://127.0.0.1:9"], "gaffer worker: --server"),
])
def test_a_url_where_host_port_is_expected_is_refused_at_once(tmp_path: Path, args: list[str], where: str) -> None:
    """A URL (what `gaffer run --remote` takes) given as HOST:PORT is one line and exit 2, before anything starts:
    not a bind that fails (exit 3), a warning about a non-loopback address, nor a worker retrying forever."""
    proc = run_gaffer([*args, "--dir", str(tmp_path / "dir")], cwd=tmp_path, env=clean_env(tmp_path), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"{where}: ") and "expected HOST:PORT, not a URL (example" in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize(("toml", "logged"), [("true", True), ("false", False), ('"1"', True), ('"cc.log"', False)])
def test_cc_debug_in_gaffer_toml_is_a_switch_like_the_others(tmp_path: Path, toml: str, logged: bool) -> None:
    """`[cc] debug = true` is how gaffer.toml writes a switch ([gocache] debug is one): it logs to stderr. A file
    named there is relative to the gaffer.toml, as every path in it."""
    gcc = require_tool("gcc")
    project = tmp_path / "project"
    write(project / "gaffer.toml", f"[cc]\ndebug = {toml}\n")
    write(project / "sub" / "x.c", "int x;\n")
    proc = run_gaffer(["cc", "--cache-dir", str(tmp_path / "cache"), "--", gcc, "-c", "x.c", "-o", "x.o"],
                      cwd=project / "sub", env=clean_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert ("gaffer cc: x.c: miss" in proc.stderr) is logged, proc.stderr
    if toml == '"cc.log"':
        assert "x.c: miss" in (project / "cc.log").read_text() and not (project / "sub" / "cc.log").exists()


# -- gobuildcache: the Go program's variables and GOBUILDCACHE_* are aliases, read before the GAFFER_* ones -----


def gocache(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_gaffer(["gocache", *args], cwd=cwd, env=env)


def local_tier(cwd: Path, env: dict[str, str]) -> str:
    """The local tier gobuildcache resolves, as `clear-local` names it."""
    proc = gocache(cwd, env, "clear-local")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().removeprefix("cleared disk://")


def test_gobuildcache_precedence_alias_env_toml_with_the_toml_found_upward(tmp_path: Path) -> None:
    project = tmp_path / "project"
    cwd = project / "cmd" / "tool"
    cwd.mkdir(parents=True)
    env = clean_env(tmp_path)
    user_toml(tmp_path, "[cache]\ndir = 'user-tier'\n")
    assert local_tier(cwd, env) == str(tmp_path / "xdg" / "gaffer" / "user-tier")
    write(project / "gaffer.toml", "[cache]\ndir = 'project-tier'\n")
    assert local_tier(cwd, env) == str(project / "project-tier")
    env["GAFFER_CACHE_DIR"] = str(tmp_path / "gaffer-variable")
    assert local_tier(cwd, env) == str(tmp_path / "gaffer-variable")
    env["CACHE_DIR"] = str(tmp_path / "go-variable")  # the Go program's name for it wins over gaffer's
    assert local_tier(cwd, env) == str(tmp_path / "go-variable")


def test_gobuildcache_backend_from_gaffer_toml_and_its_go_variables(tmp_path: Path) -> None:
    """The s3 backend's local tier is S3_TMP_DIR's; set in gaffer.toml, or by the Go variables over it."""
    env = clean_env(tmp_path, CACHE_DIR=str(tmp_path / "disk-tier"))
    write(tmp_path / "gaffer.toml", "[gocache]\nbackend = 's3'\ns3_bucket = 'team'\ns3_tmp_dir = 's3-tier'\n")
    assert local_tier(tmp_path, env) == str(tmp_path / "s3-tier")
    assert local_tier(tmp_path, {**env, "S3_TMP_DIR": str(tmp_path / "go-s3")}) == str(tmp_path / "go-s3")
    assert local_tier(tmp_path, {**env, "BACKEND_TYPE": "disk"}) == str(tmp_path / "disk-tier")
    assert local_tier(tmp_path, {**env, "GAFFER_GOCACHE_BACKEND": "disk"}) == str(tmp_path / "disk-tier")


def test_a_token_file_in_gaffer_toml_is_relative_to_it(tmp_path: Path) -> None:
    """`[cache] remote = ["http://...?token_file=token"]` at a module's root: gobuildcache run in a package's
    directory (where go runs it) reads that token, not one relative to its working directory, and uses the tier."""
    from tests.buildgrid import start_gaffer_serve

    project = tmp_path / "project"
    write(project / "token", "let-me-in\n")
    server = start_gaffer_serve("--token-file", str(project / "token"), workdir=tmp_path / "serve")
    try:
        write(project / "gaffer.toml", f'[cache]\nremote = ["{server.http_url}/go?token_file=token"]\n')
        (project / "cmd" / "app").mkdir(parents=True)
        session = ('{"ID":1,"Command":"get","ActionID":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}\n'
                   '{"ID":2,"Command":"close"}\n')
        proc = subprocess.run([sys.executable, "-m", "gaffer", "gocache"], input=session, capture_output=True,
                              text=True, timeout=60, cwd=project / "cmd" / "app", check=False,
                              env=clean_env(tmp_path, CACHE_DIR=str(tmp_path / "gocache"), GOBUILDCACHE_STATS="1"))
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    assert "token_file" not in proc.stderr.replace(f"token_file={project / 'token'}", ""), proc.stderr
    assert re.search(r"/go\?token_file=\S+: 0 hits, 1 misses, .*0 errors$", proc.stderr.strip()), proc.stderr


def test_gobuildcache_read_only_from_any_source_names_it(tmp_path: Path) -> None:
    env = clean_env(tmp_path, CACHE_DIR=str(tmp_path / "tier"), GOBUILDCACHE_CACHE="http://127.0.0.1:1/go")
    write(tmp_path / "gaffer.toml", "[cache]\nread_only = true\n")
    refused = gocache(tmp_path, env, "clear-remote")
    assert refused.returncode == 2 and "gaffer.toml: [cache] read_only" in refused.stderr, refused.stderr
    alias = gocache(tmp_path, {**env, "GOBUILDCACHE_READ_ONLY": "1", "GAFFER_CACHE_READ_ONLY": "0"}, "clear-remote")
    assert alias.returncode == 2 and "GOBUILDCACHE_READ_ONLY" in alias.stderr, alias.stderr
    allowed = gocache(tmp_path, {**env, "GOBUILDCACHE_READ_ONLY": "0"}, "clear-remote")  # over gaffer.toml
    assert "read-only" not in allowed.stderr, allowed.stderr


@pytest.mark.parametrize(("source", "where"), [
    ("DEBUG", "DEBUG"), ("GAFFER_GOCACHE_DEBUG", "GAFFER_GOCACHE_DEBUG"),
    ("toml", "gaffer.toml: [gocache] debug"),
])
def test_gobuildcache_bad_value_is_one_line_naming_its_source_before_the_capabilities(
    tmp_path: Path, source: str, where: str
) -> None:
    env = clean_env(tmp_path, CACHE_DIR=str(tmp_path / "tier"))
    if source == "toml":
        write(tmp_path / "gaffer.toml", "[gocache]\ndebug = 'maybe'\n")
    else:
        env[source] = "maybe"
    proc = subprocess.run([sys.executable, "-m", "gaffer", "gocache"], cwd=tmp_path, env=env, input="",
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert re.fullmatch(rf"gobuildcache: (\S*/)?{re.escape(where)}: 'maybe' is not a boolean \(.*\)\n",
                        proc.stderr), proc.stderr


# -- the table is what --help and the docs show -----------------------------------------------------------------


DOCS = {RUN: REPO / "README.md", SERVE: REPO / "docs" / "serve.md", GOCACHE: REPO / "docs" / "gocache.md",
        WORKER: REPO / "docs" / "remote-execution.md", CC: REPO / "docs" / "cc.md"}
HELP = {RUN: ["run", "--help"], SERVE: ["serve", "--help"], GOCACHE: ["gocache", "--help"],
        WORKER: ["worker", "--help"], CC: ["cc", "--help"]}


def names_of(front: str, s: object) -> list[str]:
    """What a reader looks for: the flag, every variable, and the gaffer.toml key as `[section] key`."""
    from gaffer.config import Setting

    assert isinstance(s, Setting)
    section, _, key = s.toml.partition(".")
    return ([s.flags[-1]] if s.flags and front != GOCACHE else []) + list(s.variables(front)) + [f"[{section}] {key}"]


@pytest.mark.parametrize("front", [RUN, SERVE, GOCACHE, WORKER, CC])
def test_every_setting_is_in_its_docs_table_and_help(front: str, tmp_path: Path) -> None:
    rows = [line for line in DOCS[front].read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    text = run_gaffer(HELP[front], cwd=tmp_path, env=gaffer_env(tmp_path / "cache"), check=True).stdout
    for s in settings_of(front):
        names = names_of(front, s)
        assert any(all(f"`{n}" in row for n in names) for row in rows), f"{DOCS[front].name}: no row with {names}"
        assert all(n in text for n in names), f"{' '.join(HELP[front])}: {names}"


def test_every_setting_belongs_to_a_front_end_and_has_one_toml_key() -> None:
    keys = [s.toml for s in SETTINGS]
    assert len(keys) == len(set(keys)) and all(s.fronts and s.env.startswith("GAFFER_") for s in SETTINGS)


def test_a_toml_boolean_where_another_type_belongs_is_named_as_toml_spells_it(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write(ws / "graph.json", '{"t": {"command": "true"}}')
    write(ws / "gaffer.toml", "[run]\njobs = true\n")
    proc = run_gaffer(["run"], cwd=ws, env=clean_env(tmp_path))
    assert proc.returncode == 2 and "jobs: true is not a positive number of jobs" in proc.stderr, proc.stderr
    assert "True" not in proc.stderr
