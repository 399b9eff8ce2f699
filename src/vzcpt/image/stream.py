"""The dump file: one stream of checksummed frames, to disk or through a pipe.

Layout, little endian::

    file header  magic b"VZCPT\\0\\r\\n" (8) | u32 format version | u32 reserved (0)
    frame        u32 kind | u32 flags | u64 stored_len | u64 raw_len
                 | u64 xxh3-64 of the stored payload | u32 crc32 of the 32 bytes before
                 then stored_len bytes of payload
    kinds        1 RECORD  payload: schema.encode() bytes
                 2 PAGES   payload: u64 owner (pid) | u64 address | page bytes
                 3 END     payload: u64 frames before it | u64 page bytes | u64 pages
    flags        bit 0: payload is one zstd frame of raw_len bytes

The END frame is written only by a successful `DumpWriter.close()`, so a dump
cut short (a full disk, a broken ssh pipe, a crashed dumper) is recognised as
incomplete. The magic contains \\0 and \\r\\n so text-mode mangling shows.

Speed: pages travel as large runs; the writer hands them to `writev` beside
their frame header (no copy of the page data), the reader maps the file and
gives out memoryviews into the mapping. xxh3 runs at memory speed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import mmap
import os
import select
import stat
import struct
import sys
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, Protocol, TypeVar, cast

import xxhash
import zstandard

from vzcpt.errors import AccessDenied, CorruptDump, SyscallFailed, VzcptError
from vzcpt.image import schema
from vzcpt.kernel.libc import reserve_blocks, start_writeback

T = TypeVar("T")

MAGIC = b"VZCPT\x00\r\n"
VERSION = 1
KIND_RECORD, KIND_PAGES, KIND_END = 1, 2, 3
FLAG_ZSTD = 1
PAGE_SIZE = 4096
MAX_RUN = 64 << 20  # page bytes per PAGES frame: bounds memory when decompressing
MAX_RECORD = 256 << 20  # bounds memory for a corrupt or hostile raw_len

_FILE_HEADER = struct.Struct("<8sII")
_HEAD = struct.Struct("<IIQQQ")
_CRC = struct.Struct("<I")
_FRAME_HEADER = _HEAD.size + _CRC.size
_PREFIX = struct.Struct("<QQ")
_END = struct.Struct("<QQQ")
_KIND_NAMES = {KIND_RECORD: "RECORD", KIND_PAGES: "PAGES", KIND_END: "END"}

_BATCH = 1 << 20  # small frames collect in memory up to this size: few syscalls
_SMALL_RUN = 256 << 10  # page runs below this are copied into the batch
_MIN_COMPRESS = 4096  # records smaller than this do not shrink enough to bother
_PIPE_SIZE = 1 << 20  # fewer wakeups per GiB through a pipe than the default 64 KiB
_READ_CHUNK = 64 << 20
_RESERVE_SLACK = 1 << 20  # frame headers and records beside the pages announced


def _frame_header(kind: int, flags: int, stored_len: int, raw_len: int, checksum: int) -> bytes:
    head = _HEAD.pack(kind, flags, stored_len, raw_len, checksum)
    return head + _CRC.pack(zlib.crc32(head))


def _grow_pipe(fd: int) -> None:
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass  # only an optimisation (the limit may be lower for non-root)


# ---------------------------------------------------------------- writing


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
            _grow_pipe(self._fd)
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
        self._queue(_FILE_HEADER.pack(MAGIC, VERSION, 0))

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
        header = _frame_header(
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
        prefix = _PREFIX.pack(owner, address)
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
        header = _frame_header(KIND_PAGES, flags, stored_len, raw_len, hasher.intdigest())
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
        payload = _END.pack(self._frames, self._page_bytes, self._page_bytes // PAGE_SIZE)
        header = _frame_header(
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


# ---------------------------------------------------------------- reading


@dataclass
class PageRun:
    """Pages of one owner (pid) at `address`; `data` is a multiple of 4096 bytes."""

    owner: int
    address: int
    data: memoryview


class DumpImage:
    """A dump file, fully validated, held in memory (a mapping for regular files)."""

    def __init__(
        self,
        *,
        records: list[object],
        pages: list[PageRun],
        version: int,
        size: int,
        buffer: mmap.mmap | None,
        views: list[memoryview],
    ) -> None:
        self.records = records
        self.pages = pages
        self.version = version
        self.size = size
        self._buffer = buffer
        self._views = views
        self._by_owner = _pages_by_owner(pages)

    def pages_of(self, owner: int) -> list[PageRun]:
        """The page runs of `owner`, sorted by address."""
        return list(self._by_owner.get(owner, ()))

    def owners(self) -> list[int]:
        """Every owner that has pages in the dump, sorted."""
        return sorted(self._by_owner)

    def records_of(self, cls: type[T]) -> list[T]:
        """The records of one class, in dump order."""
        return [r for r in self.records if isinstance(r, cls)]

    def close(self) -> None:
        """Release the mapping; PageRun.data views become unusable."""
        for run in self.pages:
            run.data.release()
        for v in self._views:
            v.release()
        self._views = []
        if self._buffer is not None:
            # If a caller still holds a slice, the mapping goes away with it.
            with contextlib.suppress(BufferError):
                self._buffer.close()
            self._buffer = None

    def __enter__(self) -> DumpImage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _pages_by_owner(pages: list[PageRun]) -> dict[int, list[PageRun]]:
    by_owner: dict[int, list[PageRun]] = {}
    for run in pages:
        by_owner.setdefault(run.owner, []).append(run)
    for runs in by_owner.values():
        runs.sort(key=lambda r: r.address)
    return by_owner


def open_dump(path: str, *, decode: bool = True) -> DumpImage:
    """Open and validate a whole dump ("-" reads stdin) before anything uses it.

    A truncated, corrupted or foreign file raises CorruptDump naming the byte
    offset of the problem, so a restore never starts from a bad dump.

    With decode=False the records are checked (checksums, sizes) but not
    decoded, and the image has none: enough to know that a dump just
    written is whole on disk, at a fraction of the cost for thousands of
    records.
    """
    if path == "-":
        # At run time stdin's buffer is a BufferedReader; typeshed says BinaryIO.
        return _load("standard input", cast(_Source, sys.stdin.buffer), decode)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, the mapping outlives it
    except OSError as e:
        cls = AccessDenied if e.errno in (errno.EACCES, errno.EPERM) else VzcptError
        raise cls(f"cannot open dump file {path}: {e.strerror}") from None
    with f:
        return _load(path, f, decode)


class _Source(Protocol):
    """What the reader needs of a file: sys.stdin.buffer or open(..., "rb")."""

    def fileno(self) -> int: ...
    def tell(self) -> int: ...
    def readinto(self, buffer: memoryview, /) -> int | None: ...


def _load(name: str, f: _Source, decode: bool) -> DumpImage:
    buffer = _map_file(f)
    if buffer is None:
        buffer = _read_stream(name, f)
    if buffer is None:
        raise CorruptDump(f"{name}: empty file, not a vzcpt dump")
    base = memoryview(buffer)
    views = [base]
    try:
        version, records, pages = _Validator(name, base, views, decode).run()
    except BaseException:
        for v in views:
            v.release()
        # The traceback may still hold a slice; the mapping dies with it.
        with contextlib.suppress(BufferError):
            buffer.close()
        raise
    return DumpImage(
        records=records,
        pages=pages,
        version=version,
        size=len(base),
        buffer=buffer,
        views=views,
    )


def _map_file(f: _Source) -> mmap.mmap | None:
    """Map a regular file read-only (no copy), or None to read it as a stream."""
    try:
        fd = f.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or f.tell() != 0:
            return None
        # MAP_POPULATE: validation reads every byte anyway; one bulk fault is
        # much cheaper than one per page.
        return mmap.mmap(fd, 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
    except (OSError, ValueError, io.UnsupportedOperation):
        return None  # a file system without mmap: the stream path still works


def _read_stream(name: str, f: _Source) -> mmap.mmap | None:
    """Read all of `f` into anonymous memory; grows by mremap, never copies."""
    with contextlib.suppress(OSError, ValueError):
        _grow_pipe(f.fileno())
    cap = _READ_CHUNK
    # Private: a shared anonymous mapping is a shmem file of fixed size, and
    # growing it with mremap leaves pages that fault (EFAULT in read).
    buffer = mmap.mmap(-1, cap, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    _hugepages(buffer)
    pos = 0
    try:
        while True:
            if pos == cap:
                cap *= 2
                buffer.resize(cap)
                _hugepages(buffer)
            with memoryview(buffer) as view, view[pos:] as free:
                n = f.readinto(free)
            if n is None:  # a non-blocking pipe with nothing in it yet
                select.select([f.fileno()], [], [])
                continue
            if not n:
                break
            pos += n
        if pos == 0:
            buffer.close()
            return None
        buffer.resize(pos)
    except OSError as e:
        buffer.close()
        raise VzcptError(f"cannot read dump file {name}: {e.strerror or e}") from None
    except BaseException:
        buffer.close()
        raise
    return buffer


def _hugepages(buffer: mmap.mmap) -> None:
    # Faulting in 4 KiB pages costs more than the pipe itself; 2 MiB pages
    # make reading a GiB through a pipe about twice as fast.
    with contextlib.suppress(OSError, AttributeError):
        buffer.madvise(mmap.MADV_HUGEPAGE)


class _Validator:
    """Walks every frame once: header crc, payload checksum, decompression, END."""

    def __init__(
        self, name: str, data: memoryview, views: list[memoryview], decode: bool = True
    ) -> None:
        self.name = name
        self.decode = decode
        self.data = data
        self.views = views
        self.dctx = zstandard.ZstdDecompressor()

    def fail(self, what: str) -> CorruptDump:
        return CorruptDump(f"{self.name}: {what}")

    def truncated(self) -> CorruptDump:
        size = len(self.data)
        return self.fail(f"truncated at byte {size} (no END frame): the dump is incomplete")

    def run(self) -> tuple[int, list[object], list[PageRun]]:
        data, size = self.data, len(self.data)
        if data[: min(size, len(MAGIC))] != MAGIC[: min(size, len(MAGIC))]:
            shown = bytes(data[: len(MAGIC)])
            raise self.fail(f"not a vzcpt dump file (bad magic {shown!r} at byte 0)")
        if size < _FILE_HEADER.size:
            raise self.truncated()
        _, version, reserved = _FILE_HEADER.unpack_from(data)
        if version != VERSION:
            raise self.fail(
                f"dump format version {version} (at byte 8) is not supported: "
                f"this vzcpt reads version {VERSION}"
            )
        if reserved:
            raise self.fail(f"corrupted file header: reserved field at byte 12 is {reserved:#x}")
        records: list[object] = []
        pages: list[PageRun] = []
        frames = page_bytes = 0
        off = _FILE_HEADER.size
        while True:
            if off + _FRAME_HEADER > size:
                raise self.truncated()
            kind, flags, stored_len, raw_len, checksum = _HEAD.unpack_from(data, off)
            (crc,) = _CRC.unpack_from(data, off + _HEAD.size)
            if zlib.crc32(data[off : off + _HEAD.size]) != crc:
                raise self.fail(f"corrupted frame header at byte {off} (crc mismatch)")
            start = off + _FRAME_HEADER
            end = start + stored_len
            if end > size:
                raise self.truncated()
            payload = self.payload(off, kind, flags, stored_len, raw_len, checksum, start, end)
            if kind == KIND_RECORD and not self.decode:
                payload.release()
            elif kind == KIND_RECORD:
                try:
                    records.append(schema.decode(bytes(payload)))
                except CorruptDump as e:
                    raise self.fail(f"bad record in frame at byte {off}: {e}") from None
            elif kind == KIND_PAGES:
                pages.append(self.page_run(off, payload))
                page_bytes += len(pages[-1].data)
            else:
                self.check_end(off, payload, frames, page_bytes)
                if end != size:
                    raise self.fail(
                        f"{size - end} unexpected bytes after the END frame (at byte {end})"
                    )
                break
            frames += 1
            off = end
        self.check_overlaps(pages)
        return version, records, pages

    def payload(
        self,
        off: int,
        kind: int,
        flags: int,
        stored_len: int,
        raw_len: int,
        checksum: int,
        start: int,
        end: int,
    ) -> memoryview:
        kind_name = _KIND_NAMES.get(kind)
        if kind_name is None:
            raise self.fail(f"unknown frame kind {kind} at byte {off} (dump from a newer vzcpt?)")
        if flags & ~FLAG_ZSTD or (kind == KIND_END and flags):
            raise self.fail(f"unknown flags {flags:#x} in {kind_name} frame at byte {off}")
        payload = self.data[start:end]
        if xxhash.xxh3_64_intdigest(payload) != checksum:
            payload.release()
            raise self.fail(
                f"corrupted {kind_name} frame at byte {off} (payload checksum mismatch)"
            )
        if not flags & FLAG_ZSTD:
            if raw_len != stored_len:
                raise self.fail(f"{kind_name} frame at byte {off}: sizes disagree")
            if kind == KIND_PAGES:
                self.views.append(payload)  # lives on in a PageRun: released by close()
            return payload
        limit = MAX_RECORD if kind == KIND_RECORD else MAX_RUN + _PREFIX.size
        try:
            if raw_len > limit or zstandard.frame_content_size(payload) != raw_len:
                raise zstandard.ZstdError(f"announced size is not {raw_len} bytes")
            unpacked = self.dctx.decompress(payload, max_output_size=raw_len)
        except zstandard.ZstdError as e:
            raise self.fail(f"cannot decompress {kind_name} frame at byte {off}: {e}") from None
        finally:
            payload.release()
        if len(unpacked) != raw_len:
            raise self.fail(f"{kind_name} frame at byte {off}: decompressed size is wrong")
        return memoryview(unpacked)

    def page_run(self, off: int, payload: memoryview) -> PageRun:
        size = len(payload) - _PREFIX.size
        if size <= 0 or size % PAGE_SIZE:
            raise self.fail(f"PAGES frame at byte {off} holds {size} bytes, not whole pages")
        owner, address = _PREFIX.unpack_from(payload)
        if address % PAGE_SIZE or address + size > 1 << 64:
            raise self.fail(f"PAGES frame at byte {off} has a bad address {address:#x}")
        return PageRun(owner, address, payload[_PREFIX.size :])

    def check_end(self, off: int, payload: memoryview, frames: int, page_bytes: int) -> None:
        if len(payload) != _END.size:
            raise self.fail(f"END frame at byte {off} has {len(payload)} bytes, not {_END.size}")
        want = (frames, page_bytes, page_bytes // PAGE_SIZE)
        got = _END.unpack_from(payload)
        if got != want:
            raise self.fail(
                f"END frame at byte {off} counts {got[0]} frames and {got[1]} page bytes, "
                f"the file has {want[0]} and {want[1]}"
            )

    def check_overlaps(self, pages: list[PageRun]) -> None:
        for owner, runs in _pages_by_owner(pages).items():
            for a, b in zip(runs, runs[1:], strict=False):
                if a.address + len(a.data) > b.address:
                    raise self.fail(f"pages of {owner} are stored twice at {b.address:#x}")


__all__ = [
    "DumpImage",
    "DumpWriter",
    "PageRun",
    "WriteStats",
    "create_dumpfile",
    "open_dump",
]
