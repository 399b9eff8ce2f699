"""Every kind of descriptor in one tree, across several checkpoints in a row.

tests/programs/real/everything.py serves TCP clients from another network
namespace with an epoll loop over a socketpair to its child, an eventfd, a
timerfd, a signalfd, an inotify watch, a memfd page shared with the child
and the master of a pty running bash. Each feature has its own tests; here
they meet: dumped and restored three times in a row, then dumped with
--leave-running and restored from that dump once the original is gone.
After each restore every kind must still wake epoll, the clients lose no
byte (neither one waiting in a queue at dump, nor one sent while the tree
was gone), and the shell keeps counting where it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import random
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from harness import Program, read_stat
from netns import PYTHON, NetNs, joined_pair
from test_cpt_tcp import locks
from vzcpt.kernel.netns import entered

EVERYTHING = Path(__file__).parent / "programs" / "real" / "everything.py"
TIMEOUT_S = 60.0


class Client:
    """One TCP connection to the server, from the outside namespace."""

    def __init__(self, netns_path: str, address: str, port: int) -> None:
        with entered(netns_path):
            self.sock = socket.create_connection((address, port), timeout=TIMEOUT_S)
        self.lines = self.sock.makefile("rb")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def read(self) -> str:
        line = self.lines.readline()
        assert line.endswith(b"\n"), f"the server closed the connection ({line!r})"
        return line.decode().strip()

    def ask(self, line: str) -> str:
        self.send(line)
        return self.read()

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


class Server:
    """everything.py in `inside`, what the test expects of it, and its clients."""

    def __init__(self, prog: Program, inside: NetNs, outside: NetNs, port: int) -> None:
        self.prog, self.inside, self.outside, self.port = prog, inside, outside, port
        self.clients: list[Client] = []
        self.kinds = Kinds()

    def connect(self) -> Client:
        client = Client(self.outside.path, self.inside.address, self.port)
        self.clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()

    def check_every_kind(self, client: Client) -> None:
        self.kinds.check(client)


class Kinds:
    """What everything.py counts: each check adds one to each count."""

    def __init__(self) -> None:
        self.mem = 0  # the child's count in the shared page
        self.shell = 0  # bash's count
        self.touched = 0

    def check(self, client: Client) -> None:
        """Each descriptor kind wakes the server's epoll once more."""
        assert client.ask("echo hello") == "hello"
        assert client.ask("child ping") == "child ping"
        assert client.ask("kick") == "eventfd 1"
        assert client.ask("timer") == "timer 1"
        assert client.ask("signal") == "signal 12"
        self.touched += 1
        assert client.ask(f"touch f{self.touched}") == f"inotify f{self.touched}"
        self.mem += 1
        assert client.ask("mem") == f"mem {self.mem}"
        self.shell += 1
        assert client.ask("sh") == f"sh {self.shell}"


@contextlib.contextmanager
def everything(tmp_path: Path, *last: str | int) -> Iterator[Server]:
    """The server; `last`: what its last child holds, and the name of its POSIX queue."""
    watch = tmp_path / "watched"
    watch.mkdir()
    with joined_pair() as (inside, outside):
        port = random.randrange(20000, 60000)
        argv = inside.argv([PYTHON, str(EVERYTHING)])
        args = (inside.address, port, watch, *last)
        with Program.command("everything", argv, *args, tmp_path=tmp_path) as prog:
            server = Server(prog, inside, outside, port)
            try:
                prog.wait_ready(timeout=TIMEOUT_S)
                yield server
            finally:
                server.close_clients()


def dump_and_restore(server: Server, dump: Path, round_: int) -> None:
    """Kill mode, with a reply waiting in a queue and a request sent while the tree is gone."""
    first, second = server.clients[:2]
    second.send(f"echo queued-{round_}")  # its reply may be in flight at the dump
    # Large enough to fill the queues on both sides of the connection.
    big = f"{round_}-" + random.randbytes(300_000).hex()
    first.sock.sendall(f"echo {big[:100]}\necho {big}\n".encode())
    latecomer = server.connect()  # maybe not accepted yet: the dump drains the queue
    server.inside.vzcpt("dump", "--pid", server.prog.pid, "--dumpfile", dump, timeout=TIMEOUT_S * 2)
    server.prog.wait_gone(timeout=TIMEOUT_S)
    first.send(f"echo while-gone-{round_}")  # retransmitted until the restore
    server.inside.vzcpt("restore", "--dumpfile", dump, timeout=TIMEOUT_S * 2)
    assert locks(server.inside) == [], "the lock outlived the restore"
    assert second.read() == f"queued-{round_}"
    assert first.read() == big[:100]
    assert first.read() == big
    assert first.read() == f"while-gone-{round_}"
    assert latecomer.ask(f"echo late-{round_}") == f"late-{round_}"
    server.clients.remove(latecomer)
    latecomer.close()


def test_everything_three_times_then_left_running(tmp_path: Path) -> None:
    with everything(tmp_path) as server:
        server.connect()
        server.connect()
        for client in server.clients:
            server.check_every_kind(client)
        for round_ in range(3):
            dump_and_restore(server, tmp_path / f"dump{round_}.img", round_)
            for client in server.clients:
                server.check_every_kind(client)
        dump = tmp_path / "running.img"
        server.inside.vzcpt("dump", "--leave-running", "-t", server.prog.pid, "-o", dump)
        assert locks(server.inside) == []
        for client in server.clients:
            server.check_every_kind(client)  # it runs on, every kind working
        # The original's connections die with it (FIN to the clients): the
        # restored copy serves new ones, its state that of the dump.
        kinds = server.kinds
        saved_mem, saved_shell, saved_touched = kinds.mem, kinds.shell, kinds.touched
        server.prog.kill(timeout=TIMEOUT_S)
        server.prog.wait_gone(timeout=TIMEOUT_S)
        server.close_clients()
        server.inside.vzcpt("restore", "--dumpfile", dump, timeout=TIMEOUT_S * 2)
        assert locks(server.inside) == []
        kinds.mem, kinds.shell, kinds.touched = saved_mem - 2, saved_shell - 2, saved_touched
        server.check_every_kind(server.connect())


@contextlib.contextmanager
def mqueue_name() -> Iterator[str]:
    """A name for the server's POSIX queue, removed at the end (the host may not mount
    /dev/mqueue)."""
    name = f"/vzt-integ-{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        ctypes.CDLL(None).mq_unlink(name.encode())


def wait_dead(pids: set[int]) -> None:
    """Every process of `pids` has died (killed ones orphaned to init may wait to be reaped)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        alive = [p for p in pids if (i := read_stat(p)) is not None and i.state != "Z"]
        if not alive:
            return
        assert time.monotonic() < deadline, f"processes left by the failed restore: {alive}"
        time.sleep(0.05)


def test_dump_refused_by_the_last_process_leaves_everything_running(tmp_path: Path) -> None:
    """The io_uring of the last process is found after the connections of the first
    were put in repair mode under the lock: all of it is undone, nothing is lost."""
    with mqueue_name() as queue, everything(tmp_path, "uring", queue) as server:
        first, second = server.connect(), server.connect()
        server.check_every_kind(first)
        assert first.ask("mqsend kept") == "mq"
        second.send("echo queued")
        result = server.inside.vzcpt(
            "dump", "-t", server.prog.pid, "-o", tmp_path / "d.img", check=False
        )
        assert result.returncode != 0
        line = result.stderr.strip()
        assert "\n" not in line and "io_uring" in line, line
        assert server.prog.alive() and not (tmp_path / "d.img").exists()
        assert locks(server.inside) == [], "the lock outlived the failed dump"
        assert second.read() == "queued"
        for client in (first, second):
            server.check_every_kind(client)
        assert first.ask("mqrecv") == "mq kept"
        # Out of repair mode for good: a second failed dump finds them as they were.
        result = server.inside.vzcpt(
            "dump", "-t", server.prog.pid, "-o", tmp_path / "d.img", check=False
        )
        assert result.returncode != 0 and server.prog.alive()
        server.check_every_kind(second)


def test_restore_failing_half_way_leaves_nothing_and_can_be_retried(tmp_path: Path) -> None:
    """The last process's listener cannot be bound again: every process, pty and
    socket made before is gone, and the socket file a listener of the first
    one was bound to again (removed since the dump); the dump's lock stays, for
    the restore that follows."""
    other = random.randrange(20000, 60000)
    named = tmp_path / "named.sock"
    with mqueue_name() as queue, everything(tmp_path, f"listen:{other}", queue, named) as server:
        first = server.connect()
        server.check_every_kind(first)
        assert first.ask("mqsend kept") == "mq"
        pids = server.prog.tree_pids()
        dump = tmp_path / "d.img"
        server.inside.vzcpt("dump", "-t", server.prog.pid, "-o", dump)
        server.prog.wait_gone(timeout=TIMEOUT_S)
        table = locks(server.inside)
        assert len(table) == 1
        named.unlink()
        with entered(server.inside.path):
            squatter = socket.create_server((server.inside.address, other))
        with squatter:
            result = server.inside.vzcpt("restore", "--dumpfile", dump, check=False)
        assert result.returncode != 0
        line = result.stderr.strip()
        assert "\n" not in line and "Traceback" not in line, line
        assert line.startswith("vzcpt: error: cannot rebuild a TCP socket"), line
        wait_dead(pids)
        assert not named.exists(), "the failed restore left a socket file"
        assert locks(server.inside) == table, "the dump's lock is gone: a retry would fail"
        first.send("echo across-the-failure")
        server.inside.vzcpt("restore", "--dumpfile", dump, timeout=TIMEOUT_S * 2)
        assert locks(server.inside) == []
        assert first.read() == "across-the-failure"
        server.check_every_kind(first)
        assert first.ask("mqrecv") == "mq kept"
