"""The fast client (gaffer-cc, gaffer-ld, masquerade) and the per-user daemon, as real processes.

Each test has its own launcher directory, so its own daemon, started by its first compile and stopped after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from gaffer.cc.launch import Request
from gaffer.cc.protocol import MAX_ITEMS, encode_request
from tests.cc_support import HELLO, Launcher, clean_env, install_client
from tests.support import NOBODY, alive, fill_disk, mounted, require_tool, wait_for


@pytest.fixture
def src(tmp_path: Path) -> Path:
    require_tool("gcc")
    (tmp_path / "hello.c").write_bytes(HELLO)
    return tmp_path


def plain(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, cwd=cwd, capture_output=True, timeout=120, check=False)


def test_the_client_compiles_through_the_daemon_it_starts(launcher: Launcher, src: Path) -> None:
    assert launcher.daemon_pid() is None
    proc = launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c", "-o", "hello.o"], cwd=src)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert launcher.daemon_pid() is not None and launcher.starts() == 1
    assert "bad request" not in launcher.log()
    plain(["gcc", "-c", "hello.c", "-o", "plain.o"], src)
    assert (src / "hello.o").read_bytes() == (src / "plain.o").read_bytes()
    mode = (launcher.dir / "daemon.sock").stat().st_mode
    assert mode & 0o777 == 0o600 and launcher.dir.stat().st_mode & 0o777 == 0o700


def test_a_compile_error_is_reported_exactly_as_the_compiler_reports_it(launcher: Launcher, src: Path) -> None:
    (src / "bad.c").write_text("int main(void) { return undeclared; }\n#warning careful\n")
    args = ["gcc", "-Wall", "-c", "bad.c", "-o", "bad.o"]
    expected = plain(args, src)
    got = launcher.run([launcher.gaffer_cc, *args], cwd=src)
    assert expected.returncode == 1 and b"undeclared" in expected.stderr
    assert (got.returncode, got.stdout, got.stderr) == (expected.returncode, expected.stdout, expected.stderr)
    assert not (src / "bad.o").exists()


def test_what_the_daemon_hands_back_runs_here_with_stdin_and_a_link(launcher: Launcher, src: Path) -> None:
    """Verdict 1 ("run it yourself"): the client execs the compiler, so stdin and the exit status are its own."""
    proc = launcher.run([launcher.gaffer_cc, "gcc", "-x", "c", "-c", "-", "-o", "stdin.o"], cwd=src, input=HELLO)
    assert proc.returncode == 0, proc.stderr
    proc = launcher.run([launcher.gaffer_ld, "gcc", "stdin.o", "-o", "hello"], cwd=src)
    assert proc.returncode == 0, proc.stderr
    assert plain([str(src / "hello")], src).stdout == b"hello\n"
    assert launcher.starts() == 1


def test_the_daemon_outlives_the_process_group_that_started_it(launcher: Launcher, src: Path) -> None:
    """A build step's process group is killed when the step ends: the daemon is in its own session, and holds
    none of the step's descriptors (a build tool reading the step's output would otherwise never see its end)."""
    script = f"'{launcher.gaffer_cc}' gcc -c hello.c -o hello.o && echo compiled && exec sleep 600"
    step = subprocess.Popen(["sh", "-c", script], cwd=src, env=launcher.env, stdout=subprocess.PIPE, start_new_session=True)
    assert step.stdout is not None
    assert step.stdout.readline() == b"compiled\n"
    daemon = launcher.daemon_pid()
    assert daemon is not None and os.getsid(daemon) != step.pid
    os.killpg(step.pid, signal.SIGKILL)
    rest, _ = step.communicate(timeout=10)  # EOF: the daemon did not keep the step's stdout open
    assert rest == b""
    assert alive(daemon)
    proc = launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c", "-o", "again.o"], cwd=src)
    assert proc.returncode == 0, proc.stderr
    assert launcher.daemon_pid() == daemon and launcher.starts() == 1


def test_the_daemon_exits_when_idle(tmp_path_factory: pytest.TempPathFactory, cc_client: Path, src: Path) -> None:
    ccd = Launcher(tmp_path_factory.mktemp("ccd") / "cc", cc_client, idle="1s")
    try:
        assert ccd.run([ccd.gaffer_cc, "gcc", "-c", "hello.c"], cwd=src).returncode == 0
        pid = ccd.daemon_pid()
        assert pid is not None
        wait_for(lambda: ccd.daemon_pid() is None, "the idle daemon to exit")
        wait_for(lambda: not alive(pid), "the idle daemon's process to end")
        assert "exiting (idle) after 1 request" in ccd.log()
        assert not (ccd.dir / "daemon.sock").exists()
    finally:
        ccd.stop()


def test_a_second_daemon_exits_quietly(launcher: Launcher, src: Path) -> None:
    assert launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c"], cwd=src).returncode == 0
    first = launcher.daemon_pid()
    proc = launcher.run([sys.executable, "-m", "gaffer", "cc", "--daemon"], cwd=src)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert launcher.daemon_pid() == first and launcher.starts() == 1
    assert f"not started: daemon {first} holds daemon.lock" in launcher.log()


def test_a_starting_daemon_removes_the_scratch_files_of_processes_that_are_gone(launcher: Launcher,
                                                                                src: Path) -> None:
    """A daemon killed mid-compile leaves its temporary `.d`; the next daemon removes it, and never a live one's."""
    gone = _a_pid_that_is_gone()
    launcher.dir.mkdir(parents=True, exist_ok=True)
    orphan = launcher.dir / f"tmp.{gone}.abc123.d"
    ours = launcher.dir / f"tmp.{os.getpid()}.def456.d"
    orphan.write_text("x.o: x.c\n")
    ours.write_text("y.o: y.c\n")
    assert launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c"], cwd=src).returncode == 0
    wait_for(lambda: not orphan.exists(), "the orphaned scratch file removed")
    assert ours.exists() and "removed 1 scratch file left by processes that are gone" in launcher.log()


def _a_pid_that_is_gone() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_compile_whose_client_is_killed_stops_and_writes_nothing(launcher: Launcher, src: Path) -> None:
    """make deletes the target of a step it interrupts; a compile the daemon went on with would write the object
    afterwards (of the source as it was), newer than an edit made meanwhile, and the next make would keep it."""
    slow = src / "slowcc"  # a gcc that, compiling, writes its pid and waits for a line on the fifo first
    slow.write_text('#!/bin/sh\ncase " $* " in *" -c "*) echo $$ > started.tmp && mv started.tmp started\n'
                    '  read line < go ;; esac\nexec gcc "$@"\n')
    slow.chmod(0o755)
    os.mkfifo(src / "go")
    client = subprocess.Popen([launcher.gaffer_cc, slow, "-c", "hello.c"], cwd=src, env=launcher.env)
    try:
        wait_for((src / "started").exists, "the compile to start")
        pid = int((src / "started").read_text())
        client.kill()
        client.wait()
        wait_for(lambda: not alive(pid), "the compile to stop once its client was gone")
    finally:
        with contextlib.suppress(OSError):  # a compile still waiting (the fault) goes on
            fd = os.open(src / "go", os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"\n")
            os.close(fd)
    assert not (src / "hello.o").exists()
    assert launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c"], cwd=src).returncode == 0


def test_outputs_get_the_clients_umask_not_the_daemons(launcher: Launcher, src: Path) -> None:
    """The daemon inherited the umask of whichever client started it; each compile's files (a miss's and a
    hit's) get the mode its own client's umask gives, as plain gcc's do."""
    def modes(tool: list[str | Path], mask: int) -> tuple[int, int]:
        for name in ("hello.o", "hello.d"):
            (src / name).unlink(missing_ok=True)
        proc = launcher.run([*tool, "-MD", "-c", "hello.c"], cwd=src, umask=mask)
        assert proc.returncode == 0, proc.stderr
        return tuple(stat.S_IMODE((src / name).stat().st_mode) for name in ("hello.o", "hello.d"))  # type: ignore[return-value]

    assert launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c", "-o", "first.o"], cwd=src,
                        umask=0o077).returncode == 0  # the daemon starts with 077
    for mask in (0o002, 0o022, 0o077):
        want = modes(["gcc"], mask)
        assert modes([launcher.gaffer_cc, "gcc"], mask) == want, oct(mask)  # a miss, then hits
    assert launcher.stats()["direct_hits"] == 2


def test_same_size_edits_within_a_second_on_another_file_system_are_seen(launcher: Launcher, src: Path,
                                                                          coarse_fs: Path) -> None:
    """The daemon's stat cache trusts a signature recorded before a moment read on the launcher directory's file
    system. A header on one that keeps whole seconds (or runs another clock, an NFS server's) can be rewritten
    with the same size within its timestamp tick, its signature unchanged: it must still be seen."""
    header, source = coarse_fs / "h.h", coarse_fs / "r.c"
    source.write_text('#include "h.h"\nint v = V;\n')
    args = ["gcc", f"-I{coarse_fs}", "-c", str(source), "-o", "r.o"]
    pairs = 0
    for value in range(10, 90, 2):
        objects = []
        for v in (value, value + 1):  # the same size, one after the other
            header.write_text(f"#define V {v}\n")
            assert launcher.run([launcher.gaffer_cc, *args], cwd=src).returncode == 0
            objects.append((src / "r.o").read_bytes())
            if v == value:
                tick = header.stat().st_mtime_ns
        if header.stat().st_mtime_ns != tick:
            continue  # the second ended between the edits: their signatures differ anyway
        pairs += 1
        assert plain(args, src).returncode == 0
        assert objects[1] == (src / "r.o").read_bytes(), f"V {value + 1}: the object of an earlier content"
        if pairs == 3:
            return
    raise AssertionError("no two edits fell in the same second")


def test_relative_paths_in_settings_are_the_compiles_own(launcher: Launcher, src: Path) -> None:
    """A relative GAFFER_CACHE_DIR or GAFFER_CC_DEBUG file is relative to the compile's working directory, as
    `gaffer cc` reads it; the daemon (whose working directory is /) took them relative to / instead, and a
    second directory got the first one's."""
    for name in ("one", "two"):
        (src / name).mkdir()
        shutil.copy(src / "hello.c", src / name / "hello.c")
        proc = launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c"], cwd=src / name,
                            env={"GAFFER_CACHE_DIR": "rel-cache", "GAFFER_CC_DEBUG": "rel.log"})
        assert proc.returncode == 0, proc.stderr
        assert (src / name / "rel-cache").is_dir() and "hello.c: miss" in (src / name / "rel.log").read_text()


def test_a_daemon_that_cannot_start_costs_the_compile_no_wait(launcher: Launcher, src: Path) -> None:
    """The client that starts the daemon learns at once that it exited (a bad setting in its environment, a full
    disk), and so do those waiting for it: each compiles directly and says so, instead of waiting out the
    start-up time on every compile."""
    env = {**launcher.env, "GAFFER_CC_IDLE": "soon"}
    procs = [subprocess.Popen([launcher.gaffer_cc, "gcc", "-c", "hello.c", "-o", f"hello{n}.o"], cwd=src, env=env,
                              stderr=subprocess.PIPE) for n in range(4)]
    for n, proc in enumerate(procs):
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and (src / f"hello{n}.o").exists()
        assert b"the daemon is not reachable (it exited at start; see " in err, err
    assert "GAFFER_CC_IDLE: 'soon' is not a duration" in launcher.log()
    assert launcher.daemon_pid() is None


def test_a_daemon_on_a_full_disk_says_where(launcher: Launcher, src: Path, tmp_path: Path) -> None:
    with mounted(tmp_path / "full", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as full:
        (full / "cc").mkdir(mode=0o700)
        fill_disk(full)
        env = {**launcher.env, "GAFFER_CC_DIR": str(full / "cc")}
        proc = subprocess.run([sys.executable, "-m", "gaffer", "cc", "--daemon"], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert (proc.returncode, proc.stderr) == (3, (f"gaffer: {full}/cc/daemon.lock: cannot write the daemon's "
                                                     "pid: No space left on device\n"))
        compiled = launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c"], cwd=src, env=env)
        assert compiled.returncode == 0 and b"it exited at start" in compiled.stderr


def test_many_first_compiles_at_once_start_one_daemon(launcher: Launcher, src: Path) -> None:
    """`make -j8` on a fresh login: one client starts the daemon, the others wait for it (none falls back)."""
    clients = [subprocess.Popen([launcher.gaffer_cc, "gcc", "-c", "hello.c", "-o", f"h{i}.o"], cwd=src,
                                env=launcher.env, stderr=subprocess.PIPE) for i in range(8)]
    for client in clients:
        _, err = client.communicate(timeout=60)
        assert (client.returncode, err) == (0, b"")
    assert launcher.starts() == 1 and "not started" not in launcher.log()


def test_stop_daemon(launcher: Launcher, src: Path) -> None:
    assert launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c"], cwd=src).returncode == 0
    pid = launcher.daemon_pid()
    assert pid is not None
    stop = [sys.executable, "-m", "gaffer", "cc", "--stop-daemon"]
    assert launcher.run(stop, cwd=src).stdout.decode() == f"stopped the daemon (pid {pid})\n"
    assert launcher.daemon_pid() is None and "exiting (told to stop)" in launcher.log()
    assert launcher.run(stop, cwd=src).stdout == b"no daemon is running\n"


def _exchange(path: Path, data: bytes, half_close: bool = True) -> bytes:
    """Send `data`, and read until the daemon closes the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_bad_frames_close_the_connection_and_never_the_daemon(launcher: Launcher, src: Path) -> None:
    assert launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c"], cwd=src).returncode == 0
    sock = launcher.dir / "daemon.sock"

    def u32(n: int) -> bytes:
        return struct.pack("<I", n)

    good_head = b"GCC2" + u32(0) + u32(0o022) + u32(len(str(src))) + str(src).encode()
    frames = {
        "not a gaffer-cc request": b"HTTP/1.1 GET /\r\n\r\n",
        "not a gaffer-cc request (starts with b'GCC0')": b"GCC0" + u32(0),
        "unknown request kind": b"GCC2" + u32(7),
        "is not a file mode mask": b"GCC2" + u32(0) + u32(0o1000),
        "oversized request": b"GCC2" + u32(0) + u32(0) + u32(0xFFFFFFFF),
        "truncated request": good_head + u32(2) + u32(3) + b"gcc",
        "too many arguments": good_head + u32(MAX_ITEMS + 1),
        "not absolute": b"GCC2" + u32(0) + u32(0) + u32(3) + b"tmp" + u32(0) + u32(0),
        "no compiler": good_head + u32(0) + u32(0),
        "without KEY=": good_head + u32(1) + u32(3) + b"gcc" + u32(1) + u32(4) + b"oops",
    }
    for frame in frames.values():
        assert _exchange(sock, frame) == b""
    log = launcher.log()
    for why in frames:
        assert f"connection closed: {why}" in log or why in log, (why, log)
    request = Request(kind=0, cwd=str(src), argv=["gcc", "-c", "hello.c", "-o", "proto.o"], env=clean_env())
    answer = _exchange(sock, encode_request(request))
    assert answer[:4] == b"GCR1" and struct.unpack("<Ii", answer[4:12]) == (0, 0)
    assert (src / "proto.o").exists()
    old = encode_request(dataclasses.replace(request, argv=["gcc", "-c", "hello.c", "-o", "old.o"]))
    old = b"GCC1" + old[4:8] + old[12:]  # an older client's request: no umask
    assert _exchange(sock, old)[:12] == b"GCR1" + struct.pack("<Ii", 0, 0) and (src / "old.o").exists()
    assert launcher.starts() == 1


def test_masquerade_finds_the_real_compiler(launcher: Launcher, src: Path) -> None:
    """The symlinks named gcc, cc, ... first on PATH (twice, even) run the next real one, never themselves."""
    path = f"{launcher.masquerade}:{launcher.masquerade}:{os.environ['PATH']}"
    for name in ("gcc", "cc"):
        proc = launcher.run([name, "-c", "hello.c", "-o", f"{name}.o"], cwd=src, env={"PATH": path})
        assert proc.returncode == 0, proc.stderr
        plain([name, "-c", "hello.c", "-o", f"plain-{name}.o"], src)
        assert (src / f"{name}.o").read_bytes() == (src / f"plain-{name}.o").read_bytes()
    assert launcher.starts() == 1
    alone = launcher.run(["gcc", "-c", "hello.c"], cwd=src, env={"PATH": str(launcher.masquerade)})
    assert alone.returncode == 127
    assert alone.stderr == b"gaffer-cc: gcc: not found on PATH (other than gaffer-cc itself)\n"


def test_without_a_usable_daemon_the_compiler_runs_directly(launcher: Launcher, src: Path,
                                                            tmp_path: Path) -> None:
    """Fallback: one line on stderr, and the compile still happens, with the compiler's own result."""
    long_dir = tmp_path / ("d" * 120)
    proc = launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c", "-o", "a.o"], cwd=src,
                        env={"GAFFER_CC_DIR": str(long_dir)})
    assert proc.returncode == 0 and (src / "a.o").exists()
    assert proc.stderr.decode() == (f"gaffer-cc: the socket path under {long_dir} is too long for a Unix socket; "
                                    f"running {shutil.which('gcc')} directly\n")
    if os.getuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, NOBODY, NOBODY)
        proc = launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c", "-o", "b.o"], cwd=src,
                            env={"GAFFER_CC_DIR": str(theirs)})
        assert proc.returncode == 0 and (src / "b.o").exists()
        assert b"belongs to another user; running" in proc.stderr
        assert os.listdir(theirs) == []


def test_install_builds_once_and_rebuilds_when_the_source_changes(tmp_path: Path) -> None:
    target = tmp_path / "bin"
    printed = install_client(tmp_path / "cc", target)
    assert f"-DCMAKE_C_COMPILER_LAUNCHER={target}/gaffer-cc " in printed
    assert f"-DCMAKE_CXX_LINKER_LAUNCHER={target}/gaffer-ld" in printed
    assert f'make CC="{target}/gaffer-cc gcc"' in printed
    assert f'export PATH="{target}/masquerade:$PATH"' in printed
    binary = tmp_path / "cc" / "bin" / "gaffer-cc"
    assert os.path.realpath(target / "gaffer-cc") == str(binary)
    assert os.readlink(target / "gaffer-ld") == "gaffer-cc"
    assert sorted(os.listdir(target / "masquerade")) == ["c++", "cc", "clang", "clang++", "g++", "gcc"]
    inode = binary.stat().st_ino
    install_client(tmp_path / "cc", tmp_path / "bin")
    assert binary.stat().st_ino == inode
    (tmp_path / "cc" / "bin" / "gaffer-cc.digest").write_text("an older source\n")
    install_client(tmp_path / "cc", tmp_path / "bin")
    assert binary.stat().st_ino != inode
    assert [p.name for p in binary.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_installing_a_new_client_stops_the_older_daemon(launcher: Launcher, src: Path) -> None:
    """A client built anew comes from a newer gaffer than the running daemon, which might not speak its protocol
    (every compile would then run uncached while it kept the daemon alive): --install stops it."""
    assert launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c"], cwd=src).returncode == 0
    pid = launcher.daemon_pid()
    installed = launcher.run([sys.executable, "-m", "gaffer", "cc", "--install"], cwd=src)
    assert installed.returncode == 0 and f"stopped the daemon (pid {pid})" in installed.stdout.decode()
    assert launcher.daemon_pid() is None
    assert launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c"], cwd=src).returncode == 0
    again = launcher.run([sys.executable, "-m", "gaffer", "cc", "--install"], cwd=src)  # nothing rebuilt
    assert again.returncode == 0 and b"stopped" not in again.stdout and launcher.daemon_pid() is not None


def test_the_default_directory_is_made_on_first_use(tmp_path_factory: pytest.TempPathFactory, cc_client: Path,
                                                    src: Path) -> None:
    """No GAFFER_CC_DIR and no cache directory yet (a new account): the client makes
    $XDG_CACHE_HOME/gaffer/cc (0700) and starts the daemon there; a relative GAFFER_CC_DIR is the same place."""
    xdg = tmp_path_factory.mktemp("xdg") / "new" / "cache"
    ccd = Launcher(xdg / "gaffer" / "cc", cc_client)
    del ccd.env["GAFFER_CC_DIR"]
    ccd.env["XDG_CACHE_HOME"] = str(xdg)
    try:
        proc = ccd.run([ccd.gaffer_cc, "gcc", "-c", "hello.c"], cwd=src)
        assert (proc.returncode, proc.stderr) == (0, b"")
        assert ccd.daemon_pid() is not None and ccd.dir.stat().st_mode & 0o777 == 0o700
        relative = os.path.relpath(ccd.dir, src)
        proc = ccd.run([ccd.gaffer_cc, "gcc", "-c", "hello.c"], cwd=src, env={"GAFFER_CC_DIR": relative})
        assert (proc.returncode, proc.stderr) == (0, b"")
        assert ccd.starts() == 1
    finally:
        ccd.stop()


def test_each_compile_is_served_with_its_own_settings(launcher: Launcher, src: Path, tmp_path: Path) -> None:
    """One daemon, compiles from environments that differ in gaffer's settings: each gets its own cache (not the
    one of the compile that started the daemon), and a bad value fails that compile with gaffer's message."""
    args = [launcher.gaffer_cc, "gcc", "-c", "hello.c"]
    for cache in ("one", "two"):
        for _ in range(2):
            assert launcher.run(args, cwd=src, env={"GAFFER_CACHE_DIR": str(tmp_path / cache)}).returncode == 0
    stats = launcher.stats()
    assert (stats.get("misses"), stats.get("direct_hits")) == (2, 2), stats
    assert (tmp_path / "one").is_dir() and (tmp_path / "two").is_dir()
    bad = launcher.run(args, cwd=src, env={"GAFFER_CACHE_TIMEOUT": "soon"})
    assert bad.returncode == 2 and bad.stderr.startswith(b"gaffer: GAFFER_CACHE_TIMEOUT: ")
    assert bad.stderr.count(b"\n") == 1
    assert launcher.starts() == 1


def test_show_stats_counts_what_the_daemon_served_just_now(launcher: Launcher, src: Path) -> None:
    """The daemon counts in memory and writes now and then; --show-stats has it write first, so it is exact."""
    for _ in range(3):
        assert launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c"], cwd=src).returncode == 0
    shown = launcher.run([sys.executable, "-m", "gaffer", "cc", "--show-stats"], cwd=src).stdout.decode()
    counts = {line[:40].strip(): line[40:].strip() for line in shown.splitlines()}
    assert (counts["misses"], counts["direct hits"]) == ("1", "2"), shown


def test_a_daemon_started_by_a_gaffer_run_task_outlives_the_run(launcher: Launcher, src: Path) -> None:
    """gaffer kills what a finished task left running (its process group, and as a child subreaper what escaped
    it with setsid and still carries the task's GAFFER_TASK_RUN): the daemon leaves both behind."""
    graph = {"pass_env": ["PATH", "HOME", "PYTHONPATH", "GAFFER_CC_DIR", "GAFFER_CC_IDLE", "GAFFER_CACHE_DIR",
                          "XDG_CONFIG_HOME"],
             "tasks": {"compile": {"command": f"'{launcher.gaffer_cc}' gcc -c hello.c -o hello.o",
                                   "inputs": ["hello.c"], "outputs": ["hello.o"]}}}
    (src / "graph.json").write_text(json.dumps(graph))
    proc = launcher.run([sys.executable, "-m", "gaffer", "run"], cwd=src)
    assert proc.returncode == 0, proc.stderr
    assert (src / "hello.o").exists()
    daemon = launcher.daemon_pid()
    assert daemon is not None and alive(daemon)
    assert launcher.run([launcher.gaffer_cc, "gcc", "-c", "hello.c", "-o", "again.o"], cwd=src).returncode == 0
    assert launcher.daemon_pid() == daemon and launcher.starts() == 1
