"""Content digests: whichever SHA-256 implementation hashes a blob (CPython's own for small data, OpenSSL's for
large), the digest is SHA-256's, byte for byte, at every size around the switch."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from gaffer import digest

SIZES = [0, 1, 63, 64, digest._SMALL - 1, digest._SMALL, digest._SMALL + 1, digest._CHUNK, digest._CHUNK + 1,
         3 * digest._CHUNK + 5]


@pytest.mark.parametrize("size", SIZES)
def test_every_size_hashes_to_its_sha256(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    expected = hashlib.sha256(data).hexdigest()
    assert digest.digest_bytes(data) == (expected, size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert digest.digest_file(path) == (expected, size)
    h = digest.sha256(size=size)
    for at in range(0, size, 1000):
        h.update(data[at:at + 1000])
    assert h.hexdigest() == expected and h.digest() == hashlib.sha256(data).digest()


def test_small_data_is_hashed_without_loading_openssl(tmp_path: Path) -> None:
    """OpenSSL's module (~3 ms to load) only once something large is hashed."""
    if digest._own_sha256 is None:
        pytest.skip("this Python was built without its own SHA-256")
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"x" * 1000)
    large.write_bytes(b"x" * (digest._SMALL + 1))
    code = ("import sys; from gaffer.digest import digest_bytes, digest_file; "
            f"digest_bytes(b'abc'); digest_file({str(small)!r}); print('_hashlib' in sys.modules); "
            f"digest_file({str(large)!r}); print('_hashlib' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.split() == ["False", "True"]


def test_another_devices_window_only_where_its_timestamps_may_lag() -> None:
    """A file on another local file system with fine timestamps (a tmpfs, a container volume) is compared with
    a moment read on a local one as it is: a 2-second window there kept freshly generated headers from ever
    being stored. Whole seconds, or either side on a file system not known to share this clock (the moment's
    too: a launcher directory on NFS), keep the window."""
    from gaffer.mounts import device_type

    shm, root = os.stat("/dev/shm"), os.stat("/")
    if device_type(shm.st_dev) != "tmpfs" or device_type(root.st_dev) not in digest.LOCAL_FINE_TYPES:
        pytest.skip("/dev/shm is not a tmpfs, or / not a local file system gaffer knows, here")
    unknown = max(shm.st_dev, root.st_dev) + 12345
    assert device_type(unknown) == ""
    moment, window = 1_700_000_000_123_456_789, digest.OTHER_DEVICE_WINDOW_NS

    def on(device: int, mtime_ns: int, ctime_ns: int) -> os.stat_result:
        return os.stat_result((*shm[:2], device, *shm[3:7], 0, 0, 0), {"st_mtime_ns": mtime_ns, "st_ctime_ns": ctime_ns})

    fine = on(shm.st_dev, moment - 7, moment - 3)
    assert digest.moment_for(fine, moment, root.st_dev) == moment
    assert digest.moment_for(fine, moment, shm.st_dev) == moment
    assert digest.moment_for(fine, moment, None) == moment
    assert digest.moment_for(fine, moment, unknown) == moment - window  # the moment from an unknown clock
    assert digest.moment_for(on(unknown, moment - 7, moment), moment, root.st_dev) == moment - window
    whole = on(shm.st_dev, 1_700_000_000 * 10**9, 1_700_000_001 * 10**9)
    assert digest.moment_for(whole, moment, root.st_dev) == moment - window
