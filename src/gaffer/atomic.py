"""gaffer's own small files (`.gaffer/state`, the stat cache, the no-op record, tool probes), replaced whole.

A reader sees the old file or the new one, never half of either; a write that fails (a full disk) keeps the old
file and leaves no temp file behind. Kept free of imports beyond the standard library: the no-op path uses it.
"""

from __future__ import annotations

import contextlib
import marshal
import os
from collections.abc import Callable
from typing import IO, Any


def save_marshalled(path: str | os.PathLike[str], value: Any) -> None:
    """Replace the file at `path` with `value` marshalled, making its directory if needed. Raises OSError
    naming `path`."""
    _replace(path, lambda f: marshal.dump(value, f))


def save_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the file at `path` with `data`, as `save_marshalled` does."""
    _replace(path, lambda f: f.write(data))


def _replace(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OSError(e.errno, e.strerror, os.fspath(path)) from None  # named as the user knows it: not its temp
