"""`gaffer cc --daemon`: the per-user process every compile's client talks to, and `gaffer cc --stop-daemon`.

Build tools start one launcher per compile; a Python start alone costs more than a ccache hit. So the work
happens here, in one long-lived process per user that keeps the cache, the stat cache and the counters warm,
reached over a Unix socket by the tiny C client (client.c). It is started by the first client that finds no one
listening (detached: a build step's process group is killed when the step ends), serves connections
concurrently (a thread each: compiles wait on subprocesses), and exits after an idle period.

One per user: the flock on daemon.lock decides, and the holder's pid is written there for --stop-daemon. The
socket appears (by rename) only once it listens, so a client either connects or starts a daemon; a second
daemon started meanwhile finds the lock held and a live socket, and exits quietly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType

from gaffer.cc.launch import (
    DEBUG_WORDS,
    DONE,
    PATH_SETTINGS,
    RUN_IT,
    Context,
    Request,
    Response,
    handle,
    private_directory,
)
from gaffer.errors import EnvironmentProblem, GafferError
from gaffer.execute.orphans import RUN_ENV
from gaffer.units import format_count

SOCKET_NAME, LOCK_NAME, LOG_NAME = "daemon.sock", "daemon.lock", "daemon.log"
FLUSHED_NAME = "stats.flushed"  # replaced after each flush asked for with SIGUSR1: the asker's answer
MAX_CONNECTIONS = 512  # beyond this, accept waits: a make -j1000 queues in the kernel's backlog
READ_TIMEOUT_S = 30.0  # a client sends its whole request at once; one that stalls must not hold a thread
HANDOVER_S = 2.0  # how long a new daemon waits for an exiting one's lock (the client waits as long)
DRAIN_S = 600.0  # at a stop, how long running compiles may take to finish before the daemon exits anyway
STATS_EVERY_S = 1.0  # how stale `gaffer cc --show-stats` may be while the daemon runs
SAVE_EVERY_S = 60.0  # the stat cache and compiler identities (larger) are saved less often, and at exit

log = logging.getLogger("gaffer.cc.daemon")


class _Stop(Exception):
    """SIGTERM or SIGINT: stop accepting, finish what runs, exit."""


def serve(directory: Path, idle_s: float) -> int:
    """Run the daemon until it has been idle for `idle_s` or is told to stop. 0 also when another daemon already
    serves this user (the caller only wanted one to be there)."""
    private_directory(str(directory))
    lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _setup_log(directory / LOG_NAME)
        if not _take_lock(lock_fd, directory / SOCKET_NAME):
            log.info("not started: daemon %s holds %s", _pid_in(lock_fd), LOCK_NAME)
            return 0
        try:
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:  # a full disk: say where
            raise EnvironmentProblem(f"{directory / LOCK_NAME}: cannot write the daemon's pid: {e.strerror}") from None
        return _Daemon(directory, idle_s).run()
    finally:
        os.close(lock_fd)


def _take_lock(lock_fd: int, sock_path: Path) -> bool:
    """True once this process holds the lock; False if another daemon holds it and answers on the socket. A
    daemon that is exiting holds the lock a moment after its socket is gone: wait for it, briefly."""
    deadline = time.monotonic() + HANDOVER_S
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        if _answers(sock_path) or time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _answers(sock_path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(sock_path))
            return True
        except OSError:
            return False


def _setup_log(path: Path) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class _Daemon:
    def __init__(self, directory: Path, idle_s: float) -> None:
        self.directory = directory
        self.idle_s = idle_s
        self.sock_path = directory / SOCKET_NAME
        self.lock = threading.Condition()
        self.active = 0
        self.last_activity = time.monotonic()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.contexts = _Contexts(directory)
        self.served = 0

    def _sweep_scratch(self) -> None:
        """Scratch files of a launcher or daemon killed mid-compile go once a daemon is listening (off the path of
        the compile that started it)."""
        from gaffer.cc.flow import sweep_temp_files

        if removed := sweep_temp_files(self.directory):
            log.info("removed %s left by processes that are gone", format_count(removed, "scratch file"))

    def run(self) -> int:
        listener = self._listen()
        stop_flushing, flush_now = threading.Event(), threading.Event()
        flusher = threading.Thread(target=self.contexts.flush_until, args=(stop_flushing, flush_now), daemon=True)
        previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda signum, frame: flush_now.set())
        reason = "idle"
        try:
            log.info("started: pid %d, socket %s, idle timeout %gs", os.getpid(), self.sock_path, self.idle_s)
            threading.Thread(target=self._refresh_client, daemon=True).start()
            threading.Thread(target=self._sweep_scratch, daemon=True).start()
            flusher.start()
            self._accept_loop(listener)
        except _Stop:
            reason = "told to stop"
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._unlink_socket(listener)
            self._accept_backlog(listener)
            listener.close()
        with self.lock:  # compiles in flight finish and answer their clients
            self.lock.wait_for(lambda: self.active == 0, timeout=DRAIN_S)
        stop_flushing.set()
        flush_now.set()
        if flusher.is_alive():
            flusher.join()
        self.contexts.close()
        log.info("exiting (%s) after %s", reason, format_count(self.served, "request"))
        return 0

    def _refresh_client(self) -> None:
        """Rebuild an installed client built from older source (gaffer was upgraded): the next compiles use it."""
        from gaffer.cc.client import binary_path, ensure_client

        if binary_path(self.directory).exists():
            try:
                ensure_client(self.directory)
            except (EnvironmentProblem, OSError) as e:  # the old client still works; the user may reinstall
                log.info("could not rebuild the client: %s", e)

    def _listen(self) -> socket.socket:
        """Bind beside the final name and rename onto it: the socket path exists only while someone listens."""
        tmp = self.directory / f"{SOCKET_NAME}.{os.getpid()}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            old_umask = os.umask(0o177)
            try:
                listener.bind(str(tmp))
            finally:
                os.umask(old_umask)
            listener.listen(128)
            os.replace(tmp, self.sock_path)
        except OSError as e:
            listener.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise EnvironmentProblem(f"{self.sock_path}: cannot listen: {e.strerror or e}") from None
        self.inode = self.sock_path.stat().st_ino
        return listener

    def _unlink_socket(self, listener: socket.socket) -> None:
        """Remove the socket path if it is still ours (a successor may have replaced it)."""
        with contextlib.suppress(OSError):
            if self.sock_path.stat().st_ino == self.inode:
                self.sock_path.unlink()

    def _accept_backlog(self, listener: socket.socket) -> None:
        """Serve the clients that connected before the socket's name was removed but were not accepted yet: closed
        unanswered, each would run its compiler uncached with a warning."""
        listener.setblocking(False)
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, OSError):
                return
            conn.setblocking(True)
            self.slots.acquire()
            self._start(conn)

    def _start(self, conn: socket.socket) -> None:
        """Serve `conn` on its own thread (the caller holds one of the slots for it)."""
        with self.lock:
            self.active += 1
            self.served += 1
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            with self.lock:
                quiet = time.monotonic() - self.last_activity
                if self.active == 0 and quiet >= self.idle_s:
                    return
            listener.settimeout(max(0.05, min(self.idle_s - quiet, 5.0)) if self.active == 0 else 5.0)
            if not self.slots.acquire(timeout=5.0):
                continue
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                self.slots.release()
                continue
            except BaseException:
                self.slots.release()
                raise
            self._start(conn)

    def _serve(self, conn: socket.socket) -> None:
        from gaffer.cc.protocol import FrameError, encode_response, read_request

        try:
            with conn, conn.makefile("rb") as reader:
                conn.settimeout(READ_TIMEOUT_S)
                try:
                    request = read_request(reader.read)
                except (FrameError, OSError) as e:
                    log.info("bad request, connection closed: %s", e)
                    return
                conn.settimeout(None)
                response = self._answer(dataclasses.replace(request, client=conn.fileno()))
                try:
                    conn.sendall(encode_response(response))
                except OSError as e:
                    log.info("client gone before its answer (%s): %s", " ".join(request.argv[:3]), e)
        finally:
            self.slots.release()
            with self.lock:
                self.active -= 1
                self.last_activity = time.monotonic()
                self.lock.notify_all()


    def _answer(self, request: Request) -> Response:
        try:
            return handle(request, self.contexts.get(request))
        except GafferError as e:  # a bad setting in the compile's environment: what `gaffer cc` would say
            return Response(DONE, e.exit_status, b"", f"gaffer: {e}\n".encode())
        except Exception:  # a bug must cost one compile its caching, never the daemon
            log.exception("internal error on %s; the client runs the compiler itself", request.argv[:3])
            return RUN_IT


class _Contexts:
    """One launch Context per configuration the compiles carry. A compile's settings are those of its own
    environment and gaffer.toml files, as an in-process `gaffer cc` would read them (a CI job's read-only cache,
    another project's base directory), not those of whichever compile happened to start the daemon. The key is
    what settings are read from: the GAFFER_* variables, and each gaffer.toml with its modification time."""

    def __init__(self, directory: Path) -> None:
        self.directory = str(directory)
        self._by_key: dict[tuple[object, ...], Context] = {}
        self._lock = threading.Lock()

    def get(self, request: Request) -> Context:
        env = {**request.env, "GAFFER_CC_DIR": self.directory}  # the directory the client found us in
        key = _settings_key(env, request.cwd)
        with self._lock:
            context = self._by_key.get(key)
            if context is None:
                context = Context.from_environment(env, request.cwd)
                self._by_key[key] = context
            return context

    def flush_until(self, stop: threading.Event, now: threading.Event) -> None:
        """Write the counters every STATS_EVERY_S (the compiles count in memory: a file write per compile would
        cost a hit more than its lookup), and at once when `now` is set (`gaffer cc --show-stats` asks, by
        SIGUSR1, and waits for FLUSHED_NAME to be replaced); everything the contexts learned every SAVE_EVERY_S."""
        last_save = time.monotonic()
        while not stop.is_set():
            asked = now.wait(STATS_EVERY_S)
            now.clear()
            save = time.monotonic() - last_save >= SAVE_EVERY_S
            with self._lock:
                contexts = list(self._by_key.values())
            for context in contexts:
                try:
                    if save:
                        context.flush()
                    else:
                        context.stats.flush()
                except Exception:  # a failed save is retried next time; the daemon goes on
                    log.exception("while saving the counters")
            if save:
                last_save = time.monotonic()
            if asked:
                _replace(Path(self.directory) / FLUSHED_NAME, f"{time.time()}\n")

    def close(self) -> None:
        """Save what the contexts learned (counters, stat cache, compilers) and finish their uploads."""
        for context in self._by_key.values():
            try:
                context.close()
            except Exception:  # one context's failure must not keep the others from saving
                log.exception("while closing a context")


def _settings_key(env: dict[str, str], cwd: str) -> tuple[object, ...]:
    from gaffer.config import CC, nearest_toml, setting, user_config_path

    variables = tuple(sorted((k, v) for k, v in env.items() if k.startswith("GAFFER_") and k != RUN_ENV))
    files = tuple((path, _mtime(path)) for path in (user_config_path(env), nearest_toml(cwd)) if path)
    relative = any(not os.path.isabs(env[v]) and env[v].lower() not in DEBUG_WORDS
                   for name in PATH_SETTINGS for v in setting(name).variables(CC) if env.get(v))
    return variables, files, cwd if relative else None  # a relative path is this directory's


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        log.info("cannot write %s: %s", path, e)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


def stop(directory: Path, wait_s: float = DRAIN_S) -> str:
    """Ask the daemon to stop (SIGTERM to the pid in its lock file) and wait until it has released the lock.
    Returns what happened, as one line for the user."""
    pid = running_pid(directory)
    if pid is None:
        return "no daemon is running"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while running_pid(directory) == pid:
        if time.monotonic() > deadline:
            raise EnvironmentProblem(f"the daemon (pid {pid}) did not stop within {wait_s:g}s")
        time.sleep(0.02)
    return f"stopped the daemon (pid {pid})"


def flush_stats(directory: Path, wait_s: float = 5.0) -> None:
    """Have the running daemon (if any) write the counters it holds in memory, and wait until it has: what
    `--show-stats` then reads is exact."""
    pid = running_pid(directory)
    if pid is None:
        return
    flushed = directory / FLUSHED_NAME
    before = _inode(flushed)
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while _inode(flushed) == before and time.monotonic() < deadline:
        time.sleep(0.005)


def running_pid(directory: Path) -> int | None:
    """The pid of the daemon holding the lock in `directory`; None when no daemon holds it."""
    try:
        lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return _pid_in(lock_fd)
    finally:
        os.close(lock_fd)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _pid_in(lock_fd: int) -> int | None:
    """The pid the lock holder wrote; it writes it just after locking, so allow it a moment."""
    deadline = time.monotonic() + 1.0
    while True:
        text = os.pread(lock_fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
