"""The local concurrency limit of a launcher with a farm (GAFFER_CC_LOCAL_JOBS): `make -j64` sends 64 compiles at
once, and what must still run here (dependency passes, links, fallbacks) would otherwise overload this machine.

A slot is an flock on one of N lock files in the launcher's directory: the daemon's threads and in-process
`gaffer cc` processes share the same N, and a process that dies releases its slot with its file descriptor.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager


class LocalSlots:
    def __init__(self, directory: str, count: int) -> None:
        self.directory = os.path.join(directory, "local-slots")
        self.count = max(1, count)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold one slot while the block runs: a free one if any, else wait for one."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = -1
        for i in range(self.count):
            fd = os.open(os.path.join(self.directory, str(i)), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                os.close(fd)
                fd = -1
        if fd < 0:  # all busy: wait on one, spread over them
            fd = os.open(os.path.join(self.directory, str(os.getpid() % self.count)), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            os.close(fd)
