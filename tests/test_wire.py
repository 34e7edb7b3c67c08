"""The hand-written REAPI codec (gaffer.protos.wire) against protobuf's own deterministic serializer.

A key is the SHA-256 of these bytes: a codec that drifted by one byte from protobuf's output would change every
key silently (and hand REAPI servers messages they re-serialize differently). Each message is generated at random
over many shapes (empty fields, unicode, long strings, sizes across every varint length, negative numbers, zero
values that must stay present) and built twice: by the codec, and as a generated protobuf object serialized with
`deterministic=True`. GAFFER_TEST_EXAMPLES=N runs N examples per message; a failure names its seed
(GAFFER_TEST_SEED=S replays it).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from gaffer import actions
from gaffer.actions import DirectoryEntry, FileEntry, SymlinkEntry
from gaffer.digest import Digest, digest_bytes
from gaffer.protos import remote_execution_pb2 as re_pb2
from gaffer.protos import wire

EXAMPLES = int(os.environ.get("GAFFER_TEST_EXAMPLES") or 100)
SEEDS = [int(os.environ["GAFFER_TEST_SEED"])] if os.environ.get("GAFFER_TEST_SEED") else range(EXAMPLES)

_CHARS = "abcxyz019._-/ é日本🙂\t\n\"'$"
_SIZES = [0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**31 - 1, 2**31, 2**35 + 7, 2**63 - 1]


def _text(rng: random.Random, empty: bool = True) -> str:
    n = rng.choice([0, 1, 3, 12, 130, 17000] if empty else [1, 3, 12, 130])
    return "".join(rng.choice(_CHARS) for _ in range(n))


def _digest(rng: random.Random) -> Digest:
    return Digest(rng.choice(["", digest_bytes(rng.randbytes(8)).hash]), rng.choice([*_SIZES, -1]))


def _mode(rng: random.Random) -> int | None:
    return rng.choice([None, 0, 0o644, 0o755, 0o777, 0o7777])


def _nanos(rng: random.Random) -> int:
    return rng.choice([0, 1, 999_999_999, 1_000_000_000, -1, -1_500_000_000, 1_764_000_000_123_456_789,
                       -(2**40), rng.randrange(-(2**62), 2**62)])


def _pb_digest(d: Digest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=d.hash, size_bytes=d.size_bytes)


def _files(rng: random.Random) -> list[wire.FileNode]:
    return [(_text(rng), _digest(rng), rng.random() < 0.5, _mode(rng)) for _ in range(rng.choice([0, 1, 4]))]


def _pairs(rng: random.Random) -> list[tuple[str, str]]:
    return [(_text(rng), _text(rng)) for _ in range(rng.choice([0, 1, 5]))]


def _serialized(message: object) -> bytes:
    return message.SerializeToString(deterministic=True)  # type: ignore[attr-defined, no-any-return]


def _check(seed: int, ours: bytes, message: object) -> None:
    expected = _serialized(message)
    assert ours == expected, f"seed {seed}: codec {ours[:200]!r} != protobuf {expected[:200]!r}"


@pytest.mark.parametrize("seed", SEEDS)
def test_directory_and_tree_are_protobufs_bytes(seed: int) -> None:
    rng = random.Random(seed)
    files, symlinks = _files(rng), _pairs(rng)
    subdirs = [(_text(rng), _digest(rng)) for _ in range(rng.choice([0, 2]))]
    mode = _mode(rng)
    message = re_pb2.Directory()
    for name, d, executable, m in files:
        node = message.files.add(name=name, digest=_pb_digest(d), is_executable=executable)
        if m is not None:
            node.node_properties.unix_mode.value = m
    for name, d in subdirs:
        message.directories.add(name=name, digest=_pb_digest(d))
    for name, target in symlinks:
        message.symlinks.add(name=name, target=target)
    if mode is not None:
        message.node_properties.unix_mode.value = mode
    ours = wire.directory(files, subdirs, symlinks, mode)
    _check(seed, ours, message)
    children = [wire.directory(_files(rng), [], [], _mode(rng)) for _ in range(rng.choice([0, 1, 3]))]
    tree = re_pb2.Tree(root=message, children=[re_pb2.Directory.FromString(c) for c in children])
    _check(seed, wire.tree(ours, children), tree)


@pytest.mark.parametrize("seed", SEEDS)
def test_command_and_action_are_protobufs_bytes(seed: int) -> None:
    rng = random.Random(seed)
    argv = [_text(rng) for _ in range(rng.choice([0, 1, 3, 40]))]
    env, outputs, platform = _pairs(rng), [_text(rng) for _ in range(rng.choice([0, 1, 3]))], _pairs(rng)
    working_directory = _text(rng)
    command = re_pb2.Command(arguments=argv, output_paths=outputs, working_directory=working_directory)
    for name, value in env:
        command.environment_variables.add(name=name, value=value)
    _check(seed, wire.command(argv, env, outputs, working_directory), command)

    command_digest, root = _digest(rng), _digest(rng)
    timeout = rng.choice([None, *(_nanos(rng) for _ in range(3))])
    do_not_cache = rng.random() < 0.3
    salt = rng.choice([b"", rng.randbytes(rng.choice([1, 200]))])
    action = re_pb2.Action(command_digest=_pb_digest(command_digest), input_root_digest=_pb_digest(root), salt=salt,
                           do_not_cache=do_not_cache)
    if timeout is not None:
        action.timeout.FromNanoseconds(timeout)
    for name, value in platform:
        action.platform.properties.add(name=name, value=value)
    _check(seed, wire.action(command_digest, root, timeout, do_not_cache, salt, platform), action)


@pytest.mark.parametrize("seed", SEEDS)
def test_action_result_is_protobufs_bytes(seed: int) -> None:
    rng = random.Random(seed)
    files, symlinks = _files(rng), _pairs(rng)
    directories = [(_text(rng), _digest(rng)) for _ in range(rng.choice([0, 2]))]
    exit_code = rng.choice([0, 1, 255, -1, 2**31 - 1, -(2**31)])
    stdout, stderr = rng.choice([None, _digest(rng)]), rng.choice([None, _digest(rng)])
    worker = _text(rng)
    start, completed = rng.choice([None, _nanos(rng)]), rng.choice([None, _nanos(rng)])
    result = re_pb2.ActionResult(exit_code=exit_code)
    for path, d, executable, m in files:
        node = result.output_files.add(path=path, digest=_pb_digest(d), is_executable=executable)
        if m is not None:
            node.node_properties.unix_mode.value = m
    for path, target in symlinks:
        result.output_symlinks.add(path=path, target=target)
    for path, d in directories:
        result.output_directories.add(path=path, tree_digest=_pb_digest(d))
    if stdout is not None:
        result.stdout_digest.CopyFrom(_pb_digest(stdout))
    if stderr is not None:
        result.stderr_digest.CopyFrom(_pb_digest(stderr))
    if worker:
        result.execution_metadata.worker = worker
    if start is not None:
        result.execution_metadata.worker_start_timestamp.FromNanoseconds(start)
    if completed is not None:
        result.execution_metadata.worker_completed_timestamp.FromNanoseconds(completed)
    ours = wire.action_result(files, symlinks, directories, exit_code, stdout, stderr, worker, start, completed)
    _check(seed, ours, result)


def _workspace_entries(rng: random.Random) -> tuple[list[FileEntry], list[SymlinkEntry], list[DirectoryEntry]]:
    """Random files, symlinks and (possibly empty) directories at distinct workspace paths."""
    names = ["a", "b.txt", "é", "日本", "sp ace", "🙂"]
    paths: set[str] = set()
    while len(paths) < rng.choice([1, 3, 8]):
        paths.add("/".join(rng.choice(names) for _ in range(rng.choice([1, 2, 3]))) + f"{len(paths)}")
    files, symlinks, directories = [], [], []
    for path in sorted(paths):
        kind = rng.random()
        if kind < 0.6:
            size, mode = rng.choice(_SIZES[:8]), _mode(rng)
            executable = rng.random() < 0.5 if mode is None else bool(mode & 0o100)  # as a result records it
            files.append(FileEntry(path, Digest(digest_bytes(path.encode()).hash, size), executable, mode))
        elif kind < 0.8:
            symlinks.append(SymlinkEntry(path, rng.choice(["x", "é/z", "🙂 y"])))
        else:
            directories.append(DirectoryEntry(path, rng.choice([0, 0o700, 0o755])))
    return files, symlinks, directories


@pytest.mark.parametrize("seed", SEEDS)
def test_prepared_actions_parse_back_to_what_was_asked_and_reserialize_identically(seed: int) -> None:
    """End to end: every blob prepare_action makes is protobuf's canonical form of exactly the intended message."""
    rng = random.Random(seed)
    files, symlinks, directories = _workspace_entries(rng)
    sources = [f for f in files if rng.random() < 0.5]
    deps = [f for f in files if f not in sources]
    argv = [_text(rng, empty=False) for _ in range(rng.choice([1, 3]))]
    env = dict(_pairs(rng))
    outputs = [f"out/{_text(rng, empty=False)}" for _ in range(rng.choice([1, 2]))]
    platform = {**dict(_pairs(rng)), **actions.host_properties()}
    timeout = rng.choice([None, 0.5, 30.0, 3600.0, 1e-12])
    salt = actions.key_salt([(_text(rng), _text(rng), "0" * 64)] if rng.random() < 0.5 else [])
    prepared = actions.prepare_action(argv, env, outputs, platform, timeout, salt, sources, deps, symlinks,
                                      directories, do_not_cache=rng.random() < 0.2)
    for digest, data in prepared.blobs.items():
        assert digest_bytes(data) == digest, f"seed {seed}"
    action = re_pb2.Action.FromString(prepared.blobs[prepared.digest])
    assert _serialized(action) == prepared.blobs[prepared.digest], f"seed {seed}"
    command = re_pb2.Command.FromString(prepared.blobs[prepared.command])
    assert _serialized(command) == prepared.blobs[prepared.command], f"seed {seed}"
    assert (list(command.arguments), list(command.output_paths)) == (argv, sorted(outputs))
    assert [(e.name, e.value) for e in command.environment_variables] == sorted(env.items())
    assert [(p.name, p.value) for p in action.platform.properties] == sorted(platform.items())
    assert action.salt == salt and action.timeout.ToNanoseconds() == int((timeout or 0) * 1e9)
    for digest, data in prepared.blobs.items():
        if digest not in (prepared.digest, prepared.command):
            assert _serialized(re_pb2.Directory.FromString(data)) == data, f"seed {seed}"
    tree = prepared.input_tree()
    assert sorted((f.path, f.digest, f.executable) for f in tree.files) == sorted(
        (f.path, f.digest, f.executable) for f in files), f"seed {seed}"
    assert sorted(tree.symlinks, key=lambda s: s.path) == symlinks, f"seed {seed}"
    recorded = {d.path: d.mode for d in tree.directories}
    assert all(recorded[d.path] == d.mode for d in directories), f"seed {seed}"


# Keys made by gaffer before its codec, when prepare_action built protobuf objects: a key that moved would make
# every existing cache entry unreachable (and mean the bytes changed).
_PINNED = [
    ({"argv": ["sh", "-c", "cat src/a.txt > out/a.txt"], "env": {}, "outputs": ["out/a.txt"],
          "platform": {"OSFamily": "linux", "ISA": "x86_64"}, "timeout": None, "salt": b"gaffer-graph-key-v2",
          "sources": [FileEntry("src/a.txt", Digest("ab" * 32, 12), False)]},
     "edbe6892fe671ac08eb2f269b4e7fa90c1f778fec926297e068e9b2845059b53"),
    ({"argv": ["cc", "-o", "é 日本/🙂", ""], "env": {"LANG": "C.UTF-8", "EMPTY": ""}, "outputs": ["z", "bin/a"],
          "platform": {"OSFamily": "linux", "ISA": "x86_64", "pool": "big"}, "timeout": 90.25,
          "salt": b"gaffer-graph-key-v2\ntool cc 1 " + b"0" * 64,
          "sources": [FileEntry("src/x.c", Digest("cd" * 32, 2**33), True), FileEntry("a", Digest("ef" * 32, 0), False)],
          "dep_files": [FileEntry("gen/h/y.h", Digest("01" * 32, 300), False, 0o640)],
          "dep_symlinks": [SymlinkEntry("gen/link", "h/y.h")],
          "dep_directories": [DirectoryEntry("gen", 0o755), DirectoryEntry("gen/h", 0), DirectoryEntry("gen/e", 0o700)]},
     "6e972d8a39c984be97fb907669c6452bad3aa3dd4fa332b8c8c294d9ce338802"),
]


@pytest.mark.parametrize(("arguments", "key"), _PINNED)
def test_keys_are_those_gaffer_made_with_protobuf_objects(arguments: dict[str, object], key: str) -> None:
    assert actions.prepare_action(**arguments).digest.hash == key  # type: ignore[arg-type]


def test_a_results_bytes_are_protobufs(tmp_path: Path) -> None:
    """make_result, end to end: files (modes, executables), a symlink, an output directory's Tree."""
    outputs = actions.Outputs(files=[FileEntry("o/a", Digest("ab" * 32, 5), True, 0o755),
                                     FileEntry("d/in", Digest("cd" * 32, 0), False, 0o600)],
                              symlinks=[SymlinkEntry("o/l", "a")], directories=[DirectoryEntry("d", 0o750)],
                              trees={"d": Digest("ef" * 32, 40)})
    data = actions.make_result(outputs, 0, Digest("01" * 32, 3), Digest("02" * 32, 0), 1.5, 1764000000.25)
    parsed = re_pb2.ActionResult.FromString(data)
    assert _serialized(parsed) == data
    assert [(f.path, f.is_executable, f.node_properties.unix_mode.value) for f in parsed.output_files] == [
        ("o/a", True, 0o755)]
    assert [(s.path, s.target) for s in parsed.output_symlinks] == [("o/l", "a")]
    assert [(d.path, d.tree_digest.hash) for d in parsed.output_directories] == [("d", "ef" * 32)]
    meta = parsed.execution_metadata
    assert (meta.worker_start_timestamp.ToNanoseconds(), meta.worker_completed_timestamp.ToNanoseconds()) == (
        1_500_000_000, int(1764000000.25 * 1e9))


# -- reading: the messages a cache hit is restored from -----------------------------------------------------------


def _pb_mode(properties: re_pb2.NodeProperties) -> int | None:
    return properties.unix_mode.value if properties.HasField("unix_mode") else None


def _as_read_file(name: str, node: re_pb2.FileNode | re_pb2.OutputFile) -> wire.ReadFile:
    return wire.ReadFile(name, Digest(node.digest.hash, node.digest.size_bytes), node.is_executable,
                         _pb_mode(node.node_properties))


def _as_read_directory(message: re_pb2.Directory) -> wire.ReadDirectory:
    """What wire.read_directory must return, taken from protobuf's own parse."""
    return wire.ReadDirectory([_as_read_file(f.name, f) for f in message.files],
                              [(d.name, Digest(d.digest.hash, d.digest.size_bytes)) for d in message.directories],
                              [(s.name, s.target) for s in message.symlinks], _pb_mode(message.node_properties))


def _as_read_result(message: re_pb2.ActionResult) -> wire.ReadResult:
    """What wire.read_action_result must return, taken from protobuf's own parse."""
    meta = message.execution_metadata
    return wire.ReadResult(
        [_as_read_file(f.path, f) for f in message.output_files],
        [(d.path, Digest(d.tree_digest.hash, d.tree_digest.size_bytes) if d.HasField("tree_digest") else None)
         for d in message.output_directories],
        [(s.path, s.target) for s in message.output_symlinks], message.exit_code,
        Digest(message.stdout_digest.hash, message.stdout_digest.size_bytes),
        Digest(message.stderr_digest.hash, message.stderr_digest.size_bytes),
        _ns(meta.worker_completed_timestamp) - _ns(meta.worker_start_timestamp))


def _ns(timestamp: Timestamp) -> int:
    """A Timestamp's nanoseconds without protobuf's range check (a damaged one may be far out of range)."""
    return timestamp.seconds * 1_000_000_000 + timestamp.nanos


def _random_result(rng: random.Random) -> re_pb2.ActionResult:
    """An ActionResult with every field a reader may meet, including those gaffer does not read."""
    result = re_pb2.ActionResult.FromString(wire.action_result(
        _files(rng), _pairs(rng), [(_text(rng), _digest(rng)) for _ in range(rng.choice([0, 2]))],
        rng.choice([0, 1, -1, 2**31 - 1, -(2**31)]), rng.choice([None, _digest(rng)]), rng.choice([None, _digest(rng)]),
        _text(rng), rng.choice([None, _nanos(rng)]), rng.choice([None, _nanos(rng)])))
    if rng.random() < 0.3:  # fields a reader must skip
        result.stdout_raw = rng.randbytes(5)
        result.output_file_symlinks.add(path="old", target="style")
        result.execution_metadata.queued_timestamp.FromNanoseconds(_nanos(rng))
        if result.output_files:
            result.output_files[0].contents = b"inline"
            result.output_files[0].node_properties.properties.add(name="n", value="v")
        if result.output_directories:
            result.output_directories[0].is_topologically_sorted = True
            result.output_directories[0].root_directory_digest.hash = "ab" * 32
    if result.output_directories and rng.random() < 0.2:
        result.output_directories[0].ClearField("tree_digest")
    return result


def _random_directory(rng: random.Random) -> re_pb2.Directory:
    directory = re_pb2.Directory.FromString(wire.directory(
        _files(rng), [(_text(rng), _digest(rng)) for _ in range(rng.choice([0, 2]))], _pairs(rng), _mode(rng)))
    if rng.random() < 0.3:
        directory.node_properties.mtime.FromNanoseconds(_nanos(rng))
        if directory.symlinks:
            directory.symlinks[0].node_properties.unix_mode.value = 0o777
    return directory


def _damaged(rng: random.Random, data: bytes) -> bytes:
    """The bytes with a random flip, cut, duplication or insertion."""
    if not data:
        return rng.randbytes(rng.choice([1, 3]))
    i = rng.randrange(len(data))
    kind = rng.randrange(4)
    if kind == 0:
        return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]
    if kind == 1:
        return data[:i]
    if kind == 2:
        j = rng.randrange(i, len(data) + 1)
        return data[:j] + data[i:j] + data[j:]
    return data[:i] + rng.randbytes(rng.choice([1, 2, 5])) + data[i:]


def _agrees(data: bytes, read: object, parse: object, convert: object, seed: int) -> None:
    """Where both our reader and protobuf accept `data`, they read the same. Ours may refuse what protobuf takes
    (it is stricter), and may take what protobuf refuses only over a field it does not read: a damage inside a
    field it reads (a cut, a bad UTF-8 string, a wrong wire type) is refused by the tests below."""
    try:
        ours = read(data)  # type: ignore[operator]
    except wire.DecodeError:
        return
    try:
        theirs = parse(data)  # type: ignore[operator]
    except Exception:  # noqa: BLE001 - protobuf refused a field we skip unread
        return
    assert ours == convert(theirs), f"seed {seed}: {data[:120]!r}"  # type: ignore[operator]


@pytest.mark.parametrize("seed", SEEDS)
def test_an_action_result_reads_as_protobuf_reads_it(seed: int) -> None:
    rng = random.Random(seed)
    message = _random_result(rng)
    data = _serialized(message)
    assert wire.read_action_result(data) == _as_read_result(message), f"seed {seed}"
    for _ in range(20):
        _agrees(_damaged(rng, data), wire.read_action_result, re_pb2.ActionResult.FromString, _as_read_result, seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_directory_and_a_tree_read_as_protobuf_reads_them(seed: int) -> None:
    rng = random.Random(seed)
    message = _random_directory(rng)
    data = _serialized(message)
    assert wire.read_directory(data) == _as_read_directory(message), f"seed {seed}"
    for _ in range(20):
        _agrees(_damaged(rng, data), wire.read_directory, re_pb2.Directory.FromString, _as_read_directory, seed)
    children = [_random_directory(rng) for _ in range(rng.choice([0, 1, 3]))]
    tree = re_pb2.Tree(root=message, children=children)
    root, read_children = wire.read_tree(_serialized(tree))
    assert (root, read_children) == (_serialized(tree.root), [_serialized(c) for c in children]), f"seed {seed}"


@pytest.mark.parametrize("data", [
    b"\x20\x01\x20\x02",  # exit_code twice: protobuf keeps the last, a reader here refuses
    b"\x32\x00\x32\x00",  # stdout_digest twice: protobuf merges the two
    b"\x22\x00",  # exit_code with the wrong wire type: protobuf skips it as unknown
    b"\x12\x03abc",  # an output file that is not a message
    b"\x00\x01",  # field number 0
    b"\x33\x00\x34",  # a group
    b"\x12\x05\x0a\x02\xff\xfe",  # a path that is not UTF-8 (and cut short)
    b"\x12\x04\x0a\x02\xff\xfe",  # a path that is not UTF-8
])
def test_damaged_or_odd_results_are_refused(data: bytes) -> None:
    with pytest.raises(wire.DecodeError):
        wire.read_action_result(data)


# -- the replies blobs travel in: `gaffer serve` writes them, the gRPC tier reads them, neither through protobuf ----


def _random_blob_reads(rng: random.Random) -> list[tuple[Digest, bytes | None, int, str]]:
    """A BatchReadBlobs reply's blobs: found (empty or not), not found, failed with odd messages."""
    blobs: list[tuple[Digest, bytes | None, int, str]] = []
    for _ in range(rng.choice([0, 1, 3, 20])):
        data = rng.randbytes(rng.choice([0, 1, 127, 128, 5000, 70_000]))
        kind = rng.randrange(4)
        if kind < 2:
            blobs.append((digest_bytes(data), data, 0, ""))
        else:
            blobs.append((_digest(rng), None, rng.choice([5, 13, 2**31 - 1, -1]), _text(rng)))
    return blobs


def _batch_reply(blobs: list[tuple[Digest, bytes | None, int, str]]) -> re_pb2.BatchReadBlobsResponse:
    from google.rpc.status_pb2 import Status

    reply = re_pb2.BatchReadBlobsResponse()
    for d, data, code, message in blobs:
        r = reply.responses.add(digest=_pb_digest(d), data=data or b"")
        if code or message:
            r.status.CopyFrom(Status(code=code, message=message))
    return reply


@pytest.mark.parametrize("seed", SEEDS)
def test_blob_replies_are_protobufs_bytes_and_read_as_protobuf_reads_them(seed: int) -> None:
    from gaffer.protos import bytestream_pb2

    rng = random.Random(seed)
    blobs = _random_blob_reads(rng)
    reply = _batch_reply(blobs)
    data = wire.batch_read_blobs(blobs)
    assert data == _serialized(reply), f"seed {seed}"
    ours = [(r.digest, bytes(r.data), r.code, r.message) for r in wire.read_batch_read_blobs(data)]
    assert ours == [(Digest(r.digest.hash, r.digest.size_bytes), r.data, r.status.code, r.status.message)
                    for r in reply.responses], f"seed {seed}"
    chunk = rng.randbytes(rng.choice([0, 1, 127, 128, 70_000]))
    assert wire.stream_chunk(chunk) == _serialized(bytestream_pb2.ReadResponse(data=chunk)), f"seed {seed}"
    assert bytes(wire.read_stream_chunk(wire.stream_chunk(chunk))) == chunk

    def as_read(r: re_pb2.BatchReadBlobsResponse) -> list[tuple[Digest, bytes, int, str]]:
        return [(Digest(x.digest.hash, x.digest.size_bytes), x.data, x.status.code, x.status.message)
                for x in r.responses]

    def read(b: bytes) -> list[tuple[Digest, bytes, int, str]]:
        return [(r.digest, bytes(r.data), r.code, r.message) for r in wire.read_batch_read_blobs(b)]

    for _ in range(20):
        _agrees(_damaged(rng, data), read, re_pb2.BatchReadBlobsResponse.FromString, as_read, seed)
        _agrees(_damaged(rng, wire.stream_chunk(chunk)), lambda b: bytes(wire.read_stream_chunk(b)),
                bytestream_pb2.ReadResponse.FromString, lambda r: r.data, seed)


@pytest.mark.parametrize(("data", "read"), [
    (b"\x52\x03ab", wire.read_stream_chunk),  # a chunk cut short: never handed on as a shorter blob
    (b"\x52\x01a\x52\x01b", wire.read_stream_chunk),  # data twice: protobuf keeps the last, a reader here refuses
    (b"\x55abcd", wire.read_stream_chunk),  # data with a fixed-width wire type
    (b"\x0a\x05\x12\x04abc", wire.read_batch_read_blobs),  # a response cut inside its data
    (b"\x0a\x06\x12\x01a\x12\x01b", wire.read_batch_read_blobs),  # a blob's data twice
    (b"\x0a\x02\x0a\x00\x0a\x02\x0a\x00\x0d\x00\x00\x00\x00", wire.read_batch_read_blobs),  # a fixed32 response
    (b"\x0a\x04\x1a\x02\x12\xff", wire.read_batch_read_blobs),  # a status message cut short
    (b"\x0a\x05\x1a\x03\x12\x01\xff", wire.read_batch_read_blobs),  # a status message that is not UTF-8
])
def test_damaged_blob_replies_are_refused(data: bytes, read: object) -> None:
    with pytest.raises(wire.DecodeError):
        read(data)  # type: ignore[operator]
