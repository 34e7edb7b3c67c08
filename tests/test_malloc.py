"""gaffer.malloc: the allocator keeps big buffers within a bound, and a Python without ctypes still serves."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from gaffer.cache.grpc import GrpcTier
from gaffer.digest import digest_bytes
from gaffer.malloc import TRIM_THRESHOLD
from tests.buildgrid import start_gaffer_serve, stop_signal
from tests.support import REPO

# Threads that each hold a few 4 MiB buffers at once, then free them all: the burst of batch reads on a server.
_BURST = """
import sys, threading
from gaffer.malloc import keep_big_buffers

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "keep":
    keep_big_buffers()
held, done = threading.Barrier(8), threading.Barrier(8)

def work():
    held.wait()
    buffers = [bytearray(4 << 20) for _ in range(5)]
    for b in buffers:
        b[::4096] = b"x" * len(range(0, len(b), 4096))  # every page touched, so resident
    done.wait()  # all 8 x 20 MiB held at once
    del buffers

before = rss_mib()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(rss_mib() - before)
"""


def _kept_after_burst(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _BURST, mode], env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                         capture_output=True, text=True, timeout=60, check=True)
    return float(out.stdout)


def test_free_memory_kept_after_a_burst_of_threads_is_bounded() -> None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's allocator on Linux only: elsewhere keep_big_buffers does nothing")
    held = 8 * 5 * 4  # MiB, all freed before the measure
    kept = _kept_after_burst("keep")
    # One arena: at most TRIM_THRESHOLD free at its top (a heap per thread, never trimmed, kept ~160 MiB here).
    assert kept < TRIM_THRESHOLD / (1 << 20) + 8, f"{kept:.0f} MiB of {held} MiB freed still resident"
    assert _kept_after_burst("default") < held / 2  # the measure can see memory given back


def test_a_python_without_ctypes_serves_and_runs(tmp_path: os.PathLike[str]) -> None:
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
