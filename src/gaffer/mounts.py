"""Which file system type a device number is, from /proc/self/mountinfo, kept in step with the mount table.

The compiler launcher's daemon asks about the devices its compiles' files are on for as long as it runs. Device
numbers of tmpfs, overlay, NFS and FUSE mounts are handed out afresh, lowest free first, so one freed by an
unmount is soon another mount's: the table is read again whenever the kernel says it changed (mountinfo polls
readable with POLLPRI after any mount or unmount), never answered from a stale copy.
"""

from __future__ import annotations

import os
import select
import threading

MOUNTINFO = "/proc/self/mountinfo"


class MountTypes:
    """Device number -> file system type ("" for a device the table does not list, or when it cannot be read)."""

    def __init__(self, path: str = MOUNTINFO) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._types: dict[int, str] = {}
        self._fd: int | None = None  # kept open: polling it says whether the table changed since it was read
        self._poller = select.poll()
        self._read()

    def type_of(self, device: int) -> str:
        with self._lock:
            if self._fd is None or self._poller.poll(0):  # a poll that reports a change also clears it: read now
                self._read()
            return self._types.get(device, "")

    def _read(self) -> None:
        types: dict[int, str] = {}
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
                self._poller.register(self._fd, select.POLLPRI | select.POLLERR)
            os.lseek(self._fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(self._fd, 65536):
                chunks.append(chunk)
            for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
                fields = line.split()
                if "-" in fields[6:]:
                    major, _, minor = fields[2].partition(":")
                    types[os.makedev(int(major), int(minor))] = fields[fields.index("-", 6) + 1]
        except (OSError, ValueError, IndexError):
            types = {}  # unreadable: every device unknown (gaffer assumes the worst of an unknown one)
        self._types = types


_table: MountTypes | None = None
_table_lock = threading.Lock()


def device_type(device: int) -> str:
    """The file system type of `device` in this process's mount table as it is now ("" if unknown)."""
    global _table
    if _table is None:
        with _table_lock:
            if _table is None:
                _table = MountTypes()
    return _table.type_of(device)
