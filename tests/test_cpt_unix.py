"""Unix sockets survive a checkpoint; what is not supported yet is refused and runs on."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import pytest

from cpt import vzcpt
from harness import Program

PROGRAM = Path(__file__).parent / "programs" / "real" / "unix_sockets.py"


def test_unix_sockets_survive(tmp_path: Path) -> None:
    with Program.command("unix_sockets", [sys.executable, str(PROGRAM)], tmp_path=tmp_path) as prog:
        prog.wait_ready()
        before = prog.tree_pids()
        vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "dump.img")
        prog.wait_gone()
        vzcpt("restore", "--dumpfile", tmp_path / "dump.img")
        assert prog.tree_pids() == before
        assert prog.verify() == "OK"


def test_peer_outside_the_tree_is_refused(tmp_path: Path) -> None:
    script = (
        "import socket,sys,time; s=socket.socket(socket.AF_UNIX); "
        f"s.connect({str(tmp_path / 'outside.sock')!r}); "
        "open(sys.argv[1],'a').write('READY\\n'); time.sleep(600)"
    )
    outside = socket.socket(socket.AF_UNIX)
    outside.bind(str(tmp_path / "outside.sock"))
    outside.listen()
    try:
        with Program.command("peer", [sys.executable, "-c", script], tmp_path=tmp_path) as prog:
            prog.wait_ready()
            result = vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "d.img", check=False)
            assert result.returncode != 0 and "socket" in result.stderr
            assert result.stderr.count("\n") == 1
            assert prog.alive()
    finally:
        outside.close()


def test_connections_not_yet_accepted_stay_queued_when_the_tree_runs_on(tmp_path: Path) -> None:
    """A dump that leaves the tree running takes no connection out of a queue:
    the program then accepts every one, in order (unix_pending checks itself)."""
    with Program.start("unix_pending", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "d.img", "--leave-running")
        assert prog.verify() == "OK"


PENDING_REFUSED = {  # what the one line says, as a regular expression
    "data": r"has sent data on a connection not yet accepted",
    "closed": r"has a connection not yet accepted whose client is closed",
    "outside": r"has a connection not yet accepted from a client outside the tree",
}


@pytest.mark.parametrize("mode", sorted(PENDING_REFUSED))
def test_connection_not_yet_accepted_refused(mode: str, tmp_path: Path) -> None:
    """Data sent before the accept, a client closed before it, a client outside the
    tree: one line naming the descriptor, no dump, and the program runs on with
    its queues as they were."""
    with Program.start("unix_pending", mode, tmp_path=tmp_path) as prog:
        prog.wait_ready()
        fd = next(int(ln.split()[1]) for ln in prog.report_lines() if ln.startswith("FD "))
        with socket.socket(socket.AF_UNIX) as outside:
            if mode == "outside":
                outside.connect(f"\0vzcpt-pending-extra-{prog.pid}".encode())
            result = vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "d.img", check=False)
            assert result.returncode != 0
            assert result.stderr.count("\n") == 1, result.stderr
            assert f"process {prog.pid}: descriptor {fd} " in result.stderr, result.stderr
            assert re.search(PENDING_REFUSED[mode], result.stderr), result.stderr
            assert not (tmp_path / "d.img").exists()
            assert prog.verify() == "OK"
