"""The README's example, examples/go-microservices, built with real Go through the real CLI.

One cold build per session (module fixture); each test then changes one thing and checks exactly what re-ran.
The tests run in file order and each leaves the workspace built.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import go_env, require_example, run_gaffer, summary

SERVICES = ("gateway", "auth", "users")
ALL_TASKS = {"build-common", "build-models", "build-gateway", "build-auth", "build-users"}


class Example:
    def __init__(self, base: Path) -> None:
        self.root = base / "go-microservices"
        shutil.copytree(require_example(), self.root, ignore=shutil.ignore_patterns("bin", "out", ".gaffer"))
        self.cache = base / "cache"
        self.env = {**go_env(), "GAFFER_CACHE_DIR": str(self.cache),
                    "XDG_CONFIG_HOME": str(base / "xdg")}

    def run(self, *args: str, env: dict[str, str] | None = None) -> dict:
        out = self.root / "summary.json"
        proc = run_gaffer(["run", "distributed-build", "--graph", "graph.json", "--summary-json", str(out), *args],
                          cwd=self.root, env={**self.env, **(env or {})})
        assert proc.returncode == 0, proc.stderr
        result = summary(out)
        result["stderr"] = proc.stderr
        return result

    def binaries(self) -> dict[str, bytes]:
        return {name: (self.root / "bin" / name).read_bytes() for name in SERVICES}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Example, dict]:
    ex = Example(tmp_path_factory.mktemp("example"))
    return ex, ex.run()


def test_cold_build_runs_everything_and_makes_real_binaries(example: tuple[Example, dict]) -> None:
    ex, cold = example
    assert cold["status"] == dict.fromkeys(ALL_TASKS, "executed")
    assert "[5/5] Completed" in cold["stderr"] and "parallel efficiency" in cold["stderr"]
    for name in SERVICES:
        version = subprocess.run([str(ex.root / "bin" / name), "-version"], capture_output=True, text=True,
                                 timeout=30, check=False)
        assert version.returncode == 0 and version.stdout.startswith(name)


def test_second_run_is_all_hits(example: tuple[Example, dict]) -> None:
    ex, _ = example
    warm = ex.run()
    assert warm["cached"] == 5 and warm["executed"] == 0 and warm["hit_rate"] == 1.0


def test_seed_command_works_verbatim(example: tuple[Example, dict]) -> None:
    """`gaffer-exec run distributed-build --graph graph.json`, as seed 000 types it."""
    ex, _ = example
    gaffer_exec = Path(shutil.which("gaffer-exec", path=ex.env["PATH"]) or "")
    assert gaffer_exec.name == "gaffer-exec"
    proc = subprocess.run([str(gaffer_exec), "run", "distributed-build", "--graph", "graph.json"], cwd=ex.root,
                          env=ex.env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "5 cached" in proc.stderr, proc.stderr


def test_deleted_outputs_are_restored_byte_identical(example: tuple[Example, dict]) -> None:
    ex, _ = example
    before = ex.binaries()
    shutil.rmtree(ex.root / "bin")
    shutil.rmtree(ex.root / "out")
    restored = ex.run()
    assert restored["cached"] == 5 and restored["executed"] == 0
    assert ex.binaries() == before
    assert all((ex.root / "bin" / name).stat().st_mode & 0o111 for name in SERVICES), "still executable"


def test_editing_models_reruns_only_models_and_its_dependents(example: tuple[Example, dict]) -> None:
    ex, _ = example
    source = sorted((ex.root / "pkg" / "models").glob("*.go"))
    source = next(p for p in source if not p.name.endswith("_test.go"))
    original = source.read_text()
    try:
        source.write_text(original + "\n// an edit that changes the file's content\n")
        edited = ex.run()
        assert edited["status"] == {"build-common": "cached", "build-models": "executed",
                                    "build-gateway": "executed", "build-auth": "executed", "build-users": "executed"}
        reasons = {t["name"]: t["reason"] for t in edited["tasks"]}
        assert f"input pkg/models/{source.name} changed" in reasons["build-models"]
        explain = run_gaffer(["explain", "build-gateway"], cwd=ex.root, env=ex.env)
        assert "nothing changed" in explain.stdout
    finally:
        source.write_text(original)
    back = ex.run()
    assert back["executed"] == 0, "the original content's results are still in the cache"


def test_changing_a_declared_env_var_reruns_the_tasks_that_declare_it(example: tuple[Example, dict]) -> None:
    ex, _ = example
    with_cgo = ex.binaries()
    changed = ex.run(env={"CGO_ENABLED": "0"})
    assert changed["executed"] == 5, "every task declares CGO_ENABLED"
    assert ex.binaries() != with_cgo, "a static binary differs from a cgo one"
    again = ex.run(env={"CGO_ENABLED": "0"})
    assert again["executed"] == 0


def test_corrupted_cache_blob_is_detected_reported_and_rebuilt(example: tuple[Example, dict]) -> None:
    ex, _ = example
    ex.run()  # back to the default environment
    gateway = (ex.root / "bin" / "gateway").read_bytes()
    digest = hashlib.sha256(gateway).hexdigest()
    blob = ex.cache / "cas" / digest[:2] / digest
    assert blob.is_file()
    blob.write_bytes(gateway[:-1] + bytes([gateway[-1] ^ 0xFF]))  # same size, one byte flipped
    (ex.root / "bin" / "gateway").unlink()
    rebuilt = ex.run()
    assert "corrupt cache blob" in rebuilt["stderr"]
    assert rebuilt["status"]["build-gateway"] == "executed"
    assert (ex.root / "bin" / "gateway").read_bytes() == gateway
    verify = run_gaffer(["cache", "verify"], cwd=ex.root, env=ex.env)
    assert verify.returncode == 0 and " 0 corrupt" in verify.stdout


def test_clean_build_rebuilds_from_source(example: tuple[Example, dict]) -> None:
    ex, _ = example
    before = ex.binaries()
    proc = run_gaffer(["run", "clean-build"], cwd=ex.root, env=ex.env)
    assert proc.returncode == 0, proc.stderr
    assert "1 executed" in proc.stderr
    assert ex.binaries() == before, "a clean build from source makes the same bytes the cache restored"
