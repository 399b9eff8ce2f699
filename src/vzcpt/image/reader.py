"""Reading a dump: the whole file is validated (every frame's checksum, the END
frame) before anything uses it, so a truncated or corrupted dump is found
before a restore changes anything.

Speed: the reader maps a regular file and gives out memoryviews into the
mapping (no copy of the page data); a pipe is read into anonymous memory.
xxh3 runs at memory speed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import select
import stat
import sys
import zlib
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TypeVar, cast

import xxhash
import zstandard

from vzcpt.errors import AccessDenied, CorruptDump, VzcptError
from vzcpt.image import schema
from vzcpt.image.frames import (
    CRC,
    END,
    FILE_HEADER,
    FLAG_ZSTD,
    FRAME_HEADER,
    HEAD,
    KIND_END,
    KIND_NAMES,
    KIND_PAGES,
    KIND_RECORD,
    MAGIC,
    MAX_RECORD,
    MAX_RUN,
    PAGE_SIZE,
    PREFIX,
    VERSION,
)
from vzcpt.kernel.fds import grow_pipe

T = TypeVar("T")

_READ_CHUNK = 64 << 20


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
        grow_pipe(f.fileno())
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
        if size < FILE_HEADER.size:
            raise self.truncated()
        _, version, reserved = FILE_HEADER.unpack_from(data)
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
        off = FILE_HEADER.size
        while True:
            if off + FRAME_HEADER > size:
                raise self.truncated()
            kind, flags, stored_len, raw_len, checksum = HEAD.unpack_from(data, off)
            (crc,) = CRC.unpack_from(data, off + HEAD.size)
            if zlib.crc32(data[off : off + HEAD.size]) != crc:
                raise self.fail(f"corrupted frame header at byte {off} (crc mismatch)")
            start = off + FRAME_HEADER
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
        kind_name = KIND_NAMES.get(kind)
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
        limit = MAX_RECORD if kind == KIND_RECORD else MAX_RUN + PREFIX.size
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
        size = len(payload) - PREFIX.size
        if size <= 0 or size % PAGE_SIZE:
            raise self.fail(f"PAGES frame at byte {off} holds {size} bytes, not whole pages")
        owner, address = PREFIX.unpack_from(payload)
        if address % PAGE_SIZE or address + size > 1 << 64:
            raise self.fail(f"PAGES frame at byte {off} has a bad address {address:#x}")
        return PageRun(owner, address, payload[PREFIX.size :])

    def check_end(self, off: int, payload: memoryview, frames: int, page_bytes: int) -> None:
        if len(payload) != END.size:
            raise self.fail(f"END frame at byte {off} has {len(payload)} bytes, not {END.size}")
        want = (frames, page_bytes, page_bytes // PAGE_SIZE)
        got = END.unpack_from(payload)
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
