"""A restore that fails half-way removes every process it created; namespaces are the restorer's."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cpt import VZCPT, vzcpt
from harness import Program, all_processes, build


def test_failure_half_way_leaves_nothing(tmp_path: Path) -> None:
    with Program.start("files", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        before = prog.tree_pids()
        vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "dump.img")
        prog.wait_gone()
        # The FIFO is opened only once the processes exist: the restore fails there.
        fifos = [p for p in tmp_path.rglob("*") if p.is_fifo()]
        assert fifos, "files.c should have made a FIFO"
        for fifo in fifos:
            fifo.unlink()
        result = vzcpt("restore", "--dumpfile", tmp_path / "dump.img", check=False)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
        assert str(fifos[0].name) in result.stderr or "fifo" in result.stderr.lower()
        assert not before & set(all_processes()), "the failed restore left processes behind"


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"vzcpt-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_tree_in_a_network_namespace(tmp_path: Path, netns: str) -> None:
    """Dumped under nsenter --net, restored under the same nsenter: it is back in that netns."""
    enter = ["nsenter", f"--net=/run/netns/{netns}"]
    holder = Program.command("holder", [*enter, str(build("holder"))], "1", tmp_path=tmp_path)
    with holder as prog:
        prog.wait_ready()
        ns = os.readlink(f"/proc/{prog.pid}/ns/net")
        assert ns != os.readlink("/proc/self/ns/net")
        vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "dump.img")
        prog.wait_gone()
        subprocess.run(
            [*enter, *VZCPT, "restore", "--dumpfile", str(tmp_path / "dump.img")],
            check=True,
            capture_output=True,
            timeout=60,
        )
        assert os.readlink(f"/proc/{prog.pid}/ns/net") == ns
        assert prog.verify() == "OK"
