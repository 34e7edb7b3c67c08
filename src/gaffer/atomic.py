"""gaffer's own small files (`.gaffer/state`, the stat cache, the no-op record, tool probes), replaced whole.

A reader sees the old file or the new one, never half of either; a write that fails (a full disk) keeps the old
file and leaves no temp file behind. Kept free of imports beyond the standard library: the no-op path uses it.
"""

from __future__ import annotations

import contextlib
import marshal
import os

TYPE_CHECKING = False  # not typing's (see gaffer.tuples): type checkers take this name as true
if TYPE_CHECKING:
    from typing import Any

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def save_marshalled(path: str | os.PathLike[str], value: Any) -> None:
    """Replace the file at `path` with `value` marshalled, making its directory if needed. Raises OSError
    naming `path`."""
    save_bytes(path, marshal.dumps(value))


def save_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the file at `path` with `data`, as `save_marshalled` does. Four system calls when the directory
    is there (a build may replace hundreds of shard files): `open()` and `makedirs` would add five more."""
    tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"
    try:
        try:
            fd = os.open(tmp, _FLAGS, 0o666)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
            fd = os.open(tmp, _FLAGS, 0o666)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OSError(e.errno, e.strerror, os.fspath(path)) from None  # named as the user knows it: not its temp


def write_all(fd: int, data: bytes | memoryview) -> None:
    """`os.write` until all of `data` is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
