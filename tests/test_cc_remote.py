"""Distributed compiles: `gaffer cc` with GAFFER_REMOTE on a real `gaffer serve` and real `gaffer worker`s.

The example project's CMake build through the fast client and its daemon, against a plain build of the same
checkout layout (-ffile-prefix-map makes the objects path-free, so they are byte-identical).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

from gaffer.cc.slots import LocalSlots
from tests.cc_support import Launcher, clean_env
from tests.support import wait_for
from tests.test_cc_example import SOURCES, Project, outputs
from tests.test_remote_run import CLOSED_PORT_URL, start_farm


def remote_env(project: Project, url: str, src: Path, **extra: str) -> None:
    project.launcher.env.update({"GAFFER_REMOTE": url, "GAFFER_CC_BASEDIR": str(src), **extra})


def new_project(tmp_path: Path, cc_client: Path) -> Project:
    return Project(tmp_path / "project", Launcher(tmp_path / "ccd" / "cc", cc_client))


def plain_build(project: Project) -> dict[str, str]:
    src = project.copy("plain")
    project.cmake(src, gaffer=False)
    project.ninja(src)
    return outputs(src / "build")


def test_a_cmake_build_on_three_no_link_workers_is_the_plain_build_and_links_stay_here(
        tmp_path: Path, cc_client: Path) -> None:
    project = new_project(tmp_path, cc_client)
    (tmp_path / "project").mkdir()
    plain = plain_build(project)
    farm = start_farm(tmp_path / "farm", 3, "--no-link")
    try:
        src = project.copy("distributed")
        remote_env(project, farm.url, src, GAFFER_CC_REMOTE_WAIT="1s", GAFFER_CC_DEBUG=str(tmp_path / "debug.log"))
        project.cmake(src, gaffer=True)
        assert len(project.ninja(src)) == SOURCES
        assert outputs(src / "build") == plain
        stats = project.launcher.stats()
        assert stats.get("remote", 0) == SOURCES, stats
        assert stats.get("remote_fallbacks", 0) == 1, stats  # the link: no worker takes it, so it ran here
        assert farm.started() == SOURCES  # only the compiles ran on the farm
        assert stats.get("link_misses", 0) == 1, stats
        assert "calc: linked here: no matching worker free within 1s" in (tmp_path / "debug.log").read_text()
        busy = [w.name for w in farm.workers if "running" in w.text()]
        assert len(busy) >= 2, busy
        for worker in farm.status()["workers"]:  # each advertises this machine's compilers, and no linking
            assert any(v.startswith("gcc:") for v in worker["platform"]["gaffer-toolchain"]), worker
            assert "linking" not in worker["platform"], worker
    finally:
        project.launcher.stop()
        farm.stop()


def test_a_link_runs_on_the_link_capable_worker_only_and_is_the_plain_build(tmp_path: Path, cc_client: Path) -> None:
    project = new_project(tmp_path, cc_client)
    (tmp_path / "project").mkdir()
    plain = plain_build(project)
    farm = start_farm(tmp_path / "farm", 1, "--no-link")
    try:
        farm.add_worker("linker")
        src = project.copy("distributed")
        remote_env(project, farm.url, src, GAFFER_CC_DEBUG=str(tmp_path / "debug.log"))
        project.cmake(src, gaffer=True)
        assert len(project.ninja(src)) == SOURCES
        assert outputs(src / "build") == plain  # the program too, byte for byte
        stats = project.launcher.stats()
        assert stats.get("remote", 0) == SOURCES + 1, stats
        assert stats.get("remote_fallbacks", 0) == 0, stats
        assert stats.get("link_misses", 0) == 1, stats
        log = (tmp_path / "debug.log").read_text().splitlines()
        linked = [line for line in log if "calc: linked" in line]
        assert len(linked) == 1 and linked[0].endswith("linker"), linked  # the server's name for "linker"
        assert "w1" not in linked[0], linked
        assert not list(src.glob("build/*.gaffer-deps"))
        linking = [w for w in farm.status()["workers"] if "linking" in w["platform"]]
        assert len(linking) == 1 and linking[0]["platform"]["gaffer-syslibs"], linking
        os.unlink(src / "build" / "calc")  # stored as a local link is: an ordinary hit now, no action
        started = farm.started()
        project.ninja(src)
        assert outputs(src / "build") == plain
        assert project.launcher.stats().get("link_hits", 0) == 1 and farm.started() == started
    finally:
        project.launcher.stop()
        farm.stop()


def test_a_link_reading_files_not_known_beforehand_runs_here(tmp_path: Path) -> None:
    farm = start_farm(tmp_path / "farm", 1)
    try:
        src = one_file(tmp_path)
        (src / "main.c").write_text("int one(void);\nint main(void) { return one() - 1; }\n")
        subprocess.run(["gcc", "-c", "one.c", "main.c"], cwd=src, check=True)
        subprocess.run(["ar", "rcs", "libone.a", "one.o"], cwd=src, check=True)
        debug = tmp_path / "debug.log"
        env = {**clean_env(), "GAFFER_CC_DIR": str(tmp_path / "ccd"), "GAFFER_CACHE_DIR": str(tmp_path / "cache"),
               "GAFFER_REMOTE": farm.url, "GAFFER_CC_BASEDIR": str(src), "GAFFER_CC_DEBUG": str(debug)}

        def gaffer_ld(*args: str) -> None:
            proc = subprocess.run([sys.executable, "-m", "gaffer", "ld", "--", "gcc", *args], cwd=src, env=env,
                                  capture_output=True, text=True, timeout=120, check=False)
            assert proc.returncode == 0 and proc.stderr == "", proc.stderr
            assert subprocess.run([str(src / args[-1])], check=False).returncode == 0

        gaffer_ld("main.o", "one.o", "-o", "prog")
        assert farm.started() == 1 and "prog: linked on worker" in debug.read_text()
        (src / "mine.gaffer-deps").write_text("the user's own file\n")  # never replaced by a remote link's list
        gaffer_ld("main.o", "one.o", "-o", "mine")
        assert farm.started() == 1 and "mine: linked here: mine.gaffer-deps exists" in debug.read_text()
        assert (src / "mine.gaffer-deps").read_text() == "the user's own file\n"
        gaffer_ld("main.o", "-L.", "-lone", "-o", "by-name")  # -L: what it finds there is not known beforehand
        assert farm.started() == 1 and "by-name: linked here: it names -L." in debug.read_text()
        gaffer_ld("--coverage", "main.o", "one.o", "-o", "coverage")  # reads libgcov.a: the worker's list says so
        assert farm.started() == 2
        assert "coverage: linked here: it read " in debug.read_text() and "libgcov.a there" in debug.read_text()
        assert stats_line(src, env, "remote executions").split()[-1] == "1"
        assert stats_line(src, env, "remote fallbacks").split()[-1] == "1"
    finally:
        farm.stop()


def test_a_worker_killed_mid_build_does_not_fail_the_build(tmp_path: Path, cc_client: Path) -> None:
    project = new_project(tmp_path, cc_client)
    (tmp_path / "project").mkdir()
    plain = plain_build(project)
    farm = start_farm(tmp_path / "farm", 3, serve_args=("--bot-timeout", "2s"))
    try:
        src = project.copy("distributed")
        remote_env(project, farm.url, src, GAFFER_CC_REMOTE_WAIT="5s")
        project.cmake(src, gaffer=True)
        build = subprocess.Popen(["ninja", "-C", "build", "-j4"], cwd=src, env=project.launcher.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: farm.started() >= 3, "three compiles on the farm", timeout=60)
        victim = farm.workers[0]
        os.kill(victim.proc.pid, signal.SIGKILL)
        out, _ = build.communicate(timeout=240)
        assert build.returncode == 0, out.decode(errors="replace")
        victim.proc.wait()
        farm.workers.remove(victim)
        assert outputs(src / "build") == plain
        assert project.launcher.stats().get("remote", 0) >= 3
    finally:
        project.launcher.stop()
        farm.stop()


def one_file(tmp_path: Path) -> Path:
    src = tmp_path / "one"
    src.mkdir(parents=True)
    (src / "one.h").write_text("#define ONE 1\n")
    (src / "one.c").write_text('#include "one.h"\nint one(void) { return ONE; }\n')
    return src


def gaffer_cc(src: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gaffer", "cc", *args, "--", "gcc", "-c", "one.c", "-o", "one.o",
                           f"-ffile-prefix-map={src}/="], cwd=src, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def stats_line(src: Path, env: dict[str, str], label: str) -> str:
    out = subprocess.run([sys.executable, "-m", "gaffer", "cc", "--show-stats"], cwd=src, env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return next(line for line in out.splitlines() if label in line)


def test_no_farm_reachable_compiles_here_with_one_warning(tmp_path: Path) -> None:
    src = one_file(tmp_path)
    env = {**clean_env(), "GAFFER_CC_DIR": str(tmp_path / "ccd"), "GAFFER_CACHE_DIR": str(tmp_path / "cache"),
           "GAFFER_REMOTE": CLOSED_PORT_URL, "GAFFER_CC_BASEDIR": str(src)}
    proc = gaffer_cc(src, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("gaffer: warning:") == 1 and "unreachable" in proc.stderr, proc.stderr
    assert (src / "one.o").exists()
    assert stats_line(src, env, "remote fallbacks").split()[-1] == "1"
    os.unlink(src / "one.o")
    again = gaffer_cc(src, env)  # stored as a local miss is: an ordinary hit now
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert stats_line(src, env, "direct hits").split()[-1] == "1"


def test_through_the_daemon_an_unreachable_farm_is_one_warning_in_its_log(tmp_path: Path, cc_client: Path) -> None:
    src = one_file(tmp_path)
    (src / "two.c").write_text('#include "one.h"\nint two(void) { return ONE + 1; }\n')
    ccd = Launcher(tmp_path / "ccd" / "cc", cc_client)
    ccd.env.update({"GAFFER_REMOTE": CLOSED_PORT_URL, "GAFFER_CC_BASEDIR": str(src)})
    try:
        for name in ("one", "two"):
            proc = ccd.run([ccd.gaffer_cc, "gcc", "-c", f"{name}.c", "-o", f"{name}.o"], cwd=src)
            assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
            assert (src / f"{name}.o").exists()
        assert ccd.log().count("unreachable") == 1, ccd.log()
        assert ccd.stats().get("remote_fallbacks") == 2
    finally:
        ccd.stop()


def test_a_worker_with_another_compiler_never_runs_the_compile(tmp_path: Path) -> None:
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    for name in ("gcc", "g++", "cc", "c++"):
        path = fake / name
        path.write_text("#!/bin/sh\necho 'not the same compiler' >&2\nexit 1\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    worker_env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    farm = start_farm(tmp_path / "farm", 1, env=worker_env)
    try:
        src = one_file(tmp_path)
        env = {**clean_env(), "GAFFER_CC_DIR": str(tmp_path / "ccd"), "GAFFER_CACHE_DIR": str(tmp_path / "cache"),
               "GAFFER_REMOTE": farm.url, "GAFFER_CC_BASEDIR": str(src), "GAFFER_CC_REMOTE_WAIT": "1s"}
        proc = gaffer_cc(src, env)
        assert proc.returncode == 0, proc.stderr
        assert (src / "one.o").exists()
        assert farm.started() == 0
        assert stats_line(src, env, "remote fallbacks").split()[-1] == "1"
    finally:
        farm.stop()


def test_the_local_slots_let_only_local_jobs_compilers_run_at_once(tmp_path: Path) -> None:
    slots = LocalSlots(str(tmp_path), 2)
    release = threading.Event()
    holding = threading.Barrier(3)
    third = threading.Event()

    def hold() -> None:
        with slots.hold():
            holding.wait(timeout=10)
            release.wait(timeout=10)

    def wait_for_one() -> None:
        with slots.hold():
            third.set()

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    holding.wait(timeout=10)  # both slots taken
    waiter = threading.Thread(target=wait_for_one)
    waiter.start()
    assert not third.wait(0.5)  # a third compiler waits for a slot
    release.set()
    assert third.wait(10)
    for t in [*holders, waiter]:
        t.join(timeout=10)


def test_shared_filesystem_mode_compiles_in_place_on_a_worker_that_sees_the_same_paths(tmp_path: Path) -> None:
    farm = start_farm(tmp_path / "farm", 1, "--platform", "gaffer-shared-fs=here")
    try:
        src = one_file(tmp_path)
        plain = subprocess.run(["gcc", "-g", "-c", "one.c", "-o", "plain.o"], cwd=src, check=True)
        assert plain.returncode == 0
        env = {**clean_env(), "GAFFER_CC_DIR": str(tmp_path / "ccd"), "GAFFER_CACHE_DIR": str(tmp_path / "cache"),
               "GAFFER_REMOTE": farm.url, "GAFFER_CC_SHARED_FS": "here"}
        proc = subprocess.run([sys.executable, "-m", "gaffer", "cc", "--", "gcc", "-g", "-c", "one.c", "-o", "one.o"],
                              cwd=src, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        assert farm.started() == 1
        assert stats_line(src, env, "remote executions").split()[-1] == "1"
        assert (src / "one.o").read_bytes() == (src / "plain.o").read_bytes()  # -g: the same paths, in place
        os.unlink(src / "one.o")
        hit = subprocess.run([sys.executable, "-m", "gaffer", "cc", "--", "gcc", "-g", "-c", "one.c", "-o", "one.o"],
                             cwd=src, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert hit.returncode == 0 and farm.started() == 1  # the launcher stored it: a hit, no action
        assert (src / "one.o").read_bytes() == (src / "plain.o").read_bytes()
    finally:
        farm.stop()
