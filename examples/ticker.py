"""A TCP service to checkpoint: every client gets a numbered tick ten times a
second, on the one connection it opened.

Run in a VE as `python3 ticker.py PORT`; examples/ticker_client.py watches it
from outside and says whether its connection went on without a gap.
"""

import socket
import sys
import threading
import time


def serve(conn: socket.socket) -> None:
    with conn:
        n = 0
        while True:
            n += 1
            try:
                conn.sendall(f"tick {n}\n".encode())
            except OSError:
                return  # the client went away
            time.sleep(0.1)


def main() -> None:
    server = socket.create_server(("", int(sys.argv[1])))
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
