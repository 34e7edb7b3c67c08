"""`gaffer cc -- COMPILER ARGS...` and `gaffer ld -- DRIVER ARGS...` in-process (the fast client, gaffer-cc,
sends the same request to the daemon instead), and `gaffer cc --show-stats | --zero-stats | --explain`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gaffer.cc.admin import ADMIN_FLAGS, add_admin_flags, run_admin
from gaffer.config import CC, add_flags, environment_help
from gaffer.errors import UserError

CACHE_SETTINGS = ("cache_dir", "max_size", "remotes", "read_only", "timeout", "remote")

EXAMPLES = {
    "cc": """\
  gaffer cc -- gcc -c hello.c -o hello.o
  cmake -DCMAKE_C_COMPILER_LAUNCHER="gaffer;cc;--" -DCMAKE_CXX_COMPILER_LAUNCHER="gaffer;cc;--" ..
  gaffer cc --show-stats
""",
    "ld": """\
  gaffer ld -- gcc -o hello hello.o -lm
  cmake -DCMAKE_C_LINKER_LAUNCHER="gaffer;ld;--" -DCMAKE_CXX_LINKER_LAUNCHER="gaffer;ld;--" ..
  gaffer cc --show-stats
""",
}

EPILOG = """
The command's exit status and output are the {what}'s (replayed from the cache on a hit).

settings: a flag wins over its variable, which wins over gaffer.toml (the nearest from the working directory
upward, then $XDG_CONFIG_HOME/gaffer/gaffer.toml, else ~/.config/gaffer/gaffer.toml)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see '{self.prog} --help')")


def _parser(kind: str) -> argparse.ArgumentParser:
    what = "compiler" if kind == "cc" else "linker driver"
    parser = _Parser(prog=f"gaffer {kind}", formatter_class=argparse.RawDescriptionHelpFormatter,
                     usage=f"gaffer {kind} [OPTIONS] -- {what.split()[-1].upper()} ARGS...",
                     description=f"Run a {what} command through gaffer's cache (docs/cc.md).",
                     epilog="examples:\n" + EXAMPLES[kind] + EPILOG.format(what=what.split()[0])
                     + environment_help(CC))
    if kind == "cc":
        parser.add_argument("--show-stats", action="store_true", help="print the launcher's counters")
        parser.add_argument("--zero-stats", action="store_true", help="reset the launcher's counters")
        parser.add_argument("--explain", action="store_true",
                            help="print why the given compile command last missed (or hit), without running it")
        add_admin_flags(parser)
    add_flags(parser, CC, CACHE_SETTINGS)
    return parser


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """gaffer's own options, then the command: after `--`, or from the first word that is not an option."""
    argv = list(argv)
    if "--" in argv:
        n = argv.index("--")
        return argv[:n], argv[n + 1:]
    n = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    return argv[:n], argv[n:]


def cc_main(kind: str, argv: Sequence[str]) -> int:
    from gaffer.cc.launch import COMPILE, LINK, RUN_YOURSELF, Context, Request, handle

    own_args = list(argv[:list(argv).index("--")] if "--" in argv else argv)
    if kind == "cc" and ADMIN_FLAGS.intersection(own_args):  # the fast client's install and daemon
        return run_admin(_parser(kind).parse_args(own_args))
    own, command = split_command(argv)
    opts = _parser(kind).parse_args(own)
    flags = {name: getattr(opts, name) for name in CACHE_SETTINGS}
    cwd = os.getcwd()
    ctx = Context.from_environment(os.environ, cwd, flags)
    if getattr(opts, "show_stats", False) or getattr(opts, "zero_stats", False):
        from gaffer.cc.daemon import flush_stats

        flush_stats(Path(ctx.directory))  # the daemon's counts, held in memory, first
    if getattr(opts, "show_stats", False):
        print("\n".join(ctx.stats.report()))
        return 0
    if getattr(opts, "zero_stats", False):
        ctx.stats.zero()
        print("statistics zeroed")
        return 0
    if not command:
        raise UserError(f"no command given (usage: gaffer {kind} -- COMMAND ARGS...)")
    if getattr(opts, "explain", False):
        from gaffer.cc.explain import explain_compile

        print("\n".join(explain_compile(ctx, cwd, command)))
        return 0
    request = Request(LINK if kind == "ld" else COMPILE, cwd, command, dict(os.environ))
    try:
        response = handle(request, ctx)
    finally:
        ctx.close()
    if response.verdict == RUN_YOURSELF:
        return run_unchanged(command)
    for stream, data in ((sys.stdout, response.stdout), (sys.stderr, response.stderr)):
        stream.flush()
        stream.buffer.write(data)
        stream.buffer.flush()
    return response.exit_code


def run_unchanged(command: list[str]) -> int:
    """Replace this process with the command (never with a gaffer launcher found first on PATH)."""
    from gaffer.cc.compiler import find_compiler

    path = find_compiler(command[0], os.environ, os.getcwd())
    if path is None:
        raise UserError(f"{command[0]}: command not found")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(path, command)
