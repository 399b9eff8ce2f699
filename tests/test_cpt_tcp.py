"""TCP sockets survive a checkpoint: connections (rebuilt in repair mode), half-closed
ones, listeners, bound and closed sockets, over IPv4 and IPv6; the network stays
locked while the tree is dumped; what is not supported is refused and runs on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cpt import vzcpt
from harness import Program
from netns import PYTHON, NetNs, namespace

REAL = Path(__file__).parent / "programs" / "real"
STATES = REAL / "tcp_states.py"


def locks(ns: NetNs | None) -> list[str]:
    """The vzcpt lock tables in the namespace (ours when None)."""
    if ns is None:
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        return [t for t in out.split() if t.startswith("vzcpt_")]
    return [t for t in ns.nft_tables() if t.startswith("vzcpt_")]


@pytest.mark.parametrize("family", ["4", "6"])
@pytest.mark.parametrize("case", ["established", "half-closed", "listen"])
def test_tcp_state_survives(case: str, family: str, tmp_path: Path) -> None:
    with namespace() as ns:
        argv = ns.argv([PYTHON, str(STATES)])
        with Program.command("tcp_states", argv, case, family, tmp_path=tmp_path) as prog:
            prog.wait_ready()
            dump = tmp_path / "dump.img"
            ns.vzcpt("dump", "--pid", prog.pid, "--dumpfile", dump)
            prog.wait_gone()
            assert len(locks(ns)) == 1, "the network is not locked while the tree is gone"
            ns.vzcpt("restore", "--dumpfile", dump)
            assert locks(ns) == [], "the network is still locked after the restore"
            assert prog.verify() == "OK"


def test_leave_running_unlocks(tmp_path: Path) -> None:
    """In our own namespace: the tree runs on, its connections out of repair mode."""
    before = locks(None)
    with Program.command(
        "tcp_states", [PYTHON, str(STATES)], "established", "4", tmp_path=tmp_path
    ) as prog:
        prog.wait_ready()
        vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "dump.img", "--leave-running")
        assert prog.alive()
        assert locks(None) == before
        assert prog.verify() == "OK"


def test_failed_dump_unlocks_and_runs_on(tmp_path: Path) -> None:
    """The netlink socket is refused after the connections were read in repair mode."""
    with namespace() as ns:
        argv = ns.argv([PYTHON, str(STATES)])
        with Program.command(
            "tcp_states", argv, "established", "6", "netlink", tmp_path=tmp_path
        ) as prog:
            prog.wait_ready()
            result = ns.vzcpt(
                "dump", "--pid", prog.pid, "--dumpfile", tmp_path / "d.img", check=False
            )
            assert result.returncode != 0
            assert "a netlink socket" in result.stderr and result.stderr.count("\n") == 1
            assert prog.alive() and not (tmp_path / "d.img").exists()
            assert locks(ns) == []
            assert prog.verify() == "OK"


REFUSED = {
    "syn-sent": (
        "import socket; s = socket.socket(); s.setblocking(False)\n"
        "try: s.connect(('10.254.254.2', 9))\nexcept BlockingIOError: pass\n",
        "connecting (SYN sent)",
    ),
    "backlog": (
        "import socket; l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()\n"
        "c = socket.create_connection(l.getsockname())\n",
        "1 connections not yet accepted",
    ),
}


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_refused_and_runs_on(what: str, tmp_path: Path) -> None:
    setup, message = REFUSED[what]
    script = setup + "import sys, time; open(sys.argv[1], 'a').write('READY\\n'); time.sleep(600)\n"
    with namespace() as ns:
        # A route out to nowhere (a veth whose peer is down): a connection stays in SYN-SENT.
        ns.run("ip", "link", "add", "out0", "type", "veth", "peer", "name", "out1")
        ns.run("ip", "addr", "add", "10.254.254.1/24", "dev", "out0")
        ns.run("ip", "link", "set", "out0", "up")
        with Program.command(what, ns.argv([PYTHON, "-c", script]), tmp_path=tmp_path) as prog:
            prog.wait_ready()
            result = ns.vzcpt(
                "dump", "--pid", prog.pid, "--dumpfile", tmp_path / "d.img", check=False
            )
            assert result.returncode != 0 and message in result.stderr, result.stderr
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
            assert prog.alive() and locks(ns) == []
