"""Watch examples/ticker.py over one TCP connection and say whether it went on.

    python3 ticker_client.py HOST PORT REPORT

Reads ticks and writes one status line to REPORT every half second: the
last tick, the longest pause, and whether every tick followed the one before
(no loss, no repeat, no reconnect). Any error ends it with an ERROR line.
"""

import socket
import sys
import time


def main() -> None:
    host, port, report = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    out = open(report, "w", buffering=1)  # noqa: SIM115 - open for the program's whole life
    conn = socket.create_connection((host, port), timeout=60)
    last, gap, seen, since = 0, 0.0, time.monotonic(), time.monotonic()
    buffered = b""
    try:
        while True:
            data = conn.recv(4096)
            if not data:
                raise ConnectionError("the server closed the connection")
            now = time.monotonic()
            gap, seen = max(gap, now - seen), now
            buffered += data
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                if line.startswith(b"tick "):
                    n = int(line.split()[1])
                    if n != last + 1:
                        raise ConnectionError(f"tick {n} came after tick {last}")
                    last = n
            if now - since >= 0.5:
                since = now
                out.write(f"tick {last} longest-pause {gap:.1f}s in-order\n")
    except OSError as exc:
        out.write(f"ERROR after tick {last}: {exc}\n")


if __name__ == "__main__":
    main()
