"""One compile through the cache: direct mode, then preprocessor mode, then the compiler (depend mode).

1. Direct: the direct key (key.py) names a manifest; an entry whose files all still have their digests names
   the result, which is restored (object, dependency file rewritten to this checkout, .dwo/.gcno) and its
   diagnostics replayed.
2. Preprocessed (GAFFER_CC_PREPROCESSOR, on by default): `-E` runs, and the key of the preprocessed text is
   looked up; a hit is restored and added to the manifest, so the next time is a direct hit.
3. Otherwise the compiler runs with `-MD -MF <temp>` added (or the user's own dependency file read, with an
   extra `-M` pass for -MMD, which leaves system headers out): the files it read and their digests become a
   manifest entry, and a successful result is stored. A failed compile is replayed, never stored.

Not stored: a file using __DATE__/__TIME__ (direct mode; preprocessor mode keys the expanded text), a file
changed while the compiler ran, an output the compiler did not write.
"""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gaffer.cache.base import TierError
from gaffer.cc import result
from gaffer.cc.args import Compile, Uncacheable, classify
from gaffer.cc.basedir import MARK, normalise, usable
from gaffer.cc.compiler import cpu_identity, find_compiler
from gaffer.cc.depfile import from_portable, prerequisites, to_portable
from gaffer.cc.key import (
    DepList,
    Entry,
    common_parts,
    decode_manifest,
    encode_manifest,
    first_mismatch,
    has_time_macros,
    key_digest,
    result_key,
)
from gaffer.cc.launch import DONE, RUN_IT, Context, Request, Response
from gaffer.digest import Digest, file_system_now, is_racy, stat_signature
from gaffer.errors import GafferError

# variables that make the compiler write files gaffer does not know of, or compile twice
UNCACHEABLE_ENV = ("DEPENDENCIES_OUTPUT", "SUNPRO_DEPENDENCIES", "GCC_COMPARE_DEBUG")
MANIFEST = ["manifest"]


def host_platform() -> dict[str, str]:
    return {"OSFamily": platform.system().lower(), "ISA": platform.machine().lower()}


@dataclass
class Ran:
    """A finished run of the compiler."""

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
    c: Compile
    compiler: str
    base_dir: str | None
    parts: list[str] = field(default_factory=list)
    direct: Digest | None = None
    preprocessed: Digest | None = None
    started: float = field(default_factory=time.monotonic)
    miss_reason: str = ""
    response: Response = RUN_IT  # set by a restore
    saved: float = 0.0  # seconds a hit saved: the stored compile's duration less this lookup's

    @property
    def cwd(self) -> str:
        return self.request.cwd

    def path(self, p: str) -> str:
        return os.path.join(self.cwd, p)

    def roles(self) -> dict[str, str]:
        """Each output's role -> its path here."""
        out = {"object": self.c.output}
        if self.c.dep_file is not None:
            out["deps"] = self.c.dep_file
        out.update(self.c.extra_outputs)
        return out

    def log(self, outcome: str, reason: str = "") -> None:
        self.ctx.log(f"{self.c.source}: {outcome}" + (f": {reason}" if reason else ""))
        self.ctx.history.record(self.cwd, self.path(self.c.output), self.request.argv, outcome, reason, self.parts)


def handle_compile(request: Request, ctx: Context) -> Response:
    c = classify(request.argv[1:], request.cwd)
    if isinstance(c, Uncacheable):
        return uncacheable(ctx, request, c.reason, str(c))
    bad_env = next((name for name in UNCACHEABLE_ENV if request.env.get(name)), None)
    if bad_env is not None:
        return uncacheable(ctx, request, f"{bad_env} is set")
    compiler = find_compiler(request.argv[0], request.env, request.cwd)
    if compiler is None:
        return uncacheable(ctx, request, "compiler not found")
    ctx.begin()
    job = Job(request, ctx, c, compiler, ctx.base_dir if usable(ctx.base_dir, request.cwd) else None)
    try:
        hit = lookup(job)
    except (OSError, TierError, GafferError) as e:
        ctx.log(f"{c.source}: cache unusable ({e}): running the compiler")
        hit = None
    if hit is not None:
        return hit
    return compile_and_store(job)


def uncacheable(ctx: Context, request: Request, reason: str, detail: str = "") -> Response:
    ctx.stats.add({"local": 1}, reason_group="uncacheable", reason=reason)
    ctx.log(f"{' '.join(request.argv)}: not cacheable: {detail or reason}")
    return RUN_IT


def lookup(job: Job) -> Response | None:
    """A direct or preprocessed hit, restored; None for a miss (job.parts and the keys are then set)."""
    c, ctx = job.c, job.ctx
    identity = ctx.compilers.identity(job.compiler, job.request.env)
    job.parts = common_parts(c, identity, job.request.env, job.cwd, job.base_dir, host_platform(), cpu_identity)
    for p in [c.source, *c.extra_inputs]:
        d = ctx.digest(job.path(p))
        job.parts.append(f"input {normalise(p, job.cwd, job.base_dir)} {d or 'absent'}")
    job.direct = key_digest(["direct", *job.parts])
    cache = ctx.cache()
    stored = result.get(cache, job.direct, MANIFEST)
    entries = decode_manifest(_blob(job, stored.files["manifest"])) if stored else []
    reason = None
    for entry in entries:
        mismatch = first_mismatch(entry, job.cwd, ctx.digest)
        if mismatch is None:
            if restore(job, entry.result):
                job.ctx.stats.add({"direct_hits": 1}, saved_s=job.saved)
                job.log("direct hit")
                return job.response
            mismatch = "the result is missing from the cache"
        reason = reason or mismatch
    if not entries:
        reason = ctx.history.why_new(job.cwd, job.path(c.output), job.parts)
    job.miss_reason = reason or "miss"
    if ctx.preprocessor:
        return preprocessed_lookup(job)
    return None


def _blob(job: Job, digest: Digest) -> bytes:
    return job.ctx.cache().local.read_blob(digest) or b""


def restore(job: Job, key: Digest) -> bool:
    """Restore the result under `key` into this checkout; sets job.response. False (nothing usable) on a miss."""
    cache = job.ctx.cache()
    roles = job.roles()
    stored = result.get(cache, key, sorted(roles))
    if stored is None:
        return False
    for role, digest in stored.files.items():
        dest = job.path(roles[role])
        if role == "deps":
            text = _blob(job, digest).decode("utf-8", "surrogateescape")
            local = from_portable(text, job.cwd) if MARK in text else text
            if local is None or not result.write_bytes(local.encode("utf-8", "surrogateescape"), dest):
                return False
        elif not result.write_file(cache, digest, dest, stored.modes[role]):
            return False
    job.response = Response(DONE, 0, stored.stdout, stored.stderr)
    job.saved = max(0.0, stored.duration_s - (time.monotonic() - job.started))
    return True


def preprocessed_lookup(job: Job) -> Response | None:
    """Preprocessor mode: key the `-E` output; on a hit, also teach the manifest the files it read."""
    with _temp(job, ".d") as dep, _temp(job, ".i") as out:
        ran = run(job, [*job.c.cpp_args, "-E", "-MD", "-MF", dep, "-o", out])
        if ran.exit_code != 0:
            return None  # the compile reports it
        d = job.ctx.digest(out)
        if d is None:
            return None
        job.preprocessed = key_digest(["preprocessed", *job.parts, f"preprocessed {d}"])
        if not restore(job, job.preprocessed):
            return None
        deps = dep_list(job, _read(dep), ran)
    if isinstance(deps, list):
        add_to_manifest(job, deps, job.preprocessed)
    job.ctx.stats.add({"preprocessed_hits": 1}, saved_s=job.saved)
    job.log("preprocessed hit", job.miss_reason)
    return job.response


def compile_and_store(job: Job) -> Response:
    """Run the compiler (depend mode), answer with what it did, and store a success."""
    c = job.c
    with _temp(job, ".d") as our_dep:
        extra = [] if c.dep_file is not None else ["-MD", "-MF", our_dep]
        ran = run(job, [*c.args, *extra])
        response = Response(DONE, ran.exit_code, ran.stdout, ran.stderr)
        if ran.exit_code != 0:
            job.ctx.stats.add({"failed": 1})
            job.log("compile failed", f"exit status {ran.exit_code}: not cached")
            return response
        if job.direct is None:  # the cache was unusable: nothing to store into
            return response
        try:
            why_not = store(job, ran, our_dep)
        except (OSError, TierError, GafferError) as e:
            why_not = f"cannot store ({e})"
    if why_not:
        job.ctx.stats.add({"not_stored": 1}, reason_group="not_stored_why", reason=why_not.split(" (")[0])
        job.log("miss, not stored", f"{job.miss_reason}; {why_not}")
    else:
        job.ctx.stats.add({"misses": 1})
        job.log("miss", job.miss_reason)
    return response


def store(job: Job, ran: Ran, our_dep: str) -> str | None:
    """Store a successful compile; the reason it was not stored, or None."""
    c = job.c
    roles = job.roles()
    for role, p in roles.items():
        try:
            st = os.stat(job.path(p))
        except OSError:
            return f"the compiler wrote no {role} file ({p})"
        if st.st_mtime_ns < ran.moment:
            return f"the {role} file {p} is older than the compile"
    if c.dep_file is None:
        dep_text = _read(our_dep)
    elif c.dep_system:
        dep_text = _read(job.path(c.dep_file))
    else:  # -MMD left the system headers out: ask for the full list
        with _temp(job, ".d") as full:
            extra_run = run(job, [*c.cpp_args, "-M", "-MF", full])
            if extra_run.exit_code != 0:
                return "the -M pass for the header list failed"
            dep_text = _read(full)
    deps = dep_list(job, dep_text, ran)
    if isinstance(deps, str):
        return deps
    cache = job.ctx.cache()
    files: dict[str, Path | bytes] = {}
    for role, p in roles.items():
        if role == "deps":
            text = _read(job.path(p))
            files[role] = (to_portable(text, job.cwd, job.base_dir) if job.base_dir else text).encode(
                "utf-8", "surrogateescape")
        else:
            files[role] = Path(job.path(p))
    time_macros = any(job.ctx.time_macros.get(h, False) for _, h, _ in deps)
    stored_somewhere = False
    if job.preprocessed is not None:
        result.put(cache, job.preprocessed, files, ran.stdout, ran.stderr, ran.start, ran.end)
        stored_somewhere = True
    if time_macros:
        return None if stored_somewhere else "uses __DATE__ or __TIME__ (direct mode)"
    assert job.direct is not None
    key = result_key(job.direct, deps)
    result.put(cache, key, files, ran.stdout, ran.stderr, ran.start, ran.end)
    add_to_manifest(job, deps, key)
    return None


def dep_list(job: Job, text: str, ran: Ran) -> DepList | str:
    """The files a compile read, from its dependency file, in the key's form with their digests (and whether
    one uses __DATE__/__TIME__, remembered by digest); a reason instead if one changed during the compile."""
    deps: DepList = []
    for p in prerequisites(text):
        full = job.path(p)
        try:
            st = os.stat(full)
        except OSError:
            return f"{p} disappeared during the compile"
        if is_racy(stat_signature(st), ran.moment):
            return f"{p} changed during the compile"
        d = job.ctx.stat_cache.digest(full, st)
        if d.hash not in job.ctx.time_macros:
            try:
                with open(full, "rb") as f:
                    job.ctx.time_macros[d.hash] = has_time_macros(f.read())
            except OSError:
                return f"{p} disappeared during the compile"
        deps.append((normalise(p, job.cwd, job.base_dir), d.hash, d.size_bytes))
    if not deps:
        return "the dependency file names no files"
    return deps


def add_to_manifest(job: Job, deps: DepList, key: Digest) -> None:
    """Put (deps -> key) first in the direct key's manifest (read again: another compile may have added one)."""
    assert job.direct is not None
    cache = job.ctx.cache()
    stored = result.get(cache, job.direct, MANIFEST)
    entries = decode_manifest(_blob(job, stored.files["manifest"])) if stored else []
    entries = [Entry(deps, key), *(e for e in entries if e.deps != deps)]
    now = time.time()
    result.put(cache, job.direct, {"manifest": encode_manifest(entries)}, b"", b"", now, now)


def run(job: Job, args: list[str]) -> Ran:
    """Run the compiler found for this request (so a masquerade link is never run again) with `args`."""
    moment = file_system_now(Path(job.ctx.directory), create=False)
    start = time.time()
    try:
        proc = subprocess.run([job.compiler, *args], cwd=job.cwd, env=dict(job.request.env), capture_output=True,
                              stdin=subprocess.DEVNULL, check=False)
    except OSError as e:
        return Ran(127, b"", f"gaffer: cannot run {job.compiler}: {e.strerror}\n".encode(), start, time.time(),
                   moment)
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    return Ran(code, proc.stdout, proc.stderr, start, time.time(), moment)


@contextmanager
def _temp(job: Job, suffix: str) -> Iterator[str]:
    fd, path = tempfile.mkstemp(suffix=suffix, prefix="tmp.", dir=job.ctx.directory)
    os.close(fd)
    try:
        yield path
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return ""
