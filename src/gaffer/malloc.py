"""glibc's allocator told to keep large freed buffers, within a bound, for the processes that move blobs of megabytes.

By default glibc maps each allocation of 128 KiB or more afresh (its threshold then follows the largest freed one)
and hands free memory at the top of a heap back to the system past twice that: a process that receives or sends
blob after blob (a reply, its copies, grpc's) faults in and clears every page of every buffer. Fixed thresholds keep
the buffers on the heap and reused. One arena for every thread bounds what is kept: glibc gives threads arenas of
their own (up to 8 per core), each a heap of at most 64 MiB that a trim threshold of 64 MiB never trims, so 32
threads that each once held a few replies would keep hundreds of megabytes free for good; with one arena the
process keeps at most TRIM_THRESHOLD of free memory at its heap's top. Measured (BENCHMARKS.md, section 4):
`gaffer serve` sending a cold `go build std`'s 160 MiB, 0.48 -> 0.33 s of CPU; gobuildcache receiving them, 3-6% of
its CPU; one arena costs none of that, and after a burst of 32 concurrent reads the server holds less memory than
with glibc's defaults.
"""

from __future__ import annotations

MMAP_THRESHOLD = 8 << 20  # buffers up to this size come from the heap: a 4 MiB batch reply and its copies
TRIM_THRESHOLD = 64 << 20  # free memory the heap keeps for the next buffers rather than return to the system
ARENA_MAX = 1  # one heap for every thread, so TRIM_THRESHOLD bounds the process's free memory, not each thread's
_M_TRIM_THRESHOLD = -1  # mallopt's parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def keep_big_buffers() -> None:
    """Set the thresholds, before the threads that allocate start (a thread keeps the arena it has); with another C
    library (musl), or a Python without ctypes, nothing happens. Costs importing ctypes (~2 ms): only for the
    processes that will move many blobs."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return
    mallopt(_M_ARENA_MAX, ARENA_MAX)
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)  # also fixes it: no longer raised as buffers are freed
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
