"""The pages of private mappings that belong to the process itself.

Kernel interfaces: the PAGEMAP_SCAN ioctl on /proc/PID/pagemap
(kernel/pagescan.py) lists the runs of pages that are present or swapped,
not the file's (a private file mapping's pages copied on write are the
process's own) and not the shared zero page; process_vm_readv copies many
ranges in one call.

Stored: those pages, except the ones whose content is all zeros. Adjacent
mappings are scanned and read as one range, so a process with thousands of
small mappings costs a few large reads and frames, not thousands of small
ones. Two threads copy at once (copy_batches), also for pre-copy.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from vzcpt.errors import VzcptError
from vzcpt.image.writer import DumpWriter
from vzcpt.kernel import pagescan, vm
from vzcpt.kernel.vm import PAGE_SIZE
from vzcpt.proc import files as procfs
from vzcpt.resources.context import DumpContext
from vzcpt.resources.ranges import Range, subtract

BATCH_BYTES = 16 << 20  # pages copied per process_vm_readv round
COPY_THREADS = 2  # one reads while the other writes: the file takes one write at a time

Batch = list[tuple[int, int]]  # (address, length) ranges read in one process_vm_readv


class Mapping(Protocol):
    start: int
    end: int
    kind: str


def dump_private_pages(
    ctx: DumpContext, pid: int, own: list[Range], skip: list[Range] | None = None
) -> None:
    """Copy and store the process's own pages (`own`: own_page_runs), except
    those in `skip` (already in the dump: resources/precopy.py)."""
    batches: list[Batch] = []
    batch: Batch = []
    size = 0
    runs = [(start, end - start) for start, end in subtract(own, skip or [])]
    for address, length in runs:
        for offset in range(0, length, BATCH_BYTES):
            part = min(BATCH_BYTES, length - offset)
            if size + part > BATCH_BYTES:
                batches.append(batch)
                batch, size = [], 0
            batch.append((address + offset, part))
            size += part
    if batch:
        batches.append(batch)
    ctx.writer.reserve(sum(length for b in batches for _, length in b))
    owner = ctx.saved_id(pid)
    counting = threading.Lock()

    def store(ranges: Batch, buf: memoryview) -> None:
        offset = stored = zero = 0
        for address, length in ranges:
            pages, zeros = store_nonzero(ctx.writer, owner, address, buf[offset : offset + length])
            stored, zero, offset = stored + pages, zero + zeros, offset + length
        with counting:
            ctx.stats.pages_zero += zero
            ctx.stats.pages += stored
            ctx.stats.bytes += stored * PAGE_SIZE
            ctx.stats.progress("dumping memory")

    copy_batches(pid, batches, store, _buffers(ctx, max(map(_size, batches), default=0)))


def copy_batches(
    pid: int,
    batches: list[Batch],
    store: Callable[[Batch, memoryview], None],
    buffers: Sequence[bytearray | mmap.mmap],
    *,
    running: bool = False,
) -> None:
    """Read each batch of the process's memory into a buffer and `store` it,
    from one thread per buffer: while one thread writes its batch out (the
    file system takes one write at a time), the others read, check and
    checksum theirs, so every core works (those calls release the GIL).

    The first error stops every thread and is raised; the batches stored
    until then stay stored. A `running` process may exit or unmap memory
    meanwhile: a batch it no longer has ends the copy quietly.
    """
    work = iter(batches)
    taking = threading.Lock()
    failed = threading.Event()

    def run(buf: bytearray | mmap.mmap) -> None:
        while not failed.is_set():
            with taking:
                ranges = next(work, None)
            if ranges is None:
                return
            view = memoryview(buf)[: _size(ranges)]
            try:
                try:
                    vm.read_ranges(pid, ranges, view)
                except (OSError, VzcptError):
                    if not running:
                        raise
                    failed.set()
                    return
                store(ranges, view)
            except BaseException:
                failed.set()
                raise
            finally:
                view.release()

    if len(batches) < 2:  # nothing to overlap: no threads to start
        run(buffers[0])
        return
    pool = ThreadPoolExecutor(max_workers=len(buffers))
    try:
        for thread in [pool.submit(run, buf) for buf in buffers]:
            thread.result()
    except BaseException:
        failed.set()  # also on Ctrl-C here: nothing may write once the caller cleans up
        raise
    finally:
        pool.shutdown(wait=True)


def _size(batch: Batch) -> int:
    return sum(length for _, length in batch)


def own_page_runs(pid: int, vmas: list[Mapping], *, report: int = 0) -> list[pagescan.Region]:
    """The runs of the process's own pages in `vmas`, across mapping boundaries,
    with those of the `report` categories (kernel/pagescan.py) they have."""
    runs: list[pagescan.Region] = []
    fd = procfs.open_file(pid, "pagemap", os.O_RDONLY)
    try:
        for group in _contiguous(sorted(vmas, key=lambda v: v.start)):
            runs += pagescan.regions(
                fd,
                group[0].start,
                group[-1].end,
                anyof=pagescan.OWN,
                without=pagescan.NOT_OWN,
                report=report,
            )
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


def _buffers(ctx: DumpContext, length: int) -> list[mmap.mmap]:
    """Our reusable page buffers, one per copying thread, each as large as the
    largest batch so far."""
    buffers: list[mmap.mmap] = ctx.shared.setdefault("page-buffers", [])
    if not buffers or len(buffers[0]) < length:
        buffers[:] = new_buffers(length)
    return buffers


def new_buffers(length: int) -> list[mmap.mmap]:
    """Page buffers for copy_batches, one per thread. Anonymous mappings, not
    bytearrays: their pages are only faulted in as a read fills them, so a
    process with little memory does not pay for zeroing two whole batches."""
    return [mmap.mmap(-1, length) for _ in range(COPY_THREADS)]


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
