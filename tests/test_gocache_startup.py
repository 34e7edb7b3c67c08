"""gobuildcache's start-up is on the path of every `go` command: its entry point imports none of the
standard-library modules it has no use for on a warm build (pip's console-script wrapper adds `re` of its own)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.test_gocache_protocol import CAPABILITIES, Client, gobuildcache_env

REPO = Path(__file__).resolve().parent.parent

# typing, pathlib and re (with enum and ipaddress behind them) were ~13 ms of CPU before the first reply; the rest
# only some sessions need (a remote tier, a malformed line, a big blob to hash, a read-only cache directory)
NOT_AT_START_UP = ("typing", "pathlib", "re", "enum", "ipaddress", "urllib.parse", "fnmatch", "json", "hashlib",
                   "tempfile", "shutil", "concurrent.futures", "gaffer.cache.tiered", "gaffer.gocache.prefetch")

# the console script's entry point, then one stderr line naming the modules above it imported
REPORTING = f"""\
import os, sys
def report(status, _exit=os._exit):
    sys.stderr.write(f"imported: {{sorted(m for m in {NOT_AT_START_UP!r} if m in sys.modules)}}\\n")
    sys.stderr.flush()
    _exit(status)
os._exit = report
from gaffer.gocache.main import main
main()
"""


def _session(cache_dir: Path) -> Client:
    c = Client(gobuildcache_env(cache_dir, PYTHONPATH=str(REPO / "src")), program=[sys.executable, "-c", REPORTING])
    assert c.reply() == CAPABILITIES
    return c


def test_the_program_imports_none_of_what_a_warm_build_has_no_use_for(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    body = os.urandom(3000)
    c = _session(cache_dir)
    put = c.put(1, b"a" * 32, body)  # a body is checked by base64, whose check is a regular expression
    c.close(2)
    assert c.finish() == (0, "imported: ['enum', 're']\n")
    c = _session(cache_dir)  # a warm build: hits, misses, and the puts of a link (no body)
    hit = c.get(1, b"a" * 32)
    assert hit["DiskPath"] == put["DiskPath"] and hit["Size"] == len(body)
    assert Path(str(hit["DiskPath"])).read_bytes() == body
    assert c.get(2, b"b" * 32) == {"ID": 2, "Miss": True}
    empty = c.put(3, b"c" * 32, b"")
    assert Path(str(empty["DiskPath"])).read_bytes() == b""
    c.close(4)
    assert c.finish() == (0, "imported: []\n")


def test_the_reporting_wrapper_sees_an_import(tmp_path: Path) -> None:
    """The check above can fail: the same wrapper names a module the program did import."""
    assert "gaffer.gocache.protocol" not in NOT_AT_START_UP
    probe = REPORTING.replace(repr(NOT_AT_START_UP), repr(("gaffer.gocache.protocol",)))
    c = Client(gobuildcache_env(tmp_path / "cache"), program=[sys.executable, "-c", probe])
    assert c.reply() == CAPABILITIES
    c.close(1)
    assert c.finish() == (0, "imported: ['gaffer.gocache.protocol']\n")
