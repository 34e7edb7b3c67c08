"""The compiler as the key knows it: by content, never by path.

The identity of a compiler is the digest of its driver and of the programs it runs (cc1, cc1plus, as, ld, ...:
each found once with `-print-prog-name` and remembered per driver signature, so a compile costs a few stat
calls, not a process; those the driver looks up on PATH, `as` and `ld` on most systems, are looked up on each
compile's PATH). An upgrade that changes any of them changes every key; two machines with the same
compiler installed at different paths share entries.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import subprocess
import threading
from collections.abc import Mapping

from gaffer.atomic import save_marshalled
from gaffer.cc.shadow import system_dirs
from gaffer.digest import StatCache, StatSignature, stat_signature

COMPANIONS = ("cc1", "cc1plus", "cc1obj", "cc1objplus", "lto1", "collect2", "lto-wrapper", "as", "ld")
_FORMAT = 3
NO_INCLUDES = ("cpp-output", "c++-cpp-output", "assembler")  # languages that include nothing


def find_compiler(name: str, env: Mapping[str, str], cwd: str) -> str | None:
    """The program the shell would run for `name` with the request's PATH, skipping gaffer's own launchers
    (a masquerade directory of symlinks to gaffer-cc comes first on PATH)."""
    if "/" in name:
        path = os.path.join(cwd, name)
        return path if os.access(path, os.X_OK) and not _is_launcher(path) else None
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(cwd, directory or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK) and not _is_launcher(path):
            return path
    return None


def _is_launcher(path: str) -> bool:
    return os.path.basename(os.path.realpath(path)).startswith("gaffer")


class Compilers:
    """Driver path -> (its signature, the companion programs it runs), persisted in the launcher's directory.
    The digests themselves come from the shared StatCache, so nothing is hashed twice."""

    def __init__(self, path: str, stat_cache: StatCache) -> None:
        self.path = path
        self.stat_cache = stat_cache
        self._lock = threading.Lock()
        self._dirty = False
        # (driver, COMPILER_PATH, GCC_EXEC_PREFIX) -> (its signature, the programs: a path, or a name on PATH)
        self._table: dict[tuple[str, str, str], tuple[StatSignature, list[str]]] = {}
        # (driver, signature, language, flags) -> its system include directories
        self._search: dict[tuple[str, StatSignature, str, tuple[str, ...]], list[str]] = {}
        try:
            with open(path, "rb") as f:
                version, table, search = marshal.loads(f.read())
            if version == _FORMAT and isinstance(table, dict) and isinstance(search, dict):
                self._table, self._search = table, search
        except (OSError, EOFError, ValueError, TypeError):
            pass

    def identity(self, driver: str, env: Mapping[str, str]) -> str:
        """The compiler's identity: SHA-256 over each program's role and content digest."""
        real = os.path.realpath(driver)
        sig = stat_signature(os.stat(real))
        key = (real, env.get("COMPILER_PATH", ""), env.get("GCC_EXEC_PREFIX", ""))  # where the driver looks first
        with self._lock:
            known = self._table.get(key)
        if known is None or known[0] != sig:
            known = (sig, _companions(real, env))
            with self._lock:
                self._table[key] = known
                self._dirty = True
        h = hashlib.sha256(b"driver " + self.stat_cache.digest(real).hash.encode())
        for program in known[1]:
            path = program if "/" in program else find_compiler(program, env, "/")
            try:
                h.update(f"\n{os.path.basename(program)} {self.stat_cache.digest(path).hash if path else 'absent'}"
                         .encode())
            except OSError:  # removed since: look the companions up again next time
                with self._lock:
                    self._table.pop(key, None)
                h.update(f"\n{os.path.basename(program)} absent".encode())
        return h.hexdigest()

    def search_dirs(self, driver: str, language: str, flags: tuple[str, ...], env: Mapping[str, str]) -> list[str]:
        """The compiler's own `#include <...>` directories for `language` with `flags` (-m32, --sysroot,
        -nostdinc, ...), asked once (`-E -v`) per driver signature."""
        if language in NO_INCLUDES:
            return []
        real = os.path.realpath(driver)
        key = (real, stat_signature(os.stat(real)), language, flags)
        with self._lock:
            known = self._search.get(key)
        if known is None:
            try:
                out = subprocess.run([real, "-x", language, *flags, "-E", "-v", "-o", os.devnull, os.devnull],
                                     env=dict(env), capture_output=True, text=True, errors="replace", timeout=60,
                                     check=False, stdin=subprocess.DEVNULL).stderr
            except (OSError, subprocess.SubprocessError):
                out = ""
            known = system_dirs(out)
            with self._lock:
                self._search[key] = known
                self._dirty = True
        return known

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            table, search = dict(self._table), dict(self._search)
        try:
            save_marshalled(self.path, (_FORMAT, table, search))
        except OSError:
            pass  # looked up again next time


def _companions(driver: str, env: Mapping[str, str]) -> list[str]:
    """The programs `driver` runs: the path of each it finds in its own directories, the name of each it leaves
    to PATH (`as` and `ld`, usually), which `identity` looks up on every compile's PATH as the driver will."""
    found = []
    for name in COMPANIONS:
        try:
            out = subprocess.run([driver, f"-print-prog-name={name}"], env=dict(env), capture_output=True,
                                 text=True, timeout=30, check=False, stdin=subprocess.DEVNULL).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if "/" not in out and out:
            if find_compiler(out, env, "/"):  # gcc prints the bare name of a program it has not got (cc1obj)
                found.append(out)
        elif out and os.path.isfile(out):
            found.append(os.path.realpath(out))
    return found


_cpu: str | None = None


def cpu_identity() -> str:
    """What -march=native compiles for: the model and feature flags of this machine's CPU."""
    global _cpu
    if _cpu is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
        first = text.split("\n\n", 1)[0]
        lines = [line for line in first.splitlines() if line.startswith(("model name", "flags", "Features", "CPU"))]
        _cpu = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return _cpu
