"""Helpers shared by the tests: locating tools, skipping (locally) or failing (in CI) when one is absent."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip the test locally when `condition` is false; under CI=true that is a failure, so CI proves it ran."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required for this test in CI: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def mounted(mountpoint: Path, *args: str) -> Iterator[Path]:
    """A file system mounted for the test (a small tmpfs: a full disk), unmounted after it; needs root."""
    require(os.geteuid() == 0 and shutil.which("mount") is not None, "mounting a file system needs root")
    mountpoint.mkdir(exist_ok=True)
    done = subprocess.run(["mount", *args, str(mountpoint)], capture_output=True, text=True, check=False)
    require(done.returncode == 0, f"cannot mount: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def fill_disk(disk: Path, leave: int = 0) -> None:
    """Take the free space of `disk` down to about `leave` bytes (0: none at all), growing one filler file."""
    st = os.statvfs(disk)
    try:
        with open(disk / "filler", "ab", buffering=0) as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
            while not leave:
                f.write(b"\0" * 4096)
    except OSError:
        pass


def require_tool(name: str) -> str:
    """The absolute path of an executable on PATH (or next to this Python), else skip/fail."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    require(found is not None, f"{name} is not installed (scripts/test.sh installs it)")
    assert found is not None
    return found


NOBODY = 65534  # the unprivileged user tests run the CLI as (setpriv) or give files to (chown)


def gaffer_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for a gaffer subprocess: a private cache, no user config, plain (non-TTY) output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAFFER_")}
    env.update(GAFFER_CACHE_DIR=str(cache_dir), XDG_CONFIG_HOME=str(cache_dir.parent / "xdg-config"))
    env.update(extra)
    return env


def run_gaffer(args: list[str], cwd: Path, env: dict[str, str], check: bool = False,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (`python -m gaffer`) in a subprocess, capturing its output."""
    proc = subprocess.run([sys.executable, "-m", "gaffer", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"gaffer {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def unprivileged(caps: tuple[str, ...] = ("dac_override", "dac_read_search")) -> list[str]:
    """The prefix that runs a command bound by file modes as any user is: as root, without the capabilities
    (`caps`) that override them; nothing for a user."""
    if os.geteuid() != 0:
        return []
    dropped = ",".join(f"-{cap}" for cap in caps)
    return [require_tool("setpriv"), f"--inh-caps={dropped}", f"--bounding-set={dropped}", "--"]


def noop_changes(ws: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """What the whole-build check (gaffer.noop.check), run as `gaffer run` would in `ws` with `env`, finds
    changed since the last build: None when it cannot say (then the build checks every task)."""
    from gaffer import noop

    with monkeypatch.context() as m:
        m.chdir(ws)
        for name in [n for n in os.environ if n not in env]:
            m.delenv(name)
        for name, value in env.items():
            m.setenv(name, value)
        return noop.check("graph.json", [])


def summary(path: Path) -> dict:
    """A --summary-json file, with a {name: status} map added for short assertions."""
    data = json.loads(path.read_text())
    data["status"] = {t["name"]: t["status"] for t in data["tasks"]}
    return data


def run_ok(ws: Path, env: dict[str, str], *args: str) -> dict:
    """`gaffer run ARGS` in workspace `ws`, which must succeed; its --summary-json, written beside `ws`."""
    out = ws.parent / "summary.json"
    run_gaffer(["run", *args, "--summary-json", str(out)], cwd=ws, env=env, check=True)
    return summary(out)


EXAMPLE = REPO / "examples" / "go-microservices"


def require_example() -> Path:
    """The example Go module (examples/go-microservices) and a `go` to build it with."""
    require((EXAMPLE / "graph.json").is_file(), f"{EXAMPLE} is missing")
    require_tool("go")
    return EXAMPLE


GO_SHARED = REPO / ".cache" / "tests-go"


def go_env(shared: Path = GO_SHARED) -> dict[str, str]:
    """An environment for building Go offline and reproducibly: `go` from this venv on PATH, no network, no
    toolchain downloads, and Go's own build cache shared by every test (and kept between runs, in the git-ignored
    .cache/) so that only gaffer's cache differs between "machines" and the standard library compiles once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GAFFER_", "GO"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        GOCACHE=str(shared / "gocache"), GOPATH=str(shared / "gopath"), GOPROXY="off", GOTOOLCHAIN="local",
        GOTELEMETRY="off",
    )
    return env


def alive(pid: int) -> bool:
    """Is the process running? A zombie is dead even if nothing reaped it (this machine's init may never)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat_file = Path(f"/proc/{pid}/stat")
    return (stat_file.read_text().split()[2] if stat_file.exists() else "X") not in ("Z", "X")


def kill_if_alive(pid_file: Path) -> None:
    """Test cleanup: kill the process whose pid a test's task wrote, should it have outlived the test."""
    if pid_file.exists() and alive(pid := int(pid_file.read_text())):
        os.kill(pid, signal.SIGKILL)


def check_light_reads(tier: Any, blob: bytes, action_result: bytes, scratch: Path) -> None:
    """Every read of a cloud tier whose namespace holds `blob` and, under the key digest_bytes(b"action"),
    `action_result`: present and absent, and none of them made the client library's client (the tier's light read
    path served them all)."""
    from gaffer.digest import digest_bytes

    digest, action, absent = digest_bytes(blob), digest_bytes(b"action"), digest_bytes(b"absent")
    tier.check()
    assert tier.has_blob(digest) and not tier.has_blob(absent)
    assert tier.read_blob(digest) == blob and tier.read_blob(absent) is None
    assert tier.fetch_blob(digest, scratch / "out") and (scratch / "out").read_bytes() == blob
    assert not tier.fetch_blob(absent, scratch / "unused")
    assert tier.read_action(action) == action_result and tier.read_action(absent) is None
    assert tier._reader is not None and tier._client is None, "the client library was used"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)
