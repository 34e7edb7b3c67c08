"""Errors that map to gaffer's exit statuses (1 build failed, 2 bad input, 3 environment), and the one handler
that turns them into a front end's last line and status.

Imported by gobuildcache before its capabilities line: standard library modules it loads anyway, nothing more."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

# A full or read-only file system, a failing disk, no permission, no descriptors left: the machine's state.
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM,
                                 errno.EMFILE, errno.ENFILE})


class GafferError(Exception):
    """Base class: printed as one line `gaffer: <message>` and mapped to `exit_status`."""

    exit_status = 3


class BuildFailed(GafferError):
    """A task (or the build) failed: exit status 1."""

    exit_status = 1


class UserError(GafferError):
    """The user's input was wrong (usage, config, graph file, env var): exit status 2."""

    exit_status = 2


class EnvironmentProblem(GafferError):
    """Something outside the user's input is broken (disk full, server refused): exit status 3."""

    exit_status = 3


def not_utf8(text: str) -> str | None:
    """`text` as a user can read it (bad bytes as `\\xNN`) when it is not valid UTF-8, else None. A file name or
    environment value the OS gave as arbitrary bytes comes to Python with lone surrogates; REAPI's strings (file
    names, environment values) are UTF-8, so gaffer refuses such a name instead of keying it some other way."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no bytes decode to (a JSON \ud800 escape)
        return text.encode("utf-8", "backslashreplace").decode("ascii")
    return raw.decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """`text` with every character a terminal would act on (ESC, BEL, CR, newline, C1 controls...) shown escaped:
    for names and messages that came from a peer (a client's request metadata, a worker), never printed raw."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def say(prog: str, message: str) -> None:
    """One line `<prog>: <message>` on stderr from a long-running front end (gaffer serve, gaffer worker), whose
    messages quote its peers (escaped: one line, nothing a terminal acts on). A terminal closed under it (EIO) or a
    log reader gone (EPIPE) costs the line, never the work."""
    try:
        print(f"{prog}: {printable(message)}", file=sys.stderr, flush=True)
    except OSError:
        pass


def exit_status(prog: str, body: Callable[[], int], *, say_interrupted: bool = False) -> int:
    """Run a front end's `body` and map what escapes it to an exit status, the one rule for `gaffer`,
    `gaffer serve` and `gobuildcache`: a GafferError is one line `<prog>: <message>` and its status; Ctrl-C is
    130 (said on stderr with `say_interrupted`); a closed stdout (`... | head`) is 1, nobody being left to tell;
    a file-system failure nothing expected (a full or read-only disk) is one line and the status 3."""
    try:
        return body()
    except GafferError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        if say_interrupted:
            print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as e:  # one the code did not expect, from the machine rather than from gaffer: one line too
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        print(f"{prog}: {e.filename}: {e.strerror}" if e.filename else f"{prog}: {e.strerror}", file=sys.stderr)
        return EnvironmentProblem.exit_status
