"""gaffer.malloc: big buffers kept, a burst's free memory handed back, and a Python without ctypes still serves."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from gaffer.cache.grpc import GrpcTier
from gaffer.digest import digest_bytes
from tests.buildgrid import start_gaffer_serve, stop_signal
from tests.support import REPO

_MEASURE = """
import sys, time
from gaffer import malloc

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

malloc.TRIM_EVERY_S, arenas, wait_s = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
malloc.ARENA_MAX = arenas or malloc.ARENA_MAX
malloc.keep_big_buffers(long_running=True)
before = rss_mib()
burst()
deadline = time.monotonic() + wait_s
while rss_mib() - before > 16 and time.monotonic() < deadline:
    time.sleep(0.05)  # polling for the trim thread's work, bounded by the deadline
print(rss_mib() - before)
"""

# Threads that each hold a few 4 MiB buffers at once, then free them all: a burst of batch reads on a server.
_THREADS = """
import threading
held, done = threading.Barrier(8), threading.Barrier(8)

def work():
    held.wait()
    buffers = [bytearray(4 << 20) for _ in range(5)]
    for b in buffers:
        b[::4096] = b"x" * len(range(0, len(b), 4096))  # every page touched, so resident
    done.wait()  # all 8 x 20 MiB held at once
    del buffers

def burst():
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
"""

# Buffers freed below ones still in use: holes that no trim threshold reaches, only malloc_trim.
_HOLES = """
def burst():
    global small
    big, small = [], []
    for _ in range(48):
        big.append(bytearray(1 << 20))
        big[-1][::4096] = b"x" * len(range(0, 1 << 20, 4096))
        small.append(bytearray(600))  # from malloc too (over pymalloc's 512 bytes), kept: the next hole's floor
"""


def _kept(burst: str, trim_every: float, arenas: int = 0, wait_s: float = 10) -> float:
    """MiB still resident after `burst`, at once or once the trims brought it under 16 MiB (within `wait_s`)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's allocator on Linux only: elsewhere keep_big_buffers does nothing")
    out = subprocess.run([sys.executable, "-c", burst + _MEASURE, str(trim_every), str(arenas), str(wait_s)],
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True,
                         timeout=60, check=True)
    return float(out.stdout)


def test_the_free_memory_a_burst_of_threads_left_is_handed_back() -> None:
    assert _kept(_THREADS, 0.1) < 16  # 160 MiB held, then freed
    # An arena per thread, glibc's default: malloc_trim never trims their tops, each up to TRIM_THRESHOLD.
    assert _kept(_THREADS, 0.1, arenas=16, wait_s=1) > 100


def test_the_holes_a_burst_left_below_buffers_in_use_are_handed_back() -> None:
    assert _kept(_HOLES, 0.1) < 16
    assert _kept(_HOLES, 0, wait_s=0) > 40  # without the trims, the 48 MiB of holes stay resident


def test_a_python_without_ctypes_serves_and_runs(tmp_path: Path) -> None:
    """No ctypes (a minimal Python build): no thresholds and no child subreaper, but no crash either."""
    without = "import sys; sys.modules['ctypes'] = None; "
    server = start_gaffer_serve(workdir=tmp_path, env={"PYTHONPATH": str(REPO / "src")}, command=(
        sys.executable, "-c",
        without + "from gaffer.server.main import serve_main; sys.exit(serve_main(sys.argv[1:]))"))
    try:
        tier = GrpcTier.from_url(server.url)
        blob = os.urandom(1 << 20)
        tier.write_blobs([(digest_bytes(blob), blob)])
        assert tier.read_blobs([digest_bytes(blob)]) == {digest_bytes(blob): blob}
        tier.close()
    finally:
        assert stop_signal(server) == 0
    assert "Traceback" not in server.log.read_text()
    out = subprocess.run([sys.executable, "-c", without + (
        "from gaffer.execute.orphans import Adopter; from gaffer.malloc import keep_big_buffers; "
        "keep_big_buffers(); print(Adopter.start())")], env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True, text=True, timeout=60, check=False)
    assert (out.returncode, out.stdout, out.stderr) == (0, "None\n", "")
