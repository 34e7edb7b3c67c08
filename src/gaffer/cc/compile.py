"""One compile through the cache: direct mode, then preprocessor mode, then the compiler in depend mode.

1. Direct (flow.py): the direct key (key.py) names a manifest; an entry whose files all still have their
   digests names the result: the object, the dependency file (rewritten to this checkout), .dwo/.gcno,
   restored, and the diagnostics replayed.
2. Preprocessed (GAFFER_CC_PREPROCESSOR, off by default: it costs a preprocessor run per miss; always for a
   compile whose manifest says it uses __DATE__/__TIME__): `-E` runs, and the key of the preprocessed text is
   looked up; a hit is restored and added to the manifest, so the next time is a direct hit. It also keys a
   file using __DATE__/__TIME__, which direct mode does not cache.
3. Otherwise the compiler runs with `-MD -MF <temp>` added, or with the user's own -MD file read (an extra
   `-M` pass for -MMD, which leaves system headers out): the files it read and their digests become a manifest
   entry, and a successful result is stored.
"""

from __future__ import annotations

import platform

from gaffer.cc.args import Compile, Uncacheable, classify
from gaffer.cc.basedir import usable
from gaffer.cc.compiler import cpu_identity, find_compiler
from gaffer.cc.depfile import prerequisites
from gaffer.cc.flow import (
    CACHE_ERRORS,
    Job,
    Ran,
    add_to_manifest,
    dep_list,
    lookup_direct,
    read_text,
    restore,
    run,
    run_and_store,
    special_output,
    temp_file,
    uncacheable,
    uses_time,
)
from gaffer.cc.key import common_parts, has_time_macros, key_digest
from gaffer.cc.launch import Context, Request, Response
from gaffer.cc.shadow import absent_candidates, explicit_dirs
from gaffer.digest import Digest

# variables that make the compiler write files gaffer does not know of, or compile twice
UNCACHEABLE_ENV = ("DEPENDENCIES_OUTPUT", "SUNPRO_DEPENDENCIES", "GCC_COMPARE_DEBUG")
# options that change the compiler's own include directories
SEARCH_FLAGS = ("-nostdinc", "--sysroot", "-isysroot", "-m", "-target", "--target", "-stdlib", "-std", "-B")


def host_platform() -> dict[str, str]:
    return {"OSFamily": platform.system().lower(), "ISA": platform.machine().lower()}


def handle_compile(request: Request, ctx: Context) -> Response:
    c = classify(request.argv[1:], request.cwd)
    if isinstance(c, Uncacheable):
        return uncacheable(ctx, request, c.reason, c.detail)
    bad_env = next((name for name in UNCACHEABLE_ENV if request.env.get(name)), None)
    if bad_env is not None:
        return uncacheable(ctx, request, f"{bad_env} is set")
    compiler = find_compiler(request.argv[0], request.env, request.cwd)
    if compiler is None:
        return uncacheable(ctx, request, "compiler not found")
    outputs = {"object": c.output, **({"deps": c.dep_file} if c.dep_file is not None else {}), **c.extra_outputs}
    special = special_output(request.cwd, outputs)
    if special is not None:
        return uncacheable(ctx, request, "output is not a regular file", special)
    base_dir = ctx.base_dir if usable(ctx.base_dir, request.cwd) else None
    job = Job(request, ctx, compiler, c.source, outputs, base_dir, ("direct_hits", "misses"), compiles=True,
              time_args=has_time_macros("\0".join(c.args).encode("utf-8", "surrogateescape")))
    job.absent_of = lambda read: absent_candidates(read, explicit_dirs(c, request.env), search_dirs(job, c), job.cwd)
    preprocessed: Digest | None = None
    try:
        identity = ctx.compilers.identity(compiler, request.env)
        job.parts = common_parts(c, identity, request.env, job.cwd, base_dir, host_platform(), cpu_identity)
        job.parts.extend(job.input_part(p) for p in [c.source, *c.extra_inputs])
        job.direct = key_digest(["direct", *job.parts])
        hit = lookup_direct(job)
        if hit is None and (ctx.preprocessor or job.preprocess) and not records_columns(c):
            preprocessed, hit = preprocessed_lookup(job, c)
    except CACHE_ERRORS as e:
        ctx.log(f"{c.source}: cache unusable ({e}): running the compiler")
        job.direct, hit = None, None
    if hit is not None:
        return hit
    if ctx.settings.remote is not None and job.direct is not None:
        from gaffer.cc.remote import compile_remotely

        remote = compile_remotely(job, c, identity, preprocessed)
        if remote is not None:
            return remote
    with temp_file(job, ".d") as ours:
        if c.dep_file is None:
            return run_and_store(job, [*c.args, "-MD", "-MF", ours], lambda ran: read_text(ours), preprocessed, ours)
        return run_and_store(job, c.args, lambda ran: user_deps(job, c, ran), preprocessed)


def records_columns(c: Compile) -> bool:
    """Does the object hold source columns (gcc's debug info does, unless -gno-column-info)? The preprocessed
    text keeps lines, not columns (a comment becomes one space), so such a compile has no preprocessed key."""
    column_flags = [a for a in c.args if a in ("-gcolumn-info", "-gno-column-info")]
    return c.debug and column_flags[-1:] != ["-gno-column-info"]


def search_dirs(job: Job, c: Compile) -> list[str]:
    """The compiler's own include directories for this compile (the options that change them included)."""
    flags = tuple(a for a in c.cpp_args if a.startswith(SEARCH_FLAGS))
    return job.ctx.compilers.search_dirs(job.tool, c.language, flags, job.request.env)


def user_deps(job: Job, c: Compile, ran: Ran) -> str | None:
    """The files read, from the dependency file the user asked for; -MMD's leaves system headers out, so a -M
    pass lists them all (None if it fails)."""
    assert c.dep_file is not None
    if c.dep_system:
        return read_text(job.path(c.dep_file))
    with temp_file(job, ".d") as full:
        return read_text(full) if run(job, [*c.cpp_args, "-M", "-MF", full]).exit_code == 0 else None


def preprocessed_lookup(job: Job, c: Compile) -> tuple[Digest | None, Response | None]:
    """Preprocessor mode: the key of the `-E` output, and the hit under it (which also teaches the manifest the
    files this compile reads, so the next one is a direct hit)."""
    with temp_file(job, ".d") as dep, temp_file(job, ".i") as out:
        ran = run(job, [*c.cpp_args, "-E", "-MD", "-MF", dep, "-o", out])
        d = job.ctx.digest(out) if ran.exit_code == 0 else None
        if d is None:
            return None, None  # the compile reports the error
        key = key_digest(["preprocessed", *job.parts, f"preprocessed {d}"])
        if not restore(job, key):
            return key, None
        read = prerequisites(read_text(dep))
        deps = dep_list(job, read, ran)
    absent = job.absent_of(read)
    if not isinstance(deps, str) and not isinstance(absent, str) and not uses_time(job, deps):
        add_to_manifest(job, deps, key, absent)
    job.ctx.stats.add({"preprocessed_hits": 1}, saved_s=job.saved)
    job.log("preprocessed hit", job.miss_reason)
    return key, job.response
