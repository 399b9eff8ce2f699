"""UDP sockets survive a checkpoint: addresses, options, waiting datagrams with their senders."""

from __future__ import annotations

from pathlib import Path

from harness import Program
from netns import PYTHON, namespace

PROGRAM = Path(__file__).parent / "programs" / "real" / "udp_sockets.py"


def test_udp_sockets_survive(tmp_path: Path) -> None:
    with namespace() as ns:
        argv = ns.argv([PYTHON, str(PROGRAM)])
        with Program.command("udp_sockets", argv, tmp_path=tmp_path) as prog:
            prog.wait_ready()
            dump = tmp_path / "dump.img"
            ns.vzcpt("dump", "--pid", prog.pid, "--dumpfile", dump)
            prog.wait_gone()
            assert any(t.startswith("vzcpt_") for t in ns.nft_tables()), "not locked"
            ns.vzcpt("restore", "--dumpfile", dump)
            assert not any(t.startswith("vzcpt_") for t in ns.nft_tables()), "still locked"
            assert prog.verify() == "OK"
