"""graph.json loading: the happy paths, every error with its exact message, and schema.json agreeing with both."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gaffer.errors import UserError
from gaffer.graph import Graph, Task, load_graph
from tests.support import REPO

SCHEMA = json.loads((REPO / "src/gaffer/graph/schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages name the graph file as typed: load "graph.json" from the workspace itself."""
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, doc: Any, name: str = "graph.json") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
    return path


def load(tmp_path: Path, doc: Any) -> Graph:
    write(tmp_path, doc)
    return load_graph("graph.json")


def load_error(tmp_path: Path, doc: Any) -> str:
    write(tmp_path, doc)
    with pytest.raises(UserError) as info:
        load_graph("graph.json")
    assert info.value.exit_status == 2
    message = str(info.value)
    assert "\n" not in message
    return message


# --- happy paths -------------------------------------------------------------------------------------------

# Valid graphs, used by the tests below and all checked against schema.json.
SEED_000 = {  # the shape of the seed's graph: a bare map, shell commands, a group task
    "fetch-cache": {"command": "mkdir -p .cache && echo fetched", "outputs": [".cache/fetched"]},
    "build-common": {"command": "go build ./pkg/common/...", "deps": ["fetch-cache"], "inputs": ["pkg/common/**/*.go"]},
    "build-models": {"command": "go build ./pkg/models/...", "deps": ["fetch-cache"], "inputs": ["pkg/models/**"]},
    "build-gateway": {
        "command": ["go", "build", "-o", "bin/gateway", "./cmd/gateway"],
        "deps": ["build-common", "build-models"],
        "inputs": ["cmd/gateway", "go.mod"],
        "outputs": ["bin/gateway"],
    },
    "distributed-build": {"deps": ["build-gateway"], "description": "everything"},
    "upload-cache": {"command": "aws s3 sync .cache/ s3://build-cache/.cache/gaffer", "cache": False},
}
STRUCTURED = {
    "$schema": "../src/gaffer/graph/schema.json",
    "version": 1,
    "env": ["GOOS", "GOARCH"],
    "pass_env": ["GOCACHE"],
    "platform": {"pool": "large", "container-image": "docker://build:1"},
    "tasks": {
        "gen": {"command": [["mkdir", "-p", "gen"], "echo hi > gen/hi.txt"], "outputs": ["gen/"], "timeout": "90s"},
        "build": {
            "command": [["cc", "-c", "a.c"], ["cc", "-o", "bin/a", "a.o"]],
            "deps": ["gen", "gen"],
            "inputs": ["./src/*.c", "src//x.h", "gen", "a/../b.c"],
            "outputs": ["bin/a", "a.o"],
            "env": ["CGO_ENABLED", "GOOS", "LDFLAGS", "PATH"],
            "pass_env": ["TMPDIR"],
            "timeout": 600,
            "cache": True,
            "description": "compile and link",
        },
        "all": {"command": None, "deps": ["build"], "inputs": None, "env": None, "timeout": None},
        "empty-list": {"command": []},
    },
}
VALID_GRAPHS = [SEED_000, STRUCTURED, {}, {"tasks": {}}, {"$schema": "x", "a": {}}]


def test_bare_map_keeps_file_order_and_defaults(tmp_path: Path) -> None:
    graph = load(tmp_path, SEED_000)
    assert list(graph.tasks) == list(SEED_000)
    assert graph.path == tmp_path / "graph.json" and graph.path.is_absolute()
    assert graph.root == tmp_path.resolve()
    assert graph.platform == {}
    fetch = graph.tasks["fetch-cache"]
    assert fetch == Task(
        name="fetch-cache",
        commands=(("sh", "-c", "mkdir -p .cache && echo fetched"),),
        deps=(),
        inputs=(),
        outputs=(".cache/fetched",),
        env=(),
        timeout=None,
        cache=True,
        description="",
        pass_env=("GOROOT", "GOTOOLCHAIN", "HOME", "PATH"),
    )
    assert graph.tasks["build-gateway"].commands == (("go", "build", "-o", "bin/gateway", "./cmd/gateway"),)
    assert graph.tasks["distributed-build"].is_group and not fetch.is_group
    assert graph.tasks["distributed-build"].description == "everything"
    assert graph.tasks["upload-cache"].cache is False


def test_structured_form_settings_and_normalization(tmp_path: Path) -> None:
    graph = load(tmp_path, STRUCTURED)
    assert list(graph.tasks) == ["gen", "build", "all", "empty-list"]
    assert graph.platform == {"container-image": "docker://build:1", "pool": "large"}
    gen, build, group = graph.tasks["gen"], graph.tasks["build"], graph.tasks["all"]
    assert gen.commands == (("mkdir", "-p", "gen"), ("sh", "-c", "echo hi > gen/hi.txt"))
    assert gen.outputs == ("gen",) and gen.timeout == 90.0
    assert gen.env == ("GOARCH", "GOOS")  # graph-level env only, sorted
    assert build.commands == (("cc", "-c", "a.c"), ("cc", "-o", "bin/a", "a.o"))
    assert build.deps == ("gen",)
    assert build.inputs == ("src/*.c", "src/x.h", "gen", "b.c")
    assert build.env == ("CGO_ENABLED", "GOARCH", "GOOS", "LDFLAGS", "PATH")
    # Pass-through: the defaults, the graph's and the task's, minus what the task keys (PATH here).
    assert gen.pass_env == ("GOCACHE", "GOROOT", "GOTOOLCHAIN", "HOME", "PATH")
    assert build.pass_env == ("GOCACHE", "GOROOT", "GOTOOLCHAIN", "HOME", "TMPDIR")
    assert build.timeout == 600.0 and build.description == "compile and link"
    assert group.is_group and group.inputs == () and group.timeout is None and group.env == ("GOARCH", "GOOS")
    assert graph.tasks["empty-list"].is_group


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("./src/a.c", "src/a.c"),
        ("src//b.c", "src/b.c"),
        ("src/", "src"),
        ("a/./b", "a/b"),
        ("a/../b", "b"),
        (".", "."),
        ("./", "."),
        (".hidden/x", ".hidden/x"),
        ("src/**/*.go", "src/**/*.go"),
    ],
)
def test_input_paths_are_normalized(tmp_path: Path, path: str, normal: str) -> None:
    assert load(tmp_path, {"t": {"inputs": [path]}}).tasks["t"].inputs == (normal,)


@pytest.mark.parametrize(("timeout", "seconds"), [(1, 1.0), (2.5, 2.5), ("90s", 90.0), ("10m", 600.0), ("500ms", 0.5)])
def test_timeouts(tmp_path: Path, timeout: Any, seconds: float) -> None:
    assert load(tmp_path, {"t": {"timeout": timeout}}).tasks["t"].timeout == seconds


def test_a_surrogate_pair_escape_is_a_character(tmp_path: Path) -> None:
    graph = load(tmp_path, '{"a": {"command": "echo \\ud83d\\ude00"}}')
    assert graph.tasks["a"].commands == (("sh", "-c", "echo \U0001f600"),)


def test_a_literal_input_may_name_an_output_of_a_task_it_depends_on(tmp_path: Path) -> None:
    """Directly or through other tasks; globs and directories above an output are not checked (globs skip
    outputs, and a directory input holds the files beside the output)."""
    graph = load(tmp_path, {
        "gen": {"outputs": ["out/gen"]},
        "mid": {"deps": ["gen"]},
        "use": {"deps": ["mid"], "inputs": ["out/gen/a.h", "out", "out/gen/*.h"]},
        "other": {"inputs": ["out", "out/*/*.h", "outside/x"]},
    })
    assert graph.tasks["use"].inputs == ("out/gen/a.h", "out", "out/gen/*.h")


def test_a_duplicate_input_or_output_spelling_is_dropped(tmp_path: Path) -> None:
    task = load(tmp_path, {"t": {"inputs": ["a", "./a", "b"], "outputs": ["o/", "o"]}}).tasks["t"]
    assert task.inputs == ("a", "b") and task.outputs == ("o",)


def test_the_graph_file_itself_cannot_be_an_output(tmp_path: Path) -> None:
    """gaffer removes a task's outputs before it runs: it must never delete the graph it is building from."""
    write(tmp_path, {"gen": {"command": "true", "outputs": ["graph.json"]}}, "sub/graph.json")
    for _validated_copy in (False, True):  # the second load reads the copy the first one kept
        with pytest.raises(UserError, match=re.escape("sub/graph.json: task 'gen': output 'graph.json' is this "
                                                      "graph file, which gaffer would delete before the task runs")):
            load_graph("sub/graph.json", keep=True)
    write(tmp_path, {"gen": {"command": "true", "outputs": ["graph.json"]}}, "sub/other.json")
    assert load_graph("sub/other.json").tasks["gen"].outputs == ("graph.json",)  # another graph's file is fine


def test_the_settings_file_beside_the_graph_cannot_be_an_output(tmp_path: Path) -> None:
    """gaffer reads its settings from the gaffer.toml beside the graph: a task's outputs are removed before it runs."""
    write(tmp_path, {"gen": {"command": "true", "outputs": ["gaffer.toml"]}}, "sub/graph.json")
    for _validated_copy in (False, True):  # the second load reads the copy the first one kept
        with pytest.raises(UserError, match=re.escape("sub/graph.json: task 'gen': output 'gaffer.toml' is the "
                                                      "settings file beside this graph, which gaffer would delete "
                                                      "before the task runs")):
            load_graph("sub/graph.json", keep=True)
    write(tmp_path, {"gen": {"command": "true", "outputs": ["lib/gaffer.toml"]}}, "sub/graph.json")
    assert load_graph("sub/graph.json").tasks["gen"].outputs == ("lib/gaffer.toml",)  # another directory's is fine

def test_the_model_is_frozen(tmp_path: Path) -> None:
    graph = load(tmp_path, SEED_000)
    with pytest.raises(AttributeError):
        graph.tasks["fetch-cache"].deps = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        graph.platform = {}  # type: ignore[misc]


def test_a_graph_path_given_as_absolute_or_in_a_subdirectory(tmp_path: Path) -> None:
    write(tmp_path, {"a": {}}, "sub/dir/graph.json")
    graph = load_graph(tmp_path / "sub/dir/graph.json")
    assert graph.root == (tmp_path / "sub/dir").resolve()
    write(tmp_path, {"a": {"dep": []}}, "sub/dir/graph.json")
    with pytest.raises(UserError, match=r"^sub/dir/graph.json: task 'a': unknown field"):
        load_graph("sub/dir/graph.json")
    with pytest.raises(UserError, match="^" + re.escape(f"{tmp_path}/sub/dir/graph.json: task 'a': unknown field")):
        load_graph(str(tmp_path / "sub/dir/graph.json"))


# --- closure -----------------------------------------------------------------------------------------------

DIAMOND = {
    "top": {"deps": ["left", "right"]},
    "left": {"deps": ["base"]},
    "right": {"deps": ["base", "left"]},
    "base": {},
    "other": {},
}


def test_closure_lists_deps_first_in_a_stable_order(tmp_path: Path) -> None:
    graph = load(tmp_path, DIAMOND)
    assert graph.closure(["top"]) == ["base", "left", "right", "top"]
    assert graph.closure(["right"]) == ["base", "left", "right"]
    assert graph.closure(["other", "left"]) == ["other", "base", "left"]
    assert graph.closure([]) == ["base", "left", "right", "top", "other"]


def test_closure_of_a_long_chain_does_not_recurse(tmp_path: Path) -> None:
    n = 5000
    graph = load(tmp_path, {f"t{i}": {"deps": [f"t{i + 1}"] if i + 1 < n else []} for i in range(n)})
    assert graph.closure(["t0"]) == [f"t{i}" for i in reversed(range(n))]


def test_unknown_target(tmp_path: Path) -> None:
    graph = load(tmp_path, {"build": {}, "test": {}})
    with pytest.raises(UserError) as info:
        graph.closure(["buld"])
    assert str(info.value) == "graph.json: unknown target 'buld' (did you mean 'build'?)"
    assert info.value.exit_status == 2
    with pytest.raises(UserError, match=r"^graph.json: unknown target 'zzzzzz'$"):
        graph.closure(["build", "zzzzzz"])


def test_ten_thousand_tasks_load_quickly(tmp_path: Path) -> None:
    """A guard against anything quadratic creeping in (the real budget, tens of ms, is benchmarked)."""
    tasks = {
        f"t{i}": {
            "command": f"cc -c src/f{i}.c -o out/f{i}.o",
            "deps": [f"t{i // 2}", f"t{i // 3}"] if i else [],
            "inputs": [f"src/f{i}.c", f"include/h{i % 50}.h"],
            "outputs": [f"out/f{i}.o"],
        }
        for i in range(10_000)
    }
    write(tmp_path, {"version": 1, "env": ["CC"], "tasks": tasks})
    start = time.process_time()
    graph = load_graph("graph.json")
    order = graph.closure([])
    assert time.process_time() - start < 2.0
    assert len(order) == 10_000 and order[0] == "t0"


# --- errors ------------------------------------------------------------------------------------------------

# (graph.json contents, the exact message, whether schema.json can tell too)
ERRORS: list[tuple[Any, str, bool]] = [
    ('{\n  "a": {}\n  "b": {}\n}', "graph.json:3:3: not valid JSON: Expecting ',' delimiter", False),
    ("", "graph.json:1:1: not valid JSON: Expecting value", False),
    (
        '{"a": {"command": "echo \\ud83d\\ude00 \\ud800"}}',
        "graph.json: not valid JSON: a \\u escape names half of a surrogate pair, not a character",
        False,
    ),
    ([], 'graph.json: must be a JSON object (task name -> task, or {"tasks": ...}), got a list', True),
    ({"tasks": []}, "graph.json: field 'tasks' must be an object (task name -> task), got a list", True),
    ({"tasks": None}, "graph.json: field 'tasks' must be an object (task name -> task), got null", True),
    ({"a": "echo hi"}, "graph.json: task 'a': must be an object, got a string", True),
    ({"tasks": {"a": []}}, "graph.json: task 'a': must be an object, got a list", True),
    (
        {"version": 1, "a": {}},
        (
            "graph.json: task 'version': must be an object, got a number "
            "('version' is a top-level setting only beside a \"tasks\" object)"
        ),
        True,
    ),
    ({"": {}}, "graph.json: task '': a task name must be non-empty and printable", True),
    ({"a\nb": {}}, "graph.json: task 'a\\nb': a task name must be non-empty and printable", True),
    # unknown fields
    ({"build-a": {"dep": []}}, "graph.json: task 'build-a': unknown field 'dep' (did you mean 'deps'?)", True),
    ({"a": {"xyzzy": 1}}, "graph.json: task 'a': unknown field 'xyzzy'", True),
    ({"tasks": {}, "envs": []}, "graph.json: unknown top-level field 'envs' (did you mean 'env'?)", True),
    # wrong types
    (
        {"build-a": {"deps": 3}},
        "graph.json: task 'build-a': field 'deps' must be a list of strings, got a number",
        True,
    ),
    (
        {"a": {"deps": ["b", 1]}, "b": {}},
        "graph.json: task 'a': field 'deps' must be a list of strings, but item 1 is a number",
        True,
    ),
    ({"a": {"inputs": "src"}}, "graph.json: task 'a': field 'inputs' must be a list of strings, got a string", True),
    ({"a": {"outputs": {}}}, "graph.json: task 'a': field 'outputs' must be a list of strings, got an object", True),
    ({"a": {"env": True}}, "graph.json: task 'a': field 'env' must be a list of strings, got a boolean", True),
    ({"a": {"cache": "no"}}, "graph.json: task 'a': field 'cache' must be true or false, got a string", True),
    ({"a": {"description": 1}}, "graph.json: task 'a': field 'description' must be a string, got a number", True),
    (
        {"a": {"command": 5}},
        "graph.json: task 'a': field 'command' must be a string, an argv list or a list of commands, got a number",
        True,
    ),
    (
        {"a": {"command": [["ls"], 5]}},
        "graph.json: task 'a': field 'command': command 1 must be a string or an argv list, got a number",
        True,
    ),
    (
        {"a": {"command": [["ls", None]]}},
        "graph.json: task 'a': field 'command': command 0: argument 1 must be a string, got null",
        True,
    ),
    (
        {"a": {"timeout": []}},
        "graph.json: task 'a': field 'timeout' must be a number of seconds or a duration like \"90s\", got a list",
        True,
    ),
    (
        {"a": {"timeout": True}},
        "graph.json: task 'a': field 'timeout' must be a number of seconds or a duration like \"90s\", got a boolean",
        True,
    ),
    ({"tasks": {}, "version": "1"}, "graph.json: field 'version' must be an integer, got a string", True),
    ({"tasks": {}, "version": 2}, "graph.json: unsupported version 2 (this gaffer reads version 1)", True),
    ({"tasks": {}, "platform": []}, "graph.json: field 'platform' must be an object of strings, got a list", True),
    (
        {"tasks": {}, "platform": {"cores": 4}},
        "graph.json: field 'platform': property 'cores' must be a string, got a number",
        True,
    ),
    ({"tasks": {}, "platform": {"": "x"}}, "graph.json: field 'platform' has an empty property name", True),
    ({"tasks": {}, "$schema": 1}, "graph.json: field '$schema' must be a string, got a number", True),
    ({"tasks": {}, "env": "CC"}, "graph.json: field 'env' must be a list of strings, got a string", True),
    # unknown deps and cycles
    (
        {"build-a": {"deps": ["build-zz"]}, "build-z": {}},
        "graph.json: task 'build-a': unknown dependency 'build-zz' (did you mean 'build-z'?)",
        False,
    ),
    ({"a": {"deps": ["a"]}}, "graph.json: dependency cycle: a -> a", False),
    (
        {"x": {"deps": ["a"]}, "a": {"deps": ["b"]}, "b": {"deps": ["c"]}, "c": {"deps": ["a"]}},
        "graph.json: dependency cycle: a -> b -> c -> a",
        False,
    ),
    # outputs
    (
        {"a": {"outputs": ["bin/x"]}, "b": {"outputs": ["./bin/x"]}},
        "graph.json: output 'bin/x' is declared by both 'a' and 'b'",
        False,
    ),
    (
        {"a": {"outputs": ["bin"]}, "b": {"outputs": ["bin/x"]}},
        "graph.json: output 'bin/x' of 'b' is inside output 'bin' of 'a'",
        False,
    ),
    (
        {"a": {"outputs": ["bin/sub/x"]}, "b": {"outputs": ["bin/"]}},
        "graph.json: output 'bin/sub/x' of 'a' is inside output 'bin' of 'b'",
        False,
    ),
    (
        {"a": {"outputs": ["out", "out/x"]}},
        "graph.json: task 'a': output 'out/x' is inside its other output 'out'",
        False,
    ),
    # a literal input under an output: the task's own (it would be deleted) or another's without a dep on it
    (
        {"a": {"command": "sort -o data.txt data.txt", "inputs": ["data.txt"], "outputs": ["data.txt"]}},
        ("graph.json: task 'a': input 'data.txt' is output 'data.txt' of the same task, which gaffer removes before"
         " the task runs (a task must not write over its own inputs)"),
        False,
    ),
    (
        {"a": {"inputs": ["docs/intro.md"], "outputs": ["docs"]}},
        ("graph.json: task 'a': input 'docs/intro.md' is inside output 'docs' of the same task, which gaffer removes"
         " before the task runs (a task must not write over its own inputs)"),
        False,
    ),
    (
        {"a": {"outputs": ["out/a"]}, "b": {"deps": ["c"]}, "c": {"inputs": ["./out/a/lib.so"]}},
        ("graph.json: task 'c': input 'out/a/lib.so' is inside output 'out/a' of task 'a', but 'c' does not depend on"
         " 'a' (add it to 'deps')"),
        False,
    ),
    (
        {"a": {"outputs": ["gen.h"]}, "b": {"inputs": ["gen.h"], "deps": []}},
        ("graph.json: task 'b': input 'gen.h' is output 'gen.h' of task 'a', but 'b' does not depend on 'a' (add it"
         " to 'deps')"),
        False,
    ),
    (
        {"a": {"outputs": ["bin/*"]}},
        "graph.json: task 'a': output 'bin/*' is a pattern; outputs are literal paths",
        True,
    ),
    ({"a": {"outputs": ["./"]}}, "graph.json: task 'a': output './' is the whole workspace", False),
    (
        {"a": {"outputs": [".gaffer/x"]}},
        "graph.json: task 'a': output '.gaffer/x' is inside '.gaffer', which a task must not write to",
        False,
    ),
    # outside the workspace
    ({"a": {"outputs": ["../x"]}}, "graph.json: task 'a': output '../x' is outside the workspace", True),
    ({"a": {"inputs": ["src/../../x"]}}, "graph.json: task 'a': input 'src/../../x' is outside the workspace", False),
    (
        {"a": {"inputs": ["/etc/passwd"]}},
        "graph.json: task 'a': input '/etc/passwd' is outside the workspace (an absolute path)",
        True,
    ),
    ({"a": {"inputs": [""]}}, "graph.json: task 'a': input '' is empty", True),
    ({"a": {"inputs": ["a\u0000b"]}}, "graph.json: task 'a': input 'a\\x00b' contains a NUL character", False),
    # env names, timeouts, commands
    (
        {"tasks": {"a": {"pass_env": ["X-Y"]}}},
        ("graph.json: task 'a': pass_env name 'X-Y' is not a variable name "
         "(letters, digits and _, not starting with a digit)"),
        True,
    ),
    (
        {"env": ["CC"], "tasks": {"a": {"pass_env": ["CC"]}}},
        "graph.json: task 'a': variable 'CC' is in both 'env' (keyed) and 'pass_env' (not keyed); keep it in one",
        False,
    ),
    (
        {"a": {"env": ["FOO-BAR"]}},
        (
            "graph.json: task 'a': env name 'FOO-BAR' is not a variable name "
            "(letters, digits and _, not starting with a digit)"
        ),
        True,
    ),
    (
        {"tasks": {}, "env": ["1X"]},
        "graph.json: env name '1X' is not a variable name (letters, digits and _, not starting with a digit)",
        True,
    ),
    ({"a": {"timeout": -1}}, "graph.json: task 'a': field 'timeout' must be a positive duration, got -1", True),
    ({"a": {"timeout": 0}}, "graph.json: task 'a': field 'timeout' must be a positive duration, got 0", True),
    (
        {"a": {"timeout": 1e300}},
        "graph.json: task 'a': field 'timeout' must be at most a year (31536000s, or leave it out), got 1e+300",
        True,
    ),
    (
        {"a": {"timeout": "9999999999999d"}},
        ("graph.json: task 'a': field 'timeout' must be at most a year (31536000s, or leave it out), got"
         " '9999999999999d'"),
        False,
    ),
    ({"a": {"timeout": "0s"}}, "graph.json: task 'a': field 'timeout' must be a positive duration, got '0s'", True),
    (
        {"a": {"timeout": "10x"}},
        "graph.json: task 'a': field 'timeout': '10x' is not a duration (examples: 500ms, 30s, 2h)",
        True,
    ),
    (
        {"a": {"timeout": "-5s"}},
        "graph.json: task 'a': field 'timeout': '-5s' is not a duration (examples: 500ms, 30s, 2h)",
        True,
    ),
    (
        '{"a": {"timeout": NaN}}',
        "graph.json: task 'a': field 'timeout' must be a positive duration, got nan",
        False,  # NaN is not JSON; Python's reader accepts it, the schema test cannot express it
    ),
    (
        {"a": {"command": ""}},
        "graph.json: task 'a': field 'command' is an empty string (leave 'command' out for a group task)",
        True,
    ),
    (
        {"a": {"command": " \t"}},
        "graph.json: task 'a': field 'command' is an empty string (leave 'command' out for a group task)",
        True,
    ),
    (
        {"a": {"command": [["ls"], ""]}},
        "graph.json: task 'a': field 'command': command 1 is an empty string (leave 'command' out for a group task)",
        True,
    ),
    ({"a": {"command": [["ls"], []]}}, "graph.json: task 'a': field 'command': command 1 is an empty argv list", True),
    (
        {"a": {"command": ["", "x"]}},
        "graph.json: task 'a': field 'command': the program name (argument 0) is empty",
        True,
    ),
    (
        {"a": {"command": ["mkdir -p out", "go vet ./..."]}},
        (
            "graph.json: task 'a': field 'command': program name 'mkdir -p out' contains whitespace; a list of strings"
            " is one argv (for several shell commands write one string with &&, or make one of them an argv list)"
        ),
        True,
    ),
    (
        {"a": {"command": ["echo a", ["make all"]]}},
        (
            "graph.json: task 'a': field 'command': command 1: program name 'make all' contains whitespace; a list"
            " of strings is one argv (for several shell commands write one string with &&, or make one of them an"
            " argv list)"
        ),
        True,
    ),
    ({"a": {"command": "echo \u0000"}}, "graph.json: task 'a': field 'command' contains a NUL character", False),
]


@pytest.mark.parametrize(("doc", "message", "schema_tells"), ERRORS, ids=[m for _, m, _ in ERRORS])
def test_error_message(tmp_path: Path, doc: Any, message: str, schema_tells: bool) -> None:
    assert load_error(tmp_path, doc) == message


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "graph.json").write_bytes(b'{"a": {\n  "description": "\xff"}}')
    with pytest.raises(UserError, match=r"^graph.json:2:19: not valid JSON: not UTF-8 text$"):
        load_graph("graph.json")


def test_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_graph("graph.json")
    assert str(info.value) == "graph.json: cannot read: No such file or directory"
    assert info.value.exit_status == 2
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(UserError, match=r"^dir.json: cannot read: Is a directory$"):
        load_graph("dir.json")


# --- schema.json -------------------------------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("doc", VALID_GRAPHS)
def test_valid_graphs_pass_the_schema(tmp_path: Path, doc: Any) -> None:
    VALIDATOR.validate(doc)
    load(tmp_path, doc)


@pytest.mark.parametrize(
    ("doc", "message"), [(d, m) for d, m, tells in ERRORS if tells], ids=[m for _, m, tells in ERRORS if tells]
)
def test_the_schema_rejects_what_it_can_express(doc: Any, message: str) -> None:
    assert not VALIDATOR.is_valid(json.loads(doc) if isinstance(doc, str) else doc), message


EXAMPLES = sorted((REPO / "examples").glob("**/graph.json"))


def test_the_examples_are_found() -> None:
    assert REPO / "examples" / "go-microservices" / "graph.json" in EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(REPO)) for p in EXAMPLES])
def test_example_graphs_pass_the_schema_and_load(path: Path) -> None:
    VALIDATOR.validate(json.loads(path.read_text()))
    assert load_graph(path).closure([])


# --- the validated copy (.gaffer/graph) ----------------------------------------------------------------------

COPIED = {"a": {"command": "echo a > a.txt", "outputs": ["a.txt"]},
          "b": {"command": "cat a.txt > b.txt", "deps": ["a"], "inputs": ["a.txt"], "outputs": ["b.txt"]}}


def test_the_validated_copy_is_what_a_load_of_the_same_bytes_returns(tmp_path: Path) -> None:
    """A copy written for these bytes is used without validating them again: planted with another task under
    the same content digest, the load returns the planted task (so a copy is really read, and trusted only by
    digest)."""
    from gaffer.graph import load as loading

    write(tmp_path, COPIED)
    first = load_graph("graph.json", keep=True)
    assert (tmp_path / ".gaffer" / "graph").is_file()
    again = load_graph("graph.json")
    assert again.tasks == first.tasks and again.platform == first.platform and again.signature == first.signature
    digest = hashlib.sha256((tmp_path / "graph.json").read_bytes()).hexdigest()
    planted = {"z": first.tasks["a"]._replace(name="z")}
    loading._write_copy(str(tmp_path), digest, planted, {})
    assert list(load_graph("graph.json").tasks) == ["z"]


def test_the_copys_deps_are_the_tasks_deps_asked_one_by_one_or_walked_whole(tmp_path: Path) -> None:
    """From the copy, a task's deps come from its own Task until the whole map is walked (then from the map
    kept beside the tasks): the same either way, and the same as a fresh validation's."""
    graph = {"a": {"command": "echo a > a.txt", "outputs": ["a.txt"]},
             "b": {"command": "echo b > b.txt", "outputs": ["b.txt"]},
             "c": {"command": "cat a.txt b.txt > c.txt", "deps": ["b", "a"], "outputs": ["c.txt"]},
             "all": {"deps": ["c", "a"]}}
    write(tmp_path, graph)
    fresh = load_graph("graph.json", keep=True)
    expected = {"a": (), "b": (), "c": ("b", "a"), "all": ("c", "a")}
    assert dict(fresh.deps) == expected
    one_by_one = load_graph("graph.json")
    assert type(one_by_one.deps) is not dict  # from the copy
    assert {name: one_by_one.deps[name] for name in ("c", "all", "a", "b")} == expected
    assert "c" in one_by_one.deps and "z" not in one_by_one.deps and len(one_by_one.deps) == 4
    walked = load_graph("graph.json")
    assert dict(walked.deps) == expected and list(walked.deps) == ["a", "b", "c", "all"]
    assert walked.closure(["all"]) == fresh.closure(["all"]) == ["b", "a", "c", "all"]
    with pytest.raises(KeyError):
        walked.deps["z"]


def test_a_known_signature_spares_reading_the_file_until_the_file_changes(tmp_path: Path) -> None:
    """`known` (the no-op record's signature and digest of the graph file) is trusted while the file keeps that
    signature: planted under another digest, that copy is what loads. Rewritten with the same size and mtime
    (its ctime moves), the file is read and validated again."""
    from gaffer.graph import load as loading

    write(tmp_path, COPIED)
    first = load_graph("graph.json", keep=True)
    planted = {"z": first.tasks["a"]._replace(name="z")}
    loading._write_copy(str(tmp_path), "0" * 64, planted, {})
    graph = load_graph("graph.json", known=(first.signature, "0" * 64))
    assert list(graph.tasks) == ["z"] and graph.digest == "0" * 64 and graph.signature == first.signature
    path = tmp_path / "graph.json"
    st = path.stat()
    path.write_bytes(path.read_bytes().replace(b"echo a", b"echo A"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    graph = load_graph("graph.json", known=(first.signature, "0" * 64))
    assert list(graph.tasks) == ["a", "b"] and graph.tasks["a"].commands == (("sh", "-c", "echo A > a.txt"),)
    assert graph.digest == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("seed", range(8))
def test_any_byte_of_the_graph_file_edited_means_a_full_validation(tmp_path: Path, seed: int) -> None:
    """One byte changed anywhere, size and mtime kept: never the copy of the old bytes. A change that breaks
    the file is reported; one that keeps it valid is loaded as it now reads."""
    import random

    write(tmp_path, COPIED)
    path = tmp_path / "graph.json"
    load_graph("graph.json", keep=True)
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    at = rng.randrange(len(data))
    data[at] = ord(rng.choice([c for c in "ab{}[]\":, xyz" if ord(c) != data[at]]))
    st = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    try:
        expected: Any = json.loads(bytes(data))
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(UserError):
            load_graph("graph.json", keep=True)
        return
    try:
        graph = load_graph("graph.json", keep=True)
    except UserError:
        return  # valid JSON, no valid graph: refused, not loaded from the copy
    assert list(graph.tasks) == list(expected)
    assert [t.commands for t in graph.tasks.values()] == [(("sh", "-c", t["command"]),) for t in expected.values()]


@pytest.mark.parametrize("damage", ["garbage", "empty", "old format", "truncated", "one byte flipped"])
def test_a_damaged_or_foreign_copy_is_only_a_miss(tmp_path: Path, damage: str) -> None:
    """"One byte flipped" still unmarshals (a task's command reads otherwise): only the checksum tells."""
    import marshal

    write(tmp_path, COPIED)
    expected = load_graph("graph.json", keep=True).tasks
    copy = tmp_path / ".gaffer" / "graph"
    stored = copy.read_bytes()
    copy.write_bytes({"garbage": b"\x00\xffnot marshal", "empty": b"",
                      "old format": marshal.dumps(((0, "0.0.0", ()), *marshal.loads(stored)[1:])),
                      "truncated": stored[: len(stored) // 2],
                      "one byte flipped": stored.replace(b"echo a > a.txt", b"echo z > a.txt")}[damage])
    assert copy.read_bytes() != stored
    assert load_graph("graph.json", keep=True).tasks == expected
    assert copy.read_bytes() == stored  # validated again, and the copy replaced
