"""What gaffer says to a newcomer: help that names its settings and exit statuses, counts in the right number,
sizes in units that fit, and no text that speaks of the project's history instead of the thing itself."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gaffer.cli import build_parser
from gaffer.units import format_count, format_size
from tests.support import REPO, gaffer_env, run_gaffer

HISTORY = re.compile(r"seed \d{3}|seed projects?\b|seed's|\bissue \d+|DESIGN\.md", re.IGNORECASE)

HELP_COMMANDS = [["--help"], ["run", "--help"], ["explain", "--help"], ["clean", "--help"],
                 ["cache", "--help"], *[["cache", action, "--help"] for action in ("status", "gc", "verify", "clean")],
                 ["serve", "--help"], ["worker", "--help"], ["status", "--help"], ["gocache", "--help"],
                 ["cc", "--help"], ["ld", "--help"]]


def _help(args: list[str], tmp_path: Path) -> str:
    proc = run_gaffer(args, cwd=tmp_path, env=gaffer_env(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("args", HELP_COMMANDS, ids=" ".join)
def test_help_speaks_of_gaffer_only(args: list[str], tmp_path: Path) -> None:
    text = _help(args, tmp_path)
    assert not HISTORY.search(text), HISTORY.search(text)


def test_user_facing_files_speak_of_gaffer_only() -> None:
    files = [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "HACKING.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "benchmarks").glob("*.md"))]
    found = [f"{f.relative_to(REPO)}:{n}: {line.strip()}" for f in files
             for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if HISTORY.search(line)]
    graph = json.loads((REPO / "examples" / "go-microservices" / "graph.json").read_text(encoding="utf-8"))
    tasks = graph.get("tasks", graph)
    found += [f"graph.json: {name}: {task['description']}" for name, task in tasks.items()
              if HISTORY.search(task.get("description", ""))]
    assert not found, "\n".join(found)


def _anchors(page: Path) -> set[str]:
    """The anchors a Markdown renderer gives the page's headings (GitHub's rule), fenced code left out."""
    anchors: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        fenced ^= line.startswith("```")
        heading = None if fenced else re.match(r"#+\s+(.*)", line)
        if heading:
            anchor = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchors.add(anchor if anchor not in anchors else f"{anchor}-1")
    return anchors


def test_relative_links_of_the_docs_lead_somewhere() -> None:
    """A stranger follows the links: each relative one names a file of the checkout, and a heading of it."""
    pages = [REPO / "README.md", REPO / "HACKING.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "examples").glob("*/README.md"))]
    broken = []
    for page in pages:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.relative_to(REPO)}: {link}: no such file")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{page.relative_to(REPO)}: {link}: no such heading")
    assert not broken, "\n".join(broken)


def test_ld_help_shows_links(tmp_path: Path) -> None:
    """`gaffer ld --help` gives examples of links, and `gaffer cc --help` of compiles."""
    ld = _help(["ld", "--help"], tmp_path)
    examples = ld[ld.index("examples:"):]
    assert "gaffer ld -- gcc -o" in examples and "CMAKE_C_LINKER_LAUNCHER" in examples, examples
    assert "gaffer cc -- gcc -c" not in examples and "the linker's" in examples, examples
    assert "gaffer cc -- gcc -c" in _help(["cc", "--help"], tmp_path)


def test_run_help_names_the_environment_and_the_exit_statuses(tmp_path: Path) -> None:
    text = _help(["run", "--help"], tmp_path)
    for name in ("GAFFER_CACHE ", "GAFFER_CACHE_DIR", "GAFFER_CACHE_MAX_SIZE", "GAFFER_CACHE_READ_ONLY",
                 "GAFFER_CACHE_TIMEOUT", "GAFFER_JOBS"):
        assert name in text, name
    statuses = text[text.index("exit status"):]
    for status in ("0 ", "1 ", "2 ", "3 ", "130", "143"):
        assert f"  {status}" in statuses or status in statuses, status


@pytest.mark.parametrize("command", ["run", "clean", "cache", "status", "serve", "worker", "gocache"])
def test_help_of_each_program_a_script_checks_names_its_exit_statuses(command: str, tmp_path: Path) -> None:
    text = _help([command, "--help"], tmp_path)
    statuses = text[text.lower().index("exit status"):]
    assert re.search(r"\b0\b", statuses) and re.search(r"\b2\b", statuses) and re.search(r"\b3\b", statuses), statuses


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["cache", "status", "--help"]], ids=" ".join)
def test_help_is_wrapped_to_the_terminal(args: list[str], tmp_path: Path) -> None:
    """The parsers are built with formatters of a fixed width (they write nothing); help is written at the
    terminal's width, as argparse finds it (COLUMNS here): the narrower, the more lines."""
    def lines(columns: int) -> int:
        proc = run_gaffer(args, cwd=tmp_path, env={**gaffer_env(tmp_path / "cache"), "COLUMNS": str(columns)})
        assert proc.returncode == 0, proc.stderr
        return len(proc.stdout.splitlines())

    assert lines(40) > lines(80) > lines(200)


def test_every_argument_of_every_command_has_help(tmp_path: Path) -> None:
    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    missing += walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path}: {'/'.join(action.option_strings) or action.metavar or action.dest}")
        return missing

    assert walk(build_parser(), "gaffer") == []
    for command, argument in (("explain", "TASK"), ("clean", "TARGET")):
        assert re.search(rf"^  {argument}\s+\S", _help([command, "--help"], tmp_path), re.MULTILINE), command


def test_gobuildcache_help_names_every_variable(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "from gaffer.gocache.main import main; main()", "--help"],
                          capture_output=True, text=True, env=gaffer_env(tmp_path / "cache"), check=False)
    assert proc.returncode == 0
    text = proc.stdout + proc.stderr
    for name in ("GOBUILDCACHE_CACHE", "GOBUILDCACHE_READ_ONLY", "GOBUILDCACHE_STATS", "GOBUILDCACHE_TIMEOUT"):
        assert name in text, name


def test_clean_reports_on_stdout_in_the_right_number(tmp_path: Path) -> None:
    """What `gaffer clean` did is its result, on stdout, like `gaffer cache clean`'s (HACKING.md, "Output")."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({"one": {"command": "echo 1 > one", "outputs": ["one"]},
                                               "two": {"command": "echo 2 > two", "outputs": ["two"]}}))
    env = gaffer_env(tmp_path / "cache")
    run_gaffer(["run"], cwd=ws, env=env, check=True)
    one = run_gaffer(["clean", "one"], cwd=ws, env=env, check=True)
    assert one.stdout == "removed 1 declared output\n" and one.stderr == ""
    run_gaffer(["run"], cwd=ws, env=env, check=True)
    both = run_gaffer(["clean", "--all"], cwd=ws, env=env, check=True)
    assert both.stdout == f"removed 2 declared outputs\nemptied {tmp_path / 'cache'}\n" and both.stderr == ""
    emptied = run_gaffer(["cache", "clean"], cwd=ws, env=env, check=True)
    assert emptied.stdout == f"emptied {tmp_path / 'cache'}\n" and emptied.stderr == ""


def test_verbose_build_of_one_task_says_task(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "graph.json").write_text(json.dumps({"one": {"command": "echo 1 > one", "outputs": ["one"]}}))
    proc = run_gaffer(["run", "-v"], cwd=ws, env=gaffer_env(tmp_path / "cache"), check=True)
    assert "Starting build with 1 task (" in proc.stderr
    status = run_gaffer(["cache", "status"], cwd=ws, env=gaffer_env(tmp_path / "cache"), check=True).stdout
    assert "(last 1 build):" in status and "(0 hits, 1 miss)" in status


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (1, "1 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (300_000, "293.0 KiB"),
    (1024**2 - 1, "1.0 MiB"), (45 * 1024**2, "45.0 MiB"), (10 * 1024**3, "10.0 GiB"), (3 * 1024**4, "3.0 TiB"),
])
def test_sizes_print_in_a_unit_that_fits(n: int, text: str) -> None:
    assert format_size(n) == text


def test_counts_agree_with_their_noun() -> None:
    assert [format_count(n, "task") for n in (0, 1, 2)] == ["0 tasks", "1 task", "2 tasks"]
    assert format_count(1, "entry", "entries") == "1 entry" and format_count(3, "entry", "entries") == "3 entries"
