"""Writing a dump: records and page runs as frames (image/frames.py), to a
file, a pipe or any binary stream.

Speed: pages travel as large runs; the writer hands them to `writev` beside
their frame header (no copy of the page data). Threads may write page runs
at once: each prepares its frames (checksum, compression) on its own, and
they take turns to write them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

import xxhash
import zstandard

from vzcpt.errors import AccessDenied, SyscallFailed, VzcptError
from vzcpt.image import schema
from vzcpt.image.frames import (
    END,
    FILE_HEADER,
    FLAG_ZSTD,
    KIND_END,
    KIND_PAGES,
    KIND_RECORD,
    MAGIC,
    MAX_RECORD,
    MAX_RUN,
    PAGE_SIZE,
    PREFIX,
    VERSION,
    frame_header,
)
from vzcpt.kernel.fds import grow_pipe
from vzcpt.kernel.libc import reserve_blocks, start_writeback

_BATCH = 1 << 20  # small frames collect in memory up to this size: few syscalls
_SMALL_RUN = 256 << 10  # page runs below this are copied into the batch
_MIN_COMPRESS = 4096  # records smaller than this do not shrink enough to bother
_RESERVE_SLACK = 1 << 20  # frame headers and records beside the pages announced


def create_dumpfile(path: str) -> BinaryIO:
    """Open `path` for a new dump, mode 0600 (it holds process memory); "-" is stdout."""
    if path == "-":
        return sys.stdout.buffer

    def opener(p: str, flags: int) -> int:
        return os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    try:
        f = open(path, "wb", opener=opener)  # noqa: SIM115 - the caller owns it
    except OSError as e:
        cls = AccessDenied if e.errno in (errno.EACCES, errno.EPERM) else VzcptError
        raise cls(f"cannot create dump file {path}: {e.strerror}") from None
    try:
        # O_CREAT's mode does not apply to a file that already existed.
        os.fchmod(f.fileno(), 0o600)
    except OSError as e:
        f.close()
        raise VzcptError(
            f"cannot make dump file {path} private (mode 0600): {e.strerror}"
        ) from None
    return f


@dataclass
class WriteStats:
    """What a DumpWriter wrote. raw_bytes: payloads before compression;
    stored_bytes: everything written, headers included (the file size)."""

    records: int = 0
    page_frames: int = 0
    pages: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0


class DumpWriter:
    """Writes records and page runs as one dump stream.

    Leaving the `with` block by an exception does NOT write the END frame: an
    aborted dump must never look complete.
    """

    def __init__(
        self,
        out: BinaryIO,
        *,
        compress: bool = False,
        level: int = 3,
        threads: int = 0,
        writeback: bool = False,
    ) -> None:
        """With `writeback`, for a dump that will be synced, each large page run
        is sent on to the disk as soon as it is written (sync_file_range, no
        waiting), by the thread that wrote it: the final fsync then finds
        little left, and the disk is busy from the first run on."""
        self.stats = WriteStats()
        self._out = out
        self._name = _stream_name(out)
        self._fd: int | None
        try:
            out.flush()
            self._fd = out.fileno()
        except (OSError, ValueError, AttributeError):
            self._fd = None  # BytesIO and friends: plain write() calls
        if self._fd is not None:
            grow_pipe(self._fd)
        fresh = self._fd is not None and _fresh_file(self._fd)
        self._reserved_to = 0 if fresh else None
        self._writeback = writeback and fresh
        self._cctx = zstandard.ZstdCompressor(level=level, threads=threads) if compress else None
        self._batch = bytearray()
        # Page runs may come from several threads: they prepare their frames
        # (checksum, compression) on their own and take turns to write them.
        self._lock = threading.RLock()
        self._frames = 0
        self._page_bytes = 0
        self._closed = False
        self._queue(FILE_HEADER.pack(MAGIC, VERSION, 0))

    def __enter__(self) -> DumpWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            with self._lock:
                if self._closed:
                    return
                # What was written so far goes out (it helps to see how far the
                # dump got), but no END frame: the dump stays visibly incomplete.
                self._closed = True
                with contextlib.suppress(VzcptError):
                    self._send([])

    def reserve(self, nbytes: int) -> None:
        """About `nbytes` more are coming: have the file system allocate their
        blocks now, in one go. A dump file whose blocks are found write by
        write (ext4's delayed allocation) is written and synced markedly
        slower and less evenly. Only for a regular file we write from its
        start; the unused rest is given back by close()."""
        with self._lock:
            self._reserve(nbytes)

    def _reserve(self, nbytes: int) -> None:
        if self._reserved_to is None or self._fd is None:
            return
        start = max(self._position(), self._reserved_to)
        end = self._position() + nbytes + _RESERVE_SLACK
        if end <= start:
            return
        try:
            reserve_blocks(self._fd, start, end - start)
        except SyscallFailed as e:
            if e.errno == errno.ENOSPC:
                raise VzcptError(
                    f"cannot write the dump to {self._name}: no space left for "
                    f"{end - self._position()} more bytes"
                ) from None
            self._reserved_to = None  # a file system without fallocate: plain writes
            return
        self._reserved_to = end

    def _position(self) -> int:
        return self.stats.stored_bytes + len(self._batch)

    def write_record(self, obj: object) -> None:
        """Append one registered record (see schema.record)."""
        self._check_open()
        payload = schema.encode(obj)
        raw_len = len(payload)
        if raw_len > MAX_RECORD:
            raise ValueError(f"record {type(obj).__name__} is {raw_len} bytes, over {MAX_RECORD}")
        flags = 0
        if self._cctx is not None and raw_len >= _MIN_COMPRESS:
            packed = self._cctx.compress(payload)
            if len(packed) < raw_len:
                payload, flags = packed, FLAG_ZSTD
        header = frame_header(
            KIND_RECORD, flags, len(payload), raw_len, xxhash.xxh3_64_intdigest(payload)
        )
        with self._lock:
            self.stats.records += 1
            self.stats.raw_bytes += raw_len
            self._frames += 1
            self._queue(header, payload)

    def write_pages(self, owner: int, address: int, data: bytes | bytearray | memoryview) -> None:
        """Append pages of `owner` (a pid) starting at `address`; len(data) % 4096 == 0."""
        self._check_open()
        view = memoryview(data).cast("B")
        size = len(view)
        if size % PAGE_SIZE or address % PAGE_SIZE:
            raise ValueError(f"page run {address:#x}+{size:#x} is not page aligned")
        if not 0 <= owner < 1 << 64 or not 0 <= address <= (1 << 64) - size:
            raise ValueError(f"page run owner {owner} at {address:#x} is out of range")
        for start in range(0, size, MAX_RUN):
            self._write_run(owner, address + start, view[start : start + MAX_RUN])

    def _write_run(self, owner: int, address: int, chunk: memoryview) -> None:
        prefix = PREFIX.pack(owner, address)
        raw_len = len(prefix) + len(chunk)
        parts: Sequence[bytes | memoryview] = (prefix, chunk)
        flags = 0
        if self._cctx is not None:
            with self._lock:  # one compressor, not to be shared by threads at once
                cobj = self._cctx.compressobj(size=raw_len)
                packed = [cobj.compress(prefix), cobj.compress(chunk), cobj.flush()]
            if sum(map(len, packed)) < raw_len:  # random data is kept raw, and zero-copy
                parts, flags = packed, FLAG_ZSTD
        hasher = xxhash.xxh3_64()
        for p in parts:
            hasher.update(p)
        stored_len = sum(map(len, parts))
        header = frame_header(KIND_PAGES, flags, stored_len, raw_len, hasher.intdigest())
        with self._lock:
            self._check_open()
            self.stats.page_frames += 1
            self.stats.pages += len(chunk) // PAGE_SIZE
            self.stats.raw_bytes += raw_len
            self._frames += 1
            self._page_bytes += len(chunk)
            if stored_len < _SMALL_RUN:
                self._queue(header, *parts)
                return
            written_from = self.stats.stored_bytes
            self._send([header, *parts])
            written_to = self.stats.stored_bytes
        if self._writeback and self._fd is not None:
            with contextlib.suppress(SyscallFailed):  # the final fsync reports errors
                start_writeback(self._fd, written_from, written_to - written_from)

    def close(self) -> None:
        """Write the END frame and flush. Does not close `out`; safe to call twice."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        payload = END.pack(self._frames, self._page_bytes, self._page_bytes // PAGE_SIZE)
        header = frame_header(
            KIND_END, 0, len(payload), len(payload), xxhash.xxh3_64_intdigest(payload)
        )
        self._send([header, payload])
        self._closed = True
        try:
            self._out.flush()
            if self._reserved_to and self._fd is not None:
                os.ftruncate(self._fd, self._position())  # frees the blocks reserved beyond it
        except OSError as e:
            raise self._error(e) from None

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("DumpWriter is closed")

    def _queue(self, *parts: bytes | memoryview) -> None:
        for p in parts:
            self._batch += p
        if len(self._batch) >= _BATCH:
            self._send([])

    def _send(self, parts: list[bytes | bytearray | memoryview]) -> None:
        """Write the batch and then `parts`, in one writev when possible."""
        if self._batch:
            parts.insert(0, self._batch)
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        self.stats.stored_bytes += sum(map(len, views))
        try:
            if self._fd is None:
                for v in views:
                    self._out.write(v)
            else:
                _writev_all(self._fd, list(views))
        except OSError as e:
            raise self._error(e) from None
        finally:
            for v in views:
                v.release()  # or the batch bytearray cannot be resized
        self._batch = bytearray()

    def _error(self, e: OSError) -> VzcptError:
        self._closed = True  # the stream is broken: never write END after a gap
        return VzcptError(f"cannot write the dump to {self._name}: {e.strerror or e}")


def _writev_all(fd: int, views: list[memoryview]) -> None:
    """writev until everything is written (pipes and signals give short writes)."""
    while views:
        try:
            n = os.writev(fd, views[:64])
        except BlockingIOError:  # somebody handed us a non-blocking fd
            select.select([], [fd], [])
            continue
        while n:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0] = views[0][n:]
                n = 0


def _fresh_file(fd: int) -> bool:
    """A regular file, empty, that we write from its start."""
    try:
        st = os.fstat(fd)
        return stat.S_ISREG(st.st_mode) and st.st_size == 0 and os.lseek(fd, 0, os.SEEK_CUR) == 0
    except OSError:
        return False


def _stream_name(f: object) -> str:
    name = getattr(f, "name", None)
    if name in ("<stdout>", 1):
        return "standard output"
    return name if isinstance(name, str) else "the dump stream"
