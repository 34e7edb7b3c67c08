"""Prefetching: the entries the previous `go` command of the same module used, fetched into an empty local tier
many at a time before `go` asks for them one by one.

`go` asks for an action's entry only when that build step comes up, a few at a time, so with an empty local tier
every get waits for the remote (an entry, then its blob). At close, gobuildcache stores the list of the entries
this command used (hits and puts) as an entry of its own, in every tier, under a key made of its *scope*: the Go
module and the directory in it (or the directory alone outside a module), the go subcommand (build, test, vet...)
and GOOS/GOARCH when set. At start-up, when the local tier lacks that list (an empty machine), it is read from the
remotes and every blob it names is fetched in batches (BatchReadBlobs on REAPI, concurrent GETs elsewhere), in the
order go used them; a get whose entry's group no worker has started fetches that group itself. The entries are
kept in memory rather than written to the local action cache one file each (a file created per entry was a
tenth of the prefetch's CPU): the list, stored in the local tier at close, is their record there, read by the
next command on the machine when the action cache misses.

The list is a hint, never a source of truth that could hand `go` a wrong artifact:
- its bytes are a CAS blob checked against their digest; a list that does not parse, is bigger than the bounds
  or names another scope is ignored whole (one stderr line);
- an entry is answered only once its blob arrived and matched its digest (or, for the local list's entries, is
  checked as any local blob is), and an entry maps a content-addressed ActionID to what a gobuildcache stored for
  it: the same trust as the remote's own entries;
- whatever the prefetch did not bring is looked up the usual way: a blob the remote lost is an ordinary miss.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from gaffer.cache.tiered import read_groups
from gaffer.digest import Digest, digest_bytes, is_valid_hash
from gaffer.gocache.entry import CorruptEntry, GoEntry, decode_entry, encode_entry
from gaffer.malloc import keep_big_buffers

if TYPE_CHECKING:
    from gaffer.cache.tiered import TieredCache

LIST_KEY_PREFIX = b"gaffer-go-prefetch-v1\0"
HEADER = b"gaffer-go-prefetch 1\n"
MAX_ENTRIES = 20_000  # `go build std` uses ~900 entries, cmd/go ~650: room for a large monorepo's test run
MAX_LIST_BYTES = 4096 + MAX_ENTRIES * 256  # a line is at most ~230 bytes (hex IDs, digest, size, time)
MAX_PREFETCH_BYTES = 2 << 30  # blobs fetched ahead of `go` at most; past it the rest are fetched when asked
WORKERS = 8  # groups of blobs in flight at once
FIRST_GROUP = 8  # blobs in the first group (then 16, 32...): go's first gets wait for no more than that
WAIT_S = 60.0  # the longest a get waits for the prefetch of its entry before asking the remotes itself


class BadList(ValueError):
    """Not a prefetch list of this scope: ignored whole."""


def find_scope(cwd: str, env: Mapping[str, str], parent_pid: int) -> str:
    """The scope whose previous list this command reads and whose list it writes (see the module docstring)."""
    where = f"dir {os.path.abspath(cwd)}"
    directory = os.path.abspath(cwd)
    while True:
        module = _module_path(os.path.join(directory, "go.mod"))
        if module is not None:
            where = f"module {module} {os.path.relpath(os.path.abspath(cwd), directory)}"
            break
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    scope = "\n".join((where, _go_command(parent_pid), env.get("GOOS", ""), env.get("GOARCH", "")))
    # a directory's name may be any bytes (os.fsdecode's surrogates): the scope is stored as UTF-8 text
    return scope.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _module_path(go_mod: str) -> str | None:
    """The `module` directive of a go.mod file, or None when there is none (or no readable file)."""
    try:
        with open(go_mod, "rb") as f:
            text = f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        words = line.split("//")[0].split()
        if len(words) == 2 and words[0] == "module":
            return words[1].strip('"`')
    return None


def _go_command(pid: int) -> str:
    """The subcommand of the `go` that started this program (build, test...), from /proc; "" when unknown."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read(4096).split(b"\0")
    except OSError:
        return ""
    command = argv[1] if len(argv) > 1 else b""
    return command.decode() if command.isascii() and command.isalpha() else ""


def list_key(scope: str) -> Digest:
    return digest_bytes(LIST_KEY_PREFIX + scope.encode())


def encode_list(scope: str, entries: Mapping[bytes, GoEntry]) -> bytes:
    """The list: a header, the scope, then one line per entry (ActionID, OutputID, body digest, put time)."""
    lines = [HEADER, scope.encode().hex().encode() + b"\n"]
    for action_id, e in list(entries.items())[:MAX_ENTRIES]:
        lines.append(f"{action_id.hex()} {e.output_id.hex()} {e.body.hash} {e.body.size_bytes} {e.put_time_ns}\n"
                     .encode())
    return b"".join(lines)


def decode_list(data: bytes, scope: str) -> list[tuple[bytes, GoEntry]]:
    """The entries of a list written by `encode_list` for `scope`; BadList for anything else."""
    if len(data) > MAX_LIST_BYTES or not data.startswith(HEADER):
        raise BadList("not a prefetch list")
    lines = data[len(HEADER) :].split(b"\n")
    if lines.pop() != b"":
        raise BadList("truncated")
    if not lines or lines[0] != scope.encode().hex().encode():
        raise BadList("written for another module, directory or command")
    if len(lines) - 1 > MAX_ENTRIES:
        raise BadList("too many entries")
    entries = []
    for number, line in enumerate(lines[1:], start=3):
        fields = line.split(b" ")
        try:
            action_hex, output_hex, body_hash, size, put_time = (f.decode("ascii") for f in fields)
            entry = GoEntry(bytes.fromhex(output_hex), Digest(body_hash, int(size)), int(put_time))
            action_id = bytes.fromhex(action_hex)
        except ValueError:  # also a wrong field count, and non-ASCII bytes (UnicodeDecodeError)
            raise BadList(f"line {number} is not an entry") from None
        if not action_id or not is_valid_hash(body_hash) or not size.isdigit() or not put_time.isdigit():
            raise BadList(f"line {number} is not an entry")
        entries.append((action_id, entry))
    return entries


class _Group:
    """Blobs fetched by one read. Whoever claims it first fetches it: a prefetch worker in list order, or a get
    that needs one of its entries before the workers got there (go's demand goes first); the others wait."""

    __slots__ = ("claimed", "digests", "done")

    def __init__(self, digests: list[Digest]) -> None:
        self.digests = digests
        self.done = threading.Event()
        self.claimed = False


class Prefetch:
    """Reads the previous list and fills the local tier on threads of its own. The entries it brings are kept in
    memory, not written to the action cache one file each: the list, stored in the local tier at close, is their
    record for the next command on this machine (`ready`). `entry` lets a get that needs an entry being fetched
    wait for it, or fetch its group itself, rather than fetch it a second time."""

    def __init__(self, tiered: TieredCache, scope: str, report: Callable[[str], None]) -> None:
        self.tiered = tiered
        self.scope = scope
        self.key = list_key(scope)
        self.report = report
        self.previous: frozenset[bytes] | None = None  # the ActionIDs of the list read from a remote
        self._entry: bytes | None = None  # and its entry there
        self._local_had_list = False  # a warm local tier: its lists are not uploaded (see `store`)
        self.fetched = 0  # entries this prefetch brought (blobs verified and local)
        self.fetched_bytes = 0
        self.seconds = 0.0  # from start-up to the last group fetched
        self._ready: dict[bytes, GoEntry] = {}  # entries whose blob this prefetch found or put in the local tier
        self._local: dict[bytes, GoEntry] | None = None  # the local tier's list, read at the first miss
        self._lock = threading.Lock()
        self._listed = threading.Event()
        self._closing = threading.Event()  # set at close: groups not yet started are dropped
        self._pending: dict[bytes, _Group] = {}
        self._by_body: dict[Digest, list[tuple[bytes, GoEntry]]] = {}
        self._started = 0.0
        self._thread = threading.Thread(target=self._run, name="gocache-prefetch", daemon=True)

    def start(self) -> None:
        self._started = time.perf_counter()
        self._thread.start()

    def ready(self, action_id: bytes) -> GoEntry | None:
        """The entry for `action_id` if the prefetch brought it, or the local tier's list names it; never waits.
        Its blob is checked by the caller, as any entry's."""
        entry = self._ready.get(action_id)
        return entry if entry is not None else self._local_index().get(action_id)

    def entry(self, action_id: bytes) -> GoEntry | None:
        """`ready`, once `action_id`'s group has been fetched: waited for if a worker has it, fetched here if none
        has started it. Before the list has arrived, at once: a slow list must not hold up the gets (a few may
        then be fetched twice)."""
        if self._listed.is_set():
            group = self._pending.get(action_id)
            if group is not None:
                if self._claim(group):
                    self._fetch(group)
                else:
                    group.done.wait(WAIT_S)
        return self.ready(action_id)

    def _local_index(self) -> dict[bytes, GoEntry]:
        """The entries of this scope's list in the local tier: a build a prefetch served left them there."""
        with self._lock:
            if self._local is None:
                self._local = {}
                local = self.tiered.local
                data = local.read_action(self.key)
                try:
                    listed = local.read_blob(decode_entry(data).body) if data is not None else None
                    if listed is not None:
                        self._local = dict(decode_list(listed, self.scope))
                except (CorruptEntry, BadList):
                    pass  # a miss for each: the entries are looked up the usual way
            return self._local

    def _run(self) -> None:
        try:
            entries = self._read_list()
            if entries:
                self._fill(entries)
        except Exception as e:  # noqa: BLE001 - prefetching is an optimisation: a fault costs the gets a round trip
            self.report(f"prefetch: {type(e).__name__}: {e}; fetching entries as go asks for them")
        finally:
            self._listed.set()
            for group in self._pending.values():
                group.done.set()

    def _read_list(self) -> list[tuple[bytes, GoEntry]]:
        """The previous list of this scope from the remotes; none when the local tier has it (it served that
        build: nothing to fetch) or when it is absent or bad."""
        if self.tiered.local.read_action(self.key) is not None:
            self._local_had_list = True
            return []
        data = self.tiered.peek_action(self.key)
        if data is None:
            return []
        try:
            body = decode_entry(data).body
            if body.size_bytes > MAX_LIST_BYTES:
                raise BadList("too big")
            if not self.tiered.ensure_local([body]):
                return []
            listed = self.tiered.local.read_blob(body)
            if listed is None:
                return []
            entries = decode_list(listed, self.scope)
        except (CorruptEntry, BadList) as e:
            self.report(f"prefetch: the list of the previous build is unusable ({e}); ignored")
            return []
        self.previous = frozenset(action_id for action_id, _ in entries)
        self._entry = data
        return entries

    def _fill(self, entries: list[tuple[bytes, GoEntry]]) -> None:
        """Fetch the blobs the local tier lacks, in groups, several groups at a time, in the order go used them;
        an entry is ready once its blob is local and verified."""
        keep_big_buffers()  # megabytes of replies, one after another (a cold `go build std`: 160 MiB)
        local = self.tiered.local
        by_body: dict[Digest, list[tuple[bytes, GoEntry]]] = {}
        budget = MAX_PREFETCH_BYTES
        for action_id, entry in entries:
            if entry.body not in by_body:
                budget -= entry.body.size_bytes
                if budget < 0:
                    break
            by_body.setdefault(entry.body, []).append((action_id, entry))
        self._by_body = by_body
        missing = set(local.find_missing(list(by_body)))
        self._add_ready([d for d in by_body if d not in missing])  # checked when asked for, as any local blob
        groups = [_Group(g) for g in read_groups([d for d in by_body if d in missing], first=FIRST_GROUP)]
        for group in groups:
            for d in group.digests:
                for action_id, _ in by_body[d]:
                    self._pending[action_id] = group
        self._listed.set()
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="gocache-prefetch") as pool:
            list(pool.map(self._work, groups))
        self.seconds = time.perf_counter() - self._started

    def _work(self, group: _Group) -> None:
        """A worker's turn at the next group: fetched unless a get claimed it first or the command is closing."""
        if self._closing.is_set():
            group.done.set()
        elif self._claim(group):
            self._fetch(group)

    def _claim(self, group: _Group) -> bool:
        with self._lock:
            if group.claimed:
                return False
            group.claimed = True
            return True

    def _fetch(self, group: _Group) -> None:
        """One group: its blobs fetched and verified into the local tier; their entries ready."""
        try:
            absent = set(self.tiered.fill_local(group.digests))
            self._add_ready([d for d in group.digests if d not in absent])
        finally:
            group.done.set()

    def _add_ready(self, digests: list[Digest]) -> None:
        with self._lock:
            for d in digests:
                for action_id, entry in self._by_body[d]:
                    self._ready[action_id] = entry
                self.fetched += len(self._by_body[d])
                self.fetched_bytes += d.size_bytes

    def store(self, used: Mapping[bytes, GoEntry]) -> None:
        """At close: this command's entries as its scope's list, for the next command's prefetch and as the local
        record of the entries served from it. Stored in the local tier. Uploaded by a command that started without
        a local list (a fresh machine: the kind that reads the remote's list), unless the list read names the same
        entries; a warm machine keeps its list to itself, so a build served locally never talks to the remotes."""
        self._closing.set()
        self._thread.join()  # the groups in flight finish: their local writes land before the store is closed
        if not used:
            return
        local = self.tiered.local
        names = frozenset(used)
        try:
            if self._entry is not None and names == self.previous:
                local.write_action(self.key, self._entry)  # its blob came with it
                return
            if self._local_had_list and names == frozenset(self._local_index()):
                return
            data = encode_list(self.scope, used)
            digest = digest_bytes(data)
            local.write_blob(digest, data)
            entry = encode_entry(GoEntry(b"", digest, time.time_ns()))
            if self._local_had_list:
                local.write_action(self.key, entry)
            else:
                self.tiered.put_action(self.key, entry, [digest])
        except OSError as e:
            self.report(f"cannot store the prefetch list in {local.root}: {e.strerror or e}")
