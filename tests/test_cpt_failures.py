"""Failures leave nothing behind and the programs running; namespaces are the restorer's."""

from __future__ import annotations

import os
import subprocess
import time
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


def test_terminal_outside_is_refused_and_program_runs_on(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            ["sleep", "1000"], stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        try:
            time.sleep(0.2)
            result = vzcpt("dump", "--pid", proc.pid, "--dumpfile", tmp_path / "d.img", check=False)
            assert result.returncode != 0
            line = result.stderr.strip()
            assert "\n" not in line and "terminal" in line and f"process {proc.pid}" in line
            assert "--shell-job" in line
            assert not (tmp_path / "d.img").exists()
            assert proc.poll() is None
            assert all_processes()[proc.pid].state in "SR"
        finally:
            proc.kill()
            proc.wait()
    finally:
        os.close(master)
        os.close(slave)


def test_children_that_come_and_go_while_freezing(tmp_path: Path) -> None:
    """A shell forking short-lived children all the time: every dump succeeds."""
    proc = subprocess.Popen(
        ["bash", "-c", "while :; do /bin/true; done"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(0.2)
        for n in range(8):
            vzcpt(
                "dump", "--pid", proc.pid, "--dumpfile", tmp_path / f"d{n}.img", "--leave-running"
            )
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
