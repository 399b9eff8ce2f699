"""Two ends of one TCP connection streaming both ways, each checking every byte it gets.

    python3 stream_peer.py REPORT server ADDRESS PORT STATUS
    python3 stream_peer.py REPORT client ADDRESS PORT STATUS

Each end writes its stream as fast as the connection takes it and reads the
other's more slowly (READ_RATE), so that both directions always have data
queued and in flight. A stream is 8-byte words counting up (word k is k,
plus a seed per direction): any byte lost, duplicated or out of place shows
at once. STATUS is rewritten every 0.1 s: "sent N received M" or, at the
first error, "ERROR what" (the end then stops).

The server writes READY to REPORT once it listens and serves one client; on
SIGUSR1 it writes OK if no error happened so far, and goes on; at the first
error it writes FAIL <why> and stops. The client ignores REPORT and exits
at its first error.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import signal
import socket
import sys
import time

READ_RATE = 2 << 20  # bytes per second each end reads
CHUNK = 1 << 16
SEEDS = {"server": 1 << 56, "client": 2 << 56}


def stream(seed: int, start: int, length: int) -> bytes:
    first, last = start // 8, (start + length + 7) // 8
    words = array.array("Q", range(seed + first, seed + last)).tobytes()
    return words[start - first * 8 : start - first * 8 + length]


class End:
    def __init__(self, role: str, sock: socket.socket, status_path: str) -> None:
        self.sock = sock
        self.mine = SEEDS[role]
        self.theirs = SEEDS["client" if role == "server" else "server"]
        self.sent = self.received = 0
        self.error = ""
        self.status = os.open(status_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.started = time.monotonic()
        sock.setblocking(False)

    def write_status(self) -> None:
        text = f"ERROR {self.error}" if self.error else f"sent {self.sent} received {self.received}"
        os.ftruncate(self.status, 0)
        os.pwrite(self.status, (text + "\n").encode(), 0)

    def step(self) -> None:
        budget = READ_RATE * (time.monotonic() - self.started) - self.received
        want_read = budget > 0
        readable, writable, _ = select.select(
            [self.sock] if want_read else [], [self.sock], [], 0.05
        )
        if writable:
            with contextlib.suppress(BlockingIOError):
                self.sent += self.sock.send(stream(self.mine, self.sent, CHUNK))
        if readable:
            try:
                data = self.sock.recv(min(CHUNK, int(budget) + 1))
            except BlockingIOError:
                return
            if not data:
                self.error = f"end of stream after {self.received} bytes"
                return
            if data != stream(self.theirs, self.received, len(data)):
                self.error = f"wrong bytes at offset {self.received}"
                return
            self.received += len(data)

    def run(self, stop: list[bool]) -> None:
        last = 0.0
        while not self.error and not stop:
            try:
                self.step()
            except OSError as exc:
                self.error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - last > 0.1 or self.error:
                self.write_status()
                last = time.monotonic()
        self.write_status()


def main() -> None:
    report, role, address, port, status = sys.argv[1:6]
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    if role == "client":
        sock = socket.create_connection((address, int(port)), timeout=10)
        End(role, sock, status).run([])
        sys.exit(1)
    asked: list[bool] = []
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(True))
    listener = socket.socket(family)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, int(port)))
    listener.listen()
    with open(report, "a") as out:
        out.write("READY\n")
    sock, _ = listener.accept()
    end = End(role, sock, status)
    while not end.error:
        end.run(asked)
        if asked:
            asked.clear()
            with open(report, "a") as out:
                out.write("OK\n" if not end.error else f"FAIL {end.error}\n")
    with open(report, "a") as out:
        out.write(f"FAIL {end.error}\n")
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
