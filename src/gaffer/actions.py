"""Tasks as REAPI v2 Actions, and ActionResults to and from files in a workspace.

The action key is the digest of the deterministic serialization of an `Action` whose
  - `command_digest` names a `Command` (argv, declared env values, declared output paths),
  - `input_root_digest` names a Merkle tree of `Directory` messages holding every input file and every output
    file of the task's deps (by content digest and executable bit),
  - `platform` holds the graph's platform properties plus this machine's OS and CPU architecture,
  - `salt` holds the key-format version, so a change in how gaffer builds keys never reuses old entries.
docs/caching.md is the user-facing contract for what is (and is not) in a key.

Everything in an ActionResult may come from a remote peer: paths are checked to be relative, normalized, inside
the task's declared outputs, and symlinks to stay inside the workspace, before anything is written.
"""

from __future__ import annotations

import os
import platform as host_platform
import shlex
import shutil
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gaffer.cache.disk import DiskStore
from gaffer.digest import Digest, digest_bytes, is_valid_hash
from gaffer.errors import not_utf8
from gaffer.protos import remote_execution_pb2 as re_pb2

KEY_FORMAT = b"gaffer-graph-key-v1"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A file in an input root or among a task's outputs."""

    path: str  # workspace-relative, posix
    digest: Digest
    executable: bool


@dataclass(frozen=True, slots=True)
class SymlinkEntry:
    path: str
    target: str


class BadCacheEntry(Exception):
    """An ActionResult that must not be restored (unsafe path, undeclared output, missing blob)."""


def host_properties() -> dict[str, str]:
    """The platform this machine builds for, part of every key: a Linux x86-64 binary is not an arm64 one."""
    return {"OSFamily": host_platform.system().lower(), "ISA": host_platform.machine().lower()}


def command_argv(commands: Sequence[Sequence[str]]) -> list[str]:
    """One argv for the whole task: a single command as is, several joined into one `sh -e` script."""
    if len(commands) == 1:
        return list(commands[0])
    script = "\n".join(shlex.join(argv) for argv in commands)
    return ["sh", "-e", "-c", script]


def _serialize(message: object) -> bytes:
    return message.SerializeToString(deterministic=True)  # type: ignore[attr-defined]


def input_root(files: Iterable[FileEntry]) -> tuple[Digest, dict[Digest, bytes]]:
    """The Merkle tree of `Directory` messages for `files`: (root digest, every Directory blob by digest)."""
    tree: dict[str, dict[str, object]] = {"": {}}
    for entry in files:
        parts = entry.path.split("/")
        node = tree[""]
        prefix = ""
        for part in parts[:-1]:
            prefix = f"{prefix}/{part}" if prefix else part
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[parts[-1]] = entry
    blobs: dict[Digest, bytes] = {}

    def build(node: Mapping[str, object]) -> Digest:
        directory = re_pb2.Directory()
        for name in sorted(node):
            child = node[name]
            if isinstance(child, FileEntry):
                directory.files.add(
                    name=name,
                    digest=re_pb2.Digest(hash=child.digest.hash, size_bytes=child.digest.size_bytes),
                    is_executable=child.executable,
                )
            else:
                d = build(child)  # type: ignore[arg-type]
                directory.directories.add(name=name, digest=re_pb2.Digest(hash=d.hash, size_bytes=d.size_bytes))
        data = _serialize(directory)
        digest = digest_bytes(data)
        blobs[digest] = data
        return digest

    return build(tree[""]), blobs


def action_key(
    argv: Sequence[str],
    env: Mapping[str, str],
    outputs: Sequence[str],
    inputs: Iterable[FileEntry],
    platform: Mapping[str, str],
    timeout: float | None,
) -> Digest:
    """The digest of the task's Action: its cache key."""
    command = re_pb2.Command(arguments=list(argv), output_paths=sorted(outputs))
    for name in sorted(env):
        command.environment_variables.add(name=name, value=env[name])
    root, _ = input_root(inputs)
    action = re_pb2.Action(
        command_digest=_pb_digest(digest_bytes(_serialize(command))),
        input_root_digest=_pb_digest(root),
        salt=KEY_FORMAT,
    )
    if timeout:
        action.timeout.FromNanoseconds(int(timeout * 1e9))
    for name in sorted(platform):
        action.platform.properties.add(name=name, value=platform[name])
    return digest_bytes(_serialize(action))


def _pb_digest(d: Digest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=d.hash, size_bytes=d.size_bytes)


def _digest(d: re_pb2.Digest) -> Digest:
    return Digest(d.hash, d.size_bytes)


# -- results ---------------------------------------------------------------------------------------------------


@dataclass
class Outputs:
    """A task's outputs as found in the workspace after it ran (or as named by a cache entry)."""

    files: list[FileEntry]
    symlinks: list[SymlinkEntry]
    directories: list[str]  # declared output directories (possibly empty)

    def blobs(self) -> list[Digest]:
        return [f.digest for f in self.files]


class MissingOutput(Exception):
    pass


def collect_outputs(root: Path, declared: Sequence[str], store: DiskStore) -> Outputs:
    """Store every declared output in the local CAS. A declared output that does not exist raises MissingOutput;
    a symlink pointing outside the workspace raises BadCacheEntry (it could not be restored safely)."""
    files: list[FileEntry] = []
    symlinks: list[SymlinkEntry] = []
    directories: list[str] = []
    for out in declared:
        path = root / out
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):  # not there, or a parent of it is a file
            raise MissingOutput(out) from None
        if stat.S_ISLNK(st.st_mode):
            symlinks.append(_symlink_entry(root, out))
        elif stat.S_ISDIR(st.st_mode):
            directories.append(out)
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                rel_dir = Path(dirpath).relative_to(root).as_posix()
                for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
                    rel = f"{rel_dir}/{name}"
                    shown = not_utf8(rel)
                    if shown is not None:
                        raise BadCacheEntry(f"output file '{shown}' has a name that is not UTF-8, which a cache "
                                            "entry cannot hold: rename it")
                    full = root / rel
                    if full.is_symlink():
                        symlinks.append(_symlink_entry(root, rel))
                    else:
                        files.append(_store_file(store, full, rel))
        else:
            files.append(_store_file(store, path, out))
    return Outputs(files=files, symlinks=symlinks, directories=directories)


def _store_file(store: DiskStore, path: Path, rel: str) -> FileEntry:
    digest = store.put_file(path)
    return FileEntry(rel, digest, os.access(path, os.X_OK))


def _symlink_entry(root: Path, rel: str) -> SymlinkEntry:
    target = os.readlink(root / rel)
    shown = not_utf8(target)
    if shown is not None:
        raise BadCacheEntry(f"symlink {rel} points to '{shown}', a name that is not UTF-8, which a cache entry "
                            "cannot hold")
    check_symlink(rel, target)
    return SymlinkEntry(rel, target)


def check_symlink(rel: str, target: str) -> None:
    """Refuse a symlink whose target is absolute or climbs out of the workspace."""
    if os.path.isabs(target):
        raise BadCacheEntry(f"symlink {rel} points to an absolute path ({target})")
    resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    if resolved == ".." or resolved.startswith("../"):
        raise BadCacheEntry(f"symlink {rel} points outside the workspace ({target})")


def make_result(outputs: Outputs, exit_code: int, stdout: Digest, stderr: Digest, start: float, end: float) -> bytes:
    """Serialize an ActionResult. A declared output directory is recorded by its path alone (no Tree blob) and
    the files inside it are listed as output files: simpler to verify, and an empty directory still restores."""
    result = re_pb2.ActionResult(exit_code=exit_code, stdout_digest=_pb_digest(stdout), stderr_digest=_pb_digest(stderr))
    for f in outputs.files:
        result.output_files.add(path=f.path, digest=_pb_digest(f.digest), is_executable=f.executable)
    for s in outputs.symlinks:
        result.output_symlinks.add(path=s.path, target=s.target)
    for d in outputs.directories:
        result.output_directories.add(path=d)
    meta = result.execution_metadata
    meta.worker = host_platform.node()
    meta.worker_start_timestamp.FromNanoseconds(int(start * 1e9))
    meta.worker_completed_timestamp.FromNanoseconds(int(end * 1e9))
    return _serialize(result)


@dataclass
class CachedResult:
    outputs: Outputs
    stdout: Digest
    stderr: Digest
    duration_s: float  # how long the action took when it was executed


def parse_result(data: bytes, declared: Sequence[str]) -> CachedResult:
    """Parse and validate an ActionResult from any tier. Raises BadCacheEntry if it must not be restored."""
    result = re_pb2.ActionResult()
    try:
        result.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError, but be strict: any failure is a bad entry
        raise BadCacheEntry(f"unreadable action result ({e})") from None
    if result.exit_code != 0:
        raise BadCacheEntry("the cached action failed")
    files = []
    for f in result.output_files:
        _check_output_path(f.path, declared)
        files.append(FileEntry(f.path, _checked_digest(f.digest), f.is_executable))
    symlinks = []
    for s in result.output_symlinks:
        _check_output_path(s.path, declared)
        check_symlink(s.path, s.target)
        symlinks.append(SymlinkEntry(s.path, s.target))
    directories = []
    for d in result.output_directories:
        if d.path not in declared:
            raise BadCacheEntry(f"names an undeclared output directory {d.path!r}")
        directories.append(d.path)
    meta = result.execution_metadata
    duration = max(
        0.0, (meta.worker_completed_timestamp.ToNanoseconds() - meta.worker_start_timestamp.ToNanoseconds()) / 1e9
    )
    return CachedResult(
        outputs=Outputs(files=files, symlinks=symlinks, directories=directories),
        stdout=_checked_digest(result.stdout_digest),
        stderr=_checked_digest(result.stderr_digest),
        duration_s=duration,
    )


def _checked_digest(d: re_pb2.Digest) -> Digest:
    if not is_valid_hash(d.hash) or d.size_bytes < 0:
        raise BadCacheEntry(f"malformed digest {d.hash[:70]!r}")
    return _digest(d)


def _check_output_path(path: str, declared: Sequence[str]) -> None:
    norm = os.path.normpath(path) if path else ""
    if not path or os.path.isabs(path) or norm != path or path == ".." or path.startswith("../") or "\0" in path:
        raise BadCacheEntry(f"unsafe output path {path[:200]!r}")
    if not any(path == out or path.startswith(out + "/") for out in declared):
        raise BadCacheEntry(f"names an undeclared output {path!r}")


def restore_outputs(root: Path, cached: CachedResult, store: DiskStore) -> None:
    """Write a cached result's outputs into the workspace. Each file is copied from the verified local blob to
    a temp file beside its destination and renamed into place, so a reader never sees half a file.
    Raises BadCacheEntry if a blob is missing or corrupt (the caller then executes the task)."""
    for d in cached.outputs.directories:
        _reset_dir(root / d)
    for f in cached.outputs.files:
        dest = root / f.path
        _ensure_parent(root, dest)
        tmp = dest.parent / f".{dest.name}.gaffer-{os.getpid()}.tmp"
        if not store.fetch_blob(f.digest, tmp):
            tmp.unlink(missing_ok=True)
            raise BadCacheEntry(f"blob for {f.path} is missing or corrupt")
        os.chmod(tmp, 0o755 if f.executable else 0o644)
        _remove(dest)
        os.replace(tmp, dest)
    for s in cached.outputs.symlinks:
        dest = root / s.path
        _ensure_parent(root, dest)
        _remove(dest)
        os.symlink(s.target, dest)


def _ensure_parent(root: Path, dest: Path) -> None:
    """Create the parent directories, refusing to write through a symlinked directory out of the workspace."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    real_root = os.path.realpath(root)
    real_parent = os.path.realpath(dest.parent)
    if real_parent != real_root and not real_parent.startswith(real_root + os.sep):
        raise BadCacheEntry(f"{dest.relative_to(root)} would be written outside the workspace through a symlink")


def _reset_dir(path: Path) -> None:
    _remove(path)
    path.mkdir(parents=True, exist_ok=True)


def _remove(path: Path) -> None:
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # not there, or a parent of it is a file
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def remove_outputs(root: Path, declared: Sequence[str]) -> None:
    """Delete declared outputs before a task runs, so a stale file can never pass for one it made."""
    for out in declared:
        _remove(root / out)
