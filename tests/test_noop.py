"""The whole-build no-op fast path (.gaffer/noop) against the full per-task check: whenever the fast path says
"nothing to do", a full build (`-v` never takes the fast path) must find every task up to date."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gaffer import noop
from tests.support import gaffer_env, noop_changes, run_gaffer
from tests.support import run_ok as build

# Examples of the differential test: a few in every run, many more with GAFFER_TEST_EXAMPLES=500.
EXAMPLES = int(os.environ.get("GAFFER_TEST_EXAMPLES", "25"))
EDITS = 4  # random edits per example, each followed by the two verdicts


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return gaffer_env(tmp_path / "cache")


def fast_verdict(ws: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> bool:
    """Does the fast path, run as `gaffer run` would in `ws` with `env`, find nothing to do?"""
    found = noop_changes(ws, env, monkeypatch)
    return found is not None and not found.dirty and not found.dirs


def settled(found: noop.Changes | None, graph: dict[str, dict]) -> set[str]:
    """The tasks an incremental build takes as up to date without looking: neither dirty nor downstream of one."""
    if found is None:
        return set()
    affected: set[str] = set()
    for name, task in graph.items():  # the generated graphs list deps before their dependents
        if name in found.dirty or affected.intersection(task.get("deps", [])):
            affected.add(name)
    return set(graph) - affected


def full_verdict(ws: Path, env: dict[str, str]) -> tuple[bool, dict[str, str]]:
    """Does a full build find every task up to date? (It then builds what is not, for the next edit.)"""
    reasons = {t["name"]: t["reason"] for t in build(ws, env, "-v")["tasks"]}
    return all(r.startswith("up to date") for r in reasons.values()), reasons


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(("pattern", "new_file"), [(".*/*.yml", ".ci/new.yml"), ("src/.*/*.c", "src/.gen/new.c")])
def test_a_new_file_in_a_dot_directory_a_glob_enters(tmp_path: Path, env: dict[str, str], pattern: str,
                                                     new_file: str) -> None:
    ws = tmp_path / "ws"
    write(ws / ".ci" / "lint.yml", "lint\n")
    write(ws / "src" / ".gen" / "a.c", "int a;\n")
    write(ws / "graph.json", json.dumps({"t": {"command": "echo > out.txt", "inputs": [pattern],
                                                "outputs": ["out.txt"]}}))
    build(ws, env)
    assert build(ws, env)["status"]["t"] == "cached" and (ws / ".gaffer" / "noop").exists()
    write(ws / new_file, "new\n")
    result = build(ws, env)
    assert result["status"]["t"] == "executed", result["tasks"]


def test_a_symlinked_graph_file_belongs_to_the_directory_of_the_link(tmp_path: Path, env: dict[str, str]) -> None:
    """Two checkouts sharing one graph file: each builds its own inputs into its own outputs, and the fast path
    of one never reads the other's record."""
    graph = {"t": {"command": "cp in.txt out.txt", "inputs": ["in.txt"], "outputs": ["out.txt"]}}
    first, second = tmp_path / "first", tmp_path / "second"
    write(first / "graph.json", json.dumps(graph))
    write(first / "in.txt", "first\n")
    write(second / "in.txt", "second\n")
    (second / "graph.json").symlink_to(first / "graph.json")
    build(first, env)
    build(first, env)
    assert (first / ".gaffer" / "noop").exists()
    assert build(second, env)["status"]["t"] == "executed"
    assert (second / "out.txt").read_text() == "second\n"
    assert build(second, env)["status"]["t"] == "cached" and (second / ".gaffer" / "noop").exists()
    (second / "in.txt").write_text("second, edited\n")
    assert build(second, env)["status"]["t"] == "executed"
    assert (second / "out.txt").read_text() == "second, edited\n"
    assert (first / "out.txt").read_text() == "first\n"


def test_a_graph_file_edited_during_the_build(tmp_path: Path, env: dict[str, str]) -> None:
    """The build used the graph as it was read: the record must not vouch for the edited one."""
    ws = tmp_path / "ws"
    write(ws / "graph.json", json.dumps({"t": {"command": "echo old > out.txt && sed -i s/old/new/ graph.json",
                                                "outputs": ["out.txt"]}}))
    build(ws, env)
    assert build(ws, env)["status"]["t"] == "executed", "its command changed"
    assert (ws / "out.txt").read_text() == "new\n"


# -- the incremental build: only what is downstream of a change is looked at ---------------------------------------

def test_an_input_edited_during_an_incremental_build(tmp_path: Path, env: dict[str, str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`b` is settled from the record while `a`, dirty, rewrites b's input as it runs: the next build must run
    `b` on the new content (the record keeps the signature the settled task was built from)."""
    ws = tmp_path / "ws"
    write(ws / "a.txt", "a\n")
    write(ws / "b.txt", "b\n")
    write(ws / "graph.json", json.dumps({
        "a": {"command": "cat a.txt > out-a.txt; if [ -f trigger ]; then rm trigger; echo edited >> b.txt; fi",
              "inputs": ["a.txt"], "outputs": ["out-a.txt"]},
        "b": {"command": "cat b.txt > out-b.txt", "inputs": ["b.txt"], "outputs": ["out-b.txt"]}}))
    build(ws, env)
    write(ws / "a.txt", "a, edited\n")
    write(ws / "trigger", "")
    found = noop_changes(ws, env, monkeypatch)
    assert found is not None and found.dirty == {"a"}
    result = build(ws, env)
    assert result["status"] == {"a": "executed", "b": "cached"}
    assert build(ws, env)["status"]["b"] == "executed"
    assert (ws / "out-b.txt").read_text() == "b\nedited\n"


@pytest.mark.parametrize("change", ["input edited", "output edited", "file added where its glob looks"])
def test_the_record_of_an_incremental_build_still_watches_the_tasks_it_settled(
        tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """The record an incremental build writes keeps the old entries of the tasks it settled (copied, not
    rebuilt): a change to one of them after that build must still make it dirty."""
    ws = tmp_path / "ws"
    write(ws / "a.txt", "a\n")
    write(ws / "b" / "one.txt", "one\n")
    write(ws / "shared.txt", "shared\n")
    write(ws / "graph.json", json.dumps({
        "a": {"command": "cat a.txt shared.txt > out-a.txt", "inputs": ["a.txt", "shared.txt"],
              "outputs": ["out-a.txt"]},
        "b": {"command": "cat b/*.txt shared.txt > out-b.txt", "inputs": ["b/*.txt", "shared.txt"],
              "outputs": ["out-b.txt"]}}))
    build(ws, env)
    write(ws / "a.txt", "a, edited\n")
    assert build(ws, env)["status"] == {"a": "executed", "b": "cached"}  # incremental: b settled
    found = noop_changes(ws, env, monkeypatch)
    assert found is not None and not found.dirty and not found.dirs  # the record it wrote: nothing to do
    if change == "input edited":
        write(ws / "b" / "one.txt", "one, edited\n")
    elif change == "output edited":
        write(ws / "out-b.txt", "stray\n")
    else:
        write(ws / "b" / "two.txt", "two\n")
    found = noop_changes(ws, env, monkeypatch)
    assert found is not None and found.dirty == {"b"}
    assert build(ws, env)["status"] == {"a": "cached", "b": "executed" if change != "output edited" else "cached"}
    expected = "one\n" + ("two\n" if change.startswith("file") else "") if change != "input edited" else "one, edited\n"
    assert (ws / "out-b.txt").read_text() == expected + "shared\n"
    write(ws / "shared.txt", "shared, edited\n")  # read by both: one entry, both tasks
    found = noop_changes(ws, env, monkeypatch)
    assert found is not None and found.dirty == {"a", "b"}


@pytest.mark.parametrize("damage", ["removed", "truncated", "one byte flipped"])
def test_a_settled_task_whose_build_log_entry_is_lost_is_checked_again(
        tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    """`a` is not dirty, so the incremental build would settle it without reading its entry; but `b`, dirty,
    sees a's outputs through that entry. With the shard holding it lost, `a` is checked again (from the cache)
    and `b` is built from a's real output: never keyed on nothing, never a crash."""
    from gaffer.shards import shard_of, shard_path

    ws = tmp_path / "ws"
    write(ws / "a.txt", "a\n")
    write(ws / "b.txt", "b\n")
    write(ws / "graph.json", json.dumps({
        "a": {"command": "cat a.txt > out-a.txt", "inputs": ["a.txt"], "outputs": ["out-a.txt"]},
        "b": {"command": "cat out-a.txt b.txt > out-b.txt", "deps": ["a"], "inputs": ["b.txt"],
              "outputs": ["out-b.txt"]}}))
    build(ws, env)
    shard = Path(shard_path(str(ws / ".gaffer" / "log"), shard_of("a")))
    data = bytearray(shard.read_bytes())
    if damage == "removed":
        shard.unlink()
    elif damage == "truncated":
        shard.write_bytes(bytes(data[: len(data) // 2]))
    else:
        at = data.index(b"out-a.txt")
        data[at] = ord("O")  # still valid marshal: another output name, which only the checksum tells
        shard.write_bytes(bytes(data))
    write(ws / "b.txt", "b, edited\n")
    found = noop_changes(ws, env, monkeypatch)
    assert found is not None and found.dirty == {"b"}  # the record does not look at the build log's shards
    result = build(ws, env)
    reasons = {t["name"]: t["reason"] for t in result["tasks"]}
    assert result["status"] == {"a": "cached", "b": "executed"} and reasons["a"] != "up to date", reasons
    assert (ws / "out-b.txt").read_text() == "a\nb, edited\n"
    assert full_verdict(ws, env)[0]


def test_a_file_added_where_a_glob_looks_in_an_incremental_build(tmp_path: Path, env: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the directories' signatures (a file added or removed changes its directory's mtime): the globs
    of the tasks that look there run again, and a new subdirectory is watched from then on."""
    ws = tmp_path / "ws"
    write(ws / "src" / "a.c", "a\n")
    write(ws / "other.txt", "1\n")
    write(ws / "graph.json", json.dumps({
        "c": {"command": "cat $(find src -name '*.c' | sort) > out-c.txt", "inputs": ["src/**/*.c"],
              "outputs": ["out-c.txt"]},
        "o": {"command": "cat other.txt > out-o.txt", "inputs": ["other.txt"], "outputs": ["out-o.txt"]},
        "d": {"command": "cat out-c.txt > out-d.txt", "deps": ["c"], "outputs": ["out-d.txt"]}}))
    build(ws, env)
    write(ws / "other.txt", "2\n")
    write(ws / "src" / "deep" / "new.c", "new\n")  # a new directory: only its parent's mtime tells
    found = noop_changes(ws, env, monkeypatch)
    assert found is not None and found.dirty == {"c", "o"} and found.dirs
    result = build(ws, env)
    assert result["status"] == {"c": "executed", "o": "executed", "d": "executed"}
    assert (ws / "out-d.txt").read_text() == "a\nnew\n"
    write(ws / "src" / "deep" / "newer.c", "newer\n")  # inside the directory the last build first saw
    found = noop_changes(ws, env, monkeypatch)
    assert found is not None and found.dirty == {"c"}
    assert build(ws, env)["status"] == {"c": "executed", "o": "cached", "d": "executed"}
    assert (ws / "out-d.txt").read_text() == "a\nnew\nnewer\n"
    assert fast_verdict(ws, env, monkeypatch)


def many_tasks(ws: Path, count: int) -> None:
    """`count` tasks, each copying its own input to its own output; every one also reads shared.txt."""
    write(ws / "shared.txt", "shared\n")
    for i in range(count):
        write(ws / "in" / f"t{i:03}.txt", f"{i}\n")
    write(ws / "graph.json", json.dumps({f"t{i:03}": {"command": f"cat in/t{i:03}.txt shared.txt > out-t{i:03}.txt",
                                                     "inputs": [f"in/t{i:03}.txt", "shared.txt"],
                                                     "outputs": [f"out-t{i:03}.txt"]} for i in range(count)}))


def test_each_changed_file_among_many_names_its_own_task(tmp_path: Path, env: dict[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The signatures are compared all at once, then by blocks, then one by one: every differing one, in any
    block, must name its own task, and after an incremental build (whose record moves the entries of the tasks
    it checked) so must the next."""
    ws = tmp_path / "ws"
    many_tasks(ws, 150)
    build(ws, env)
    write(ws / "in" / "t100.txt", "100, edited\n")
    (ws / "out-t007.txt").unlink()
    (ws / "in" / "t149.txt").unlink()
    write(ws / "in" / "other.txt", "149\n")
    (ws / "in" / "t149.txt").symlink_to("other.txt")  # the same content, another file: stat follows the link
    earlier = time.time() - 100
    os.utime(ws / "in" / "t064.txt", (earlier, earlier))  # the same content, another mtime: a signature change
    found = noop_changes(ws, env, monkeypatch)
    assert found is not None and found.dirty == {"t100", "t007", "t149", "t064"} and not found.dirs
    result = build(ws, env)
    assert result["status"]["t100"] == "executed" and result["executed"] == 1, result["status"]
    assert (ws / "out-t007.txt").read_text() == "7\nshared\n"
    assert fast_verdict(ws, env, monkeypatch)
    for edited in ("t100", "t000", "t063"):
        write(ws / "in" / f"{edited}.txt", f"{edited}, edited again\n")
        found = noop_changes(ws, env, monkeypatch)
        assert found is not None and found.dirty == {edited}
        assert build(ws, env)["status"][edited] == "executed"
        assert (ws / f"out-{edited}.txt").read_text() == f"{edited}, edited again\nshared\n"
    write(ws / "shared.txt", "shared, edited\n")  # one entry, read by every task: all of them
    found = noop_changes(ws, env, monkeypatch)
    assert found is not None and found.dirty == {f"t{i:03}" for i in range(150)}


def test_the_check_looks_in_the_workspace_whatever_the_working_directory(tmp_path: Path, env: dict[str, str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The record holds workspace files relative to the workspace: a build started elsewhere (`--graph`) checks
    the workspace's files, never same-named ones in the working directory."""
    ws = tmp_path / "ws"
    many_tasks(ws, 3)
    run_gaffer(["run", "--graph", "ws/graph.json"], tmp_path, env)
    many_tasks(tmp_path, 3)  # the same relative paths, other files, in the working directory
    with monkeypatch.context() as m:
        m.chdir(tmp_path)
        for name, value in env.items():
            m.setenv(name, value)
        found = noop.check("ws/graph.json", [])
        assert found is not None and not found.dirty
        write(ws / "in" / "t001.txt", "edited\n")
        found = noop.check("ws/graph.json", [])
        assert found is not None and found.dirty == {"t001"}


def test_signatures_beyond_a_signed_64_bit_inode_number_compare_exactly() -> None:
    """The live signatures are packed as signed numbers first (fast); an inode number of 2**63 or more (some
    network and union file systems) takes the exact format, and a value no signature holds is a change. No file
    system here hands out such numbers: `stat` is given them."""
    from types import SimpleNamespace

    sigs = {"a": (1, 2, 2**63 + 5, 4), "b": (5, 6, 7, 8), "c": (9, 10, 2**64 - 1, 12)}
    files = noop.Files(list(sigs), b"".join(noop._SIG.pack(*sig) for sig in sigs.values()), [0, 1, 2])

    def stat_of(now: dict[str, tuple[int, int, int, int]]) -> Any:
        def stat(path: str, dir_fd: int) -> SimpleNamespace:
            size, mtime, ino, ctime = now[path]
            return SimpleNamespace(st_size=size, st_mtime_ns=mtime, st_ino=ino, st_ctime_ns=ctime)
        return stat

    assert noop.changed(files, stat_of(sigs), -1) == []
    assert noop.changed(files, stat_of({**sigs, "c": (9, 11, 2**64 - 1, 12)}), -1) == [2]
    assert noop.changed(files, stat_of({**sigs, "b": (5, 6, 2**64, 8)}), -1) == [1]  # no signature holds it
    assert noop.changed(files, stat_of({**sigs, "a": (1, 2, 2**63 + 6, 4), "b": (5, 6, 7, 9)}), -1) == [0, 1]


@pytest.mark.parametrize("damage", ["a signature short", "an owner short", "a duration short",
                                    "a dependent too many", "an owner naming no task", "the old layout"])
def test_a_record_whose_columns_disagree_is_not_trusted(tmp_path: Path, env: dict[str, str],
                                                        monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    """A record that is valid marshal but not a whole record (its columns of different lengths, a position
    outside its order) is no record: the build checks every task (and writes a sound one)."""
    import marshal

    ws = tmp_path / "ws"
    many_tasks(ws, 3)
    build(ws, env)
    path = ws / ".gaffer" / "noop"
    stored = list(marshal.loads(path.read_bytes()))
    paths, sigs, owners = stored[8]
    if damage == "a signature short":
        stored[8] = (paths, sigs[:-1], owners)
    elif damage == "an owner short":
        stored[8] = (paths, sigs, owners[:-1])
    elif damage == "a duration short":
        stored[15] = stored[15][:-8]
    elif damage == "an owner naming no task":
        stored[8] = (paths, sigs, ((999,), *owners[1:]))
        write(ws / paths.split("\0")[0], "edited\n")  # that entry changed: its owner is looked up
    elif damage == "a dependent too many":
        stored[17] = stored[17][:-4] + (1000).to_bytes(4, sys.byteorder)
    else:
        stored[0] = 4
    path.write_bytes(marshal.dumps(tuple(stored)))
    assert noop_changes(ws, env, monkeypatch) is None
    assert build(ws, env)["executed"] == (1 if damage == "an owner naming no task" else 0)
    assert fast_verdict(ws, env, monkeypatch)


# -- the differential test -------------------------------------------------------------------------------------

PATTERNS = ["src/*.c", "src/**/*.c", "src/.*/*.c", ".*/*.yml", "docs", "lib/*.txt", "lib/a.txt", "**/*.md"]
KEEPERS = ["src/a.c", "src/sub/b.c", "src/.gen/g.c", ".ci/lint.yml", "docs/intro.md", "lib/a.txt", "lib/b.txt"]
NEW_FILES = ["src/n.c", "src/sub/deep/n.c", "src/.gen/n.c", "src/.new/n.c", ".ci/n.yml", ".new/n.yml", "docs/n.md",
             "docs/.hidden/n.md", "lib/n.txt", "n.md", ".git/n.c", "src/n.h"]


class Workspace:
    """A random graph over a small tree, and the random edits a user could make to either."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root, self.rng = root, rng
        for rel in KEEPERS:
            write(root / rel, f"{rel}\n")
        (root / "lib" / "link.txt").symlink_to("a.txt")
        self.env = {"V0": "zero"}
        self.graph: dict[str, dict] = {}
        for i in range(rng.randint(1, 5)):
            deps = [f"t{j}" for j in range(i) if rng.random() < 0.4]
            reads = " ".join(f"out/{dep}" for dep in deps)
            task: dict = {"command": f"mkdir -p out && (echo t{i} \"$V{i % 2}\"; cat /dev/null {reads}) > out/t{i}",
                          "outputs": [f"out/t{i}"], "inputs": rng.sample(PATTERNS, rng.randint(1, 3)),
                          "env": [f"V{i % 2}"]}
            if rng.random() < 0.3:
                task["command"] += f" && ln -sfn t{i} out/l{i}"
                task["outputs"].append(f"out/l{i}")
            if deps:
                task["deps"] = deps
            self.graph[f"t{i}"] = task
        self.write_graph()

    def write_graph(self) -> None:
        (self.root / "graph.json").write_text(json.dumps(self.graph))

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file() and not p.is_symlink()
                      and ".gaffer" not in p.parts and p.name != "graph.json")

    def edit(self) -> str:
        """Make one random edit; returns what it was, for the failure message."""
        rng, root = self.rng, self.root
        kind = rng.choice(["append", "same size", "same size and mtime", "touch", "chmod", "add", "remove", "env",
                           "graph", "symlink", "output", "nothing"])
        path = rng.choice(self.files())
        rel = path.relative_to(root)
        if kind == "append":
            with open(path, "a") as f:
                f.write("more\n")
        elif kind in ("same size", "same size and mtime"):
            st = path.stat()
            data = path.read_bytes()
            path.write_bytes(data[:-1] + (b"!" if data[-1:] != b"!" else b"?"))
            if kind == "same size and mtime":
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif kind == "touch":
            os.utime(path)
        elif kind == "chmod":
            path.chmod(path.stat().st_mode ^ 0o111)
        elif kind == "add":
            rel = Path(rng.choice(NEW_FILES))
            write(root / rel, "new\n")
        elif kind == "remove":
            removable = [p for p in self.files() if str(p.relative_to(root)) not in KEEPERS]
            if not removable:
                return "remove: nothing to remove"
            path = rng.choice(removable)
            rel = path.relative_to(root)
            path.unlink()
        elif kind == "env":
            name = rng.choice(["V0", "V1"])
            value = rng.choice([None, "", "zero", "one"])
            self.env.pop(name, None)
            if value is not None:
                self.env[name] = value
            return f"env {name}={value!r}"
        elif kind == "graph":
            task = self.graph[rng.choice(sorted(self.graph))]
            if rng.random() < 0.5:
                task["command"] += " && true"
            else:
                task["inputs"] = sorted(set(task["inputs"]) | {rng.choice(PATTERNS)})
            self.write_graph()
            return f"graph: {task}"
        elif kind == "symlink":
            link = root / "lib" / "link.txt"
            target = "b.txt" if os.readlink(link) == "a.txt" else "a.txt"
            link.unlink()
            link.symlink_to(target)
            return f"symlink lib/link.txt -> {target}"
        elif kind == "output":
            outputs = sorted(p for p in (root / "out").iterdir())
            path = rng.choice(outputs)
            rel = path.relative_to(root)
            if path.is_symlink():
                path.unlink()
                path.symlink_to("elsewhere")
            elif rng.random() < 0.5:
                path.unlink()
            else:
                path.write_text(path.read_text()[::-1])
        return f"{kind} {rel}" if kind != "nothing" else kind


@pytest.mark.parametrize("seed", range(EXAMPLES))
def test_the_fast_path_never_says_nothing_to_do_when_the_full_check_disagrees(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    ws = Workspace(tmp_path / "ws", random.Random(seed))
    history = [f"seed {seed}, graph {json.dumps(ws.graph)}"]
    build(ws.root, {**env, **ws.env})
    assert full_verdict(ws.root, {**env, **ws.env})[0]
    assert fast_verdict(ws.root, {**env, **ws.env}, monkeypatch), "the fast path is used when nothing changed"
    for _ in range(EDITS):
        history.append(ws.edit())
        environment = {**env, **ws.env}
        found = noop_changes(ws.root, environment, monkeypatch)
        fast = found is not None and not found.dirty and not found.dirs
        full, reasons = full_verdict(ws.root, environment)
        assert full or not fast, "\n".join([*history, f"full check: {reasons}"])
        # The incremental build's promise, task by task: what it would not look at, the full check finds unchanged.
        wrong = {name: reasons[name] for name in settled(found, ws.graph) if not reasons[name].startswith("up to date")}
        assert not wrong, "\n".join([*history, f"dirty: {found and sorted(found.dirty)}", f"not up to date: {wrong}"])
