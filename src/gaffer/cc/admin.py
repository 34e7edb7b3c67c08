"""`gaffer cc --daemon | --stop-daemon | --install [--dir DIR]`: the fast client's side of `gaffer cc`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gaffer.cc.ccdir import cc_dir
from gaffer.cc.launch import private_directory

ADMIN_FLAGS = frozenset({"--daemon", "--stop-daemon", "--install"})


def add_admin_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--install", action="store_true",
                       help="build the fast client gaffer-cc (with the system cc) and create gaffer-cc, gaffer-ld "
                            "and a masquerade directory (gcc, g++, cc, c++, clang, clang++) in --dir")
    group.add_argument("--daemon", action="store_true",
                       help="run the per-user daemon the fast client talks to (it starts on its own when needed)")
    group.add_argument("--stop-daemon", action="store_true", help="stop the daemon, letting running compiles finish")
    parser.add_argument("--dir", type=Path, metavar="DIR",
                        help="where --install puts gaffer-cc, gaffer-ld and masquerade/ (default: bin/ in the "
                             "launcher's directory: $GAFFER_CC_DIR, else $XDG_CACHE_HOME/gaffer/cc, else "
                             "~/.cache/gaffer/cc)")


def run_admin(args: argparse.Namespace) -> int:
    """Do what the one admin flag given asks."""
    directory = cc_dir()
    if args.install:
        from gaffer.cc.client import install

        for line in install(Path(private_directory(str(directory))), args.dir):
            print(line)
        return 0
    if args.stop_daemon:
        from gaffer.cc.daemon import stop

        print(stop(directory))
        return 0
    from gaffer.cc.daemon import serve
    from gaffer.config import CC, load_nearest

    return serve(directory, load_nearest(CC, {}, os.environ).cc_idle)

