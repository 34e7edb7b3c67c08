"""`gobuildcache` (and `gaffer gocache`): a GOCACHEPROG program over gaffer's cache.

`go` starts this program once per command and blocks until the capabilities line arrives, so this module imports
nothing heavy at top level: the environment is checked, the capabilities line goes out, and only then are the
protocol and the cache imported and opened.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence

from gaffer.tuples import TYPE_CHECKING

if TYPE_CHECKING:
    from gaffer.gocache.protocol import Handler

USAGE = """\
usage: gobuildcache [clear | clear-local | clear-remote]     (also: gaffer gocache ...)

A GOCACHEPROG program: `go` runs it and talks to it on stdin/stdout.
    GOCACHEPROG=gobuildcache go build ./...

With no argument it serves one `go` command. `clear` empties the local tier and the remote tiers,
`clear-local` and `clear-remote` one side only.

Settings: a variable wins over gaffer.toml (the nearest from the working directory upward, then
$XDG_CONFIG_HOME/gaffer/gaffer.toml, else ~/.config/gaffer/gaffer.toml), which wins over the default. The
first variable named is the Go gobuildcache program's own where it has one. S3 credentials, region and
endpoint come from the standard AWS chain (AWS_REGION, AWS_ENDPOINT_URL, AWS_PROFILE, ...).

Exit status: 0 done; 2 a bad setting or argument, or a malformed request from go on stdin (one line says
which); 3 an environment problem (the local directory cannot be used, or belongs to another user).
"""

CLEAR_COMMANDS = ("clear", "clear-local", "clear-remote")


def main() -> None:
    """The `gobuildcache` console script's entry point. Exits without Python's teardown (joining idle threads,
    freeing every module), which a caller reading go's stderr, which this process shares, would wait for: everything is written
    by then (the close reply goes out only after the cache is flushed). The cyclic garbage collector is off until
    the cache is open: start-up is on go's path and makes no garbage worth a collection (~2 ms of CPU)."""
    gc.disable()
    status = gocache_main(sys.argv[1:])
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe (`| head`): nothing more can be said
        pass
    os._exit(status)


def gocache_main(argv: Sequence[str]) -> int:
    """Run `gobuildcache argv...`; the exit status (0 ok, 2 bad input or environment value, 3 environment)."""
    from gaffer.errors import exit_status

    return exit_status("gobuildcache", lambda: _run(list(argv)))  # a closed stdout: go went away, or `| head`


def _run(argv: list[str]) -> int:
    from gaffer.errors import EnvironmentProblem, UserError
    from gaffer.gocache.config import load_config

    if argv and argv[0] in ("-h", "--help", "help"):
        from gaffer.config import GOCACHE, environment_help

        sys.stdout.write(USAGE + environment_help(GOCACHE))
        return 0
    if len(argv) > 1 or (argv and argv[0] not in CLEAR_COMMANDS):
        raise UserError(f"unexpected arguments {' '.join(argv)!r} (expected nothing, or one of: "
                        f"{', '.join(CLEAR_COMMANDS)}; see gobuildcache --help)")
    config = load_config()
    if argv:
        from gaffer.gocache.store import clear

        clear(config, local=argv[0] != "clear-remote", remote=argv[0] != "clear-local")
        return 0

    from gaffer.gocache import CAPABILITIES

    try:
        os.write(sys.stdout.fileno(), CAPABILITIES)  # go waits for this line: before any other import
    except OSError as e:
        raise EnvironmentProblem(f"cannot write to stdout (is this run by go, as GOCACHEPROG?): {e.strerror}") from None
    from gaffer.gocache.protocol import serve

    def open_store() -> Handler:
        from gaffer.gocache.store import GoStore

        store = GoStore.open(config)
        gc.freeze()  # what start-up made lives as long as the process: later collections need not look at it
        gc.enable()
        return store

    # stdin unbuffered (the reader keeps its own buffer: one read takes what go wrote); stdout buffered, since
    # sys.stdout may be unbuffered (PYTHONUNBUFFERED) and a raw write can be partial
    with open(sys.stdin.fileno(), "rb", buffering=0, closefd=False) as stdin, \
            open(sys.stdout.fileno(), "wb", closefd=False) as out:
        serve(stdin, out, open_store, debug=config.debug)
    # go waits for our stdout to close, not for the process: release it now rather than after Python's shutdown
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
