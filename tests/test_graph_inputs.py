"""Input patterns resolved against a real workspace tree: literals, globs, directories, dot-directories, symlinks."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from gaffer.errors import UserError
from gaffer.graph import load_graph
from gaffer.graph.inputs import resolve_inputs

TREE = [
    "top.c",
    "go.mod",
    "src/a.c",
    "src/b.c",
    "src/b.h",
    "src/.clang-format",
    "src/sub/c.c",
    "src/sub/deeper/d.c",
    "src/sub/deeper/notes.txt",
    "src/dir.c/inside.txt",  # a directory whose name matches *.c: not an input itself
    "cmd/api/main.go",
    "cmd/cli/main.go",
    "cmd/cli/flags.go",
    ".git/HEAD",
    ".git/objects/x.c",
    ".gaffer/state.c",
    ".hidden/h.c",
    ".github/workflows/ci.yml",
]


@pytest.fixture()
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace holding TREE; the current directory, so messages name graph.json as typed."""
    for name in TREE:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def resolve(ws: Path, *patterns: str) -> list[str]:
    (ws / "graph.json").write_text(json.dumps({"t": {"command": "true", "inputs": list(patterns)}}))
    graph = load_graph("graph.json")
    return resolve_inputs(graph.root, graph.tasks["t"], graph.path)


def resolve_error(ws: Path, *patterns: str) -> str:
    with pytest.raises(UserError) as info:
        resolve(ws, *patterns)
    assert info.value.exit_status == 2
    return str(info.value)


def test_literal_files_sorted_and_unique(ws: Path) -> None:
    assert resolve(ws, "src/b.c", "top.c", "./src/b.c", "src/a.c") == ["src/a.c", "src/b.c", "top.c"]


def test_literal_files_need_no_directory_listing(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The no-op build budget: a literal file is one stat, never a listing."""
    patterns = ["src/a.c", "go.mod", "cmd/cli/main.go"]
    (ws / "graph.json").write_text(json.dumps({"t": {"inputs": patterns}}))
    graph = load_graph("graph.json")

    def no_listing(path: object) -> None:
        raise AssertionError(f"listed {path}")

    monkeypatch.setattr(os, "scandir", no_listing)
    assert resolve_inputs(graph.root, graph.tasks["t"], graph.path) == sorted(patterns)


def test_a_literal_directory_means_every_file_below_it(ws: Path) -> None:
    assert resolve(ws, "src/sub") == ["src/sub/c.c", "src/sub/deeper/d.c", "src/sub/deeper/notes.txt"]
    assert resolve(ws, "src/sub/") == resolve(ws, "src/sub/**")


def test_the_whole_workspace_skips_dot_directories(ws: Path) -> None:
    files = resolve(ws, ".")
    assert "src/sub/deeper/d.c" in files and "src/.clang-format" in files and "graph.json" in files
    assert not [f for f in files if f.startswith((".git/", ".gaffer/", ".hidden/", ".github/"))]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.c", ["top.c"]),
        ("src/*.c", ["src/a.c", "src/b.c"]),
        ("src/?.h", ["src/b.h"]),
        ("src/[a].c", ["src/a.c"]),
        ("src/[!a].c", ["src/b.c"]),
        ("src/**/*.c", ["src/a.c", "src/b.c", "src/sub/c.c", "src/sub/deeper/d.c"]),
        ("src/**/deeper/*", ["src/sub/deeper/d.c", "src/sub/deeper/notes.txt"]),
        ("**/*.c", ["src/a.c", "src/b.c", "src/sub/c.c", "src/sub/deeper/d.c", "top.c"]),
        ("cmd/*/main.go", ["cmd/api/main.go", "cmd/cli/main.go"]),
        ("cmd/**", ["cmd/api/main.go", "cmd/cli/flags.go", "cmd/cli/main.go"]),
        ("**/sub/*.c", ["src/sub/c.c"]),
        ("src/*", ["src/.clang-format", "src/a.c", "src/b.c", "src/b.h"]),  # dot-files match, directories do not
        ("src/dir.c/*", ["src/dir.c/inside.txt"]),
        (".hidden/*.c", [".hidden/h.c"]),  # a dot-directory the pattern names
        (".*/*.c", [".hidden/h.c"]),  # .git and .gaffer only when named literally
        (".git/**/*.c", [".git/objects/x.c"]),
        ("**/.github/**", [".github/workflows/ci.yml"]),
    ],
)
def test_globs(ws: Path, pattern: str, expected: list[str]) -> None:
    assert resolve(ws, pattern) == expected


def test_a_literal_path_into_a_dot_directory(ws: Path) -> None:
    assert resolve(ws, ".git/HEAD") == [".git/HEAD"]


def test_patterns_are_combined(ws: Path) -> None:
    assert resolve(ws, "src/*.h", "go.mod", "src/**/*.h") == ["go.mod", "src/b.h"]


@pytest.mark.parametrize(
    ("pattern", "what"),
    [
        ("src/missing.c", "does not exist"),
        ("top.c/x", "does not exist (a parent is a file)"),
        ("src/**/*.rs", "matches no files"),
        ("nowhere/**", "matches no files"),
        ("top.c/*", "matches no files"),
    ],
)
def test_a_pattern_matching_nothing(ws: Path, pattern: str, what: str) -> None:
    assert resolve_error(ws, "go.mod", pattern) == f"graph.json: task 't': input {pattern!r} {what}"


def test_an_empty_literal_directory(ws: Path) -> None:
    (ws / "empty/sub").mkdir(parents=True)
    assert resolve_error(ws, "empty") == "graph.json: task 't': input 'empty' is a directory with no files"


def test_a_directory_matched_by_a_pattern_is_not_an_input(ws: Path) -> None:
    assert resolve_error(ws, "src/s*") == "graph.json: task 't': input 'src/s*' matches no files"


def test_symlinks_to_files_inside_are_inputs_under_their_own_path(ws: Path) -> None:
    (ws / "src/link.c").symlink_to("../top.c")
    assert resolve(ws, "src/link.c") == ["src/link.c"]
    assert resolve(ws, "src/*.c") == ["src/a.c", "src/b.c", "src/link.c"]


def test_a_symlink_to_a_directory_inside(ws: Path) -> None:
    (ws / "alias").symlink_to("src/sub")
    assert resolve(ws, "alias") == ["alias/c.c", "alias/deeper/d.c", "alias/deeper/notes.txt"]
    assert "alias/c.c" not in resolve(ws, "**/*.c")  # globs do not descend through symlinked directories


def test_broken_symlinks(ws: Path) -> None:
    (ws / "src/gone.c").symlink_to("nowhere.c")
    assert resolve_error(ws, "src/gone.c") == "graph.json: task 't': input 'src/gone.c' is a broken symlink"
    assert resolve(ws, "src/*.c") == ["src/a.c", "src/b.c"]


def test_symlinks_leaving_the_workspace_are_refused(ws: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.c").write_text("secret")
    real = os.path.realpath(outside)
    (ws / "src/secret.c").symlink_to(outside / "secret.c")
    (ws / "vendor").symlink_to(outside)
    assert resolve_error(ws, "src/secret.c") == (
        f"graph.json: task 't': input 'src/secret.c' leads outside the workspace through a symlink "
        f"(src/secret.c -> {real}/secret.c)"
    )
    assert resolve_error(ws, "src/**/*.c") == (
        f"graph.json: task 't': input 'src/**/*.c' leads outside the workspace through a symlink "
        f"(src/secret.c -> {real}/secret.c)"
    )
    assert resolve_error(ws, "vendor") == (
        f"graph.json: task 't': input 'vendor' leads outside the workspace through a symlink (vendor -> {real})"
    )
    assert resolve_error(ws, "vendor/*.c") == (
        f"graph.json: task 't': input 'vendor/*.c' leads outside the workspace through a symlink (vendor -> {real})"
    )


def test_special_files(ws: Path) -> None:
    os.mkfifo(ws / "src/pipe.c")
    assert resolve_error(ws, "src/pipe.c") == (
        "graph.json: task 't': input 'src/pipe.c' is not a regular file or directory"
    )
    assert resolve(ws, "src/*.c") == ["src/a.c", "src/b.c"]


def test_messages_name_the_graph_file_as_seen_from_the_current_directory(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ws / "graph.json").write_text(json.dumps({"t": {"inputs": ["nope"]}}))
    graph = load_graph(ws / "graph.json")
    monkeypatch.chdir(ws.parent)
    expected = f"{ws.name}/graph.json: task 't': input 'nope' does not exist"
    with pytest.raises(UserError, match="^" + re.escape(expected) + "$"):
        resolve_inputs(graph.root, graph.tasks["t"], graph.path)
    (ws / "elsewhere").mkdir()
    monkeypatch.chdir(ws / "elsewhere")  # not below: the absolute path
    with pytest.raises(UserError, match="^" + re.escape(f"{ws}/graph.json: task 't'")):
        resolve_inputs(graph.root, graph.tasks["t"], graph.path)
