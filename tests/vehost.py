"""VEs for tests: vzctl under a VZCPT_ROOT of the test's own, and the cleanup."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vzcpt.ve import net, rootfs
from vzcpt.ve.cgroups import VeCgroups
from vzcpt.ve.lifecycle import VE
from vzcpt.ve.paths import Paths

VZCTL = [sys.executable, "-m", "vzcpt.cli.vzctl"]


class Host:
    """vzctl under one VZCPT_ROOT, cleaning up every VE it made."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = Paths(str(root))
        self.env = {**os.environ, "VZCPT_ROOT": str(root)}
        self.veids: list[int] = []

    def new_veid(self) -> int:
        veid = random.randrange(100_000, 2_000_000_000)
        self.veids.append(veid)
        return veid

    def vzctl(self, *args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*VZCTL, *map(str, args)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"vzctl {' '.join(map(str, args))}: {result.stderr.strip()}")
        return result

    def cleanup(self) -> None:
        for veid in self.veids:
            ve = VE(veid, self.paths)
            with contextlib.suppress(Exception):
                ve.stop()
            with contextlib.suppress(Exception):
                net.teardown_network(veid)
            with contextlib.suppress(Exception):
                VeCgroups(veid).destroy(kill=True)
            with contextlib.suppress(Exception):
                VeCgroups(veid).remove_parent()
            with contextlib.suppress(Exception):
                rootfs.umount_tree(str(self.paths.ve_root(veid)))


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path / "host")
    h.root.mkdir()
    try:
        yield h
    finally:
        h.cleanup()
        assert not rootfs.mounts_under(str(h.root)), "mounts left behind"


def address(veid: int) -> str:
    return f"10.251.{veid % 250}.{veid % 200 + 10}"
