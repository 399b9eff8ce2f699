"""A multi-threaded Python computation for checkpoint tests.

    python3 counter.py OUT [THREADS] [MIB]

THREADS workers (named worker-K through prctl, so /proc shows it) each extend
their own SHA-256 hash chain, h[i] = sha256(h[i-1] + i), and append one line
"K I HEX" to OUT per step with a single write(2) on an O_APPEND descriptor (so
lines from different threads never interleave).  The test recomputes the chain:
a line proves that the thread's memory was intact when it was written, and the
numbering proves where it continued from.

MIB MiB of compressible data (a repeated phrase) are held in memory.  SIGUSR1
makes the main thread compare them with what it wrote and append "OK" or
"FAIL ..." to OUT; the workers keep going.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import sys
import threading
import time

PR_SET_NAME = 15
PHRASE = b"vzcpt keeps this phrase in memory; "


def chain_start(k: int) -> bytes:
    return hashlib.sha256(b"worker-%d" % k).digest()


def chain_step(h: bytes, i: int) -> bytes:
    return hashlib.sha256(h + i.to_bytes(8, "little")).digest()


def worker(fd: int, k: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, b"worker-%d" % k, 0, 0, 0)
    h = chain_start(k)
    i = 0
    while True:
        i += 1
        h = chain_step(h, i)
        os.write(fd, f"{k} {i} {h.hex()}\n".encode())
        time.sleep(0.005)


def main() -> None:
    out = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    mib = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    data = bytearray(PHRASE * ((mib << 20) // len(PHRASE)))
    # A phrase, not zeros: every page is stored, and compresses well.
    checked = hashlib.sha256(data).hexdigest()

    def verify(signum: int, frame: object) -> None:
        if hashlib.sha256(data).hexdigest() == checked and data[: len(PHRASE)] == PHRASE:
            os.write(fd, b"OK\n")
        else:
            os.write(fd, b"FAIL memory differs\n")

    signal.signal(signal.SIGUSR1, verify)
    for k in range(threads):
        threading.Thread(target=worker, args=(fd, k), daemon=True).start()
    os.write(fd, b"READY\n")
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
