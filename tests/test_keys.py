"""The key builder on its own: fingerprints, keys and manifests from files in tmp_path, no process, no cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gaffer.actions import FileEntry
from gaffer.digest import StatCache, digest_bytes, file_system_now
from gaffer.graph import Task
from gaffer.keys import KeyBuilder
from gaffer.plan import PlannedTask
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.state import FileRecord, OutputRecords
from gaffer.tools import Toolchain


def _task(**fields: object) -> Task:
    base: dict[str, object] = {"name": "t", "commands": (("sh", "-c", "cat a.txt > out.txt"),), "deps": (),
                               "inputs": ("a.txt",), "outputs": ("out.txt",), "env": ("FLAVOUR",), "timeout": None,
                               "cache": True, "description": "", "pass_env": ("HOME", "PATH")}
    return Task(**{**base, **fields})  # type: ignore[arg-type]


def _workspace(root: Path, content: str = "alpha\n") -> KeyBuilder:
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text(content)
    stat_cache = StatCache()
    stat_cache.moment = file_system_now(root / ".gaffer")
    return KeyBuilder(root, {"pool": "small"}, stat_cache, Toolchain(root, root / ".gaffer"))


def _planned(task: Task | None = None, deps: tuple[str, ...] = ()) -> PlannedTask:
    task = task or _task()
    return PlannedTask(task, task.inputs, deps, ())


DEP = {"gen": OutputRecords((FileRecord("gen/x", digest_bytes(b"x").hash, 1, 0o644, None),))}


@pytest.fixture(autouse=True)
def flavour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAVOUR", "sour")


def test_a_key_does_not_depend_on_where_the_workspace_is(tmp_path: Path) -> None:
    one, two = _workspace(tmp_path / "one"), _workspace(tmp_path / "two")
    assert one.key(_planned(), {}).key == two.key(_planned(), {}).key


def test_the_key_covers_content_env_command_deps_and_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    keys = _workspace(tmp_path)
    first = keys.key(_planned(deps=("gen",)), DEP)
    assert keys.key(_planned(deps=("gen",)), DEP).key == first.key
    (tmp_path / "a.txt").write_text("beta\n")
    assert keys.key(_planned(deps=("gen",)), DEP).key != first.key
    (tmp_path / "a.txt").write_text("alpha\n")
    monkeypatch.setenv("FLAVOUR", "sweet")
    assert keys.key(_planned(deps=("gen",)), DEP).key != first.key
    monkeypatch.setenv("FLAVOUR", "sour")
    assert keys.key(_planned(_task(commands=(("true",),)), ("gen",)), DEP).key != first.key
    assert keys.key(_planned(deps=("gen",)), {"gen": OutputRecords()}).key != first.key
    keys.platform["pool"] = "large"
    assert keys.key(_planned(deps=("gen",)), DEP).key != first.key


def test_pass_through_names_and_values_are_not_in_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = _workspace(tmp_path)
    first = keys.key(_planned(), {})
    monkeypatch.setenv("HOME", "/elsewhere")
    assert keys.key(_planned(_task(pass_env=("HOME", "PATH", "TMPDIR"))), {}).key == first.key


def test_the_manifest_names_what_went_into_the_key(tmp_path: Path) -> None:
    keyed = _workspace(tmp_path).key(_planned(deps=("gen",)), DEP)
    manifest = keyed.manifest
    assert manifest.argv == ("sh", "-c", "cat a.txt > out.txt")
    assert manifest.env == (("FLAVOUR", "sour"),)
    assert manifest.inputs == (("a.txt", digest_bytes(b"alpha\n").hash),)
    assert manifest.deps == (("gen", DEP["gen"].content()),)
    assert dict(manifest.platform)["pool"] == "small" and "ISA" in dict(manifest.platform)
    assert manifest.outputs == ("out.txt",) and manifest.tools == ()


def test_prepared_action_blobs_parse_back(tmp_path: Path) -> None:
    action = _workspace(tmp_path).key(_planned(deps=("gen",)), DEP).action
    assert all(digest_bytes(data) == digest for digest, data in action.blobs.items())
    parsed = re_pb2.Action.FromString(action.blobs[action.digest])
    command = re_pb2.Command.FromString(action.blobs[action.command])
    assert list(command.arguments) == list(action.argv) == ["sh", "-c", "cat a.txt > out.txt"]
    assert [(v.name, v.value) for v in command.environment_variables] == [("FLAVOUR", "sour")]
    assert list(command.output_paths) == ["out.txt"]
    assert parsed.input_root_digest.hash == action.input_root.hash
    root = re_pb2.Directory.FromString(action.blobs[action.input_root])
    assert [f.name for f in root.files] == ["a.txt"] and [d.name for d in root.directories] == ["gen"]
    assert action.sources == (FileEntry("a.txt", digest_bytes(b"alpha\n"), False),)  # the dep's file is no source


def _settled(keys: KeyBuilder, path: Path) -> None:
    """The build began after `path` was last changed: its signature can be trusted."""
    keys.stat_cache.moment = os.stat(path).st_ctime_ns + 1


def test_fingerprint_moves_with_a_stat_signature_and_marks_fresh_files(tmp_path: Path) -> None:
    keys = _workspace(tmp_path)
    _settled(keys, tmp_path / "a.txt")
    fingerprint = keys.fingerprint(_planned(), {})
    assert fingerprint.racy == 0 and fingerprint.inputs[0][0] == "a.txt"
    assert keys.fingerprint(_planned(), {}) == fingerprint
    keys.stat_cache.moment = os.stat(tmp_path / "a.txt").st_ctime_ns
    (tmp_path / "a.txt").write_text("alphabet\n")  # in or after the build's moment
    fresh = keys.fingerprint(_planned(), {})
    assert fresh.inputs != fingerprint.inputs and fresh.racy != 0
    assert keys.fingerprint(_planned(), {}) != fresh  # a racy fingerprint never compares equal


def test_input_changed_names_the_input_edited_after_keying(tmp_path: Path) -> None:
    keys = _workspace(tmp_path)
    _settled(keys, tmp_path / "a.txt")
    fingerprint, keyed = keys.fingerprint(_planned(), {}), keys.key(_planned(), {})
    assert keys.input_changed(_planned(), {}, fingerprint, keyed) is None
    os.utime(tmp_path / "a.txt")  # touched only: the same content, the same key
    assert keys.input_changed(_planned(), {}, fingerprint, keyed) is None
    (tmp_path / "a.txt").write_text("edited\n")
    assert keys.input_changed(_planned(), {}, fingerprint, keyed) == "a.txt"
