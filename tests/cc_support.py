"""The compiler launcher's tests' helpers: the fast client built once, and a private daemon per test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from gaffer.cc.daemon import flush_stats, running_pid
from tests.support import alive, require_tool


def install_client(directory: Path, target: Path) -> str:
    """`gaffer cc --install --dir target` with the launcher's directory `directory` (the real CLI builds the
    client); what it printed."""
    require_tool("cc")
    env = {**clean_env(), "GAFFER_CC_DIR": str(directory)}
    proc = subprocess.run([sys.executable, "-m", "gaffer", "cc", "--install", "--dir", str(target)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def clean_env() -> dict[str, str]:
    """The test's environment without any gaffer setting or task marker of the enclosing run."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GAFFER_")}


class Launcher:
    """A private launcher directory (its own daemon) and the installed client's names."""

    def __init__(self, directory: Path, bin_dir: Path, idle: str = "60s") -> None:
        self.dir = directory
        self.bin = bin_dir
        self.gaffer_cc = bin_dir / "gaffer-cc"
        self.gaffer_ld = bin_dir / "gaffer-ld"
        self.masquerade = bin_dir / "masquerade"
        self.env = {**clean_env(), "GAFFER_CC_DIR": str(directory), "GAFFER_CC_IDLE": idle,
                    "GAFFER_CACHE_DIR": str(directory.parent / "cache"),
                    "XDG_CONFIG_HOME": str(directory.parent / "xdg-config")}

    def run(self, args: list[str | Path], cwd: Path, env: dict[str, str] | None = None,
            **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(a) for a in args], cwd=cwd, env={**self.env, **(env or {})}, capture_output=True,
                              timeout=120, check=False, **kwargs)  # type: ignore[call-overload]

    def log(self) -> str:
        path = self.dir / "daemon.log"
        return path.read_text() if path.exists() else ""

    def starts(self) -> int:
        """How many daemons have started in this directory."""
        return self.log().count(" started: pid ")

    def stats(self) -> dict[str, int]:
        """The launcher's counters (what `gaffer cc --show-stats` reports), the integer ones, once the daemon
        has written those it holds."""
        flush_stats(self.dir)
        path = self.dir / "stats.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        return {k: v for k, v in data.items() if isinstance(v, int)}

    def daemon_pid(self) -> int | None:
        """The running daemon's pid: the lock is held and names it; None when no daemon holds it."""
        return running_pid(self.dir)

    def stop(self) -> None:
        """Stop the daemon through the CLI; kill it should that fail (a test must never leave one running)."""
        pid = self.daemon_pid()
        if pid is None:
            return
        subprocess.run([sys.executable, "-m", "gaffer", "cc", "--stop-daemon"], env=self.env, capture_output=True,
                       timeout=60, check=False)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


HELLO = b'#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'
