"""`gaffer worker`: run actions for a REAPI server's execution service until SIGTERM or SIGINT.

    gaffer worker --server farm:9092 --max-jobs 4 --dir /var/cache/gaffer-worker --env-pass GOCACHE

The worker connects out (it listens on no port), opens a bot session, and runs the leases it is given. The
first SIGTERM, SIGINT or SIGHUP stops it taking work: the running actions finish and are reported, then it exits
0. A SIGTERM or SIGINT after it kills them (they are reported CANCELLED, and the server runs them elsewhere); a
SIGHUP after it is ignored (a closed terminal sends it twice).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType
from typing import IO, NoReturn

from gaffer.cache.urls import read_token
from gaffer.config import WORKER, Settings, add_flags, environment_help, load_nearest
from gaffer.errors import EnvironmentProblem, UserError, exit_status
from gaffer.graph.model import DEFAULT_PASS_ENV


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit status 2 (argparse would print the whole usage)."""
        raise UserError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="gaffer worker",
        description="Run actions for gaffer serve (or another REAPI server with a Bots service).",
        epilog="example: gaffer worker --server farm:9092 --max-jobs 4 --env-pass GOCACHE\n\n"
               "settings: a flag wins over its variable, which wins over gaffer.toml (the nearest from the working\n"
               "directory upward, then $XDG_CONFIG_HOME/gaffer/gaffer.toml, else ~/.config/gaffer/gaffer.toml)\n"
               + environment_help(WORKER)
               + "\nexit status:\n"
               "  0  stopped by SIGTERM or SIGINT, once the running actions finished and were reported\n"
               "  2  a bad flag or setting, or the server refuses the worker (a missing or wrong token)\n"
               "  3  an environment problem (the directory cannot be used, the session with the server failed)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flags(p, WORKER)
    return p


def worker_main(argv: list[str]) -> int:
    """Parse `argv` (the arguments after `worker`), work until a stop signal; the exit status."""
    def body() -> int:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
        return _work(load_nearest(WORKER, vars(args)))

    return exit_status("gaffer worker", body)


def _work(settings: Settings) -> int:
    if settings.server is None:
        raise UserError("no server to work for: give --server HOST:PORT")
    host, port = settings.server
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    token = None
    if settings.worker_token_file:
        token = read_token(Path(settings.worker_token_file), settings.sources["worker_token_file"] or "--token-file")
    directory = Path(settings.worker_dir)

    import grpc  # heavy imports only now the settings are good

    from gaffer.actions import remove_outputs
    from gaffer.cache.base import TierError
    from gaffer.cache.disk import DiskStore
    from gaffer.cache.grpc import GrpcTier
    from gaffer.execute.base import task_environment
    from gaffer.worker.blobs import BlobCache
    from gaffer.worker.capabilities import describe
    from gaffer.worker.session import Refused, Session, say

    where = f"{settings.sources['worker_dir'] or '--dir'} {directory}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # FileExistsError: a file stands there
        reason = "a file is in the way" if isinstance(e, FileExistsError) else e.strerror
        raise EnvironmentProblem(f"{where}: cannot create the directory: {reason}") from None
    try:
        lock = _lock(directory, where)
        _kill_left_running(directory / "exec")
        remove_outputs(directory, ["exec"])  # the exec roots a killed worker left behind
        (directory / "exec").mkdir()
        local = DiskStore(directory / "blobs", settings.worker_max_size)
        local.remove_stale_temp_files(ours_too=True)  # a killed worker's logs and fetches, outside the bound
    except (TierError, OSError) as e:
        raise EnvironmentProblem(f"{where}: {e}") from None
    bot_id = f"{socket.gethostname()}-{settings.worker_name or os.getpid()}"
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    channel = grpc.insecure_channel(target, [("grpc.max_receive_message_length", -1),
                                             ("grpc.max_send_message_length", -1),
                                             ("grpc.primary_user_agent", "gaffer-worker")])
    server = GrpcTier(target, settings.instance, token=token, timeout=60.0)
    worker = describe(bot_id, settings.max_jobs, settings.platform, link=not settings.no_link)
    env = task_environment((), sorted({*DEFAULT_PASS_ENV, *settings.env_pass}))
    session = Session(channel, settings.instance, bot_id, worker, BlobCache(local, server, say), directory / "exec", env,
                      settings.max_jobs, metadata)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not stopping.is_set():
            stopping.set()
            say(f"{name}: taking no more work; running actions finish (SIGTERM or SIGINT again to kill them)")
            session.stop()
        elif signum == signal.SIGHUP:  # a closed terminal sends it twice (to the shell's jobs, then to the group)
            say(f"{name}: already stopping, ignored (SIGTERM or SIGINT to kill the running actions)")
        else:
            say(f"{name}: killing the running actions")
            session.kill()

    # A signal may reach any thread, and Python runs its handler in the main thread only once that thread runs
    # again: the main thread waits on a pipe that each signal writes to (the wakeup fd), as does the loop's end.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: a closed terminal, not a sudden death
        signal.signal(signum, on_signal)
    say(f"working for {target} as {bot_id}, {settings.max_jobs} at once, blobs in {directory}")
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            session.run()
        except Exception as e:  # noqa: BLE001 - reported by the main thread as one line, never a traceback
            failed.append(e)
        finally:
            finished.set()  # before the write: once the main thread reads it, the flag is seen
            os.write(wake_write, b"\0")

    finished = threading.Event()
    loop = threading.Thread(target=serve, name="session")
    loop.start()
    while not finished.is_set():
        os.read(wake_read, 64)  # then the handlers of the signals that came run, here
    loop.join()
    server.close()
    channel.close()
    lock.close()
    if failed and isinstance(failed[0], Refused):
        hint = " (see --token-file)" if failed[0].token else ""
        raise UserError(f"{target} refuses the worker: {failed[0]}{hint}")
    if failed:
        raise EnvironmentProblem(f"the session with {target} failed: {failed[0]!r}")
    say("stopped")
    return 0


def _kill_left_running(exec_dir: Path) -> None:
    """Kill the actions a killed worker left running (each runs in a session of its own, so it outlives the worker
    and would run on beside the next worker's): the sessions of the processes whose working directory is in one
    of its exec roots, found in /proc (nothing found without it). A session's processes share its group."""
    inside = f"{os.path.realpath(exec_dir)}/"
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return
    ours = os.getsid(0)
    for pid in pids:
        try:
            session = os.getsid(pid)
            if session != ours and os.getpgid(pid) == session and os.readlink(f"/proc/{pid}/cwd").startswith(inside):
                os.killpg(session, signal.SIGKILL)
        except OSError:  # gone meanwhile, or another user's
            continue


def _lock(directory: Path, where: str) -> IO[str]:
    """Hold DIR/worker.lock for the worker's life: one worker per directory, so the exec roots found there at
    start are a dead worker's, safe to remove."""
    lock = open(directory / "worker.lock", "a")  # noqa: SIM115 - held open until the worker stops
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UserError(f"{where}: another gaffer worker uses this directory (give each worker its own)") from None
    return lock
