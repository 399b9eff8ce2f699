"""Unix sockets survive a checkpoint; what is not supported yet is refused and runs on."""

from __future__ import annotations

import sys
from pathlib import Path

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
    import socket

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
