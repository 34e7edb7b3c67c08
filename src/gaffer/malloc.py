"""glibc's allocator told to keep large freed buffers, within bounds, for the processes that move blobs of megabytes.

By default glibc maps each allocation of 128 KiB or more afresh (its threshold then follows the largest freed one)
and hands free memory at the top of a heap back to the system past twice that: a process that receives or sends
blob after blob (a reply, its copies, grpc's) faults in and clears every page of every buffer. Fixed thresholds keep
the buffers on the heap and reused. Bounds on what is kept: glibc gives threads arenas of their own (up to 8 per
core), each a heap of at most 64 MiB that a trim threshold of 64 MiB never trims, and that `malloc_trim` does not
trim either, so 32 threads that each once held a few replies would keep hundreds of megabytes for good. One arena
for every thread keeps at most TRIM_THRESHOLD free at its top, and `malloc_trim` reaches all of its free memory,
holes below buffers still in use included: a long-running process calls it every TRIM_EVERY_S seconds. Measured
(BENCHMARKS.md, section 4): `gaffer serve`'s CPU sending a cold `go build std`'s 160 MiB, 0.48 -> 0.33 s (now
0.22 -> 0.16 s: its replies are written by hand), gobuildcache's receiving them 3-6% less; one arena and the trims
cost none of that, and 12 s after 64 concurrent reads the server holds 124 MiB (glibc's defaults: 263 MiB).
"""

from __future__ import annotations

import threading
import time

MMAP_THRESHOLD = 8 << 20  # buffers up to this size come from the heap: a 4 MiB batch reply and its copies
TRIM_THRESHOLD = 64 << 20  # free memory at the heap's top kept for the next buffers rather than returned
ARENA_MAX = 1  # one heap for every thread, so TRIM_THRESHOLD bounds the process's free memory, not each thread's
TRIM_EVERY_S = 10.0  # a long-running process returns all free memory this often (a burst's leftovers)
_M_TRIM_THRESHOLD = -1  # mallopt's parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def keep_big_buffers(long_running: bool = False) -> None:
    """Set the thresholds, before the threads that allocate start (a thread keeps the arena it has); for a
    `long_running` process, start the trims too. With another C library (musl), or a Python without ctypes, nothing
    happens. Costs importing ctypes (~2 ms): only for the processes that will move many blobs."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (ImportError, OSError, AttributeError):
        return
    mallopt(_M_ARENA_MAX, ARENA_MAX)
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)  # also fixes it: no longer raised as buffers are freed
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    if long_running and TRIM_EVERY_S > 0:
        def trim() -> None:
            while True:
                time.sleep(TRIM_EVERY_S)
                malloc_trim(0)  # ctypes lets go of the GIL meanwhile

        threading.Thread(target=trim, name="gaffer-malloc-trim", daemon=True).start()
