"""UDP sockets across a checkpoint, checked from inside.

    python3 udp_sockets.py REPORT

- a socket bound to 127.0.0.1 with four datagrams waiting, from two
  senders (one of them empty): they come back in order, each with its
  sender's address;
- one bound to any address (0.0.0.0) and a dual-stack IPv6 one bound to ::
  each with a datagram waiting (the latter from an IPv4 sender);
- an IPv6-only socket on ::1 with a datagram waiting;
- a connected socket: same peer, and datagrams go both ways;
- options: SO_BROADCAST, IP_TOS, IP_PKTINFO, SO_RCVBUF, IPV6_V6ONLY,
  IPV6_RECVPKTINFO, O_NONBLOCK.

Writes READY; on SIGUSR1 checks everything and writes OK or FAIL <why>.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys

V4, V6 = socket.AF_INET, socket.AF_INET6
IP_PKTINFO = 8  # not in Python's socket module


def udp(family: int, address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(address)
    return sock


def main() -> None:
    report_path = sys.argv[1]
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    bound = udp(V4, ("127.0.0.1", 0))
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    bound.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
    bound.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 200 * 1024)
    fcntl.fcntl(bound.fileno(), fcntl.F_SETFL, os.O_NONBLOCK)
    alice, bob = udp(V4, ("127.0.0.1", 0)), udp(V4, ("127.0.0.1", 0))
    queued = [(alice, b"one"), (bob, b""), (alice, b"three" * 1000), (bob, b"four")]
    for sender, data in queued:
        sender.sendto(data, bound.getsockname())
    anywhere = udp(V4, ("0.0.0.0", 0))
    alice.sendto(b"to any", ("127.0.0.1", anywhere.getsockname()[1]))
    dual = udp(V6, ("::", 0))
    alice.sendto(b"v4 to dual", ("127.0.0.1", dual.getsockname()[1]))
    only6 = socket.socket(V6, socket.SOCK_DGRAM)
    only6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    only6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    only6.bind(("::1", 0))
    carol = udp(V6, ("::1", 0))
    carol.sendto(b"six", only6.getsockname())
    peer = udp(V4, ("127.0.0.1", 0))
    connected = socket.socket(V4, socket.SOCK_DGRAM)
    connected.connect(peer.getsockname())
    names = {
        "bound": bound.getsockname(),
        "connected": (connected.getsockname(), connected.getpeername()),
        "only6": only6.getsockname(),
    }
    with open(report_path, "a") as report:
        report.write("READY\n")
    while True:
        try:
            signal.sigwaitinfo({signal.SIGUSR1})
            break
        except InterruptedError:
            continue

    problems = []
    try:
        for sender, data in queued:
            got, source = bound.recvfrom(1 << 16)
            if (got, source) != (data, sender.getsockname()):
                want = f"{data[:8]!r} from {sender.getsockname()}"
                problems.append(f"datagram {want}: got {got[:8]!r} from {source}")
        try:
            bound.recv(10)
            problems.append("a datagram too many")
        except BlockingIOError:
            pass
        if bound.getsockname() != names["bound"]:
            problems.append("bound address")
        for name, value in (
            (socket.SO_BROADCAST, 1),
            (socket.SO_RCVBUF, 2 * 200 * 1024),
        ):
            if bound.getsockopt(socket.SOL_SOCKET, name) != value:
                problems.append(f"SOL_SOCKET option {name}")
        if bound.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) != 0x10:
            problems.append("IP_TOS")
        if not bound.getsockopt(socket.IPPROTO_IP, IP_PKTINFO):
            problems.append("IP_PKTINFO")
        if anywhere.recvfrom(100) != (b"to any", alice.getsockname()):
            problems.append("datagram to the socket bound to any address")
        got, source = dual.recvfrom(100)
        if got != b"v4 to dual" or source[:2] != ("::ffff:127.0.0.1", alice.getsockname()[1]):
            problems.append(f"datagram from IPv4 to the dual-stack socket: {got!r} from {source}")
        if only6.recvfrom(100)[0] != b"six" or only6.getsockname() != names["only6"]:
            problems.append("IPv6 datagram")
        if not only6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
            problems.append("IPV6_V6ONLY")
        if not only6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO):
            problems.append("IPV6_RECVPKTINFO")
        if (connected.getsockname(), connected.getpeername()) != names["connected"]:
            problems.append("connected socket's addresses")
        connected.send(b"ping")
        if peer.recvfrom(10) != (b"ping", connected.getsockname()):
            problems.append("connected -> peer")
        peer.sendto(b"pong", connected.getsockname())
        if connected.recv(10) != b"pong":
            problems.append("peer -> connected")
    except Exception as exc:  # reported, not raised: the test reads the report
        problems.append(f"{type(exc).__name__}: {exc}")
    with open(report_path, "a") as report:
        report.write("OK\n" if not problems else f"FAIL {', '.join(problems)}\n")
    sys.exit(0 if not problems else 1)


if __name__ == "__main__":
    main()
