"""A compile's (or link's) result as a REAPI ActionResult in the action cache, its files in the CAS: stored after
a successful run, restored on a hit.

Files are named by role ("object", "deps", "dwo", "gcno", "output", "manifest"), not by path: the same entry
serves any checkout, and a restore writes each role where this command line puts it. stdout and stderr are
blobs, replayed byte for byte. Everything read back is checked (actions.parse_result: exactly the roles asked
for, valid digests; every blob verified on its way into the local tier), and any doubt is a miss.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gaffer.digest import Digest, digest_bytes

if TYPE_CHECKING:
    from gaffer.cache.tiered import TieredCache


@dataclass
class Stored:
    files: dict[str, Digest]  # role -> blob
    modes: dict[str, int]
    stdout: bytes
    stderr: bytes
    duration_s: float


def put(cache: TieredCache, key: Digest, files: Mapping[str, Path | bytes], stdout: bytes, stderr: bytes,
        start: float, end: float) -> None:
    """Store `files` (a path to copy, or the bytes themselves) and the output streams under `key`."""
    from gaffer.actions import FileEntry, Outputs, make_result

    local = cache.local
    entries = []
    for role, source in files.items():
        if isinstance(source, bytes):
            digest = digest_bytes(source)
            local.write_blob(digest, source)
            mode = 0o644
        else:
            digest = local.put_file(source)
            mode = os.stat(source).st_mode & 0o777
        entries.append(FileEntry(role, digest, bool(mode & 0o100), mode))
    streams = []
    for data in (stdout, stderr):
        digest = digest_bytes(data)
        local.write_blob(digest, data)
        streams.append(digest)
    outputs = Outputs(files=entries, symlinks=[], directories=[])
    result = make_result(outputs, 0, streams[0], streams[1], start, end)
    cache.put_action(key, result, [*outputs.blobs(), *streams])


def get(cache: TieredCache, key: Digest, roles: Sequence[str]) -> Stored | None:
    """The entry under `key` naming exactly `roles`, every blob present and verified locally; else None."""
    from gaffer.actions import BadCacheEntry, parse_result

    data = cache.read_action(key)
    if data is None:
        return None
    try:
        cached = parse_result(data, roles)
    except BadCacheEntry:
        return None
    files = {f.path: f.digest for f in cached.outputs.files}
    if not cache.ensure_local([*files.values(), cached.stdout, cached.stderr]):
        return None
    stdout = cache.local.read_blob(cached.stdout)
    stderr = cache.local.read_blob(cached.stderr)
    if stdout is None or stderr is None:
        return None
    modes = {f.path: f.mode if f.mode is not None else 0o644 for f in cached.outputs.files}
    return Stored(files, modes, stdout, stderr, cached.duration_s)


def write_file(cache: TieredCache, digest: Digest, dest: str, mode: int, umask: int | None = None) -> bool:
    """Copy a verified blob to `dest` through a temp file beside it (a reader never sees half a file); the
    executable bits as stored, the rest as the umask makes them (the client's, else this process's), as the
    compiler would."""
    directory = os.path.dirname(dest) or "."
    tmp = os.path.join(directory, f".gaffer-{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        if not cache.local.fetch_blob(digest, Path(tmp)):
            return False
        if umask is not None:
            os.chmod(tmp, (0o777 if mode & 0o111 else 0o666) & ~umask)
        elif mode & 0o111:
            st = os.stat(tmp)
            os.chmod(tmp, st.st_mode | ((st.st_mode & 0o444) >> 2))
        _install(tmp, dest)
        return True
    except OSError:
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(data: bytes, dest: str, umask: int | None = None) -> bool:
    directory = os.path.dirname(dest) or "."
    tmp = os.path.join(directory, f".gaffer-{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if umask is not None:
                os.fchmod(f.fileno(), 0o666 & ~umask)
        _install(tmp, dest)
        return True
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
        return False


def _install(tmp: str, dest: str) -> None:
    """Rename into place, removing the old file first: ext4 flushes a file renamed over another one to disk
    before the rename (auto_da_alloc), which costs a hit a millisecond or more; the compiler itself truncates
    and rewrites in place, so a reader gains nothing from the atomic replace."""
    try:
        os.unlink(dest)
    except FileNotFoundError:
        pass
    os.replace(tmp, dest)
