"""The `gaffer` (and `gaffer-exec`) command line.

Each subcommand imports what it needs when it runs, so `gaffer run` on an up-to-date workspace never loads
protobuf, grpc or any remote-cache client. Exit status: 0 success, 1 the build failed, 2 the user's input was
wrong, 3 an environment or internal error; 130/143/129 when interrupted by SIGINT/SIGTERM/SIGHUP.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from gaffer import __version__
from gaffer.config import RUN, add_flags, environment_help
from gaffer.errors import UserError, exit_status

RUN_SETTINGS = ("cache_dir", "max_size", "remotes", "read_only", "timeout", "jobs", "sandbox", "sandbox_keep",
                "remote", "remote_download", "remote_fallback")
LOCAL_CACHE_SETTINGS = ("cache_dir", "max_size")

RUN_EPILOG = """\
exit status:
  0  every task succeeded (ran, restored from the cache, or up to date)
  1  a task failed
  2  bad input: a flag, the graph or a setting (one line says what and where)
  3  an environment problem (the cache directory is unusable, ...), or the workspace is busy and
     --no-wait was given
  130, 143, 129  interrupted by Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal closed)
"""

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit status 2. And the formatters argparse makes while a
    parser is built (`add_argument` checks a metavar with one, `add_subparsers` writes the subcommands' prog
    prefix, one word at any width, with one) are given a width: asking the terminal's, which imports shutil
    (~3 ms of every `gaffer run`), is left to help and usage, the only text written at that width."""

    _building = False

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see '{self.prog} --help')")

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        self._building = True
        try:
            return super().add_argument(*args, **kwargs)
        finally:
            self._building = False

    def add_subparsers(self, **kwargs: Any) -> Any:
        assert not self._get_positional_actions()  # else the prog prefix holds them, and its width matters
        self._building = True
        try:
            return super().add_subparsers(**kwargs)
        finally:
            self._building = False

    def _get_formatter(self) -> argparse.HelpFormatter:
        if self._building:
            return self.formatter_class(prog=self.prog, width=80)  # type: ignore[call-arg]  # a HelpFormatter
        return super()._get_formatter()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """gaffer's parser. Given the subcommand on the command line, only its own parser is built in full: the
    others are named with their help, which is all that parsing that command (or a typo's message) needs, and
    each parser argparse builds is time every `gaffer run` would pay."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "gaffer"
    if prog not in ("gaffer", "gaffer-exec"):
        prog = "gaffer"
    parser = _Parser(prog=prog, description="Parallel, incremental, cached builds of a task graph.")
    parser.add_argument("--version", action="version", version=f"gaffer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (text, add) in _SUBCOMMANDS.items():
        if add is not None and command in (None, name):
            add(sub.add_parser(name, help=text, **_DETAILS.get(name, {})))
        else:
            sub.add_parser(name, help=text, add_help=False)
    return parser


def _add_run(run: argparse.ArgumentParser) -> None:
    run.add_argument("targets", nargs="*", metavar="TARGET", help="task names (default: every task)")
    run.add_argument("--graph", default="graph.json", metavar="FILE", help="the task graph (default: graph.json)")
    run.add_argument("-k", "--keep-going", action="store_true", help="keep building what does not depend on a failure")
    run.add_argument("-n", "--dry-run", action="store_true", help="list what would run and why; change nothing")
    run.add_argument("-v", "--verbose", action="store_true", help="say why each task ran and which were up to date")
    run.add_argument("--summary-json", metavar="FILE", help="write the build summary as JSON to FILE")
    run.add_argument("--trace", metavar="FILE", help="write a Chrome trace-event file (open it in Perfetto)")
    run.add_argument("--no-wait", action="store_true",
                     help="if another gaffer run or clean holds this workspace, exit 3 at once instead of waiting")
    add_flags(run, RUN, RUN_SETTINGS)
    run.epilog = ("settings: a flag wins over its variable, which wins over gaffer.toml (beside the graph, then\n"
                  "$XDG_CONFIG_HOME/gaffer/gaffer.toml, else ~/.config/gaffer/gaffer.toml)\n"
                  + environment_help(RUN, RUN_SETTINGS) + "\n" + RUN_EPILOG)


def _add_explain(explain: argparse.ArgumentParser) -> None:
    explain.add_argument("task", metavar="TASK", help="the name of a task in the graph (`-- -x` for one starting with "
                                                      "-), or `-- gcc -c x.c ...`: why that compile missed gaffer "
                                                      "cc's cache")
    explain.add_argument("--graph", default="graph.json", metavar="FILE", help="the task graph (default: graph.json)")


def _add_clean(clean: argparse.ArgumentParser) -> None:
    clean.add_argument("targets", nargs="*", metavar="TARGET", help="task names (default: every task)")
    clean.add_argument("--graph", default="graph.json", metavar="FILE", help="the task graph (default: graph.json)")
    clean.add_argument("--all", action="store_true", help="also empty the local cache")
    clean.add_argument("--no-wait", action="store_true",
                       help="if a gaffer run holds this workspace, exit 3 at once instead of waiting")
    add_flags(clean, RUN, LOCAL_CACHE_SETTINGS)


def _add_cache(cache: argparse.ArgumentParser) -> None:
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION", parser_class=_Parser, required=True)
    for name, text in (
        ("status", "entries, size and the hit rate of recent builds"),
        ("gc", "evict least-recently-used entries down to the size bound"),
        ("verify", "re-hash every blob and action result; evict corrupt ones (exit status 1 if any)"),
        ("clean", "remove every entry"),
    ):
        action = cache_sub.add_parser(name, help=text, description=text)
        add_flags(action, RUN, LOCAL_CACHE_SETTINGS)
        if name == "status":
            action.add_argument("--json", action="store_true", help="print the status as JSON")


def _add_status(status: argparse.ArgumentParser) -> None:
    status.add_argument("--server", required=True, metavar="URL",
                        help="gaffer serve's HTTP address, e.g. http://farm:8080 (its --http port)")
    status.add_argument("--token-file", metavar="FILE", help="a file holding the server's bearer token")
    status.add_argument("--json", action="store_true", help="print the status document as JSON")


# Each subcommand: its help in `gaffer --help`, and what its parser adds (None: its own front end parses it).
_SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None] | None]] = {
    "run": ("build targets (every task when none is named)", _add_run),
    "explain": ("say what changed since a task last ran", _add_explain),
    "clean": ("remove the declared outputs of targets (default: all tasks)", _add_clean),
    "cache": ("inspect and maintain the local cache", _add_cache),
    "status": ("show a gaffer serve's workers, queue and recent actions", _add_status),
    "serve": ("run a cache and execution server (REAPI gRPC + Bazel HTTP): 'gaffer serve --help'", None),
    "worker": ("run actions for gaffer serve's execution service: 'gaffer worker --help'", None),
    "gocache": ("a GOCACHEPROG program on gaffer's cache: 'gaffer gocache --help'", None),
    "cc": ("compile through the cache: 'gaffer cc -- gcc -c x.c' ('gaffer cc --help')", None),
    "ld": ("link through the cache: 'gaffer ld -- gcc -o app x.o' ('gaffer ld --help')", None),
}
_DETAILS: dict[str, dict[str, Any]] = {
    "run": {"description": "Build TARGETs and their dependencies, e.g. 'gaffer run distributed-build --graph "
                           "graph.json -j 4'.", "formatter_class": argparse.RawDescriptionHelpFormatter},
    "explain": {"description": "Compare TASK's inputs, env values, command and deps with its last run."},
    "clean": {"description": "Remove the declared outputs of TARGETs and their dependencies and forget their last "
                             "runs; the cache keeps its entries, so the next build restores them.",
              "epilog": "exit status: 0 done; 2 a bad flag, graph or target; 3 the workspace is busy and --no-wait "
                        "was given, or the cache cannot be emptied (--all)"},
    "cache": {"description": "Inspect and maintain the local cache: --cache-dir, else GAFFER_CACHE_DIR, else "
                             "gaffer.toml's [cache] dir (the nearest from the working directory upward, then the "
                             "user's), else $XDG_CACHE_HOME/gaffer, else ~/.cache/gaffer.",
              "epilog": "exit status: 0 done; 1 verify found corrupt entries; 2 a bad flag or setting; 3 the cache "
                        "cannot be used, or (gc, verify, clean) a gaffer serve uses it"},
    "status": {"description": "Print what the status page of a gaffer serve shows: its workers, the queue, running "
                              "and recent actions, the cache's hit rate.",
               "epilog": "exit status: 0 shown; 2 a bad flag, a token missing or refused, or no gaffer serve status at "
                         "that address; 3 the server cannot be reached"},
}


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    return exit_status("gaffer", lambda: _dispatch(args_list), say_interrupted=True)


def _dispatch(args_list: list[str]) -> int:
    if args_list and args_list[0] == "serve":
        from gaffer.server.main import serve_main

        return serve_main(args_list[1:])
    if args_list and args_list[0] == "worker":
        from gaffer.worker.main import worker_main

        return worker_main(args_list[1:])
    if args_list and args_list[0] == "gocache":
        from gaffer.gocache.main import gocache_main

        return gocache_main(args_list[1:])
    if args_list and args_list[0] in ("cc", "ld"):
        from gaffer.cc.main import cc_main

        return cc_main(args_list[0], args_list[1:])
    if args_list[:1] == ["explain"] and "--" in args_list and len(args_list) - args_list.index("--") > 2:
        # `gaffer explain -- gcc -c x.c`: a compile, not a task; `gaffer explain -- -x` is the task named -x
        from gaffer.cc.main import cc_main

        return cc_main("cc", ["--explain", *args_list[1:]])
    args = build_parser(args_list[0] if args_list else None).parse_args(args_list)
    if args.command is None:
        build_parser().print_help(sys.stderr)
        return 2
    handler = {"run": cmd_run, "explain": cmd_explain, "clean": cmd_clean, "cache": cmd_cache,
               "status": cmd_status}[args.command]
    return handler(args)


def cmd_run(args: argparse.Namespace) -> int:
    from gaffer.run import run

    return run(args)


def cmd_explain(args: argparse.Namespace) -> int:
    from gaffer.explain import explain_task
    from gaffer.graph import load_graph

    for line in explain_task(load_graph(args.graph), args.task):
        print(line)
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from gaffer.maintenance import clean

    return clean(args)


def cmd_cache(args: argparse.Namespace) -> int:
    from gaffer.maintenance import cache

    return cache(args)


def cmd_status(args: argparse.Namespace) -> int:
    from gaffer.monitor import status

    return status(args)


def entry() -> None:
    """The console scripts' entry point. Everything is written and closed by the time `main` returns, so exit
    without the interpreter's teardown: with grpc, botocore or redis loaded that alone costs 40-80 ms."""
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)
