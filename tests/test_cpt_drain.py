"""A busy TCP server is checkpointed: the connections waiting in its accept queue are
accepted by the server itself before the dump, while new ones are held off; a server
that does not accept is refused in one line after a bounded wait, and runs on."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cpt import VZCPT
from harness import Program
from netns import PYTHON, NetNs, namespace
from test_cpt_tcp import REAL, locks, wait_for
from vzcpt.kernel.netns import entered

SLOW = REAL / "slow_acceptor.py"
CLIENTS = 8


class Client(threading.Thread):
    """Connects from inside `ns` (None: ours), asks "hello N", keeps the answer or the error."""

    def __init__(self, ns: NetNs | None, address: str, port: int, n: int) -> None:
        super().__init__(daemon=True)
        self.ns, self.address, self.port, self.n = ns, address, port, n
        self.result = "no answer"
        self.connected_at = 0.0

    def run(self) -> None:
        try:
            sock = self._connect()
            self.connected_at = time.monotonic()
            with sock:
                sock.sendall(b"hello %d\n" % self.n)
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = sock.recv(100)
                    if not chunk:
                        raise ConnectionError(f"end of stream after {reply!r}")
                    reply += chunk
                self.result = reply.decode().strip()
        except OSError as exc:
            self.result = repr(exc)

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 10
        while True:  # until the server listens
            with entered(self.ns.path if self.ns else ""):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(60)
            try:
                sock.connect((self.address, self.port))
                return sock
            except ConnectionRefusedError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


def drained(stderr: str) -> int:
    found = re.search(r"drained connections:\s+(\d+)", stderr)
    assert found, f"no drained connections in the statistics: {stderr}"
    return int(found.group(1))


@pytest.mark.parametrize("leave", ["kill", "running"])
def test_busy_server_is_drained(leave: str, tmp_path: Path) -> None:
    """CLIENTS connections wait in the accept queue of a server that accepts one every
    0.15 s; the dump lets it accept them all, then kills it (or lets it run on). A
    client connecting during the dump has its SYN dropped, and connects to the restored
    server (or to the server running on). Every client is served; none saw a reset."""
    port = random.randrange(20000, 60000)
    with namespace() as ns:
        argv = ns.argv([PYTHON, str(SLOW)])
        with Program.command(
            "slow_acceptor", argv, "127.0.0.1", port, CLIENTS, "slow", tmp_path=tmp_path
        ) as server:
            clients = [Client(ns, "127.0.0.1", port, n) for n in range(CLIENTS)]
            for client in clients:
                client.start()
            server.wait_ready()
            dump = tmp_path / "dump.img"
            argv = [*VZCPT, "dump", "--pid", str(server.pid), "--dumpfile", str(dump)]
            if leave == "running":
                argv.append("--leave-running")
            dumping = subprocess.Popen(
                ns.argv([*argv, "--stats", "--drain-timeout", "10"]),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_for("the dump to hold new connections off", lambda: bool(locks(ns)))
            late = Client(ns, "127.0.0.1", port, CLIENTS)
            late.start()
            _, stderr = dumping.communicate(timeout=60)
            assert dumping.returncode == 0, stderr
            assert drained(stderr) >= 1, stderr
            if leave == "kill":
                server.wait_gone()
                assert len(locks(ns)) == 1, "the network is not locked while the server is gone"
                assert late.connected_at == 0.0, "a new connection reached the dumped server"
                ns.vzcpt("restore", "--dumpfile", dump)
            assert locks(ns) == []
            assert server.verify() == "OK"
            for client in [*clients, late]:
                client.join(timeout=30)
            assert [c.result for c in clients] == [f"served {n}" for n in range(CLIENTS)]
            assert late.result == f"served {CLIENTS}"


def test_server_that_never_accepts_is_refused(tmp_path: Path) -> None:
    """The dump waits the default 2 s, refuses in one line, and leaves the server
    running with its connections: it accepts and serves them all afterwards."""
    port = random.randrange(20000, 60000)
    with namespace() as ns:
        argv = ns.argv([PYTHON, str(SLOW)])
        with Program.command(
            "slow_acceptor", argv, "127.0.0.1", port, CLIENTS, "never", tmp_path=tmp_path
        ) as server:
            clients = [Client(ns, "127.0.0.1", port, n) for n in range(CLIENTS)]
            for client in clients:
                client.start()
            server.wait_ready()
            started = time.monotonic()
            result = ns.vzcpt(
                "dump", "--pid", server.pid, "--dumpfile", tmp_path / "d.img", check=False
            )
            took = time.monotonic() - started
            assert result.returncode != 0
            assert f"has {CLIENTS} connections not yet accepted after 2 s" in result.stderr
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
            assert 2 <= took < 10, f"the dump took {took:.1f} s"
            assert server.alive() and not (tmp_path / "d.img").exists()
            assert locks(ns) == [], "the dump left its lock behind"
            assert server.verify() == "OK"
            for client in clients:
                client.join(timeout=30)
            assert [c.result for c in clients] == [f"served {n}" for n in range(CLIENTS)]
