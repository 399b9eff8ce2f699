"""POSIX message queues held by a plain process tree (the host's IPC namespace)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cpt import vzcpt
from harness import Program
from vzcpt.errors import VzcptError
from vzcpt.kernel import mqueue as kmq


def test_posix_message_queues_survive(tmp_path: Path) -> None:
    """The named queues stay in our namespace; the unlinked one comes back from the dump."""
    prefix = f"vzcpt_test_{os.getpid()}"
    try:
        with Program.start("posix_mqueue", prefix, tmp_path=tmp_path) as prog:
            prog.wait_ready()
            vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "dump.img")
            prog.wait_gone()
            vzcpt("restore", "--dumpfile", tmp_path / "dump.img")
            assert prog.verify() == "OK"
    finally:
        for suffix in ("a", "u", "i"):
            with contextlib.suppress(VzcptError):
                kmq.mq_unlink(f"{prefix}_{suffix}")


def test_a_named_queue_that_is_gone_is_refused(tmp_path: Path) -> None:
    prefix = f"vzcpt_test_{os.getpid()}"
    try:
        with Program.start("posix_mqueue", prefix, tmp_path=tmp_path) as prog:
            prog.wait_ready()
            vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "dump.img")
            prog.wait_gone()
            kmq.mq_unlink(f"{prefix}_a")
            result = vzcpt("restore", "--dumpfile", tmp_path / "dump.img", check=False)
            assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
            assert f"/{prefix}_a" in result.stderr
            assert not prog.alive()
    finally:
        for suffix in ("a", "u", "i"):
            with contextlib.suppress(VzcptError):
                kmq.mq_unlink(f"{prefix}_{suffix}")
