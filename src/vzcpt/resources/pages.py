"""The pages of private mappings that belong to the process itself.

Kernel interfaces: the PAGEMAP_SCAN ioctl on /proc/PID/pagemap
(kernel/pagescan.py) lists the runs of pages that are present or swapped,
not the file's (a private file mapping's pages copied on write are the
process's own) and not the shared zero page; process_vm_readv copies many
ranges in one call.

Stored: those pages, except the ones whose content is all zeros. Adjacent
mappings are scanned and read as one range, so a process with thousands of
small mappings costs a few large reads and frames, not thousands of small
ones.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from vzcpt.image.stream import DumpWriter
from vzcpt.kernel import pagescan, vm
from vzcpt.kernel.vm import PAGE_SIZE
from vzcpt.proc import files as procfs
from vzcpt.resources.context import DumpContext
from vzcpt.resources.ranges import subtract

BATCH_BYTES = 16 << 20  # pages copied per process_vm_readv round


class Mapping(Protocol):
    start: int
    end: int
    kind: str


def dump_private_pages(
    ctx: DumpContext, pid: int, vmas: list[Mapping], skip: list[tuple[int, int]] | None = None
) -> None:
    """Copy and store the process's own pages, except those in the (start, end)
    ranges of `skip` (already in the dump: resources/precopy.py).

    Two buffers take turns: while one batch is checked for zero pages and
    written out on a second thread, the next is read from the process, so
    both cores work (the copies release the GIL).
    """
    batches: list[tuple[list[tuple[int, int]], int]] = []
    batch: list[tuple[int, int]] = []
    size = 0
    runs = _own_page_runs(pid, vmas)
    if skip:
        ends = subtract([(a, a + n) for a, n in runs], skip)
        runs = [(start, end - start) for start, end in ends]
    for address, length in runs:
        for offset in range(0, length, BATCH_BYTES):
            part = min(BATCH_BYTES, length - offset)
            if size + part > BATCH_BYTES:
                batches.append((batch, size))
                batch, size = [], 0
            batch.append((address + offset, part))
            size += part
    if batch:
        batches.append((batch, size))
    writing: Future[None] | None = None
    with ThreadPoolExecutor(max_workers=1) as writer:
        for n, (ranges, size) in enumerate(batches):
            buf = _buffer(ctx, n % 2, size)
            vm.read_ranges(pid, ranges, buf)
            if writing is not None:
                writing.result()
            writing = writer.submit(_store, ctx, pid, ranges, buf)
        if writing is not None:
            writing.result()


def _own_page_runs(pid: int, vmas: list[Mapping]) -> list[tuple[int, int]]:
    """(address, length) of every run of pages to store, across mapping boundaries."""
    runs: list[tuple[int, int]] = []
    fd = procfs.open_file(pid, "pagemap", os.O_RDONLY)
    try:
        for group in _contiguous(sorted(vmas, key=lambda v: v.start)):
            found = pagescan.scan(
                fd,
                group[0].start,
                group[-1].end,
                anyof=pagescan.PAGE_IS_PRESENT | pagescan.PAGE_IS_SWAPPED,
                without=pagescan.PAGE_IS_FILE | pagescan.PAGE_IS_PFNZERO,
            )
            runs += [(start, end - start) for start, end in found]
    finally:
        os.close(fd)
    return runs


def _contiguous(vmas: list[Mapping]) -> list[list[Mapping]]:
    groups: list[list[Mapping]] = []
    for vma in vmas:
        if groups and groups[-1][-1].end == vma.start:
            groups[-1].append(vma)
        else:
            groups.append([vma])
    return groups


def _store(ctx: DumpContext, pid: int, ranges: list[tuple[int, int]], buf: memoryview) -> None:
    offset = 0
    for address, length in ranges:
        write_nonzero(ctx, ctx.saved_id(pid), address, buf[offset : offset + length])
        offset += length


def _buffer(ctx: DumpContext, which: int, length: int) -> memoryview:
    """One of our two reusable page buffers, as large as the largest batch so far
    (its every page is faulted in when it is made: no larger than needed)."""
    key = ("page-buffer", which)
    buf = ctx.shared.get(key)
    if buf is None or len(buf) < length:
        buf = bytearray(length)
        ctx.shared[key] = buf
    return memoryview(buf)[:length]


def write_nonzero(ctx: DumpContext, owner: int, address: int, buf: bytearray | memoryview) -> None:
    """Write the pages of buf that are not all zeros, as runs."""
    stored, zero = store_nonzero(ctx.writer, owner, address, buf)
    ctx.stats.pages_zero += zero
    ctx.stats.pages += stored
    ctx.stats.bytes += stored * PAGE_SIZE
    ctx.stats.progress("dumping memory")


def store_nonzero(
    writer: DumpWriter, owner: int, address: int, buf: bytearray | memoryview
) -> tuple[int, int]:
    """Write the pages of buf that are not all zeros, as runs; return how many
    pages were stored and how many were zeros (a restore reads those back as
    zeros from fresh memory)."""
    view = memoryview(buf)
    zero = _zero_pages(view)
    first = 0
    for stop in [*zero, len(view) // PAGE_SIZE]:
        if stop > first:
            data = view[first * PAGE_SIZE : stop * PAGE_SIZE]
            writer.write_pages(owner, address + first * PAGE_SIZE, data)
        first = stop + 1
    return len(view) // PAGE_SIZE - len(zero), len(zero)


ZERO_PAGE = bytes(PAGE_SIZE)
WORDS = PAGE_SIZE // 8


def _zero_pages(view: memoryview) -> list[int]:
    """Indexes of the pages of `view` whose bytes are all zeros, in order.

    Most pages give themselves away by their first or last word; only the
    rest are compared whole.
    """
    words = view.cast("B").cast("Q")
    firsts, lasts = words[::WORDS].tolist(), words[WORDS - 1 :: WORDS].tolist()
    return [
        n
        for n, (head, tail) in enumerate(zip(firsts, lasts, strict=True))
        if not head and not tail and view[n * PAGE_SIZE : (n + 1) * PAGE_SIZE] == ZERO_PAGE
    ]
