"""glibc's allocator told to keep large freed buffers, for the processes that move blobs of megabytes.

By default glibc maps each allocation of 128 KiB or more afresh (its threshold then follows the largest freed one)
and hands free memory at the top of a heap back to the system past twice that: a process that receives or sends
blob after blob (a reply, its copies, grpc's) faults in and clears every page of every buffer. Fixed thresholds keep
the buffers on the heap and reused. Measured: `gaffer serve` sending a cold `go build std`'s 160 MiB, 0.48 -> 0.33 s
of CPU; gobuildcache receiving them, 3-6% of its CPU (BENCHMARKS.md, section 4).
"""

from __future__ import annotations

import contextlib

MMAP_THRESHOLD = 8 << 20  # buffers up to this size come from the heap: a 4 MiB batch reply and its copies
TRIM_THRESHOLD = 64 << 20  # free memory a heap keeps for the next buffer rather than return to the system
_M_TRIM_THRESHOLD = -1  # mallopt's parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_big_buffers() -> None:
    """Set the thresholds; with another C library (musl) nothing happens. Costs importing ctypes (~2 ms): only
    for the processes that will move many blobs."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL(None).mallopt
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)  # also fixes it: no longer raised as buffers are freed
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
