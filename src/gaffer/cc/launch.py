"""The launcher's one entry point: `handle(Request, Context) -> Response`, called in-process by `gaffer cc` /
`gaffer ld` and once per connection by the per-user daemon (its fast client sends the same Request).

A Response either carries the finished compile's exit status and output streams (verdict DONE: a hit replayed,
or a miss that gaffer ran), or says RUN_YOURSELF: the caller then executes the command unchanged, so a command
gaffer does not cache keeps its stdin, terminal and signals. Nothing here fails a build: a cache that cannot be
used means the compiler runs, as if gaffer were not there.

Light at import: the cache stack, protobuf and subprocess are imported when first needed.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gaffer.cc.compiler import Compilers
from gaffer.cc.history import History
from gaffer.cc.slots import LocalSlots
from gaffer.cc.stats import Stats
from gaffer.digest import Digest, StatCache, file_system_now
from gaffer.errors import EnvironmentProblem, UserError

if TYPE_CHECKING:
    from gaffer.cache.tiered import TieredCache
    from gaffer.cc.remote import Distributor
    from gaffer.config import Settings

COMPILE, LINK = 0, 1  # Request.kind
DONE, RUN_YOURSELF = 0, 1  # Response.verdict


@dataclass(frozen=True)
class Request:
    kind: int
    cwd: str  # the caller's working directory (getcwd: physical)
    argv: Sequence[str]  # argv[0] is the compiler as the user gave it
    env: Mapping[str, str]
    client: int | None = None  # the daemon's connection to the client: its hang-up stops the compile (flow.run)
    umask: int | None = None  # the client's, for the files the compile makes (None: this process's own)


@dataclass(frozen=True)
class Response:
    verdict: int
    exit_code: int = 0
    stdout: bytes = b""
    stderr: bytes = b""


RUN_IT = Response(RUN_YOURSELF)
# the settings that name a path: one given relative (a flag, a variable) is relative to the compile's directory
PATH_SETTINGS = ("cache_dir", "cc_dir", "base_dir", "cc_debug")
DEBUG_OFF, DEBUG_STDERR = ("", "0", "false", "no", "off"), ("1", "true", "yes", "on", "stderr")  # else a file
DEBUG_WORDS = (*DEBUG_OFF, *DEBUG_STDERR)


class Context:
    """What outlives one compile: the cache (opened on first use), the stat cache, compiler identities, the
    counters and the debug log. One per daemon, or per `gaffer cc` process."""

    def __init__(self, settings: Settings, log: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.directory = private_directory(settings.cc_dir)
        self.base_dir = os.path.normpath(os.path.abspath(settings.base_dir)) if settings.base_dir else None
        self.preprocessor: bool = settings.cc_preprocessor
        self.log = log or debug_log(settings.cc_debug, settings.sources.get("cc_debug") or "GAFFER_CC_DEBUG")
        self.stat_cache = StatCache.load(os.path.join(self.directory, "stats"))
        self.stat_cache.device = os.stat(self.directory).st_dev  # where its moment is read; sources may be elsewhere
        self.compilers = Compilers(os.path.join(self.directory, "compilers"), self.stat_cache)
        self.stats = Stats(self.directory)
        self.history = History(os.path.join(self.directory, "history"))
        self._cache: TieredCache | None = None
        self._lock = threading.Lock()
        self._moment_lock = threading.Lock()
        self._in_flight = 0
        self.time_macros: dict[str, bool] = {}  # blob hash -> does it use __DATE__/__TIME__
        self.assembler_reads: dict[str, bool] = {}  # blob hash -> does it have the assembler read a file
        # with a farm (--remote): its client (cc/remote.py, opened on first use) and the local limit
        self.distributor: Distributor | None = None
        self._slots = LocalSlots(self.directory, settings.cc_local_jobs) if settings.remote else None

    @classmethod
    def from_environment(cls, env: Mapping[str, str], cwd: str, flags: Mapping[str, object] | None = None,
                         log: Callable[[str], None] | None = None) -> Context:
        """The context of `gaffer cc`/`gaffer ld`: settings from flags, the environment and gaffer.toml."""
        from gaffer.config import CC, check_urls, load_nearest

        settings = load_nearest(CC, flags or {}, env, cwd)
        for name in PATH_SETTINGS:  # relative to this working directory, also when the daemon (in /) reads them
            value = getattr(settings, name)
            if value and not os.path.isabs(value) and str(value).lower() not in DEBUG_WORDS:
                setattr(settings, name, os.path.join(cwd, value))
        check_urls(settings.remotes, settings.sources["remotes"])
        if settings.remote is not None:
            check_urls([settings.remote], settings.sources["remote"])
        return cls(settings, log)

    def cache(self) -> TieredCache:
        with self._lock:
            if self._cache is None:
                from gaffer.cache.factory import open_cache, open_local

                self.settings.cache_dir = Path(self.settings.cache_dir)
                local = open_local(self.settings, report=self.warn, full_is_read_only=True)
                self._cache = open_cache(local, self.settings.remotes, read_only=self.settings.read_only,
                                         timeout=self.settings.timeout, report=self.warn)
            return self._cache

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Around each request: the stat cache records a signature as trusted only if the file is older than
        a moment taken before anything read it. With requests served at once (the daemon) that moment moves
        on only when none is in flight, so it precedes every read of every request in flight."""
        with self._moment_lock:
            if self._in_flight == 0:
                self.stat_cache.moment = file_system_now(Path(self.directory), create=False)
            self._in_flight += 1
        try:
            yield
        finally:
            with self._moment_lock:
                self._in_flight -= 1

    def local_slot(self) -> AbstractContextManager[None]:
        """Around a compiler process run here: with a farm, one of the local slots (slots.py)."""
        return self._slots.hold() if self._slots is not None else nullcontext()

    def digest(self, path: str) -> Digest | None:
        """A file's digest through the stat cache; None if it cannot be read."""
        try:
            return self.stat_cache.digest(path)
        except OSError:
            return None

    def warn(self, message: str) -> None:
        print(f"gaffer: warning: {message}", file=sys.stderr)

    def flush(self) -> None:
        """Write the counters and what this process learned (the daemon calls it now and then)."""
        self.stats.flush()
        try:
            self.stat_cache.save(os.path.join(self.directory, "stats"))
        except OSError:
            pass  # hashed again next time
        self.compilers.save()

    def close(self) -> None:
        """`flush`, and finish uploads to remote tiers."""
        self.flush()
        if self.distributor is not None:
            self.distributor.close()
        if self._cache is not None:
            self._cache.close()


def private_directory(path: str) -> str:
    """The launcher's directory, made 0700 (made private if it is this user's), and refused (exit 3) if it
    belongs to another user: one who can write there could plant results or answer on the daemon's socket."""
    path = os.path.abspath(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.chmod(path, 0o700)
            st = os.stat(path)
    except OSError as e:
        raise EnvironmentProblem(f"launcher directory {path}: {e.strerror}") from None
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise EnvironmentProblem(f"launcher directory {path} belongs to another user (uid {st.st_uid}): set "
                                 "GAFFER_CC_DIR to a directory of your own")
    return path


def debug_log(setting: str, where: str = "GAFFER_CC_DEBUG") -> Callable[[str], None]:
    """GAFFER_CC_DEBUG: empty or 0 is off, 1 (true, yes, on) logs to stderr, anything else is a file to append
    to: one that cannot be opened is a bad setting (asked for, the log must not vanish without a word)."""
    if setting.lower() in DEBUG_OFF:
        return lambda line: None
    if setting.lower() in DEBUG_STDERR:
        return lambda line: print(f"gaffer cc: {line}", file=sys.stderr, flush=True)
    path = setting
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise UserError(f"{where}: cannot write the debug log {path}: {e.strerror}") from None

    def to_file(line: str) -> None:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"gaffer cc: [{os.getpid()}] {line}\n")
        except OSError:
            pass

    return to_file


def handle(request: Request, context: Context) -> Response:
    """Serve one compile (kind COMPILE) or link (kind LINK). Safe to call from several threads at once with one
    Context (the daemon); its counters reach the stats file at `context.flush()`."""
    with context.serving():
        try:
            if request.kind == LINK:
                from gaffer.cc.link import handle_link

                return handle_link(request, context)
            from gaffer.cc.compile import handle_compile

            return handle_compile(request, context)
        except Exception as e:  # noqa: BLE001 - a launcher bug must not fail the build: the caller runs the command
            context.log(f"{' '.join(request.argv)}: internal error, running it unchanged: {type(e).__name__}: {e}")
            context.stats.add({"local": 1}, reason_group="uncacheable", reason="internal error")
            return RUN_IT
