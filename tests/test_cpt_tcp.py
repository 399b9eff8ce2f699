"""TCP sockets survive a checkpoint: connections (rebuilt in repair mode), half-closed
ones, listeners, bound and closed sockets, over IPv4 and IPv6; the network stays
locked while the tree is dumped; what is not supported is refused and runs on."""

from __future__ import annotations

import contextlib
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cpt import vzcpt
from harness import Program
from netns import PYTHON, NetNs, joined_pair, namespace

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


# --- a peer outside the tree -----------------------------------------------

STREAM = REAL / "stream_peer.py"


def counters(status: Path) -> tuple[int, int]:
    """(sent, received) from a stream_peer status file; fails the test on its ERROR."""
    try:
        text = status.read_text().strip()
    except FileNotFoundError:
        return 0, 0
    assert not text.startswith("ERROR"), f"{status.name}: {text}"
    words = text.split()
    return (int(words[1]), int(words[3])) if len(words) == 4 else (0, 0)


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def started(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("family", ["4", "6"])
def test_connection_to_a_peer_outside_goes_on(family: str, tmp_path: Path) -> None:
    """The acceptance test: the server is dumped (and killed) and restored while the
    client, in another network namespace, streams both ways; the client sees no
    error, and not one byte is lost or duplicated either way."""
    port = str(random.randrange(20000, 60000))
    with joined_pair() as (inside, outside):
        address = inside.address if family == "4" else inside.address6
        server_status, client_status = tmp_path / "server.status", tmp_path / "client.status"
        argv = inside.argv([PYTHON, str(STREAM)])
        with Program.command(
            "stream_peer", argv, "server", address, port, server_status, tmp_path=tmp_path
        ) as server:
            server.wait_ready()
            client_argv = [PYTHON, str(STREAM), "-", "client", address, port, str(client_status)]
            with started(outside.argv(client_argv), tmp_path / "client.log") as client:
                wait_for("both ends to stream", lambda: min(counters(client_status)) > 1 << 20)
                dump = tmp_path / "dump.img"
                inside.vzcpt("dump", "--pid", server.pid, "--dumpfile", dump)
                server.wait_gone()
                stopped = counters(client_status)
                time.sleep(1)  # the server is gone: nothing comes, nothing resets
                assert counters(client_status)[1] == stopped[1] and client.poll() is None
                inside.vzcpt("restore", "--dumpfile", dump)
                assert locks(inside) == []
                wait_for(
                    "the stream to go on both ways",
                    lambda: (
                        min(
                            counters(client_status)[1] - stopped[1],
                            counters(server_status)[1] - stopped[0],
                        )
                        > 4 << 20
                    ),
                )
                assert client.poll() is None, (tmp_path / "client.log").read_text()
                assert server.verify() == "OK"
