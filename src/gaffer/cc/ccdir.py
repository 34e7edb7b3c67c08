"""Where the launcher's per-user directory is, as the fast client finds it: from the environment alone.

The daemon's socket, lock and log and the built client (bin/) live there. Its place is fixed by the
client<->daemon contract, so the C client (client.c) finds it with nothing but its environment:
$GAFFER_CC_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/gaffer/cc; the daemon and `gaffer cc --install` use the
same rule (gaffer.toml's `[cc] dir` is not read here: the client could not follow it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def cc_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where the launcher's directory is (not created)."""
    if env.get("GAFFER_CC_DIR"):
        return Path(env["GAFFER_CC_DIR"]).absolute()
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".cache")
    return Path(base, "gaffer", "cc").absolute()
