"""The direct-mode flow that compiles and links share: look a command up by its direct key and manifest, restore
a hit, or run the command and store what it did.

A `Job` knows its key parts (what is known before running: tool identity, arguments, environment, named
inputs), the outputs by role and where they go here, and how to learn the files the run read (a dependency
file). The manifest under the direct key lists, per set of files read, their digests, the paths that must stay
absent (shadow.py) and the result key: a hit needs every file to still have its digest (stat cache) and no absent
path to exist. A run that failed is replayed and never stored; one
during which an input changed, or whose outputs the tool did not write, is replayed and not stored.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gaffer.cache.base import TierError
from gaffer.cache.disk import process_alive
from gaffer.cc import result
from gaffer.cc.basedir import MARK, normalise
from gaffer.cc.depfile import from_portable, prerequisites, to_portable
from gaffer.cc.key import (
    DepList,
    Entry,
    Manifest,
    decode_manifest,
    encode_manifest,
    first_mismatch,
    has_assembler_reads,
    has_time_macros,
    result_key,
)
from gaffer.cc.launch import DONE, RUN_IT, Context, Request, Response
from gaffer.digest import Digest, file_system_now, is_racy, moment_for, stat_signature
from gaffer.errors import GafferError

MANIFEST = ["manifest"]
CACHE_ERRORS = (OSError, TierError, GafferError)  # a cache that cannot be used: the tool runs as without gaffer


@dataclass
class Ran:
    """A finished run of the tool."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    start: float
    end: float
    moment: int  # the file system's time just before it started: a file modified since is racy


@dataclass
class Job:
    request: Request
    ctx: Context
    tool: str  # the program found for argv[0] (never a gaffer launcher)
    label: str  # what the debug log names: the source, or the link's output
    outputs: dict[str, str]  # role -> path as given (relative to the working directory, or absolute)
    base_dir: str | None  # the base directory, if usable here
    counters: tuple[str, str]  # the stats counters of a direct hit and of a miss
    parts: list[str] = field(default_factory=list)
    direct: Digest | None = None
    started: float = field(default_factory=time.monotonic)
    miss_reason: str = ""
    response: Response = RUN_IT  # set by a restore
    runner: Callable[[list[str]], Ran] | None = None  # runs a miss elsewhere (cc/remote.py); None: `run` here
    saved: float = 0.0  # seconds a hit saved: the stored run's duration less this lookup's
    compiles: bool = False  # the files read are sources and headers (not a link's objects and libraries)
    time_args: bool = False  # an argument uses __DATE__/__TIME__ (-DSTAMP=__TIME__), as a file read may
    preprocess: bool = False  # the manifest says: this compile uses __DATE__/__TIME__, try preprocessor mode
    # the paths, as written, that must not appear for an entry of these files read to hold (shadow.py), or
    # why the run cannot be stored
    absent_of: Callable[[list[str]], list[str] | str] = lambda read: []

    @property
    def cwd(self) -> str:
        return self.request.cwd

    def path(self, p: str) -> str:
        return os.path.join(self.cwd, p)

    def input_part(self, p: str) -> str:
        d = self.ctx.digest(self.path(p))
        return f"input {normalise(p, self.cwd, self.base_dir)} {d or 'absent'}"

    def log(self, outcome: str, reason: str = "") -> None:
        """The debug log's line; and, but for a direct hit (which must stay cheap), the history's record."""
        self.ctx.log(f"{self.label}: {outcome}" + (f": {reason}" if reason else ""))
        if outcome != "direct hit":
            main = next(iter(self.outputs.values()))
            self.ctx.history.record(self.cwd, self.path(main), self.request.argv, outcome, reason, self.parts)

    def blob(self, digest: Digest) -> bytes:
        return self.ctx.cache().local.read_blob(digest) or b""


def special_output(cwd: str, outputs: dict[str, str]) -> str | None:
    """An output that exists and is not a regular file (`-o /dev/null`, a directory): such a command runs
    unchanged, and a restore never replaces it."""
    for path in outputs.values():
        full = os.path.join(cwd, path)
        if os.path.lexists(full) and not os.path.isfile(full) or os.path.islink(full):
            return path
    return None


def uncacheable(ctx: Context, request: Request, reason: str, detail: str = "") -> Response:
    ctx.stats.add({"local": 1}, reason_group="uncacheable", reason=reason)
    ctx.log(f"{' '.join(request.argv)}: not cacheable: {reason}" + (f": {detail}" if detail and detail not in reason else ""))
    return RUN_IT


def lookup_direct(job: Job) -> Response | None:
    """A direct hit, restored; None for a miss (with job.miss_reason set)."""
    manifest = read_manifest(job)
    job.preprocess = manifest.preprocess
    entries = manifest.entries
    reason = None
    for entry in entries:
        mismatch = first_mismatch(entry, job.cwd, job.ctx.digest)
        if mismatch is None:
            if restore(job, entry.result):
                job.ctx.stats.add({job.counters[0]: 1}, saved_s=job.saved)
                job.log("direct hit")
                return job.response
            mismatch = "the result is missing from the cache"
        reason = reason or mismatch
    if not entries:
        main = next(iter(job.outputs.values()))
        reason = job.ctx.history.why_new(job.cwd, job.path(main), job.parts)
    job.miss_reason = reason or "miss"
    return None


def restore(job: Job, key: Digest) -> bool:
    """Restore the result under `key` into this checkout (a dependency file rewritten to its paths); sets
    job.response. False on a miss or anything unusable."""
    cache = job.ctx.cache()
    stored = result.get(cache, key, sorted(job.outputs))
    if stored is None:
        return False
    for role, digest in stored.files.items():
        dest = job.path(job.outputs[role])
        if role == "deps":
            text = job.blob(digest).decode("utf-8", "surrogateescape")
            local = from_portable(text, job.cwd) if MARK in text else text
            if local is None or not result.write_bytes(local.encode("utf-8", "surrogateescape"), dest,
                                                       job.request.umask):
                return False
        elif not result.write_file(cache, digest, dest, stored.modes[role], job.request.umask):
            return False
    job.response = Response(DONE, 0, stored.stdout, stored.stderr)
    job.saved = max(0.0, stored.duration_s - (time.monotonic() - job.started))
    return True


def run_and_store(job: Job, args: list[str], read_deps: Callable[[Ran], str | None],
                  also: Digest | None = None, scratch: str | None = None) -> Response:
    """Run the tool with `args`, answer with what it did, and store a success under the result key of the files
    `read_deps` names (also under `also`, a preprocessed key: that one holds even with __DATE__). A failure that
    names `scratch`, a file gaffer added to the command, is gaffer's (its directory's disk is full): the command
    then runs as given."""
    ran = job.runner(args) if job.runner is not None else run(job, args)
    response = Response(DONE, ran.exit_code, ran.stdout, ran.stderr)
    if ran.exit_code != 0 and scratch is not None and os.fsencode(scratch) in ran.stderr:
        return uncacheable(job.ctx, job.request, "the compiler could not write gaffer's scratch file")
    if ran.exit_code != 0:
        job.ctx.stats.add({"failed": 1})
        job.log("failed", f"exit status {ran.exit_code}: not cached")
        return response
    if job.direct is None:  # the cache was unusable: nothing to store into
        job.ctx.stats.add({"local": 1}, reason_group="uncacheable", reason="cache unusable")
        return response
    try:
        why_not = store(job, ran, read_deps, also)
    except CACHE_ERRORS as e:
        why_not = f"cannot store ({e})"
    if why_not:
        job.ctx.stats.add({"not_stored": 1}, reason_group="not_stored_why", reason=why_not.split(" (")[0])
        job.log("miss, not stored", f"{job.miss_reason}; {why_not}")
    else:
        job.ctx.stats.add({job.counters[1]: 1})
        job.log("miss", job.miss_reason)
    return response


def store(job: Job, ran: Ran, read_deps: Callable[[Ran], str | None], also: Digest | None) -> str | None:
    """Store a successful run; the reason it was not stored, or None."""
    if ran.stderr:  # diagnostics quote source lines and columns, which a preprocessed key does not hold
        also = None
    files: dict[str, Path | bytes] = {}
    for role, p in job.outputs.items():
        try:
            st = os.stat(job.path(p))
        except OSError:
            return f"no {role} file written ({p})"
        if st.st_mtime_ns < moment_for(st, ran.moment, job.ctx.stat_cache.device):
            return f"the {role} file is older than the run ({p})"
        if role == "deps":
            text = read_text(job.path(p))
            portable = to_portable(text, job.cwd, job.base_dir) if job.base_dir else text
            files[role] = portable.encode("utf-8", "surrogateescape")
        else:
            files[role] = Path(job.path(p))
    dep_text = read_deps(ran)
    if dep_text is None:
        return "the pass listing the headers failed"
    read = prerequisites(dep_text)
    deps = dep_list(job, read, ran)
    if isinstance(deps, str):
        return deps
    absent = job.absent_of(read)
    if isinstance(absent, str):
        return absent
    cache = job.ctx.cache()
    if also is not None:
        result.put(cache, also, files, ran.stdout, ran.stderr, ran.start, ran.end)
    if uses_time(job, deps):
        if not job.preprocess:
            update_manifest(job, lambda m: Manifest(m.entries, preprocess=True))
        return None if also is not None else "uses __DATE__ or __TIME__ (direct mode: preprocessor mode next time)"
    assert job.direct is not None
    bound = job.cwd if job.base_dir and os.fsencode(job.base_dir) in ran.stdout + ran.stderr else None
    key = result_key(job.direct, deps, bound)
    result.put(cache, key, files, ran.stdout, ran.stderr, ran.start, ran.end)
    add_to_manifest(job, deps, key, absent, bound)
    return None


def uses_time(job: Job, deps: DepList) -> bool:
    """Does the result depend on when it was made (__DATE__, __TIME__ in an argument or a file read)?"""
    return job.time_args or any(job.ctx.time_macros.get(h, False) for _, h, _ in deps)


def dep_list(job: Job, read: list[str], ran: Ran) -> DepList | str:
    """The files a run read (from its dependency file) in the key's form with their digests (and whether each
    uses __DATE__/__TIME__, remembered by digest); a reason instead if one changed during the run."""
    deps: DepList = []
    for p in read:
        full = job.path(p)
        try:
            st = os.stat(full)
            if is_racy(stat_signature(st), moment_for(st, ran.moment, job.ctx.stat_cache.device)):
                return f"{p} changed during the run"
            d = job.ctx.stat_cache.digest(full, st)
            if d.hash not in job.ctx.time_macros:
                with open(full, "rb") as f:
                    data = f.read()
                job.ctx.assembler_reads[d.hash] = has_assembler_reads(data)  # before time_macros: the marker
                job.ctx.time_macros[d.hash] = has_time_macros(data)
        except OSError:
            return f"{p} disappeared during the run"
        if job.compiles and job.ctx.assembler_reads.get(d.hash, False):
            return f"{p} has the assembler read a file (.incbin, .include) no dependency file names"
        deps.append((normalise(p, job.cwd, job.base_dir), d.hash, d.size_bytes))
    if not deps:
        return "the dependency file names no files"
    return deps


def read_manifest(job: Job) -> Manifest:
    stored = result.get(job.ctx.cache(), job.direct, MANIFEST) if job.direct else None
    return decode_manifest(job.blob(stored.files["manifest"])) if stored else Manifest([])


def update_manifest(job: Job, change: Callable[[Manifest], Manifest]) -> None:
    """Read the direct key's manifest again (another run may have changed it), change it, store it."""
    assert job.direct is not None
    now = time.time()
    manifest = change(read_manifest(job))
    result.put(job.ctx.cache(), job.direct, {"manifest": encode_manifest(manifest)}, b"", b"", now, now)


def add_to_manifest(job: Job, deps: DepList, key: Digest, absent_paths: list[str], cwd: str | None = None) -> None:
    """Put (deps -> key) first in the direct key's manifest, with the paths that must not appear for it to
    hold, and the one working directory it holds in if its output names paths under the base directory (a
    checkout's: the base directory shares keys between checkouts, not what the compiler printed)."""
    absent = [normalise(p, job.cwd, job.base_dir) for p in absent_paths]
    update_manifest(job, lambda m: Manifest([Entry(deps, key, absent, cwd),
                                             *(e for e in m.entries if (e.deps, e.cwd) != (deps, cwd))],
                                            m.preprocess))


def run(job: Job, args: list[str]) -> Ran:
    """Run the tool found for this request (so a masquerade link is never run again) with `args`."""
    moment = file_system_now(Path(job.ctx.directory), create=False)
    start = time.time()
    client = job.request.client
    try:
        with job.ctx.local_slot(), subprocess.Popen(
                [job.tool, *args], cwd=job.cwd, env=dict(job.request.env), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=None if client is None else 0,
                umask=-1 if job.request.umask is None else job.request.umask) as proc:
            streams = proc.communicate() if client is None else _output_unless_hung_up(proc, client)
    except OSError as e:
        return Ran(127, b"", f"gaffer: cannot run {job.tool}: {e.strerror}\n".encode(), start, time.time(), moment)
    if streams is None:
        job.ctx.log(f"{job.label}: the client is gone: {os.path.basename(job.tool)} stopped")
        return Ran(128 + signal.SIGTERM, b"", b"gaffer: the client is gone\n", start, time.time(), moment)
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    return Ran(code, *streams, start, time.time(), moment)


STOP_WAIT_S = 10.0  # how long a compiler told to stop (SIGTERM) may take before it is killed


def _output_unless_hung_up(proc: subprocess.Popen[bytes], client: int) -> tuple[bytes, bytes] | None:
    """The compiler's stdout and stderr once it is done; None if the client hung up first (killed, interrupted):
    the compiler (its own process group) is then stopped, as it would have been as the client's child. Left to
    run, it would write the object after the build tool removed it as the step's partial output, newer than an
    edit made meanwhile: make would keep it."""
    assert proc.stdout is not None and proc.stderr is not None
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    poller = select.poll()
    for fd in chunks:
        poller.register(fd, select.POLLIN)
    poller.register(client, 0)  # POLLHUP only: the client closed its end (a half-close is no hang-up)
    pending = len(chunks)
    while pending:
        for fd, _ in poller.poll():
            if fd == client:
                _stop(proc)
                return None
            data = os.read(fd, 65536)
            if data:
                chunks[fd].append(data)
            else:
                poller.unregister(fd)
                pending -= 1
    proc.wait()
    return b"".join(chunks[proc.stdout.fileno()]), b"".join(chunks[proc.stderr.fileno()])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the compiler's process group (gcc removes its partial outputs), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=STOP_WAIT_S)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


TEMP_PREFIX = "tmp."


@contextmanager
def temp_file(job: Job, suffix: str) -> Iterator[str]:
    """A scratch file in the launcher's directory, named after this process so that one killed mid-compile
    leaves a file the next daemon can tell is orphaned (`sweep_temp_files`)."""
    fd, path = tempfile.mkstemp(suffix=suffix, prefix=f"{TEMP_PREFIX}{os.getpid()}.", dir=job.ctx.directory)
    os.close(fd)
    try:
        yield path
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def sweep_temp_files(directory: Path) -> int:
    """Remove the scratch files of processes that are gone (a daemon or launcher killed mid-compile); the count."""
    removed = 0
    for entry in os.scandir(directory):
        pid = entry.name.removeprefix(TEMP_PREFIX).partition(".")[0]
        if entry.name.startswith(TEMP_PREFIX) and pid.isdigit() and not process_alive(int(pid)):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


def read_text(path: str) -> str:
    """A dependency file's text ("" if there is none: it then names no files)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return ""
