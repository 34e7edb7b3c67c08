"""examples/cproject built plainly and through gaffer-cc, with CMake + Ninja and with make.

One launcher (one daemon, one cache) for the module; the tests run in file order and build on each other: a cold
build, a warm one after `rm -rf build`, a header edit, a compile error. Every build through gaffer-cc must give
byte-identical objects, library and program to the plain build.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cc_support import Launcher
from tests.support import REPO, require_tool

EXAMPLE = REPO / "examples" / "cproject"
SOURCES = 34  # lib/*.c and app/*.c: one compile each
STRBUF_INCLUDERS = {"lib/strbuf.c", "lib/format_value.c", "lib/format_vec.c", "lib/format_version.c",
                    "app/main.c", "app/cli_eval.c", "app/cli_report.c"}  # strbuf.h directly or through format.h


class Project:
    def __init__(self, base: Path, launcher: Launcher) -> None:
        self.base = base
        self.launcher = launcher
        for tool in ("cmake", "ninja", "make", "gcc"):
            require_tool(tool)

    def copy(self, name: str) -> Path:
        dest = self.base / name
        shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("build*"))
        return dest

    def run(self, args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(args, cwd=cwd, env=self.launcher.env, capture_output=True, text=True, timeout=300,
                              check=False)
        if check:
            assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def cmake(self, src: Path, gaffer: bool) -> None:
        launchers = [f"-DCMAKE_C_COMPILER_LAUNCHER={self.launcher.gaffer_cc}",
                     f"-DCMAKE_C_LINKER_LAUNCHER={self.launcher.gaffer_ld}"] if gaffer else []
        self.run(["cmake", "-G", "Ninja", "-S", ".", "-B", "build", *launchers], cwd=src)

    def ninja(self, src: Path) -> set[str]:
        """Build; the sources compiled."""
        out = self.run(["ninja", "-C", "build", "-j2", "-v"], cwd=src).stdout
        return {m.group(1) for m in re.finditer(r" -c \S*?/((?:lib|app)/\w+\.c)\b", out)}

    def make(self, src: Path, *args: str) -> set[str]:
        out = self.run(["make", "-j2", *args], cwd=src).stdout
        return {m.group(1) for m in re.finditer(r" -c ((?:lib|app)/\w+\.c)\b", out)}

    def delta(self, before: dict[str, int]) -> dict[str, int]:
        """The counters that moved since `before`."""
        after = self.launcher.stats()
        return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def outputs(build: Path) -> dict[str, str]:
    """Objects, the library and the program under `build`, by their path in it."""
    files = [p for p in build.rglob("*") if p.is_file() and (p.suffix in (".o", ".a") or p.name == "calc")]
    return {str(p.relative_to(build)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, cc_client: Path) -> Iterator[Project]:
    ccd = Launcher(tmp_path_factory.mktemp("ccd") / "cc", cc_client)
    try:
        yield Project(tmp_path_factory.mktemp("cproject"), ccd)
    finally:
        ccd.stop()


@pytest.fixture(scope="module")
def cmake_plain(project: Project) -> dict[str, str]:
    src = project.copy("plain-cmake")
    project.cmake(src, gaffer=False)
    assert len(project.ninja(src)) == SOURCES
    assert project.run(["build/calc", "6", "x", "7"], cwd=src).stdout == "result = 42\n"
    return outputs(src / "build")


def test_cmake_cold_build_is_the_plain_build(project: Project, cmake_plain: dict[str, str]) -> None:
    src = project.copy("cmake")
    project.cmake(src, gaffer=True)
    before = project.launcher.stats()
    assert len(project.ninja(src)) == SOURCES
    assert outputs(src / "build") == cmake_plain
    moved = project.delta(before)
    assert moved.get("misses") == SOURCES and "direct_hits" not in moved, moved


def test_cmake_warm_build_after_rm_rf_build_is_all_hits(project: Project, cmake_plain: dict[str, str]) -> None:
    src = project.base / "cmake"
    shutil.rmtree(src / "build")
    project.cmake(src, gaffer=True)
    before = project.launcher.stats()
    project.ninja(src)
    assert outputs(src / "build") == cmake_plain
    moved = project.delta(before)
    assert moved.get("direct_hits") == SOURCES and "misses" not in moved, moved


def test_a_header_edit_recompiles_exactly_its_includers(project: Project) -> None:
    src = project.base / "cmake"
    header = src / "include" / "calc" / "strbuf.h"
    original = header.read_text()
    header.write_text(original.replace("#endif", "void strbuf_clear(struct strbuf *sb);\n\n#endif"))
    before = project.launcher.stats()
    assert project.ninja(src) == STRBUF_INCLUDERS
    assert project.delta(before).get("misses") == len(STRBUF_INCLUDERS)
    header.write_text(original)  # back as it was: ninja compiles them again, and each is a hit
    before = project.launcher.stats()
    assert project.ninja(src) == STRBUF_INCLUDERS
    moved = project.delta(before)
    assert moved.get("direct_hits") == len(STRBUF_INCLUDERS) and "misses" not in moved, moved


def test_make_cold_warm_and_a_header_edit(project: Project) -> None:
    plain = project.copy("plain-make")
    assert len(project.make(plain, "CC=gcc")) == SOURCES
    src = project.copy("make")
    cc = f"CC={project.launcher.gaffer_cc} gcc"
    before = project.launcher.stats()
    assert len(project.make(src, cc)) == SOURCES
    assert outputs(src / "build") == outputs(plain / "build")
    assert project.delta(before).get("misses") == SOURCES
    shutil.rmtree(src / "build")
    before = project.launcher.stats()
    project.make(src, cc)
    assert outputs(src / "build") == outputs(plain / "build")
    moved = project.delta(before)
    assert moved.get("direct_hits") == SOURCES and "misses" not in moved, moved
    header = src / "include" / "calc" / "strbuf.h"
    header.write_text(header.read_text() + "/* edited */\n")
    assert project.make(src, cc) == STRBUF_INCLUDERS


def test_make_through_the_masquerade_directory(project: Project) -> None:
    """make's default CC is `cc`: with the masquerade directory first on PATH, that is gaffer-cc."""
    plain = project.base / "plain-make"
    src = project.copy("masquerade")
    path = f"{project.launcher.masquerade}:{project.launcher.env['PATH']}"
    before = project.launcher.stats()
    out = subprocess.run(["make", "-j2", "CC=cc"], cwd=src, env={**project.launcher.env, "PATH": path},
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert outputs(src / "build") == outputs(plain / "build")
    moved = project.delta(before)
    assert moved.get("direct_hits", 0) + moved.get("misses", 0) == SOURCES, moved


def test_a_compile_error_is_reported_exactly_and_never_cached(project: Project) -> None:
    plain, src = project.copy("plain-broken"), project.copy("broken")
    for tree in (plain, src):
        op = tree / "lib" / "op_add.c"
        op.write_text(op.read_text().replace("return", "return undefined_name +") + "#warning kept\n")
    expected = project.run(["make", "-s", "CC=gcc", "build/lib/op_add.o"], cwd=plain, check=False)
    assert expected.returncode != 0 and "undefined_name" in expected.stderr
    for _ in range(2):  # and again: a failure is not a result to replay as success
        before = project.launcher.stats()
        got = project.run(["make", "-s", f"CC={project.launcher.gaffer_cc} gcc", "build/lib/op_add.o"], cwd=src,
                          check=False)
        assert (got.returncode, got.stdout, got.stderr) == (expected.returncode, expected.stdout, expected.stderr)
        assert not (src / "build" / "lib" / "op_add.o").exists()
        assert "direct_hits" not in project.delta(before)


def test_two_checkouts_share_hits_with_a_base_directory(project: Project, cmake_plain: dict[str, str]) -> None:
    """GAFFER_CC_BASEDIR above both checkouts: the second one's build is all hits, and its objects are still
    the plain build's (-ffile-prefix-map keeps the checkout's path out of them)."""
    env = {**project.launcher.env, "GAFFER_CC_BASEDIR": str(project.base)}
    moved = {}
    for name in ("checkout-a", "checkout-b"):
        src = project.copy(name)
        subprocess.run(["cmake", "-G", "Ninja", "-S", ".", "-B", "build",
                        f"-DCMAKE_C_COMPILER_LAUNCHER={project.launcher.gaffer_cc}"], cwd=src, env=env,
                       capture_output=True, check=True, timeout=300)
        before = project.launcher.stats()
        subprocess.run(["ninja", "-C", "build", "-j2"], cwd=src, env=env, capture_output=True, check=True,
                       timeout=300)
        moved[name] = project.delta(before)
        assert outputs(src / "build") == cmake_plain
    assert moved["checkout-b"] == {"direct_hits": SOURCES}, moved
