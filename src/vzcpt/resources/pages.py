"""The pages of private mappings that belong to the process itself.

Kernel interfaces: /proc/PID/pagemap says, page by page, whether a page is
present or swapped, whether it is still the file's (PM_FILE) and which frame
it is in (root sees frame numbers: the shared zero page is recognised by
its frame); process_vm_readv copies many ranges in one call.

Stored: present or swapped pages of anonymous mappings that are not the
zero page, and the copied-on-write pages of private file mappings; of those,
pages whose content is all zeros are skipped. Adjacent mappings are read as
one range, so a process with thousands of small mappings costs a few large
reads and frames, not thousands of small ones.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np

from vzcpt.kernel import vm
from vzcpt.kernel.vm import PAGE_SIZE
from vzcpt.proc import files as procfs
from vzcpt.proc.pagemap import PM_FILE, PM_PFN_MASK, PM_PRESENT, PM_SWAP
from vzcpt.resources.context import DumpContext

BATCH_BYTES = 16 << 20  # pages copied per process_vm_readv round


class Mapping(Protocol):
    start: int
    end: int
    kind: str


def dump_private_pages(ctx: DumpContext, pid: int, vmas: list[Mapping]) -> None:
    """Copy and store the process's own pages.

    Two buffers take turns: while one batch is checked for zero pages and
    written out on a second thread, the next is read from the process, so
    both cores work (the copies release the GIL).
    """
    batches: list[tuple[list[tuple[int, int]], int]] = []
    batch: list[tuple[int, int]] = []
    size = 0
    for address, length in _own_page_runs(pid, vmas):
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
    zero = np.uint64(vm.zero_pfn())
    runs: list[tuple[int, int]] = []
    fd = procfs.open_file(pid, "pagemap", os.O_RDONLY)
    try:
        for group in _contiguous(sorted(vmas, key=lambda v: v.start)):
            start, end = group[0].start, group[-1].end
            entries = np.frombuffer(
                os.pread(fd, (end - start) // PAGE_SIZE * 8, start // PAGE_SIZE * 8), dtype="<u8"
            )
            present = (entries & np.uint64(PM_PRESENT | PM_SWAP)) != 0
            own = (entries & np.uint64(PM_PFN_MASK)) != zero  # not the shared zero page
            own |= (entries & np.uint64(PM_SWAP)) != 0
            for vma in group:
                if vma.kind in ("file", "memfd"):  # only pages copied on write are its own
                    first, last = (vma.start - start) // PAGE_SIZE, (vma.end - start) // PAGE_SIZE
                    own[first:last] = (entries[first:last] & np.uint64(PM_FILE)) == 0
            runs += [(start + a * PAGE_SIZE, n * PAGE_SIZE) for a, n in mask_runs(present & own)]
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


def mask_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first index, length) of every run of True in a boolean array."""
    if not mask.any():
        return []
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _buffer(ctx: DumpContext, which: int, length: int) -> memoryview:
    """One of our two reusable page buffers."""
    key = ("page-buffer", which)
    buf = ctx.shared.get(key)
    if buf is None or len(buf) < length:
        buf = bytearray(max(length, BATCH_BYTES))
        ctx.shared[key] = buf
    return memoryview(buf)[:length]


def write_nonzero(ctx: DumpContext, owner: int, address: int, buf: bytearray | memoryview) -> None:
    """Write the pages of buf that are not all zeros, as runs."""
    pages = np.frombuffer(buf, dtype="<u8").reshape(-1, PAGE_SIZE // 8)
    # Most pages give themselves away by their first or last word; only the
    # rest are read whole.
    nonzero: np.ndarray = (pages[:, 0] != 0) | (pages[:, -1] != 0)
    doubtful = np.flatnonzero(~nonzero)
    if len(doubtful):
        nonzero[doubtful] = pages[doubtful].any(axis=1)
    ctx.stats.pages_zero += int(len(nonzero) - int(nonzero.sum()))
    view = memoryview(buf)
    for first, count in mask_runs(nonzero):
        data = view[first * PAGE_SIZE : (first + count) * PAGE_SIZE]
        ctx.writer.write_pages(owner, address + first * PAGE_SIZE, data)
        ctx.stats.pages += count
        ctx.stats.bytes += count * PAGE_SIZE
    ctx.stats.progress("dumping memory")
