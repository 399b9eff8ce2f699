"""Holds a socket, which vzcpt cannot dump yet, and keeps counting.

    python3 socket_holder.py OUT KIND [child]

KIND is "netlink" (a NETLINK_ROUTE socket) or "packet" (an AF_PACKET
socket): kinds vzcpt does not save (unix, TCP and UDP sockets it does).
With "child", a forked child holds the socket and
counts while the parent just waits.  The holder writes "SOCKET PID FD" for
each socket descriptor, then one increasing number per line: a dump that is
refused must leave it counting.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time


def hold(out: int, kind: str) -> None:
    if kind == "netlink":
        held = [socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)]
    else:
        held = [socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)]
    for s in held:
        os.write(out, f"SOCKET {os.getpid()} {s.fileno()}\n".encode())
    i = 0
    while True:
        i += 1
        os.write(out, f"{i}\n".encode())
        time.sleep(0.01)


def main() -> None:
    out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    kind = sys.argv[2]
    if len(sys.argv) > 3 and sys.argv[3] == "child":
        if os.fork() == 0:
            hold(out, kind)
        while True:
            signal.pause()
    hold(out, kind)


if __name__ == "__main__":
    main()
