"""`gaffer ld -- DRIVER ARGS`: a link through the cache.

A link is cacheable once every input is known: the objects, archives and scripts it names (in the direct key,
by content), and what the linker finds by itself - `-l` libraries through -L and the default paths, the C
runtime's start files, libc's linker script and what it names - listed by `-Wl,--dependency-file` (GNU ld
2.35 and later) and kept in the manifest like a compile's headers. A library that changes is a miss. With a farm,
a miss may run on a link-capable worker (remote.py's link_remotely).
"""

from __future__ import annotations

import os

from gaffer.cc.args import Uncacheable, classify_link
from gaffer.cc.compile import host_platform
from gaffer.cc.compiler import find_compiler
from gaffer.cc.flow import (
    CACHE_ERRORS,
    Job,
    lookup_direct,
    read_text,
    run_and_store,
    special_output,
    temp_file,
    uncacheable,
)
from gaffer.cc.key import ENV_READ, key_digest
from gaffer.cc.launch import RUN_IT, Context, Request, Response

LINK_ENV = (*ENV_READ, "LD_LIBRARY_PATH", "LD_RUN_PATH")  # ld searches both for a shared library's needs


def dependency_file(path: str) -> list[str]:
    """The driver's arguments that have the linker list what it read in `path`: through -Xlinker, whole (-Wl,
    would split a path with a comma in it)."""
    return ["-Xlinker", f"--dependency-file={path}"]


def library_candidates(args: list[str]) -> list[str]:
    """Where each `-lNAME` could also be found in the project's -L directories (a shared or a static library,
    the shared one first in each): one appearing there is taken instead, so it must still be absent."""
    dirs = [a[2:] or (args[i + 1] if i + 1 < len(args) else "") for i, a in enumerate(args) if a.startswith("-L")]
    names = [a[2:] for a in args if a.startswith("-l") and len(a) > 2 and not a.startswith("-l:")]
    return [os.path.join(d, f"lib{n}{ext}") for n in names for d in dirs if d for ext in (".so", ".a")]


def handle_link(request: Request, ctx: Context) -> Response:
    link = classify_link(request.argv[1:], request.cwd)
    if isinstance(link, Uncacheable):
        return uncacheable(ctx, request, link.reason, link.detail)
    special = special_output(request.cwd, {"output": link.output})
    if special is not None:
        return uncacheable(ctx, request, "output is not a regular file", special)
    driver = find_compiler(request.argv[0], request.env, request.cwd)
    if driver is None:
        return uncacheable(ctx, request, "linker driver not found")
    job = Job(request, ctx, driver, link.output, {"output": link.output}, None, ("link_hits", "link_misses"))
    job.absent_of = lambda read: [p for p in library_candidates(link.args) if not os.path.lexists(job.path(p))]
    try:
        identity = ctx.compilers.identity(driver, request.env)
        job.parts = [f"compiler {identity}", "link", *(f"platform {k}={v}" for k, v in host_platform().items()),
                     *(f"arg {a}" for a in link.args),
                     *(f"env {name}={request.env[name]}" for name in LINK_ENV if name in request.env),
                     *(job.input_part(p) for p in link.inputs)]
        job.direct = key_digest(["direct", *job.parts])
        hit = lookup_direct(job)
    except CACHE_ERRORS as e:
        ctx.log(f"{link.output}: cache unusable ({e}): running the link")
        job.direct, hit = None, None
    if hit is not None:
        return hit
    if ctx.settings.remote is not None and job.direct is not None:
        from gaffer.cc.remote import link_remotely

        link_remotely(job, link, identity)
    with temp_file(job, ".d") as deps:
        response = run_and_store(job, [*link.args, *dependency_file(deps)], lambda ran: read_text(deps))
    if response.exit_code != 0 and b"dependency-file" in response.stderr:  # a linker older than the option
        return RUN_IT
    return response
