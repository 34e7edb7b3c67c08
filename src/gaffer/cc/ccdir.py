"""The launcher's per-user directory: the daemon's socket, lock and log, and the built client (bin/).

Its place is fixed by the client<->daemon contract, so the C client finds it with nothing but its environment:
$GAFFER_CC_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/gaffer/cc. Whoever can write there can answer every
compile of this user, so it must be this user's and closed to others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from gaffer.errors import EnvironmentProblem


def cc_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where the launcher's directory is (not created)."""
    if env.get("GAFFER_CC_DIR"):
        return Path(env["GAFFER_CC_DIR"]).absolute()
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".cache")
    return Path(base, "gaffer", "cc").absolute()


def ensure_dir(path: Path) -> Path:
    """Create the directory 0700 if absent; refuse one that is another user's or open to others."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as e:
        raise EnvironmentProblem(f"{path}: cannot create the launcher's directory: {e.strerror}") from None
    if st.st_uid != os.getuid():
        raise EnvironmentProblem(f"{path}: the launcher's directory belongs to another user (uid {st.st_uid})")
    if st.st_mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError as e:
            raise EnvironmentProblem(f"{path}: cannot make the launcher's directory private: {e.strerror}") from None
    return path
