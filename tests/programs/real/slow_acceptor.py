"""A TCP server with connections waiting in its accept queue, accepted slowly or never.

    python3 slow_acceptor.py REPORT ADDRESS PORT CLIENTS MODE

Listens on ADDRESS:PORT and waits until CLIENTS connections wait in its
accept queue (TCP_INFO of the listener tells), then writes READY. MODE:

- slow: accepts one connection every 0.15 s from then on;
- never: accepts none until SIGUSR1.

On SIGUSR1 it accepts what still waits, reads from each of the first
CLIENTS connections its request ("hello N"), answers "served N" and writes
OK (or FAIL <why>); then it serves every later connection the same way,
until killed. Connections are served only after SIGUSR1, so that the test
sees them served by the restored server, not before its dump.
"""

from __future__ import annotations

import select
import signal
import socket
import struct
import sys
import time
from typing import TextIO

ACCEPT_EVERY_S = 0.15


def waiting(listener: socket.socket) -> int:
    """Connections in the accept queue: tcpi_unacked of a listener."""
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("=I", info, 24)[0])


def serve(conn: socket.socket) -> None:
    conn.settimeout(30)
    request = b""
    while not request.endswith(b"\n"):
        chunk = conn.recv(100)
        if not chunk:
            raise ConnectionError(f"end of stream after {request!r}")
        request += chunk
    words = request.split()
    if len(words) != 2 or words[0] != b"hello":
        raise ValueError(f"bad request {request!r}")
    conn.sendall(b"served " + words[1] + b"\n")


def main() -> None:
    report_path, address, port, clients, mode = sys.argv[1:6]
    with open(report_path, "a", buffering=1) as report:
        run(report, address, int(port), int(clients), mode)


def run(report: TextIO, address: str, port: int, clients: int, mode: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(64)
    while waiting(listener) < clients:
        time.sleep(0.01)
    report.write("READY\n")

    verify = False

    def on_usr1(signum: int, frame: object) -> None:
        nonlocal verify
        verify = True

    signal.signal(signal.SIGUSR1, on_usr1)
    accepted: list[socket.socket] = []
    while not verify:
        if mode == "slow" and select.select([listener], [], [], ACCEPT_EVERY_S)[0]:
            accepted.append(listener.accept()[0])
            time.sleep(ACCEPT_EVERY_S)
        else:
            time.sleep(0.05)
    listener.settimeout(10)
    try:
        while len(accepted) < clients:
            accepted.append(listener.accept()[0])
        for conn in accepted:
            serve(conn)
    except OSError as exc:
        report.write(f"FAIL with {len(accepted)} connections accepted: {exc!r}\n")
        return
    report.write("OK\n")
    listener.settimeout(None)
    while True:
        conn = listener.accept()[0]
        serve(conn)
        conn.close()


if __name__ == "__main__":
    main()
