"""Tasks as REAPI v2 Actions, and ActionResults to and from files in a workspace.

The action key is the digest of the deterministic serialization of an `Action` whose
  - `command_digest` names a `Command` (argv, declared env values, declared output paths),
  - `input_root_digest` names a Merkle tree of `Directory` messages holding every input file (by content digest
    and executable bit) and everything the task's deps output: files (with their permission bits), symlinks
    (with their targets) and directories (empty ones too, with their permission bits),
  - `platform` holds the graph's platform properties plus this machine's OS and CPU architecture (the graph
    cannot name those two: the executing machine is always in the key),
  - `salt` holds the key-format version, so a change in how gaffer builds keys never reuses old entries, then
    the identity of each tool the task runs (gaffer.tools). The salt is key-only by REAPI's definition: a worker
    executes the Action the same without it, needs no tool blobs in the CAS and matches no extra platform
    property.
`prepare_action` keeps every message it serializes: stored in a CAS with the input files, the Action runs on
any REAPI executor as is.
docs/caching.md is the user-facing contract for what is (and is not) in a key.

Everything in an ActionResult may come from a remote peer: paths are checked to be relative, normalized, inside
the task's declared outputs, and symlinks to stay inside the workspace, before anything is written.
"""

from __future__ import annotations

import functools
import os
import shlex
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from gaffer.cache.disk import DiskStore
from gaffer.digest import Digest, digest_bytes, is_valid_hash, sha256
from gaffer.errors import not_utf8
from gaffer.protos import wire

KEY_FORMAT = b"gaffer-graph-key-v2"
PERMISSION_BITS = 0o777  # what a result records of a mode: never setuid/setgid/sticky from a cache


class FileEntry(NamedTuple):
    """A file in an input root or among a task's outputs."""

    path: str  # workspace-relative, posix
    digest: Digest
    executable: bool
    mode: int | None = None  # permission bits, recorded for outputs (a source input keys its executable bit only)


class SymlinkEntry(NamedTuple):
    path: str
    target: str


class DirectoryEntry(NamedTuple):
    """A directory among a task's outputs: a declared output directory or one below it (possibly empty)."""

    path: str
    mode: int


class BadCacheEntry(Exception):
    """An ActionResult that must not be restored (unsafe path, undeclared output, missing blob)."""


class UnsafeOutput(Exception):
    """A declared output that a symlink on its way puts in the workspace's `.git` or `.gaffer`, or that is the
    workspace itself or a directory holding it: removing it would destroy what no task owns."""


def host_properties() -> dict[str, str]:
    """The platform this machine builds for, part of every key: a Linux x86-64 binary is not an arm64 one."""
    uname = _uname()
    return {"OSFamily": _as_platform(uname.sysname).lower(), "ISA": _as_platform(uname.machine).lower()}


@functools.cache
def _uname() -> os.uname_result:
    """`os.uname()` once per process: a build asks for it twice per task it runs (the key's platform, the
    result's worker name)."""
    return os.uname()


def _as_platform(value: str) -> str:
    """An `os.uname` field as the platform module reports it on POSIX (which only blanks "unknown"): the same
    keys without importing platform on every build."""
    return "" if value == "unknown" else value


def command_argv(commands: Sequence[Sequence[str]]) -> list[str]:
    """One argv for the whole task: a single command as is, several joined into one `sh -e` script."""
    if len(commands) == 1:
        return list(commands[0])
    script = "\n".join(shlex.join(argv) for argv in commands)
    return ["sh", "-e", "-c", script]


class _Node:
    """A directory being assembled into a `Directory` message."""

    def __init__(self) -> None:
        self.mode: int | None = None
        self.files: dict[str, FileEntry] = {}
        self.symlinks: dict[str, str] = {}
        self.dirs: dict[str, _Node] = {}

    def child(self, name: str) -> _Node:
        return self.dirs.setdefault(name, _Node())


def _merkle(
    files: Iterable[FileEntry], symlinks: Iterable[SymlinkEntry] = (), directories: Iterable[DirectoryEntry] = (),
    prefix: str = "",
) -> tuple[bytes, dict[Digest, bytes]]:
    """The serialized root `Directory` of the entries (paths relative to `prefix`) and every Directory below it
    by digest."""
    root = _Node()

    def node_at(parts: Sequence[str]) -> _Node:
        node = root
        for part in parts:
            node = node.child(part)
        return node

    def split(path: str) -> list[str]:
        return (path[len(prefix) + 1:] if prefix else path).split("/")

    for d in directories:
        node_at([] if d.path == prefix else split(d.path)).mode = d.mode
    for f in files:
        parts = split(f.path)
        node_at(parts[:-1]).files[parts[-1]] = f
    for s in symlinks:
        parts = split(s.path)
        node_at(parts[:-1]).symlinks[parts[-1]] = s.target
    below: dict[Digest, bytes] = {}

    def build(node: _Node) -> bytes:
        subdirs = []
        for name in sorted(node.dirs):
            child = build(node.dirs[name])
            digest = digest_bytes(child)
            below[digest] = child
            subdirs.append((name, digest))
        files = [(name, f.digest, f.executable, f.mode) for name, f in sorted(node.files.items())]
        return wire.directory(files, subdirs, sorted(node.symlinks.items()), node.mode)

    return build(root), below


def input_root(
    files: Iterable[FileEntry], symlinks: Iterable[SymlinkEntry] = (), directories: Iterable[DirectoryEntry] = ()
) -> tuple[Digest, dict[Digest, bytes]]:
    """The Merkle tree of `Directory` messages for the entries: (root digest, every Directory blob by digest)."""
    data, blobs = _merkle(files, symlinks, directories)
    digest = digest_bytes(data)
    blobs[digest] = data
    return digest, blobs


def key_salt(identities: Sequence[tuple[str, str, str]] = ()) -> bytes:
    """`Action.salt`: the key-format version, then one `tool NAME VERSION SHA-256` line per identity. This is how
    files outside the workspace (a tool, later a compiler's headers) are keyed by content without being shipped:
    REAPI defines the salt as key-only, so a worker runs the Action the same and needs no blob for them."""
    return KEY_FORMAT + "".join(f"\ntool {spec} {version} {h}" for spec, version, h in identities).encode()


class PreparedAction(NamedTuple):
    """A task as a complete REAPI action: the Action (whose digest is the cache key), its Command and its input
    root, every message serialized in `blobs`. Stored in a CAS beside the input files, it is what any REAPI
    executor (gaffer's own, BuildGrid, Buildbarn) runs as is: the Command carries exactly the declared
    environment, the working directory is the input root (""), and the outputs are `output_paths`."""

    digest: Digest  # the Action's: the cache key
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # the Command's environment_variables, sorted by name
    output_paths: tuple[str, ...]  # sorted
    timeout: float | None
    command: Digest
    input_root: Digest
    blobs: dict[Digest, bytes]  # the Action, the Command and every input-root Directory, by digest
    sources: tuple[FileEntry, ...]  # the workspace files in the input root (a dep's outputs are in the CAS already)

    def store(self, store: DiskStore) -> list[Digest]:
        """Put the Action, Command and Directory blobs into the local CAS; their digests, for uploading."""
        for digest, data in self.blobs.items():
            store.write_blob(digest, data)
        return list(self.blobs)

    def input_tree(self) -> Outputs:
        """Every file, symlink and directory of the input root, at workspace paths, read from `blobs` (what an
        executor away from the workspace must find in its CAS). Raises BadCacheEntry if a Directory is absent."""
        def child(digest: Digest) -> wire.ReadDirectory | None:
            data = self.blobs.get(digest)
            return None if data is None else wire.read_directory(data)

        root = child(self.input_root)
        if root is None:
            raise BadCacheEntry("its input root is not among its blobs")
        tree = Outputs(files=[], symlinks=[], directories=[])
        expand_directory("", root, child, tree)
        return tree


def prepare_action(
    argv: Sequence[str],
    env: Mapping[str, str],
    outputs: Sequence[str],
    platform: Mapping[str, str],
    timeout: float | None,
    salt: bytes,
    sources: Sequence[FileEntry],
    dep_files: Iterable[FileEntry] = (),
    dep_symlinks: Iterable[SymlinkEntry] = (),
    dep_directories: Iterable[DirectoryEntry] = (),
    working_directory: str = "",
    do_not_cache: bool = False,
) -> PreparedAction:
    """The task's Action, Command and input-root Directory blobs. The input root holds the workspace files
    `sources` and everything the deps output (`dep_*`), at their workspace paths."""
    env_pairs = tuple((name, env[name]) for name in sorted(env))
    output_paths = tuple(sorted(outputs))
    command_data = wire.command(argv, env_pairs, output_paths, working_directory)
    command = digest_bytes(command_data)
    root, blobs = input_root([*sources, *dep_files], dep_symlinks, dep_directories)
    blobs[command] = command_data
    action_data = wire.action(command, root, int(timeout * 1e9) if timeout else None, do_not_cache, salt,
                              [(name, platform[name]) for name in sorted(platform)])
    digest = digest_bytes(action_data)
    blobs[digest] = action_data
    return PreparedAction(digest, tuple(argv), env_pairs, output_paths, timeout, command, root, blobs,
                          tuple(sources))


# -- results ---------------------------------------------------------------------------------------------------


class Outputs:
    """A task's outputs as found in the workspace after it ran (or as named by a cache entry): every file,
    symlink and directory, at workspace paths, and the `Tree` blob recording each declared output directory.
    Filled in place as they are found, so a plain class (a NamedTuple would share a default `trees`)."""

    __slots__ = ("directories", "files", "symlinks", "trees")

    def __init__(self, files: list[FileEntry], symlinks: list[SymlinkEntry], directories: list[DirectoryEntry],
                 trees: dict[str, Digest] | None = None) -> None:
        self.files = files
        self.symlinks = symlinks
        self.directories = directories  # declared output directories and every directory below them
        self.trees = {} if trees is None else trees  # declared output directory -> its Tree blob

    def _parts(self) -> tuple[object, ...]:
        return self.files, self.symlinks, self.directories, self.trees

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Outputs) and self._parts() == other._parts()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return "Outputs(files={!r}, symlinks={!r}, directories={!r}, trees={!r})".format(*self._parts())

    def blobs(self) -> list[Digest]:
        return [*(f.digest for f in self.files), *self.trees.values()]


class MissingOutput(Exception):
    pass


def collect_outputs(root: Path, declared: Sequence[str], store: DiskStore) -> Outputs:
    """Store every declared output in the local CAS, each declared directory also as a REAPI `Tree`. A declared
    output that does not exist raises MissingOutput; a symlink pointing outside the workspace, or anything but a
    file, directory or symlink, raises BadCacheEntry (it could not be restored safely)."""
    outputs = Outputs(files=[], symlinks=[], directories=[])
    for out in declared:
        try:
            st = os.lstat(f"{root}/{out}")  # str paths: a build collects outputs for every task it runs
        except (FileNotFoundError, NotADirectoryError):  # not there, or a parent of it is a file
            raise MissingOutput(out) from None
        try:
            if not stat.S_ISDIR(st.st_mode):
                _collect_entry(root, out, st, store, outputs)
                continue
            start = (len(outputs.files), len(outputs.symlinks), len(outputs.directories))
            outputs.directories.append(DirectoryEntry(out, stat.S_IMODE(st.st_mode) & PERMISSION_BITS))
            for dirpath, dirnames, filenames in os.walk(root / out, onerror=_reraise):  # none left out unread
                rel_dir = Path(dirpath).relative_to(root).as_posix()
                for name in sorted(dirnames + filenames):
                    rel = f"{rel_dir}/{name}"
                    _collect_entry(root, rel, os.lstat(root / rel), store, outputs)
        except OSError as e:  # a mode the task gave it (chmod 000), a path longer than the system allows
            if e.filename is None or not os.fspath(e.filename).startswith(f"{root}/{out}"):
                raise  # not the output's own (the cache directory's): the caller's problem
            shown = os.path.relpath(e.filename, root)
            shown = shown if len(shown) <= 200 else f"{shown[:120]}...{shown[-60:]}"
            raise BadCacheEntry(f"output {shown} cannot be read ({e.strerror})") from None
        tree = _tree(out, outputs.files[start[0]:], outputs.symlinks[start[1]:], outputs.directories[start[2]:])
        outputs.trees[out] = digest_bytes(tree)
        store.write_blob(outputs.trees[out], tree)
    return outputs


def _reraise(error: OSError) -> None:
    raise error


def _collect_entry(root: Path, rel: str, st: os.stat_result, store: DiskStore, outputs: Outputs) -> None:
    shown = not_utf8(rel)
    if shown is not None:
        raise BadCacheEntry(f"output file '{shown}' has a name that is not UTF-8, which a cache entry cannot hold:"
                            " rename it")
    mode = stat.S_IMODE(st.st_mode) & PERMISSION_BITS
    if stat.S_ISREG(st.st_mode):
        outputs.files.append(FileEntry(rel, store.put_file(f"{root}/{rel}"), bool(mode & 0o100), mode))
    elif stat.S_ISLNK(st.st_mode):
        target = os.readlink(root / rel)
        shown = not_utf8(target)
        if shown is not None:
            raise BadCacheEntry(f"symlink {rel} points to '{shown}', a name that is not UTF-8, which a cache entry "
                                "cannot hold")
        check_symlink(rel, target)
        outputs.symlinks.append(SymlinkEntry(rel, target))
    elif stat.S_ISDIR(st.st_mode):
        outputs.directories.append(DirectoryEntry(rel, mode))
    else:
        raise BadCacheEntry(f"output {rel} is not a file, directory or symlink")


def _tree(path: str, files: Sequence[FileEntry], symlinks: Sequence[SymlinkEntry],
          directories: Sequence[DirectoryEntry]) -> bytes:
    """The serialized REAPI `Tree` of the output directory `path`: what any REAPI client reads back."""
    root, below = _merkle(files, symlinks, directories, prefix=path)
    return wire.tree(root, [below[d] for d in sorted(below, key=lambda d: d.hash)])


def check_symlink(rel: str, target: str) -> None:
    """Refuse a symlink whose target is absolute or climbs out of the workspace."""
    if os.path.isabs(target):
        raise BadCacheEntry(f"symlink {rel} points to an absolute path ({target})")
    resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    if resolved == ".." or resolved.startswith("../"):
        raise BadCacheEntry(f"symlink {rel} points outside the workspace ({target})")


def make_result(outputs: Outputs, exit_code: int, stdout: Digest, stderr: Digest, start: float, end: float) -> bytes:
    """Serialize an ActionResult: each declared output exactly once, as an output file (with its permission bits
    in `node_properties.unix_mode`), symlink, or directory (by its `Tree` blob, which `collect_outputs` stored)."""
    inside = tuple(f"{d}/" for d in outputs.trees)
    files = [(f.path, f.digest, f.executable, f.mode) for f in outputs.files if not f.path.startswith(inside)]
    symlinks = [(s.path, s.target) for s in outputs.symlinks if not s.path.startswith(inside)]
    return wire.action_result(files, symlinks, list(outputs.trees.items()), exit_code, stdout, stderr,
                              _as_platform(_uname().nodename), int(start * 1e9), int(end * 1e9))


class CachedResult(NamedTuple):
    outputs: Outputs  # directories' contents are filled in by `read_trees`
    stdout: Digest
    stderr: Digest
    duration_s: float  # how long the action took when it was executed


def parse_result(data: bytes, declared: Sequence[str]) -> CachedResult:
    """Parse and validate an ActionResult from any tier. Raises BadCacheEntry if it must not be restored: every
    declared output must be exactly one output file, symlink or directory with that path, and nothing else may
    be named (a damaged or foreign entry is a miss, never a partial restore)."""
    try:
        result = wire.read_action_result(data)
    except wire.DecodeError as e:
        raise BadCacheEntry(f"unreadable action result ({e})") from None
    if result.exit_code != 0:
        raise BadCacheEntry("the cached action failed")
    outputs = Outputs(files=[], symlinks=[], directories=[])
    named = [*(f.name for f in result.files), *(path for path, _ in result.symlinks),
             *(path for path, _ in result.directories)]
    for path in named:
        _check_output_path(path, declared)
    if sorted(named) != sorted(declared):
        missing = sorted(set(declared) - set(named))
        raise BadCacheEntry(f"does not account for the declared output {missing[0]!r}" if missing
                            else "names an output more than once")
    outputs.files.extend(_file_entry(f.name, f) for f in result.files)
    for path, target in result.symlinks:
        check_symlink(path, target)
        outputs.symlinks.append(SymlinkEntry(path, target))
    for path, tree in result.directories:
        if tree is None:
            raise BadCacheEntry(f"output directory {path!r} has no tree")
        outputs.trees[path] = _checked_digest(tree)
    return CachedResult(outputs=outputs, stdout=_checked_digest(result.stdout),
                        stderr=_checked_digest(result.stderr), duration_s=max(0.0, result.duration_ns / 1e9))


def fetch_result(cached: CachedResult, ensure_local: Callable[[list[Digest]], bool], store: DiskStore,
                 files: bool = True) -> bool:
    """Bring a result's blobs into the local CAS `store` with `ensure_local` (a tiered cache's: fetched and
    verified) and expand its output directories' Trees into `cached.outputs`; `files=False` leaves the output
    files where they are (only Trees and logs). False if a blob could not be had."""
    if not ensure_local(list(cached.outputs.trees.values())):
        return False
    read_trees(cached.outputs, store)
    logs = [cached.stdout, cached.stderr]
    return ensure_local([*cached.outputs.blobs(), *logs] if files else logs)


def _file_entry(path: str, node: wire.ReadFile) -> FileEntry:
    """A file as an entry names it; without a recorded mode, what a REAPI client would make of the executable bit."""
    mode = node.mode
    if mode is None:
        mode = 0o755 if node.executable else 0o644
    return FileEntry(path, _checked_digest(node.digest), bool(mode & 0o100), mode & PERMISSION_BITS)


def read_trees(outputs: Outputs, store: DiskStore) -> None:
    """Expand each output directory's `Tree` (read from the local CAS, verified) into files, symlinks and
    directories at workspace paths. Raises BadCacheEntry for a missing or malformed tree or an unsafe name."""
    for path, digest in outputs.trees.items():
        data = store.read_blob(digest)
        if data is None:
            raise BadCacheEntry(f"the tree of {path} is missing or corrupt")
        try:
            root, children = wire.read_tree(data)
            by_digest = {digest_bytes(child): wire.read_directory(child) for child in children}
            expand_directory(path, wire.read_directory(root), by_digest.get, outputs)
        except wire.DecodeError as e:
            raise BadCacheEntry(f"unreadable tree for {path} ({e})") from None
        except BadCacheEntry as e:
            raise BadCacheEntry(f"the tree of {path}: {e}") from None


def expand_directory(path: str, root: wire.ReadDirectory, child: Callable[[Digest], wire.ReadDirectory | None],
                     outputs: Outputs) -> None:
    """Add the directory `root` at `path` ("" for an input root) and everything below it to `outputs`, each
    subdirectory's message found by `child` (asked once per distinct digest). Raises BadCacheEntry for an unsafe or
    repeated name, an unsafe symlink, a missing subdirectory or too many entries: nothing here may be written before
    it is checked. The entries are counted before any is expanded: a directory shared many times over (a Tree or
    an input root is a DAG) lets a few small messages stand for more paths than memory holds."""
    found: dict[Digest, wire.ReadDirectory | None] = {}

    def lookup(digest: Digest) -> wire.ReadDirectory | None:
        if digest not in found:
            found[digest] = child(_checked_digest(digest))
        return found[digest]

    if len(outputs.directories) + len(outputs.files) + _expanded_size(root, lookup) > _MAX_TREE_ENTRIES:
        raise BadCacheEntry("too many entries")
    pending = [(path, root)]
    while pending:
        where, directory = pending.pop()
        outputs.directories.append(DirectoryEntry(where, 0o755 if directory.mode is None
                                                  else directory.mode & PERMISSION_BITS))
        name = unsafe_name(directory)
        if name is not None:
            raise BadCacheEntry(f"unsafe or repeated name {name[:200]!r} in {where or '.'}")
        prefix = f"{where}/" if where else ""
        outputs.files.extend(_file_entry(prefix + f.name, f) for f in directory.files)
        for name, target in directory.symlinks:
            check_symlink(prefix + name, target)
            outputs.symlinks.append(SymlinkEntry(prefix + name, target))
        for name, digest in directory.directories:
            sub = lookup(digest)
            if sub is None:
                raise BadCacheEntry(f"lacks directory {prefix}{name}")
            pending.append((prefix + name, sub))


def _expanded_size(root: wire.ReadDirectory, lookup: Callable[[Digest], wire.ReadDirectory | None]) -> int:
    """How many entries (directories, files, symlinks) `root` expands to, each distinct subdirectory counted once
    (post-order, without recursion: a tree may be deep); past _MAX_TREE_ENTRIES it counts no further. A missing
    subdirectory counts as empty (the expansion names it)."""
    sizes: dict[Digest, int] = {}
    stack: list[tuple[Digest | None, wire.ReadDirectory, bool]] = [(None, root, False)]
    while True:
        digest, directory, children_counted = stack.pop()
        if not children_counted:
            if digest is not None and digest in sizes:
                continue  # pushed again by another parent before it was counted
            stack.append((digest, directory, True))
            for _name, sub in directory.directories:
                if sub not in sizes:
                    message = lookup(sub)
                    if message is None:
                        sizes[sub] = 0
                    else:
                        stack.append((sub, message, False))
            continue
        size = min(_MAX_TREE_ENTRIES + 1, 1 + len(directory.files) + len(directory.symlinks)
                   + sum(sizes[sub] for _name, sub in directory.directories))
        if digest is None:
            return size
        sizes[digest] = size


def unsafe_name(directory: wire.ReadDirectory) -> str | None:
    """The first name in a `Directory` message that must not be written: one that could climb out or into
    another directory ("", ".", "..", a "/", a NUL) or that names two entries. None if all are safe."""
    seen: set[str] = set()
    for name in [*(f.name for f in directory.files), *(name for name, _ in directory.directories),
                 *(name for name, _ in directory.symlinks)]:
        if not name or "/" in name or name in (".", "..") or "\0" in name or name in seen:
            return name
        seen.add(name)
    return None


_MAX_TREE_ENTRIES = 10_000_000  # a Tree may share children: bound what a hostile one can expand to


def _checked_digest(d: Digest) -> Digest:
    if not is_valid_hash(d.hash) or d.size_bytes < 0:
        raise BadCacheEntry(f"malformed digest {d.hash[:70]!r}")
    return d


def _check_output_path(path: str, declared: Sequence[str]) -> None:
    norm = os.path.normpath(path) if path else ""
    if not path or os.path.isabs(path) or norm != path or path == ".." or path.startswith("../") or "\0" in path:
        raise BadCacheEntry(f"unsafe output path {path[:200]!r}")
    if path not in declared:
        raise BadCacheEntry(f"names an undeclared output {path!r}")


def restore_outputs(root: Path, cached: CachedResult, store: DiskStore) -> None:
    """Write a cached result's outputs into the workspace, modes and empty directories as made. Each file is
    copied from the verified local blob to a temp file beside its destination and renamed into place, so a
    reader never sees half a file; directories get their modes last (a 0500 directory is filled first).
    Raises BadCacheEntry if a blob is missing or corrupt (the caller then executes the task)."""
    for path in cached.outputs.trees:
        _ensure_parent(root, root / path)
        _reset_dir(root / path)
    for d in cached.outputs.directories:
        (root / d.path).mkdir(parents=True, exist_ok=True)
    for f in cached.outputs.files:
        dest = root / f.path
        _ensure_parent(root, dest)
        tmp = restore_temp(dest)
        _remove(tmp)  # one a killed gaffer left (or a symlink planted there: never written through)
        if not store.fetch_blob(f.digest, tmp):
            tmp.unlink(missing_ok=True)
            raise BadCacheEntry(f"blob for {f.path} is missing or corrupt")
        os.chmod(tmp, f.mode if f.mode is not None else 0o755 if f.executable else 0o644)
        _remove(dest)
        os.replace(tmp, dest)
    for s in cached.outputs.symlinks:
        dest = root / s.path
        _ensure_parent(root, dest)
        _remove(dest)
        os.symlink(s.target, dest)
    for d in sorted(cached.outputs.directories, key=lambda d: d.path.count("/"), reverse=True):
        os.chmod(root / d.path, d.mode)


def restore_temp(dest: Path | str) -> Path:
    """The temp file a restore of `dest` is written to before it is renamed into place: beside it, short (any
    legal name fits), and always the same, so that one a killed gaffer left is removed by the next restore of
    the output, or with the output (`remove_outputs`), rather than staying in the workspace for good."""
    dest = Path(dest)
    return dest.parent / f".gaffer-{sha256(os.fsencode(dest.name)).hexdigest()[:16]}.tmp"


def _ensure_parent(root: Path, dest: Path) -> None:
    """Create the parent directories, refusing to write through a symlinked directory out of the workspace or
    into its `.git` or `.gaffer` (a cache hit is then executed instead)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _no_symlink_on_the_way(root, os.path.relpath(dest.parent, root)):
        return  # its place is what its (checked, declared) path says: in the workspace, out of .git and .gaffer
    place, real = _real_output_place(root, dest)
    if place == _OUTSIDE:
        raise BadCacheEntry(f"{dest.relative_to(root)} would be written outside the workspace through a symlink"
                            f" ({real})")
    if place:
        raise BadCacheEntry(f"{dest.relative_to(root)} would be written into {place} ({real})")


_OUTSIDE = "outside"
_PROTECTED = (".git", ".gaffer")


def _no_symlink_on_the_way(root: str | Path, rel_dir: str) -> bool:
    """Is no directory of `rel_dir` (relative to the workspace `root`) a symlink? An lstat each, where resolving
    where it really is costs one for every component of the workspace's own path too: the common case, checked
    before each task runs and each hit is restored."""
    if rel_dir in ("", "."):
        return True
    path = os.fspath(root)
    for part in rel_dir.split("/"):
        path = f"{path}/{part}"
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return False
        except OSError:  # not there (yet): nothing further down can lead anywhere else
            return True
    return True


def _real_output_place(root: str | Path, path: str | Path) -> tuple[str, str]:
    """`_real_place` of an output itself: its directory's symlinks followed, then its own name, so `self/.git`
    with `self -> .` is in .git (an output's own symlink is the output's, replaced, never followed)."""
    place, real_parent = _real_place(root, os.path.dirname(path))
    real = os.path.join(real_parent, os.path.basename(path))
    if not place and real_parent == os.path.realpath(root) and os.path.basename(path) in _PROTECTED:
        place = os.path.basename(path)
    return place, real


def _real_place(root: str | Path, directory: str | Path) -> tuple[str, str]:
    """Where `directory` (in the workspace `root`, symlinks on its way followed) really is: ("", real path)
    inside the workspace, (".git" or ".gaffer", real path) in those, (_OUTSIDE, real path) out of it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(directory)
    if real == real_root:
        return "", real
    if not real.startswith(real_root + os.sep):
        return _OUTSIDE, real
    top = real[len(real_root) + 1:].split(os.sep, 1)[0]
    return (top if top in _PROTECTED else ""), real


def _reset_dir(path: Path) -> None:
    _remove(path)
    path.mkdir(parents=True, exist_ok=True)


def _remove(path: str | Path) -> None:
    """Remove a file, symlink or directory tree: unlinked at once, as almost every output is a file."""
    try:
        os.unlink(path)
        return
    except (FileNotFoundError, NotADirectoryError):  # not there, or a parent of it is a file
        return
    except IsADirectoryError:  # what Linux says
        pass
    except PermissionError:  # what POSIX allows for a directory (macOS says it); else a file we may not remove
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise
    import shutil  # only for a directory: an edit build that replaces files never loads it

    top = os.fspath(path)  # as the handler is given it
    shutil.rmtree(top, onerror=functools.partial(_make_writable_and_retry, top))


def _make_writable_and_retry(top: str, func: Callable[..., object], path: str,
                             exc: tuple[type[BaseException], BaseException, object]) -> None:
    """An output directory made without write permission (0500), or without read or search permission (0000,
    0300), can still be removed: its outputs are gaffer's. Only modes inside the output `top` are changed, never
    those of the directory holding it (for a top-level output, the workspace: maybe shared with others)."""
    import shutil

    if path != top:  # its parent is in the output: made writable and searchable to remove `path`
        os.chmod(os.path.dirname(path), 0o700)
    elif func not in (os.open, os.scandir):  # `top` itself cannot be looked up or unlinked: not the output's doing
        raise exc[1]
    if func in (os.open, os.scandir, os.lstat):  # a directory it could not open or list: made so, removed whole
        os.chmod(path, 0o700)
        shutil.rmtree(path, onerror=functools.partial(_make_writable_and_retry, top))
        return
    try:
        func(path)
    except FileNotFoundError:  # removed whole already (after a failed os.open or os.scandir of it)
        pass


def check_outputs(root: Path, declared: Sequence[str]) -> None:
    """Raise UnsafeOutput for a declared output of a workspace task that must not be removed: one a symlink on
    its way puts into `.git` or `.gaffer` (`g/config` with `g -> .git`), or that is the workspace itself or a
    directory holding it (`up/ws` with `up -> ..`). An output a symlinked directory leads elsewhere out of the
    workspace (`build/x` with `build -> /fast/build`) is the graph's to declare, and removed there."""
    for out in declared:
        parent = os.path.dirname(out)
        if _no_symlink_on_the_way(root, parent):  # the graph refuses `.git`, `.gaffer` and `..` as path parts
            continue
        place, real_out = _real_output_place(root, f"{root}/{out}")
        real_root = os.path.realpath(root)
        if place in _PROTECTED:
            raise UnsafeOutput(f"output '{out}' leads into {place} ({real_out}): gaffer neither removes nor writes"
                               " it there")
        if real_root == real_out or real_root.startswith(real_out + os.sep):
            raise UnsafeOutput(f"output '{out}' is the workspace or holds it ({real_out}): gaffer does not"
                               " remove it")


def remove_outputs(root: Path, declared: Sequence[str], in_workspace: bool = True) -> None:
    """Delete declared outputs before a task runs, so a stale file can never pass for one it made. In a
    workspace, raises UnsafeOutput (`check_outputs`) before removing anything; an exec root (`in_workspace`
    False) is gaffer's own, where any path its action declares (`.git/x` too) is the action's."""
    if in_workspace:
        check_outputs(root, declared)
    for out in declared:
        _remove(f"{root}/{out}")
        _remove(restore_temp(f"{root}/{out}"))  # what a restore of it killed midway left
