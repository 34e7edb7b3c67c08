"""The system libraries a distributed link reads without naming them, as a platform property:
`gaffer-syslibs=<driver name>:<digest prefix>`.

A link also reads the C runtime's start files, libc's and libm's linker scripts and what they name, libgcc and
libstdc++. They are not shipped: the driver resolves each of them here as it would for the link
(`DRIVER -print-file-name=NAME`), and the digest of their paths and contents names the set; a worker advertises
the same digest for the drivers on its PATH, so only a worker holding these very files runs the link. A link
naming any other library stays here (remote.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping

from gaffer.cc.toolchain import DRIVERS
from gaffer.digest import Digest, StatCache

KEY = "gaffer-syslibs"
PREFIX = 32  # hex digits of the digest, as for the toolchain
NAMES = ("crt1.o", "Scrt1.o", "crti.o", "crtn.o", "crtbegin.o", "crtbeginS.o", "crtbeginT.o", "crtend.o",
         "crtendS.o", "libc.so", "libc.so.6", "libc.a", "libc_nonshared.a", "ld-linux-x86-64.so.2", "libm.so",
         "libm.so.6", "libm.a", "libmvec.so.1", "libgcc.a", "libgcc_eh.a", "libgcc_s.so", "libgcc_s.so.1",
         "libstdc++.so", "libstdc++.so.6", "libstdc++.a")
LIBRARIES = ("c", "m", "gcc", "gcc_s", "stdc++")  # the `-l` names whose files are in the set

_resolved: dict[tuple[str, str], dict[str, str]] = {}
_lock = threading.Lock()


def resolve(driver: str, env: Mapping[str, str]) -> dict[str, str]:
    """Where the driver finds each of NAMES (name -> path as it prints it); names it does not find are left out."""
    paths: dict[str, str] = {}
    for name in NAMES:
        out = subprocess.run([driver, f"-print-file-name={name}"], env=dict(env), capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, check=False, timeout=60).stdout.strip()
        if os.path.isabs(out) and os.path.isfile(out):
            paths[name] = out
    return paths


def resolved(driver: str, identity: str, env: Mapping[str, str]) -> dict[str, str]:
    """resolve(), once per compiler (by identity) for a long-lived launcher; the contents are digested anew."""
    with _lock:
        if (driver, identity) not in _resolved:
            _resolved[driver, identity] = resolve(driver, env)
        return _resolved[driver, identity]


def digest(paths: Mapping[str, str], digest_of: Callable[[str], Digest | None]) -> str | None:
    """The set's digest prefix (None if a file cannot be read)."""
    lines = []
    for name, path in sorted(paths.items()):
        d = digest_of(path)
        if d is None:
            return None
        lines.append(f"{name} {path} {d.hash}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:PREFIX]


def value(name: str, hexdigest: str) -> str:
    return f"{name}:{hexdigest}"


def files(paths: Mapping[str, str]) -> set[str]:
    """The set's files as real paths: what a link's dependency list may name outside the shipped tree."""
    return {os.path.realpath(p) for p in paths.values()}


def local_syslibs() -> list[str]:
    """The values of the drivers on this machine's PATH (what a worker advertises)."""
    stat = StatCache()
    found: list[str] = []
    for name in DRIVERS:
        path = shutil.which(name)
        if path is None:
            continue
        try:
            hexdigest = digest(resolve(path, os.environ), stat.digest)
        except (OSError, subprocess.SubprocessError):
            continue
        if hexdigest is not None:
            found.append(value(name, hexdigest))
    return list(dict.fromkeys(found))
