"""How `gaffer serve` puts an entry on disk: a temp file written with as few system calls as Python allows, then
renamed into place (so a killed server leaves either the whole entry or none of it at its name), and with
`--fsync` also flushed to the device before the peer is told it is stored.

Without `--fsync`, an acknowledged entry survives the server's death (`kill -9`, a crash: the kernel holds the
written pages) but not the machine's (power loss, a kernel panic) until the kernel writes it back, which Linux
does within about 30 s. What such a crash leaves is never served wrong: a blob whose file is empty or torn fails
its size check or its hash when read (every read is checked), and a damaged action-cache file is refused, so the
loss is a miss. With `--fsync`, each temp file is fsync'd before its rename and each directory that got a new
name afterwards, so an acknowledged entry survives power loss too (on a device that honours flushes). A file
that replaces others (a pack rewritten in the background) is flushed so either way (`always`): the ones it
replaces are unlinked next, and must not be lost with it.

Names: `<pid>-<random>-<counter>` in the instance's `tmp/`, the pid first as DiskStore expects (a dead
process's temp files are removed at start), the random part so a reused pid never meets an old name.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
# Paths are str, not pathlib.Path: building a Path costs more than the system call it names (batches of 1,000).
StrPath = str | os.PathLike[str]


FLUSHERS = 16  # flushes of one batch in flight at once: they wait on the device, not the CPU


class EntryFiles:
    """Temp files and their publication for one server; `sync` is `--fsync`."""

    def __init__(self, sync: bool) -> None:
        self.sync = sync
        self._prefix = f"{os.getpid()}-{os.urandom(4).hex()}-"
        self._counter = itertools.count()
        self._flushers = ThreadPoolExecutor(FLUSHERS, thread_name_prefix="gaffer-fsync") if sync else None

    def temp(self, tmp_dir: str) -> str:
        """A fresh name in `tmp_dir` (no system call)."""
        return f"{tmp_dir}/{self._prefix}{next(self._counter)}"

    def create(self, path: StrPath, data: bytes | memoryview) -> None:
        """A new file holding `data` (`flush` it before publishing it); on a failure none is left behind."""
        fd = os.open(path, _CREATE, 0o666)
        try:
            _write_all(fd, data)
        except BaseException:
            os.close(fd)
            remove(path)
            raise
        os.close(fd)

    def append(self, path: StrPath, data: bytes | memoryview) -> None:
        """Add `data` at the end of an existing temp file (opened for this call only: a caller waiting on its
        peer between calls holds no descriptor)."""
        fd = os.open(path, _APPEND)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)

    def flush(self, paths: Sequence[StrPath], always: bool = False) -> None:
        """With `sync` (or `always`: a file replacing others, which are unlinked once it is durable), flush written
        files to the device before they are published. Several at once: the file system commits concurrent
        flushes together (ext4's journal), so a batch of 1,000 is not 1,000 commits."""
        self._fsync_all(paths, os.O_RDONLY, always)

    def publish(self, tmp: StrPath, dest: str, changed: set[str]) -> None:
        """Rename a finished temp file to `dest`, making its shard directory if need be; the directories whose
        entries changed go into `changed` (for `sync_dirs`). On a failure the temp file is removed."""
        directory = os.path.dirname(dest)
        try:
            try:
                os.replace(tmp, dest)
            except FileNotFoundError:
                created, parent = [], directory
                while not os.path.isdir(parent):
                    created.append(parent)
                    parent = os.path.dirname(parent)
                os.makedirs(directory, exist_ok=True)
                changed.update(os.path.dirname(d) for d in created)
                os.replace(tmp, dest)
        except BaseException:
            remove(tmp)
            raise
        changed.add(directory)

    def sync_dirs(self, dirs: Collection[str], always: bool = False) -> None:
        """With `sync` (or `always`), make the renames into `dirs` durable (a directory's own fsync), several at
        once."""
        self._fsync_all(dirs, os.O_RDONLY | os.O_DIRECTORY, always)

    def _fsync_all(self, paths: Collection[StrPath], flags: int, always: bool) -> None:
        if self._flushers is not None:
            list(self._flushers.map(fsync, paths, [flags] * len(paths)))
        elif always:
            for path in paths:
                fsync(path, flags)

    def close(self) -> None:
        if self._flushers is not None:
            self._flushers.shutdown()


def fsync(path: StrPath, flags: int = os.O_RDONLY) -> None:
    """Flush a file (or with O_DIRECTORY, a directory's entries) to the device."""
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: StrPath) -> None:
    """Unlink a file that may already be gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
