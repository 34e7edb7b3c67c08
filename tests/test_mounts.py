"""gaffer.mounts: file system types by device, kept in step with mounts and unmounts (real ones, as root)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from gaffer.mounts import MountTypes
from tests.support import require, require_tool


def test_types_follow_mounts_and_unmounts_even_when_a_device_number_is_reused(tmp_path: Path) -> None:
    """Device numbers of tmpfs, overlay, NFS... are handed out lowest free first: after an unmount the next
    mount often gets the same one, and an answer kept from before would give the old type."""
    require(os.geteuid() == 0, "mounting a file system needs root")
    mount, umount = require_tool("mount"), require_tool("umount")
    point = tmp_path / "m"
    point.mkdir()
    table = MountTypes()
    assert table.type_of(os.stat("/proc").st_dev) == "proc"
    for fs_type in ("tmpfs", "ramfs", "tmpfs"):
        subprocess.run([mount, "-t", fs_type, "none", str(point)], check=True)
        try:
            device = os.stat(point).st_dev
            assert table.type_of(device) == fs_type
        finally:
            subprocess.run([umount, str(point)], check=True)
        assert table.type_of(device) == ""


def test_an_unreadable_table_knows_no_device(tmp_path: Path) -> None:
    table = MountTypes(str(tmp_path / "missing"))
    assert table.type_of(os.stat("/").st_dev) == ""
