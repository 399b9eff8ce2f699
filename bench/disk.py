#!/usr/bin/env python3
"""What this machine's disk gives a dump: the floor under a durable dump.

    python3 bench/disk.py [--mib 1024] [--runs 5] [--tmpdir DIR]

Each run writes MiB of random data from memory into a new file in DIR
(default $TMPDIR or /tmp, where bench/run.py puts its dumps) and syncs it,
in the ways a dumper could, taking turns:

  buffered     one thread, plain write() calls, then fsync (what a dumper
               that syncs at the end does)
  vzcpt-like   two threads, the file's blocks reserved first (fallocate
               KEEP_SIZE), each 16 MiB written and at once handed on to the
               disk (sync_file_range), then fsync: what vzcpt's writer does
  direct       two threads, O_DIRECT, then fsync: no page cache at all

and then reads the last file back with O_DIRECT from two threads (what a
restore would pay to read a dump that is not in the page cache). Prints the
median and range of each. Nothing of a process is copied: this is the disk
and the page cache alone, for comparing with `durable` minus `dump` of
CRIU in bench/run.py.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

CHUNK = 16 << 20
FALLOC_FL_KEEP_SIZE = 1
SYNC_FILE_RANGE_WRITE = 2
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def sources(count: int) -> list[mmap.mmap]:
    """Page-aligned buffers of random bytes (O_DIRECT needs the alignment)."""
    out = []
    for _ in range(count):
        buf = mmap.mmap(-1, CHUNK)
        buf.write(os.urandom(CHUNK))
        out.append(buf)
    return out


def on_threads(count: int, work: Callable[[int], object]) -> None:
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def buffered(path: Path, size: int, bufs: list[mmap.mmap]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // CHUNK):
            os.write(fd, bufs[0])
        os.fsync(fd)
    finally:
        os.close(fd)


def vzcpt_like(path: Path, size: int, bufs: list[mmap.mmap]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, size)
        turn, next_chunk = threading.Lock(), [0]

        def work(n: int) -> None:
            while True:
                with turn:
                    offset = next_chunk[0]
                    if offset >= size:
                        return
                    next_chunk[0] += CHUNK
                    os.pwrite(fd, bufs[n], offset)
                libc.sync_file_range(fd, offset, CHUNK, SYNC_FILE_RANGE_WRITE)

        on_threads(2, work)
        os.fsync(fd)
    finally:
        os.close(fd)


def direct(path: Path, size: int, bufs: list[mmap.mmap]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    try:
        chunks = size // CHUNK
        on_threads(2, lambda n: [os.pwrite(fd, bufs[n], c * CHUNK) for c in range(n, chunks, 2)])
        os.fsync(fd)
    finally:
        os.close(fd)


def read_direct(path: Path, size: int, bufs: list[mmap.mmap]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        chunks = size // CHUNK
        on_threads(2, lambda n: [os.preadv(fd, [bufs[n]], c * CHUNK) for c in range(n, chunks, 2)])
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tmpdir", default=os.environ.get("TMPDIR", "/tmp"))
    args = parser.parse_args()
    size = args.mib << 20
    bufs = sources(2)
    ways = {"buffered": buffered, "vzcpt-like": vzcpt_like, "direct": direct}
    times: dict[str, list[float]] = {name: [] for name in [*ways, "read direct"]}
    with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="vzcpt-disk-") as tmp:
        path = Path(tmp) / "data"
        for run in range(args.runs):
            for name, way in ways.items():
                started = time.monotonic()
                way(path, size, bufs)
                times[name].append(time.monotonic() - started)
            started = time.monotonic()
            read_direct(path, size, bufs)  # written with O_DIRECT: not in the page cache
            times["read direct"].append(time.monotonic() - started)
            path.unlink()
            print(f"run {run + 1}/{args.runs} done", flush=True)
    print(f"{args.mib} MiB in {args.tmpdir}, medians (and ranges) of {args.runs} runs:")
    for name, got in times.items():
        what = "read" if name.startswith("read") else "write + fsync"
        print(
            f"  {name:12s} {what:14s} {statistics.median(got):.3f} s "
            f"({min(got):.2f}-{max(got):.2f})"
        )


if __name__ == "__main__":
    main()
