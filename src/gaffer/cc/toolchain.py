"""The toolchain a distributed compile needs, as a platform property: `gaffer-toolchain=<compiler name>:<identity prefix>`.

A compile sent to the farm carries the identity of the compiler that would run here (compiler.py: by content,
never by path); a worker advertises the identities of the C/C++ compilers on its PATH, computed by the same code,
so only a worker whose compiler is byte for byte the same one runs it. The compiler itself is never shipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from gaffer.cc.compiler import Compilers
from gaffer.digest import StatCache

KEY = "gaffer-toolchain"
DRIVERS = ("gcc", "g++", "cc", "c++", "clang", "clang++")
PREFIX = 32  # hex digits of the identity: 128 bits are plenty to tell compilers apart


def value(name: str, identity: str) -> str:
    """The property's value for the compiler run as `name` (the worker runs that name from its PATH)."""
    return f"{name}:{identity[:PREFIX]}"


def local_toolchains() -> list[str]:
    """The toolchain values of the compilers on this machine's PATH (what a worker advertises)."""
    found: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gaffer-toolchains-") as scratch:
        compilers = Compilers(os.path.join(scratch, "compilers"), StatCache())
        for name in DRIVERS:
            path = shutil.which(name)
            if path is None:
                continue
            try:
                found.append(value(name, compilers.identity(path, os.environ)))
            except OSError:
                continue
    return list(dict.fromkeys(found))
