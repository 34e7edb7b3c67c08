"""The fast client (client.c): built with the system C compiler into the launcher's directory, and installed
under the names build tools call: gaffer-cc, gaffer-ld, and a masquerade directory (gcc, g++, cc, ...).

A wheel cannot ship a standalone executable cleanly, but whoever runs a compiler launcher has a C compiler, so
the client is compiled from source on first use. It is rebuilt when its source, the Python it starts the daemon
with, or the build command changes (their digest is kept beside it), and replaced by rename, so a compile that
runs it meanwhile sees the old binary or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gaffer.errors import EnvironmentProblem

SOURCE = Path(__file__).with_name("client.c")
NAME, LINK_NAME = "gaffer-cc", "gaffer-ld"
MASQUERADE = ("gcc", "g++", "cc", "c++", "clang", "clang++")
CFLAGS = ("-O2", "-Wall", "-Wextra")


def binary_path(directory: Path) -> Path:
    return directory / "bin" / NAME


def ensure_client(directory: Path) -> Path:
    """The client built from the current source into `directory`/bin, building it if absent or stale."""
    binary = binary_path(directory)
    stamp = _stamp_path(directory)
    compiler = _system_cc(binary)
    command = [compiler, *CFLAGS, f"-DGAFFER_PYTHON={_c_string(sys.executable)}", str(SOURCE)]
    digest = hashlib.sha256(SOURCE.read_bytes() + "\0".join(command).encode()).hexdigest()
    with contextlib.suppress(OSError):
        if stamp.read_text().strip() == digest and os.access(binary, os.X_OK):
            return binary
    binary.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = binary.with_name(f".{NAME}.{os.getpid()}.tmp")
    try:
        proc = subprocess.run([*command, "-o", str(tmp)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise EnvironmentProblem(f"cannot build {NAME} with {compiler}:\n{proc.stderr.strip()}")
        os.replace(tmp, binary)
        stamp_tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
        stamp_tmp.write_text(digest + "\n")
        os.replace(stamp_tmp, stamp)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return binary


def install(directory: Path, target: Path | None = None) -> list[str]:
    """Build the client and give it its names in `target` (default: `directory`/bin): gaffer-cc, gaffer-ld and
    masquerade/<compiler>. Returns what to tell the user: how to use them."""
    stamp = _stamp_path(directory)
    before = _read(stamp)
    binary = ensure_client(directory)
    restarted = []
    if _read(stamp) != before:  # built anew: a running daemon is an older gaffer's
        from gaffer.cc.daemon import running_pid, stop

        if running_pid(directory) is not None:
            restarted = [f"{stop(directory)}: the next compile starts this gaffer's"]
    target = (target or binary.parent).absolute()
    masquerade = target / "masquerade"
    masquerade.mkdir(parents=True, exist_ok=True)
    if target / NAME != binary:
        _link(target / NAME, str(binary))
    _link(target / LINK_NAME, NAME)
    for name in MASQUERADE:
        _link(masquerade / name, f"../{NAME}")
    cc, ld = target / NAME, target / LINK_NAME
    return [
        f"{NAME} and {LINK_NAME} are in {target}; the daemon's directory is {directory}",
        (f"  CMake:      -DCMAKE_C_COMPILER_LAUNCHER={cc} -DCMAKE_CXX_COMPILER_LAUNCHER={cc} "
         f"-DCMAKE_C_LINKER_LAUNCHER={ld} -DCMAKE_CXX_LINKER_LAUNCHER={ld}"),
        f'  make:       make CC="{cc} gcc" CXX="{cc} g++"',
        f'  masquerade: export PATH="{masquerade}:$PATH"',
        *restarted,
    ]


def _stamp_path(directory: Path) -> Path:
    """Where the digest of what the installed client was built from is kept."""
    return binary_path(directory).with_name(f"{NAME}.digest")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _link(path: Path, to: str) -> None:
    """Make `path` a symlink to `to`, replacing whatever is there in one rename."""
    with contextlib.suppress(OSError):
        if os.readlink(path) == to:
            return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(to, tmp)
    os.replace(tmp, path)


def _system_cc(binary: Path) -> str:
    """The first `cc` on PATH that is not the client itself (a masquerade directory may be first on PATH)."""
    own = os.path.realpath(binary) if binary.exists() else None
    for entry in os.environ.get("PATH", os.defpath).split(os.pathsep):
        found = shutil.which("cc", path=entry or ".")
        if found and os.path.realpath(found) != own:
            return found
    raise EnvironmentProblem(f"no C compiler (cc) on PATH to build {NAME} with")


def _c_string(text: str) -> str:
    """`text` as a C string literal (the -D value of the interpreter's path)."""
    escaped = "".join(chr(b) if 32 <= b < 127 and b not in b'"\\?' else f"\\{b:03o}" for b in os.fsencode(text))
    return f'"{escaped}"'
