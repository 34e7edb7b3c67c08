"""Distributed compiles (`gaffer cc --remote URL`, GAFFER_REMOTE, `[remote] url`): a cacheable compile that
misses runs as a REAPI action on the farm, and its result is stored like a local miss's.

The input root is the source and its header closure, found by a `-M` pass run here: every file it names below the
base directory (GAFFER_CC_BASEDIR, else the working directory) is shipped at its path relative to that directory,
and the action runs in the working directory's place there, so the compile sees the same layout. Files in the
compiler's own include directories are the toolchain's and are not shipped: the action's platform names the
compiler by identity (toolchain.py), and only a worker holding that very compiler matches. Arguments naming the
base directory are made relative to the working directory; that is the same compile only when a
`-ffile-prefix-map` covers the base directory (else the object would record other paths): otherwise, and for
what a worker cannot reproduce (debug info recording the working directory, coverage, -march=native, inputs or
outputs outside the tree, variables naming include directories), the compile stays here. In shared-filesystem
mode (GAFFER_CC_SHARED_FS) nothing is shipped: the command runs in place on a worker that sees the same paths.

Any trouble with the farm (unreachable, no matching worker free within GAFFER_CC_REMOTE_WAIT, a failed or
warning compile, whose diagnostics must name this checkout's paths) runs the compile here: a build never fails
because of the farm. What still runs here takes a local slot (slots.py). The farm is reached through
execute/remote.py's RemoteExecutor (upload only what is missing, Execute, follow the operation, download): one
CAS client for the whole of gaffer. Imported only when a remote is configured.

A missed link goes to a worker advertising `linking=true` only when every input is known before it runs: the
objects, archives and scripts it names (shipped, below the base directory) and the system's start files and
default libraries (syslibs.py: not shipped, matched by digest). Whatever else it could read (-L directories, other
`-l` libraries, --sysroot, -B, specs) keeps it here; and the linker's own list of what it read on the worker
(--dependency-file) must name nothing else, or the link runs here after all.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gaffer import actions
from gaffer.cc import syslibs, toolchain
from gaffer.cc.args import Compile, Link
from gaffer.cc.basedir import under
from gaffer.cc.depfile import prerequisites
from gaffer.cc.flow import Job, Ran, dep_list, read_text, run, run_and_store, temp_file
from gaffer.cc.key import result_key
from gaffer.cc.launch import Context, Response
from gaffer.cc.link import dependency_file
from gaffer.digest import Digest, file_system_now
from gaffer.execute.base import ExecuteResult

if TYPE_CHECKING:
    from gaffer.cache.grpc import GrpcTier

RETRY_S = 30.0  # after the farm was unreachable, compiles run here for this long before it is tried again
SHARED_KEY = "gaffer-shared-fs"  # the platform property of workers that see this machine's paths (shared mode)
HERE = "run here"  # the failure RemoteExecutor reports when it falls back to its local executor
# variables naming include directories or compiler parts by path: such a compile stays here
PATH_ENV = ("CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "OBJC_INCLUDE_PATH", "GCC_EXEC_PREFIX",
            "COMPILER_PATH", "LIBRARY_PATH")
SENT_ENV = ("LANG", "LANGUAGE", "SOURCE_DATE_EPOCH")  # and LC_*: what the compiler reads that the key holds
# driver options and linker words (-Wl,...) that make a link read files or programs not known beforehand
_LINK_HERE = ("-L", "-B", "--sysroot", "-specs", "--specs", "-l:", "-fuse-ld", "-flto", "-fuse-linker-plugin",
              "-plugin", "-wrapper")
_LD_HERE = ("-L", "--library-path", "-T", "--script", "-rpath-link", "--sysroot", "@", "-plugin", "--plugin",
            "-l", "--library")
PATH_OPTIONS = ("-I", "-isystem", "-iquote", "-idirafter", "-include", "-imacros", "-o", "-MF", "-MT", "-MQ",
                "-ffile-prefix-map=", "-fmacro-prefix-map=", "-fdebug-prefix-map=", "-fprofile-prefix-map=")


class _Here:
    """RemoteExecutor's local executor: a fallback is reported back, and the launcher runs the compile itself."""

    def execute(self, action: actions.PreparedAction, pass_env: Sequence[str], name: str = "") -> ExecuteResult:
        return ExecuteResult(0.0, b"", b"", failure=HERE)

    def cancel_all(self) -> None:
        pass


class Distributor:
    """The farm's client of one Context (a daemon, or one `gaffer cc` process): its channel and whether it is
    reachable, with one warning when it is not."""

    def __init__(self, ctx: Context, url: str) -> None:
        self.ctx = ctx
        self.url = url
        self.wait = ctx.settings.cc_remote_wait
        self._tier: GrpcTier | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._warned = False

    def tier(self) -> GrpcTier:
        from gaffer.execute.remote import open_remote

        with self._lock:
            if self._tier is None:
                self._tier = open_remote(self.url, self.ctx.settings.timeout)
            return self._tier

    def usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def down(self, why: str) -> None:
        with self._lock:
            self._down_until = time.monotonic() + RETRY_S
            first, self._warned = not self._warned, True
        if first:
            self.ctx.warn(f"{why.split(': running')[0]}: compiling here (gaffer cc)")

    def execute(self, action: actions.PreparedAction, cwd: str, label: str) -> tuple[ExecuteResult, str]:
        """Run the action on the farm, its outputs written below `cwd`; with why it did not ("" if it did)."""
        from gaffer.execute.remote import RemoteExecutor

        waited = threading.Event()
        timer: list[threading.Timer] = []  # the running one while the action is queued (again, after a requeue)

        def give_up() -> None:  # still queued: no worker with this toolchain free (or none at all)
            waited.set()
            executor.cancel_all()

        def on_stage(_name: str, stage: str) -> None:
            if stage == "queued" and not timer:
                timer.append(threading.Timer(self.wait, give_up))
                timer[0].daemon = True
                timer[0].start()
            elif stage.startswith("executing") and timer:
                timer.pop().cancel()

        warnings: list[str] = []
        executor = RemoteExecutor(Path(cwd), self.ctx.cache().local, _Here(), self.tier(), fallback=True,
                                  minimal=False, wanted=(), on_stage=on_stage, warn=warnings.append)
        try:
            done = executor.execute(action, [], label)
        finally:
            for t in timer:
                t.cancel()
        if done.failure == HERE:
            self.down(warnings[0] if warnings else "no answer")
            return done, "the farm is unreachable"
        if waited.is_set():
            return done, f"no matching worker free within {self.wait:g}s"
        return done, done.failure

    def close(self) -> None:
        if self._tier is not None:
            self._tier.close()


_OPENING = threading.Lock()


def distributor(ctx: Context) -> Distributor:
    with _OPENING:
        if ctx.distributor is None:
            assert ctx.settings.remote is not None
            ctx.distributor = Distributor(ctx, ctx.settings.remote)
        return ctx.distributor


def compile_remotely(job: Job, c: Compile, identity: str, also: Digest | None) -> Response | None:
    """Run this missed compile on the farm (or here, if the farm cannot take it after all) and store it as a
    miss is stored; None when the compile is not one to distribute (the caller runs it here)."""
    ctx = job.ctx
    farm = distributor(ctx)
    shared = ctx.settings.cc_shared_fs
    if not farm.usable():
        ctx.stats.add({"remote_fallbacks": 1})
        ctx.log(f"{job.label}: compiled here: the farm was unreachable a moment ago")
        return None
    why = not_distributable(job, c, bool(shared))
    if why:
        ctx.log(f"{job.label}: compiled here: {why}")
        return None
    with temp_file(job, ".d") as dep:
        dep_pass = run(job, [*c.cpp_args, "-M", "-MF", dep])
        if dep_pass.exit_code != 0:
            return None  # the compile run here reports the error
        dep_text = read_text(dep)
    platform = {**actions.host_properties(),
                toolchain.KEY: toolchain.value(os.path.basename(job.request.argv[0]), identity)}
    if shared:
        action = in_place_action(job, dep_text, dep_pass, {**platform, SHARED_KEY: shared})
    else:
        action = shipped_action(job, c, dep_text, platform)
    if isinstance(action, str):
        ctx.log(f"{job.label}: compiled here: {action}")
        return None
    ready = action

    def remotely(args: list[str]) -> Ran:
        start = time.time()
        done, failed = farm.execute(ready, job.cwd, job.label)
        if not failed and (shared or not done.stderr):
            ctx.stats.add({"remote": 1})
            ctx.log(f"{job.label}: compiled on {done.where or 'the farm'}")
            return Ran(0, done.stdout, done.stderr, start, time.time(), dep_pass.moment)
        ctx.stats.add({"remote_fallbacks": 1})
        ctx.log(f"{job.label}: compiled here: {failed or 'it wrote diagnostics there'}")
        here = run(job, args)
        return Ran(here.exit_code, here.stdout, here.stderr, here.start, here.end, dep_pass.moment)

    job.runner = remotely
    return run_and_store(job, c.args, lambda ran: dep_text, also)


def shipped_action(job: Job, c: Compile, dep_text: str, platform: dict[str, str]) -> actions.PreparedAction | str:
    """The action of a compile whose header closure is shipped; a reason instead if it cannot be."""
    from gaffer.cc.compile import search_dirs

    base = job.base_dir or job.cwd
    arguments = portable_args(c, base, job.cwd)
    if arguments is None:
        return "an argument names the base directory, which no -ffile-prefix-map covers"
    inputs = input_files(job, prerequisites(dep_text), base, search_dirs(job, c))
    if isinstance(inputs, str):
        return inputs
    outputs = [os.path.relpath(job.path(p), job.cwd) for p in job.outputs.values()]
    if any(p.startswith("..") for p in outputs):
        return "an output is outside the working directory"
    work = os.path.relpath(job.cwd, base)
    work = "" if work == "." else work
    if work.startswith(".."):
        return "the working directory is outside the base directory"
    env = {k: v for k, v in job.request.env.items() if k in SENT_ENV or k.startswith("LC_")}
    return actions.prepare_action([os.path.basename(job.request.argv[0]), *arguments], env, outputs, platform,
                                  None, b"", inputs, dep_directories=[actions.DirectoryEntry(work, 0o755)],
                                  working_directory=work)


def in_place_action(job: Job, dep_text: str, dep_pass: Ran, platform: dict[str, str]) -> actions.PreparedAction | str:
    """Shared-filesystem mode: the compile runs in this very directory on a worker that sees the same paths;
    nothing is uploaded and the outputs stay where the compiler writes them (the caller checks and stores them).
    The action names the full input content in its salt (the result key: the direct key and every file read),
    so two different compiles are never the same action; it is never cached by the server."""
    deps = dep_list(job, prerequisites(dep_text), dep_pass)
    if isinstance(deps, str):
        return deps
    assert job.direct is not None
    salt = result_key(job.direct, deps).hash.encode()
    env = {k: v for k, v in job.request.env.items() if k in SENT_ENV or k.startswith("LC_") or k in PATH_ENV}
    argv = ["/bin/sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", job.cwd,
            os.path.basename(job.request.argv[0]), *job.request.argv[1:]]
    return actions.prepare_action(argv, env, [], platform, None, salt, [], do_not_cache=True)


def not_distributable(job: Job, c: Compile, shared: bool) -> str:
    """Why a worker could not compile this as it would compile here ("" if it can); in shared-filesystem mode
    the paths are the same there."""
    if c.native:
        return "-march=native compiles for this machine's CPU"
    if shared:
        return ""
    if c.debug or c.coverage or c.records_switches:
        return "the object records the working directory or the arguments"
    if c.extra_inputs or c.extra_outputs:
        return "it reads or writes files beside the object (profile data, split debug info)"
    bad = next((name for name in PATH_ENV if job.request.env.get(name)), None)
    return f"{bad} is set" if bad else ""


def portable_args(c: Compile, base: str, cwd: str) -> list[str] | None:
    """The arguments with each path below `base` made relative to the working directory; None if an argument
    names `base` where a path option does not, or if the object would record such a path differently (no
    -f*-prefix-map covering `base`)."""
    rel = os.path.relpath(base, cwd)
    covered = any(under(base, os.path.normpath(old)) for _, old, _new in c.prefix_maps if os.path.isabs(old))
    out: list[str] = []
    changed = False
    for arg in c.args:
        if base not in arg:
            out.append(arg)
            continue
        prefix = next((o for o in ("", *PATH_OPTIONS) if arg.startswith(o + base)), None)
        if prefix is None:
            return None
        rest = arg[len(prefix) + len(base):]
        if rest and not rest.startswith(("/", "=")):
            return None
        out.append(prefix + rel + rest)
        changed = True
    return None if changed and not covered else out


def input_files(job: Job, read: list[str], base: str, system: list[str]) -> list[actions.FileEntry] | str:
    """The files the `-M` pass named, as input-root entries relative to `base`; the toolchain's own headers are
    left out; a reason instead if one is neither."""
    entries: dict[str, actions.FileEntry] = {}
    store = job.ctx.cache().local
    for p in read:
        full = os.path.normpath(job.path(p))
        if under(full, base) and full != base:
            digest = job.ctx.digest(full)
            try:  # the upload reads it from the local CAS
                if digest is None or not store.has_blob(digest) and store.put_file(Path(full)) != digest:
                    return f"{p} cannot be read, or changed while read"
            except OSError:
                return f"{p} cannot be read"
            rel = os.path.relpath(full, base)
            entries[rel] = actions.FileEntry(rel, digest, os.access(full, os.X_OK))
        elif not any(under(full, d) for d in system):
            return f"it reads {full}, outside the base directory and the compiler's own include directories"
    return list(entries.values())


DEPS_SUFFIX = ".gaffer-deps"  # beside a remote link's output: the files its linker read, downloaded, then removed


def link_remotely(job: Job, link: Link, identity: str) -> None:
    """Make this missed link run on a link-capable worker (job.runner), if it can; else it runs here."""
    ctx = job.ctx
    farm = distributor(ctx)
    moment = file_system_now(Path(ctx.directory), create=False)  # before the inputs are read to be shipped
    if not farm.usable():
        ctx.stats.add({"remote_fallbacks": 1})
    why = "the farm was unreachable a moment ago" if not farm.usable() else link_not_distributable(job, link)
    name = os.path.basename(job.request.argv[0])
    paths = {} if why else syslibs.resolved(job.tool, identity, job.request.env)
    hexdigest = None if why else syslibs.digest(paths, ctx.digest)
    base = job.base_dir or job.cwd
    work = os.path.relpath(job.cwd, base)
    output = os.path.normpath(link.output)
    if not why and hexdigest is None:
        why = "a system library cannot be read"
    elif not why and (work.startswith("..") or os.path.isabs(output) or output.startswith("..")):
        why = "the working directory or the output is outside the base directory"
    elif not why and os.path.lexists(job.path(output + DEPS_SUFFIX)):
        why = f"{output}{DEPS_SUFFIX} exists: the remote link's list of files read would replace it"
    inputs = why or input_files(job, link.inputs, base, [])
    if isinstance(inputs, str):
        ctx.log(f"{job.label}: linked here: {inputs}")
        return
    assert hexdigest is not None
    work = "" if work == "." else work
    deps_out = output + DEPS_SUFFIX
    platform = {**actions.host_properties(), toolchain.KEY: toolchain.value(name, identity), "linking": "true",
                syslibs.KEY: syslibs.value(name, hexdigest)}
    env = {k: v for k, v in job.request.env.items() if k in SENT_ENV or k.startswith("LC_")}
    action = actions.prepare_action([name, *link.args, *dependency_file(deps_out)], env,
                                    [output, deps_out], platform, None, b"", inputs,
                                    dep_directories=[actions.DirectoryEntry(work, 0o755)], working_directory=work)
    allowed = syslibs.files(paths)

    def remotely(args: list[str]) -> Ran:
        start = time.time()
        done, failed = farm.execute(action, job.cwd, job.label)
        read = _take(job.path(deps_out))
        if not failed and not done.stderr and read is not None:
            outside = next((p for p in prerequisites(read) if not read_known(p, job.cwd, base, allowed)), None)
            if outside is None:
                assert args[-1].startswith("--dependency-file=")  # the local run's: the caller reads it
                local_deps = args[-1].split("=", 1)[1]
                Path(local_deps).write_text(read)
                ctx.stats.add({"remote": 1})
                ctx.log(f"{job.label}: linked on {done.where or 'the farm'}")
                return Ran(0, done.stdout, done.stderr, start, time.time(), moment)
            failed = f"it read {outside} there"
        ctx.stats.add({"remote_fallbacks": 1})
        ctx.log(f"{job.label}: linked here: {failed or 'it wrote diagnostics there'}")
        return run(job, args)

    job.runner = remotely


def _take(path: str) -> str | None:
    """A downloaded dependency list's text, removed from the tree (None if there is none)."""
    try:
        text = read_text(path)
        os.unlink(path)
    except OSError:
        return None
    return text


def read_known(path: str, cwd: str, base: str, allowed: set[str]) -> bool:
    """A file the worker's linker read is one shipped (named relative to the working directory, below the base
    directory: the arguments never name it absolutely) or one of the system set (absolute)."""
    if os.path.isabs(path):
        return os.path.realpath(path) in allowed
    full = os.path.normpath(os.path.join(cwd, path))
    return under(full, base) and full != base


def link_not_distributable(job: Job, link: Link) -> str:
    """Why a worker might read other files than the ones this link is known to need ("" if it cannot)."""
    base = job.base_dir or job.cwd
    for arg in link.args:
        if arg.startswith(_LINK_HERE) or arg in ("-Xlinker", "-T"):
            return f"it names {arg}"
        if arg.startswith("-l") and arg[2:] not in syslibs.LIBRARIES:
            return f"{arg} is not a default system library"
        words = arg[4:].split(",") if arg.startswith("-Wl,") else []
        if any(w.startswith(_LD_HERE) or w.startswith("/") and p not in ("-rpath", "-R")
               for p, w in zip(["", *words], words, strict=False)):
            return f"it names {arg}"
        if base in arg:
            return f"{arg} names the base directory"
    bad = next((n for n in (*PATH_ENV, "LD_LIBRARY_PATH", "LD_RUN_PATH") if job.request.env.get(n)), None)
    return f"{bad} is set" if bad else ""
