"""`gaffer serve`: run the cache server until SIGTERM, SIGINT or SIGHUP, then stop cleanly (in-flight requests finish).

    gaffer serve --dir /srv/gaffer --max-size 200GiB --grpc 0.0.0.0:9092 --http 0.0.0.0:8080 --token-file t

Port 0 picks a free port; the line printed on stderr when listening names the ports actually bound.
Committed entries survive even kill -9: every write is a temp file renamed into place (DiskStore).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from gaffer.cache.urls import read_token, redact
from gaffer.config import SERVE, Settings, add_flags, check_urls, environment_help, load_nearest
from gaffer.errors import EnvironmentProblem, UserError, exit_status, say
from gaffer.malloc import keep_big_buffers
from gaffer.units import format_size

if TYPE_CHECKING:
    from gaffer.server.http import CacheHTTPServer
    from gaffer.server.reapi import GrpcServer
    from gaffer.server.store import ServerStore

PROG = "gaffer serve"
STOP_SLACK_S = 5.0  # beyond the grace period, for what must still finish after cancelled calls (the store's gc)
BACKEND_TIMEOUT_S = 30.0  # per request to the --backend


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit status 2 (argparse would print the whole usage)."""
        raise UserError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Serve a build cache over REAPI gRPC and the Bazel HTTP cache protocol, and run the REAPI\n"
                    "actions sent to the gRPC port on connected gaffer workers.",
        epilog="example: gaffer serve --dir /srv/gaffer --max-size 200GiB --grpc 0.0.0.0:9092 --http 0.0.0.0:8080 "
               "--token-file /etc/gaffer/token\n\n"
               "settings: a flag wins over its variable, which wins over gaffer.toml (the nearest from the working\n"
               "directory upward, then $XDG_CONFIG_HOME/gaffer/gaffer.toml, else ~/.config/gaffer/gaffer.toml)\n"
               + environment_help(SERVE)
               + "\nexit status:\n"
               "  0  stopped by SIGTERM, SIGINT or SIGHUP (calls in progress finished, or cancelled after --grace)\n"
               "  1  a stop still unfinished 5 s after --grace\n"
               "  2  a bad flag or setting (one line says which)\n"
               "  3  an environment problem: a port in use, a store another gaffer serve uses, a backend not reached\n"
               "  128+N  a second stop signal N, SIGTERM or SIGINT (a second SIGHUP is ignored)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flags(p, SERVE)
    return p


def serve_main(argv: list[str]) -> int:
    """Parse `argv` (the arguments after `serve`), serve until a stop signal; the exit status."""
    def body() -> int:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
        return _serve(load_nearest(SERVE, vars(args)))

    return exit_status(PROG, body)


def _serve(settings: Settings) -> int:
    if not settings.grpc and not settings.http:
        raise UserError("nothing to serve: give --grpc HOST:PORT and/or --http HOST:PORT")
    store_dir = Path(settings.dir)
    max_size = settings.serve_max_size
    grpc_address, http_address = settings.grpc, settings.http
    token_text = None
    if settings.token_file:
        token_text = read_token(settings.token_file, settings.sources["token_file"] or "--token-file")
    read_only_token = None
    if settings.read_token_file:
        if not token_text:
            raise UserError(f"{settings.sources['read_token_file']}: a read-only token needs a read-write one "
                            "(--token-file) beside it")
        where = settings.sources["read_token_file"] or "--read-token-file"
        read_only_token = read_token(settings.read_token_file, where)
        if read_only_token == token_text:  # it would pass as the read-write token: nothing would be read-only
            raise UserError(f"{where}: the read-only token is the read-write token (--token-file): give it its own")
    if settings.backend:
        check_urls([settings.backend], settings.sources["backend"])
    if grpc_address is not None and not token_text and not settings.insecure and not _loopback(grpc_address[0]):
        raise UserError(f"{settings.sources['grpc'] or '--grpc'} {_host(grpc_address[0])}:{grpc_address[1]}: "
                        "remote execution without a token on a non-loopback address lets anyone who reaches it run "
                        "commands on the workers: give --token-file, or --insecure if you mean it")

    # Block the stop signals before any thread starts (importing grpc starts some), so every thread inherits
    # the mask and the main thread alone receives them, in sigwait below. Heavy imports only now the flags are good.
    stop_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}  # SIGHUP: a closed terminal
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    from gaffer.cache.base import TierError
    from gaffer.server.auth import BearerToken
    from gaffer.server.dispatch import Coordinator
    from gaffer.server.http import CacheHTTPServer
    from gaffer.server.metrics import Metrics
    from gaffer.server.reapi import start_grpc
    from gaffer.server.store import BackendUnavailable, ServerStore

    keep_big_buffers(long_running=True)  # before the store's threads start: a thread keeps its allocator's arena
    backend = None
    if settings.backend:
        from gaffer.cache.factory import open_backend

        backend = functools.partial(open_backend, settings.backend, timeout=BACKEND_TIMEOUT_S)
    try:
        store = ServerStore(store_dir, max_size, report=lambda m: say(PROG, f"warning: {m}"),
                            memory=settings.memory, backend=backend, sync=settings.fsync)
    except TierError as e:
        raise EnvironmentProblem(f"{settings.sources['dir'] or '--dir'} {store_dir}: {e.message}") from None
    except BackendUnavailable as e:
        raise EnvironmentProblem(f"{settings.sources['backend']} {redact(settings.backend)}: {e}") from None
    metrics = Metrics()
    coordinator = Coordinator(settings.bot_timeout, settings.unmatched_timeout,
                              log=lambda m: say(PROG, m))
    metrics.watch_dispatch(coordinator.stats)
    token = BearerToken(token_text, read_only_token)
    _raise_fd_limit()
    grpc_server = http_server = None
    listening = []
    try:
        if grpc_address is not None:
            try:
                grpc_server, port = start_grpc(f"{_host(grpc_address[0])}:{grpc_address[1]}", store, metrics, token,
                                               settings.threads, coordinator)
            except OSError:
                raise EnvironmentProblem(
                    f"{settings.sources['grpc']} {_host(grpc_address[0])}:{grpc_address[1]}: cannot listen there "
                    "(in use, or not a local address)"
                ) from None
            listening.append(f"grpc on {_host(grpc_address[0])}:{port}")
        if http_address is not None:
            try:
                # without --grpc nothing executes: the status page shows the cache alone
                http_server = CacheHTTPServer(http_address, store, metrics, token, settings.client_timeout,
                                              coordinator if grpc_server is not None else None)
            except OSError as e:
                raise EnvironmentProblem(f"{settings.sources['http']} {_host(http_address[0])}:{http_address[1]}: "
                                         f"cannot listen there: {e.strerror}") from None
            http_server.start()
            listening.append(f"http on {_host(http_address[0])}:{http_server.port}")
        where = (f"backend {redact(settings.backend)}, read-through cache {store_dir}" if settings.backend
                 else f"store {store_dir}")
        say(PROG, f"{', '.join(listening)}; {where} ({format_size(store.total_bytes)} of {format_size(max_size)})")
        received = signal.sigwait(stop_signals)
        say(PROG, f"{signal.Signals(received).name}: stopping")
    finally:
        stopper = threading.Thread(target=_stop, args=(grpc_server, http_server, store, settings.grace),
                                   name="gaffer-stop")
        stopper.start()
        _wait_stopped(stopper, stop_signals, settings.grace + STOP_SLACK_S)
    return 0


def _stop(grpc_server: GrpcServer | None, http_server: CacheHTTPServer | None, store: ServerStore,
          grace: float) -> None:
    """Stop both servers (calls in progress get `grace` seconds), then close the store."""
    stopped = grpc_server.stop(grace) if grpc_server is not None else None
    if http_server is not None:
        http_server.stop(grace)
    if stopped is not None:
        stopped.result()
    store.close()


def _wait_stopped(stopper: threading.Thread, stop_signals: set[signal.Signals], deadline_s: float) -> None:
    """Wait for `stopper`; a second SIGTERM or SIGINT, or a stop outlasting `deadline_s`, ends the process at once
    (committed entries are safe: every write is a temp file renamed into place). A SIGHUP is ignored now: a closed
    terminal usually sends it twice (the shell forwards it to its jobs, then the kernel sends it to the group)."""
    deadline = time.monotonic() + deadline_s
    while stopper.is_alive():
        if time.monotonic() > deadline:
            say(PROG, "calls still running after the grace period: exiting now")
            os._exit(1)
        again = signal.sigtimedwait(stop_signals, 0.1)
        if again is not None and again.si_signo == signal.SIGHUP:
            say(PROG, "SIGHUP again: already stopping, ignored (SIGTERM or SIGINT to exit now)")
        elif again is not None:
            say(PROG, f"{signal.Signals(again.si_signo).name} again: exiting now")
            os._exit(128 + again.si_signo)


def _raise_fd_limit() -> None:
    """Use every file descriptor the system allows (the soft limit, often 1024, up to the hard one): each
    client connection takes one. The HTTP server caps its connections below what is left."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _loopback(host: str) -> bool:
    """Is `host` a loopback address (or `localhost`)? Only then may remote execution run without a token."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
