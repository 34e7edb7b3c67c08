"""The orchestrator (gaffer.build.Build) on its own: a fake executor that writes outputs itself, an in-memory
action cache over a local CAS in tmp_path, no process. What it decides: run, restore, up to date, and what it
records and caches."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from gaffer import actions
from gaffer.build import Build, BuildOptions
from gaffer.cache.disk import DiskStore
from gaffer.digest import Digest, StatCache, digest_bytes
from gaffer.execute.base import ExecuteResult
from gaffer.graph import Graph, load_graph
from gaffer.keys import KeyBuilder
from gaffer.outcome import BuildReport, Outcome
from gaffer.state import STATE_DIR, WorkspaceState
from gaffer.tools import Toolchain

GRAPH = {
    "tasks": {
        "gen": {"command": "write gen", "inputs": ["src.txt"], "outputs": ["gen.txt"], "env": ["FLAVOUR"],
                "pass_env": ["TMPDIR"]},
        "use": {"command": "write use", "deps": ["gen"], "outputs": ["use.txt"]},
        "deploy": {"command": "write deploy", "deps": ["use"], "outputs": ["deploy.txt"], "cache": False},
    }
}


class FakeExecutor:
    """Writes each declared output as `<argv[-1]> from <its key>`; `before_done` runs just before it returns."""

    def __init__(self, root: Path, store: DiskStore) -> None:
        self.root, self.store = root, store
        self.ran: list[tuple[str, tuple[tuple[str, str], ...], tuple[str, ...]]] = []
        self.fail: set[str] = set()
        self.before_done: Callable[[str], None] = lambda name: None

    def execute(self, action: actions.PreparedAction, pass_env: Sequence[str], task: str = "") -> ExecuteResult:
        name = action.argv[-1].split()[-1]
        self.ran.append((name, action.env, tuple(pass_env)))
        if name in self.fail:
            return ExecuteResult(0.5, b"", b"boom\n", failure="exited with status 1")
        for out in action.output_paths:
            (self.root / out).write_text(f"{name} from {action.digest.hash[:8]}\n")
        self.before_done(name)
        outputs = actions.collect_outputs(self.root, action.output_paths, self.store)
        empty = digest_bytes(b"")
        self.store.write_blob(empty, b"")
        return ExecuteResult(0.5, b"", b"", outputs=outputs,
                             action_result=actions.make_result(outputs, 0, empty, empty, 1.0, 1.5),
                             blobs=[*outputs.blobs(), empty])

    def cancel_all(self) -> None:
        pass


class MemoryCache:
    """The tiered cache's methods the orchestrator calls, with the action cache in a dict."""

    uploads = True  # as a cache with a remote tier: `stored` is what each result's upload carries

    def __init__(self, local: DiskStore) -> None:
        self.local = local
        self.actions: dict[Digest, bytes] = {}
        self.stored: dict[Digest, list[Digest]] = {}

    def get_action(self, key: Digest) -> bytes | None:
        return self.actions.get(key)

    peek_action = get_action

    def put_action(self, key: Digest, result: bytes, blobs: Sequence[Digest]) -> None:
        self.actions[key] = result
        self.stored[key] = list(blobs)

    def contains(self, digests: Sequence[Digest]) -> bool:
        return all(self.local.has_blob(d) for d in digests)

    ensure_local = contains

    def settle(self, key: Digest, usable: bool) -> None:
        pass

    def reject(self, key: Digest, what: str, problem: str) -> None:
        pass


class Progress:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def start(self, total: int, jobs: int, groups: object = ()) -> None:
        pass

    def task_started(self, name: str) -> None:
        pass

    def task_finished(self, name: str, outcome: Outcome) -> None:
        pass

    def tasks_settled(self, names: object) -> None:
        pass

    def task_output(self, name: str, stdout: bytes, stderr: bytes) -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)


class Workspace:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "ws"
        self.root.mkdir()
        (self.root / "graph.json").write_text(json.dumps(GRAPH))
        (self.root / "src.txt").write_text("source\n")
        self.graph: Graph = load_graph(self.root / "graph.json")
        self.cache = MemoryCache(DiskStore(tmp_path / "cache"))
        self.executor = FakeExecutor(self.root, self.cache.local)
        self.progress = Progress()
        self.state = WorkspaceState(self.root / STATE_DIR)  # never loaded: each test decides what it holds

    def build(self, **options: object) -> dict[str, str]:
        ticks = iter(range(1_000_000))
        keys = KeyBuilder(self.root, self.graph.platform, StatCache(), Toolchain(self.root, self.root / STATE_DIR))
        build = Build(self.graph, BuildOptions(**{"jobs": 2, **options}), keys=keys,  # type: ignore[arg-type]
                      cache=self.cache, state=self.state, executor=self.executor,  # type: ignore[arg-type]
                      progress=self.progress, clock=lambda: float(next(ticks)))  # type: ignore[arg-type]
        self.report: BuildReport = build.run()
        return {name: o.status for name, o in self.report.tasks().items()}


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("FLAVOUR", "sour")
    return Workspace(tmp_path)


def test_first_build_runs_each_task_with_its_declared_env_and_caches_it(ws: Workspace) -> None:
    assert ws.build() == {"gen": "executed", "use": "executed", "deploy": "executed"}
    assert [name for name, _, _ in ws.executor.ran] == ["gen", "use", "deploy"]
    assert ws.executor.ran[0][1] == (("FLAVOUR", "sour"),)
    assert ws.executor.ran[0][2] == ("GOROOT", "GOTOOLCHAIN", "HOME", "PATH", "TMPDIR")
    assert set(ws.state.tasks) == {"gen", "use"}  # `cache: false` is never recorded nor stored
    assert len(ws.cache.actions) == 2
    key = Digest(ws.state.tasks["gen"].key, 0)
    stored = next(blobs for k, blobs in ws.cache.stored.items() if k.hash == key.hash)
    assert any(d.hash == key.hash for d in stored)  # the Action itself goes to the cache with its result
    assert all(ws.cache.local.has_blob(d) for d in stored)


def test_second_build_is_up_to_date_without_executing(ws: Workspace) -> None:
    ws.build()
    ws.executor.ran.clear()
    assert ws.build() == {"gen": "cached", "use": "cached", "deploy": "executed"}
    assert [name for name, _, _ in ws.executor.ran] == ["deploy"]
    assert all(o.extra.get("up_to_date") for n, o in ws.report.tasks().items() if n != "deploy")


def test_a_fresh_checkout_restores_from_the_cache(ws: Workspace) -> None:
    ws.build()
    made = (ws.root / "use.txt").read_text()
    for out in ("gen.txt", "use.txt", "deploy.txt"):
        (ws.root / out).unlink()
    ws.state.tasks.clear()
    ws.executor.ran.clear()
    assert ws.build() == {"gen": "cached", "use": "cached", "deploy": "executed"}
    assert [name for name, _, _ in ws.executor.ran] == ["deploy"]
    assert (ws.root / "use.txt").read_text() == made


def test_a_changed_input_reruns_its_task_and_dependents(ws: Workspace) -> None:
    ws.build()
    ws.executor.ran.clear()
    (ws.root / "src.txt").write_text("edited\n")
    assert ws.build() == {"gen": "executed", "use": "executed", "deploy": "executed"}
    assert ws.report.tasks()["gen"].reason == "input src.txt changed"


def test_a_failure_skips_dependents_and_caches_nothing(ws: Workspace) -> None:
    ws.executor.fail.add("gen")
    assert ws.build() == {"gen": "failed", "use": "skipped", "deploy": "skipped"}
    assert ws.report.tasks()["gen"].reason == "exited with status 1"
    assert not ws.cache.actions and not ws.state.tasks


def test_an_input_edited_while_its_task_runs_is_not_cached(ws: Workspace) -> None:
    def edit(name: str) -> None:
        if name == "gen":
            (ws.root / "src.txt").write_text("edited meanwhile\n")

    ws.executor.before_done = edit
    assert ws.build()["gen"] == "executed"
    assert ws.progress.warnings == ["input src.txt changed while gen ran: result not cached"]
    assert "gen" not in ws.state.tasks and len(ws.cache.actions) == 1  # `use` is cached, keyed on gen's output


def test_a_dry_run_executes_nothing(ws: Workspace) -> None:
    assert ws.build(dry_run=True) == {"gen": "executed", "use": "executed", "deploy": "executed"}
    assert ws.executor.ran == [] and not ws.cache.actions
    assert ws.report.tasks()["use"].reason == "would run: dependency gen would run"


def _independent(ws: Workspace, count: int) -> None:
    tasks = {f"t{i}": {"command": f"write t{i}", "outputs": [f"t{i}.txt"]} for i in range(count)}
    (ws.root / "graph.json").write_text(json.dumps({"tasks": tasks}))
    ws.graph = load_graph(ws.root / "graph.json")


class _Rendezvous:
    """Counts the tasks keyed and the commands running (the fake executor's `execute`), under one condition."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cond = threading.Condition()
        self.keyed = self.running = self.most = self.shown_running = self.most_shown = 0
        self.timed_out = False
        key = KeyBuilder.key

        def counted(builder: KeyBuilder, *args: object) -> object:
            keyed = key(builder, *args)  # type: ignore[arg-type]
            with self.cond:
                self.keyed += 1
                self.cond.notify_all()
            return keyed

        monkeypatch.setattr(KeyBuilder, "key", counted)

    def wait_keyed(self, count: int) -> None:
        with self.cond:
            self.timed_out |= not self.cond.wait_for(lambda: self.keyed >= count, timeout=10)


def test_the_next_tasks_are_keyed_while_commands_run_but_no_more_than_jobs_commands_run(
        ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command waits until the tasks beyond its slots are keyed: they wait for a slot, never run beside it."""
    _independent(ws, 8)
    meet = _Rendezvous(monkeypatch)
    execute = ws.executor.execute

    def execute_counted(action: actions.PreparedAction, pass_env: Sequence[str], task: str = "") -> ExecuteResult:
        with meet.cond:
            meet.running += 1
            meet.most = max(meet.most, meet.running)
            finished = len(ws.executor.ran)
        meet.wait_keyed(min(8, finished + 4))  # jobs=2: two commands, two more tasks keyed meanwhile
        try:
            return execute(action, pass_env, task)
        finally:
            with meet.cond:
                meet.running -= 1
                meet.shown_running -= 1  # its command is over (while it still holds its slot)

    def started(name: str) -> None:  # the progress shows it running: it must hold a slot
        with meet.cond:
            meet.shown_running += 1
            meet.most_shown = max(meet.most_shown, meet.shown_running)

    ws.executor.execute = execute_counted  # type: ignore[method-assign]
    ws.progress.task_started = started  # type: ignore[method-assign]
    assert set(ws.build().values()) == {"executed"}
    assert not meet.timed_out, "the next tasks were not keyed while commands ran"
    assert meet.most <= 2 and meet.most_shown <= 2, "tasks waiting for a slot were shown as running"


def test_without_keep_going_a_task_keyed_during_a_failure_runs_no_command(ws: Workspace,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _independent(ws, 2)
    meet = _Rendezvous(monkeypatch)
    execute = ws.executor.execute

    def first_fails_once_the_other_is_keyed(action: actions.PreparedAction, pass_env: Sequence[str],
                                            task: str = "") -> ExecuteResult:
        meet.wait_keyed(2)
        if not ws.executor.ran:
            ws.executor.fail.add(action.argv[-1].split()[-1])
        return execute(action, pass_env, task)

    ws.executor.execute = first_fails_once_the_other_is_keyed  # type: ignore[method-assign]
    outcomes = ws.build(jobs=1)
    assert not meet.timed_out, "the other task was not keyed while the first command ran"
    [(failed, _, _)] = ws.executor.ran
    other = "t1" if failed == "t0" else "t0"
    assert outcomes == {failed: "failed", other: "skipped"}
    assert ws.report.tasks()[other].reason == "the build stopped"
