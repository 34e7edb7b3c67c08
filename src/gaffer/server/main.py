"""`gaffer serve`: run the cache server until SIGTERM or SIGINT, then stop cleanly (in-flight requests finish).

    gaffer serve --dir /srv/gaffer --max-size 200GiB --grpc 0.0.0.0:9092 --http 0.0.0.0:8080 --token-file t

Port 0 picks a free port; the line printed on stderr when listening names the ports actually bound.
Committed entries survive even kill -9: every write is a temp file renamed into place (DiskStore).
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

from gaffer.cache.disk import DEFAULT_MAX_SIZE, default_cache_dir
from gaffer.cache.urls import checked_url, read_token, redact
from gaffer.errors import EnvironmentProblem, GafferError, UserError
from gaffer.units import format_size, parse_size

GRACE_S = 30.0
BACKEND_TIMEOUT_S = 30.0  # per request to the --backend
DEFAULT_MEMORY = "256MiB"  # how long in-flight gRPC calls may take to finish after a stop signal


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit status 2 (argparse would print the whole usage)."""
        raise UserError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="gaffer serve",
        description="Serve a build cache over REAPI gRPC and the Bazel HTTP cache protocol.",
        epilog="example: gaffer serve --dir /srv/gaffer --max-size 200GiB --grpc 0.0.0.0:9092 --http 0.0.0.0:8080",
    )
    p.add_argument("--dir", type=Path, default=default_cache_dir() / "serve",
                   help="store directory; with --backend, a read-through cache of its blobs (default: %(default)s)")
    p.add_argument("--backend", metavar="URL",
                   help="keep blobs and action results in this cache instead (s3://, redis://, http(s)://, grpc(s)://,"
                        " disk://): several servers may share one")
    p.add_argument("--max-size", metavar="SIZE", default=format_size(DEFAULT_MAX_SIZE).replace(" ", ""),
                   help="size bound; least recently used entries are evicted beyond it (default: %(default)s)")
    p.add_argument("--memory", metavar="SIZE", default=DEFAULT_MEMORY,
                   help="memory cache for small blobs (default: %(default)s; 0 turns it off)")
    p.add_argument("--grpc", metavar="HOST:PORT", help="serve REAPI gRPC here (e.g. 127.0.0.1:9092; port 0: any)")
    p.add_argument("--http", metavar="HOST:PORT", help="serve the Bazel HTTP cache and /metrics here")
    p.add_argument("--token-file", metavar="FILE", type=Path,
                   help="require 'authorization: Bearer <the file's content>' on every request")
    p.add_argument("--threads", metavar="N", type=int, default=32, help="gRPC worker threads (default: %(default)s)")
    return p


def _address(flag: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UserError(f"{flag} {text!r}: expected HOST:PORT (example: 127.0.0.1:9092, port 0 for any)")
    return host, int(port)


def serve_main(argv: list[str]) -> int:
    """Parse `argv` (the arguments after `serve`), serve until a stop signal; the exit status."""
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
        return _serve(args)
    except GafferError as e:
        print(f"gaffer serve: {e}", file=sys.stderr)
        return e.exit_status


def _serve(args: argparse.Namespace) -> int:
    if not args.grpc and not args.http:
        raise UserError("nothing to serve: give --grpc HOST:PORT and/or --http HOST:PORT")
    max_size = parse_size(args.max_size, "--max-size")
    memory = parse_size(args.memory, "--memory")
    if args.threads < 1:
        raise UserError(f"--threads {args.threads}: must be at least 1")
    grpc_address = _address("--grpc", args.grpc) if args.grpc else None
    http_address = _address("--http", args.http) if args.http else None
    token_text = read_token(args.token_file, "--token-file") if args.token_file else None
    if args.backend:
        checked_url(args.backend)

    # Block the stop signals before any thread starts (importing grpc starts some), so every thread inherits
    # the mask and the main thread alone receives them, in sigwait below. Heavy imports only now the flags are good.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    from gaffer.cache.base import TierError
    from gaffer.server.auth import BearerToken
    from gaffer.server.http import CacheHTTPServer
    from gaffer.server.metrics import Metrics
    from gaffer.server.reapi import start_grpc
    from gaffer.server.store import BackendUnavailable, ServerStore

    backend = None
    if args.backend:
        from gaffer.cache.factory import open_backend

        backend = functools.partial(open_backend, args.backend, timeout=BACKEND_TIMEOUT_S)
    try:
        store = ServerStore(args.dir, max_size, report=lambda m: print(f"gaffer serve: warning: {m}", file=sys.stderr),
                            memory=memory, backend=backend)
    except TierError as e:
        raise EnvironmentProblem(f"--dir {args.dir}: {e}") from None
    except BackendUnavailable as e:
        raise EnvironmentProblem(f"--backend {redact(args.backend)}: {e}") from None
    metrics = Metrics()
    token = BearerToken(token_text)
    grpc_server = http_server = None
    listening = []
    try:
        if grpc_address is not None:
            try:
                grpc_server, port = start_grpc(f"{_host(grpc_address[0])}:{grpc_address[1]}", store, metrics, token,
                                               args.threads)
            except OSError:
                raise EnvironmentProblem(
                    f"--grpc {args.grpc}: cannot listen there (in use, or not a local address)"
                ) from None
            listening.append(f"grpc on {_host(grpc_address[0])}:{port}")
        if http_address is not None:
            try:
                http_server = CacheHTTPServer(http_address, store, metrics, token)
            except OSError as e:
                raise EnvironmentProblem(f"--http {args.http}: cannot listen there: {e.strerror}") from None
            http_thread = threading.Thread(target=http_server.serve_forever, name="gaffer-http")
            http_thread.start()
            listening.append(f"http on {_host(http_address[0])}:{http_server.server_address[1]}")
        where = f"backend {redact(args.backend)}, read-through cache {args.dir}" if args.backend else f"store {args.dir}"
        print(f"gaffer serve: {', '.join(listening)}; {where} "
              f"({format_size(store.total_bytes)} of {format_size(max_size)})", file=sys.stderr, flush=True)
        received = signal.sigwait(stop_signals)
        print(f"gaffer serve: {signal.Signals(received).name}: stopping", file=sys.stderr, flush=True)
    finally:
        stopped = grpc_server.stop(GRACE_S) if grpc_server is not None else None
        if http_server is not None:
            http_server.stop()
            http_thread.join()
        if stopped is not None:
            stopped.wait()
        store.close()
    return 0


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
