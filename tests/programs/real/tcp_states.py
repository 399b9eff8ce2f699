"""TCP sockets in one state or another across a checkpoint, checked from inside.

    python3 tcp_states.py REPORT CASE FAMILY [netlink]

FAMILY is 4 (127.0.0.1) or 6 (::1). With "netlink" the program also opens a
netlink socket (descriptor 200: a dump refuses it once it has read the others).
CASE:

- established: two connections between processes of the tree, data queued
  both ways and unread (megabytes one way: the sender's queue holds data
  not even sent); one end non-blocking, options set on one end
  (keepalive and its timers, TCP_NODELAY, buffer sizes, SO_LINGER,
  SO_PRIORITY, IP_TOS / IPV6_TCLASS, SO_REUSEADDR, TCP_CORK...). After the
  restore: every byte arrives once and in order, more goes both ways, the
  options read back as set;
- full-queues: a connection whose buffers grew while data flowed, then
  filled both ways (megabytes each way); after the restore every byte
  arrives, in order;
- half-closed: one connection shut down for writing by one end after its
  data (FIN-WAIT-2 and CLOSE-WAIT), one whose shut-down end still has data
  the peer has no room for (FIN-WAIT-1 with its FIN not sent yet), one
  where the second end shut down too, with its own data pending (LAST-ACK).
  After the restore: the data, then end-of-stream, each way it was sent;
  writing still works towards an end that has only shut down its reading;
- connecting: a listener on port 9, whose SYNs the test drops, and two
  sockets connecting to it (SYN-SENT): one non-blocking, one blocking in
  connect() in a child process. After the restore (the test no longer
  drops them): both connections complete, the child's connect() returns
  0, and the listener gets what each sent;
- listen: a listener with its backlog and an accepted connection, a socket
  bound and not listening, a new socket, and one whose connection closed.
  After the restore: the listener accepts a new connection, the bound
  socket keeps its port (and can listen), the others are sockets again.

Writes READY once set up; on SIGUSR1 checks and writes OK or FAIL <why>.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import time

LOOPBACK = {"4": ("127.0.0.1", socket.AF_INET), "6": ("::1", socket.AF_INET6)}


def pattern(start: int, length: int, seed: int) -> bytes:
    """Bytes start..start+length of a stream no two offsets of which repeat soon."""
    block = 1 << 16
    out = bytearray()
    while length > 0:
        index, offset = divmod(start, block)
        chunk = (bytes([seed, index & 0xFF, (index >> 8) & 0xFF]) * (block // 3 + 1))[:block]
        chunk = bytes((b + i) & 0xFF for i, b in enumerate(chunk)) if index % 2 else chunk
        piece = chunk[offset : offset + length]
        out += piece
        start += len(piece)
        length -= len(piece)
    return bytes(out)


def connected_pair(host: str, family: int) -> tuple[socket.socket, socket.socket]:
    with socket.socket(family) as listener:
        listener.bind((host, 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
    return client, server


def send_until_full(sock: socket.socket, seed: int, limit: int = 64 << 20, start: int = 0) -> int:
    """Write the pattern (from offset `start`) until the kernel takes no more; return how
    much it took."""
    sock.setblocking(False)
    sent = 0
    try:
        while sent < limit:
            sent += sock.send(pattern(start + sent, 1 << 16, seed))
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return sent


def read_exactly(sock: socket.socket, length: int, timeout: float = 20.0) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < length:
        ready, _, _ = select.select([sock], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            break
        chunk = sock.recv(min(length - len(got), 1 << 20))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def at_eof(sock: socket.socket, timeout: float = 20.0) -> bool:
    ready, _, _ = select.select([sock], [], [], timeout)
    return bool(ready) and sock.recv(1) == b""


OPTIONS = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 13),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4),
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 45000),
    (socket.SOL_SOCKET, socket.SO_PRIORITY, 5),
    (socket.SOL_SOCKET, socket.SO_REUSEADDR, 1),
]
LINGER = struct.pack("ii", 1, 17)


def set_options(sock: socket.socket, family: int) -> None:
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x28)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0x28)
    for level, name, value in OPTIONS:
        sock.setsockopt(level, name, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 96 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 160 * 1024)


def check_options(sock: socket.socket, family: int, problems: list[str]) -> None:
    for level, name, value in OPTIONS:
        if sock.getsockopt(level, name) != value:
            problems.append(f"option {level}/{name} is {sock.getsockopt(level, name)}, not {value}")
    if family == socket.AF_INET:
        tos = sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS)
    else:
        tos = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS)
    if tos != 0x28:
        problems.append(f"TOS/TCLASS {tos:#x}")
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) != LINGER:
        problems.append("SO_LINGER")
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) != 2 * 96 * 1024:
        problems.append(f"SO_SNDBUF {sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)}")
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) != 2 * 160 * 1024:
        problems.append(f"SO_RCVBUF {sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)}")


class Case:
    def __init__(self, host: str, family: int) -> None:
        self.host, self.family = host, family

    def set_up(self) -> None:
        raise NotImplementedError

    def check(self, problems: list[str]) -> None:
        raise NotImplementedError


class Established(Case):
    def set_up(self) -> None:
        # a: much data a->b (b reads none), a little b->a; a is non-blocking afterwards.
        self.a, self.b = connected_pair(self.host, self.family)
        set_options(self.a, self.family)
        self.names = (self.a.getsockname(), self.a.getpeername())
        self.a_sent = send_until_full(self.a, 1)
        self.b.sendall(pattern(0, 5000, 2))
        self.a.setblocking(False)
        # c, d: corked, each with a little unread data the other sent.
        self.c, self.d = connected_pair(self.host, self.family)
        self.c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        self.d.sendall(b"to c")
        self.c.sendall(b"to d")  # corked: stays in c until uncorked

    def check(self, problems: list[str]) -> None:
        if (self.a.getsockname(), self.a.getpeername()) != self.names:
            problems.append("addresses of a")
        if not fcntl.fcntl(self.a.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK:
            problems.append("a is no longer non-blocking")
        check_options(self.a, self.family, problems)
        got = read_exactly(self.b, self.a_sent)
        if got != pattern(0, self.a_sent, 1):
            problems.append(f"a->b: {len(got)} of {self.a_sent} bytes, or not in order")
        self.a.setblocking(True)
        if read_exactly(self.a, 5000) != pattern(0, 5000, 2):
            problems.append("b->a data")
        self.a.sendall(pattern(self.a_sent, 100000, 1))  # the same stream goes on
        if read_exactly(self.b, 100000) != pattern(self.a_sent, 100000, 1):
            problems.append("a->b after the restore")
        self.b.sendall(b"more")
        if read_exactly(self.a, 4) != b"more":
            problems.append("b->a after the restore")
        if self.c.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) != 1:
            problems.append("TCP_CORK")
        if read_exactly(self.c, 4) != b"to c":
            problems.append("d->c data")
        self.c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        if read_exactly(self.d, 4) != b"to d":
            problems.append("c->d data once uncorked")


class FullQueues(Case):
    """Buffers grown by autotuning, then filled both ways: megabytes queued each way."""

    def set_up(self) -> None:
        self.a, self.b = connected_pair(self.host, self.family)
        self.sent: dict[int, int] = {}
        self.read: dict[int, int] = {}
        for sender, receiver, seed in ((self.a, self.b, 5), (self.b, self.a, 6)):
            sender.setblocking(False)
            receiver.setblocking(False)
            offset, deadline = 0, time.monotonic() + 1.0
            while time.monotonic() < deadline:  # the receiver reads: its window grows
                with contextlib.suppress(BlockingIOError):
                    offset += sender.send(pattern(offset, 1 << 16, seed))
                with contextlib.suppress(BlockingIOError):
                    got = receiver.recv(1 << 20)
                    if got != pattern(self.skipped(seed), len(got), seed):
                        raise RuntimeError("data out of order before the checkpoint")
                    self.read[seed] = self.skipped(seed) + len(got)
            self.sent[seed] = offset + send_until_full(sender, seed, start=offset)
            sender.setblocking(True)
            receiver.setblocking(True)

    def skipped(self, seed: int) -> int:
        return self.read.get(seed, 0)

    def check(self, problems: list[str]) -> None:
        for receiver, seed in ((self.b, 5), (self.a, 6)):
            left = self.sent[seed] - self.skipped(seed)
            got = read_exactly(receiver, left, timeout=60)
            if got != pattern(self.skipped(seed), left, seed):
                problems.append(
                    f"stream {seed}: {len(got)} of {left} queued bytes, or not in order"
                )
        self.a.sendall(b"after")
        if read_exactly(self.b, 5) != b"after":
            problems.append("a->b after the restore")


class HalfClosed(Case):
    def set_up(self) -> None:
        # FIN-WAIT-2 / CLOSE-WAIT: e said all it had to say.
        self.e, self.f = connected_pair(self.host, self.family)
        self.e.sendall(b"e says bye")
        self.e.shutdown(socket.SHUT_WR)
        # FIN-WAIT-1: g shut down with more data than h has room for.
        self.g, self.h = connected_pair(self.host, self.family)
        self.g_sent = send_until_full(self.g, 3)
        self.g.shutdown(socket.SHUT_WR)
        # LAST-ACK: i shut down, then j, with its data still pending.
        self.i, self.j = connected_pair(self.host, self.family)
        self.i.sendall(b"i is done")
        self.i.shutdown(socket.SHUT_WR)
        self.j_sent = send_until_full(self.j, 4)
        self.j.shutdown(socket.SHUT_WR)
        time.sleep(0.2)

    def check(self, problems: list[str]) -> None:
        if read_exactly(self.f, 10) != b"e says bye" or not at_eof(self.f):
            problems.append("f: e's data then end-of-stream")
        self.f.sendall(b"f still talks")
        if read_exactly(self.e, 13) != b"f still talks":
            problems.append("f->e after e shut down")
        got = read_exactly(self.h, self.g_sent)
        if got != pattern(0, self.g_sent, 3) or not at_eof(self.h):
            problems.append(f"h: {len(got)} of {self.g_sent} bytes of g, then end-of-stream")
        if read_exactly(self.j, 9) != b"i is done" or not at_eof(self.j):
            problems.append("j: i's data then end-of-stream")
        got = read_exactly(self.i, self.j_sent)
        if got != pattern(0, self.j_sent, 4) or not at_eof(self.i):
            problems.append(f"i: {len(got)} of {self.j_sent} bytes of j, then end-of-stream")


class Listen(Case):
    def set_up(self) -> None:
        self.listener = socket.socket(self.family)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.family == socket.AF_INET6:
            self.listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.listener.bind((self.host, 0))
        self.listener.listen(37)
        self.client = socket.create_connection(self.listener.getsockname()[:2])
        self.accepted, _ = self.listener.accept()
        self.client.sendall(b"hello")
        self.bound = socket.socket(self.family)
        self.bound.bind((self.host, 0))
        self.new = socket.socket(self.family)
        gone, self.closed = connected_pair(self.host, self.family)
        gone.close()
        time.sleep(0.1)
        self.closed.recv(10)  # end of stream: closed on both sides

    def check(self, problems: list[str]) -> None:
        if self.listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 1:
            problems.append("listener SO_REUSEADDR")
        if self.family == socket.AF_INET6 and not self.listener.getsockopt(
            socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
        ):
            problems.append("listener IPV6_V6ONLY")
        if read_exactly(self.accepted, 5) != b"hello":
            problems.append("accepted connection data")
        newcomer = socket.create_connection(self.listener.getsockname()[:2], timeout=10)
        served, _ = self.listener.accept()
        newcomer.sendall(b"new")
        if read_exactly(served, 3) != b"new":
            problems.append("listener does not accept")
        port = self.bound.getsockname()[1]
        if not port:
            problems.append("the bound socket lost its port")
        self.bound.listen()
        if socket.create_connection((self.host, port), timeout=10).getpeername()[1] != port:
            problems.append("the bound socket cannot listen")
        self.new.connect(self.listener.getsockname()[:2])
        self.closed.close()


class Connecting(Case):
    PORT = 9  # the test drops the SYNs to it

    def set_up(self) -> None:
        self.listener = socket.socket(self.family)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((self.host, self.PORT))
        self.listener.listen()
        self.client = socket.socket(self.family)
        self.client.setblocking(False)
        if self.client.connect_ex((self.host, self.PORT)) != errno.EINPROGRESS:
            raise RuntimeError("the connection did not stay in progress")
        self.child = os.fork()
        if self.child == 0:
            try:
                with socket.socket(self.family) as sock:
                    sock.connect((self.host, self.PORT))  # blocks until after the restore
                    sock.sendall(b"child")
                os._exit(0)
            except BaseException:
                os._exit(1)
        deadline = time.monotonic() + 10
        while len(syn_sent(self.PORT)) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the child is not connecting")
            time.sleep(0.01)

    def check(self, problems: list[str]) -> None:
        if not select.select([], [self.client], [], 30)[1]:
            problems.append("the non-blocking connection did not complete")
            return
        error = self.client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            problems.append(f"the non-blocking connection failed: {os.strerror(error)}")
            return
        self.client.setblocking(True)
        self.client.sendall(b"parent")
        self.listener.settimeout(30)
        got = set()
        for _ in range(2):
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(30)
                got.add(conn.recv(10))
        if got != {b"child", b"parent"}:
            problems.append(f"the listener got {sorted(got)}")
        deadline = time.monotonic() + 30
        while (status := os.waitpid(self.child, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                problems.append("the child is still connecting")
                return
            time.sleep(0.01)
        if status[1] != 0:
            problems.append(f"the child's connect failed (status {status[1]:#x})")


def syn_sent(port: int) -> list[str]:
    """The lines of /proc/net/tcp{,6} of sockets connecting to `port` (state 02)."""
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if fields[3] == "02" and int(fields[2].split(":")[1], 16) == port:
                    found.append(line)
    return found


CASES = {
    "connecting": Connecting,
    "established": Established,
    "full-queues": FullQueues,
    "half-closed": HalfClosed,
    "listen": Listen,
}


def main() -> None:
    report_path, case_name, family_name = sys.argv[1:4]
    host, family = LOOPBACK[family_name]
    case = CASES[case_name](host, family)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    case.set_up()
    if sys.argv[4:] == ["netlink"]:  # on a number above the others': dumped last
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as netlink:
            os.dup2(netlink.fileno(), 200)
    with open(report_path, "a") as report:
        report.write("READY\n")
    while True:
        try:
            signal.sigwaitinfo({signal.SIGUSR1})
            break
        except InterruptedError:
            continue
    problems: list[str] = []
    try:
        case.check(problems)
    except Exception as exc:  # reported, not raised: the test reads the report
        problems.append(f"{type(exc).__name__}: {exc}")
    with open(report_path, "a") as report:
        report.write("OK\n" if not problems else f"FAIL {', '.join(problems)}\n")
    sys.exit(0 if not problems else 1)


if __name__ == "__main__":
    main()
