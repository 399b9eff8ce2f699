"""Which pages a dump stores: the kernel's page scan and the all-zeros check,
on real mappings of this very process."""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from pathlib import Path

import pytest

from vzcpt.errors import SyscallFailed
from vzcpt.kernel import pagescan
from vzcpt.kernel.libc import buffer_address
from vzcpt.resources.memory import VmaRecord, _mmap_calls
from vzcpt.resources.pages import _zero_pages, copy_batches

PAGE = mmap.PAGESIZE
PROT_NONE, PROT_READ, PROT_WRITE = 0, mmap.PROT_READ, mmap.PROT_WRITE
OWN = {"anyof": pagescan.PAGE_IS_PRESENT | pagescan.PAGE_IS_SWAPPED}
NOT_SHARED = pagescan.PAGE_IS_FILE | pagescan.PAGE_IS_PFNZERO


def own_runs(area: mmap.mmap) -> list[tuple[int, int]]:
    """Runs stored for `area`, as (first page, pages) relative to its start."""
    start = buffer_address(area)
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        found = pagescan.scan(fd, start, start + len(area), without=NOT_SHARED, **OWN)
    finally:
        os.close(fd)
    return [((a - start) // PAGE, (b - a) // PAGE) for a, b in found]


def test_scan_skips_untouched_and_zero_page_reads() -> None:
    area = mmap.mmap(-1, 8 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        area[0 * PAGE] = area[1 * PAGE] = area[5 * PAGE] = 1  # written: the process's own
        _ = area[3 * PAGE]  # read only: the shared zero page
        assert own_runs(area) == [(0, 2), (5, 1)]
    finally:
        area.close()


def test_scan_of_private_file_mapping_keeps_only_copied_pages(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"x" * 4 * PAGE)
    with open(path, "r+b") as f:
        area = mmap.mmap(f.fileno(), 4 * PAGE, flags=mmap.MAP_PRIVATE)
    try:
        _ = area[0], area[PAGE], area[3 * PAGE]  # read: still the file's pages
        area[2 * PAGE] = ord("y")  # copied on write: the process's own
        assert own_runs(area) == [(2, 1)]
    finally:
        area.close()


def test_zero_pages_are_found_whatever_their_edges() -> None:
    buf = bytearray(b"\x01" * 6 * PAGE)
    buf[1 * PAGE : 2 * PAGE] = bytes(PAGE)  # all zeros
    buf[3 * PAGE : 4 * PAGE] = bytes(PAGE)
    buf[3 * PAGE + PAGE // 2] = 7  # zero first and last words, but not all zeros
    buf[5 * PAGE : 6 * PAGE] = bytes(PAGE)
    assert _zero_pages(memoryview(buf)) == [1, 5]


def test_buffer_address_of_read_only_mapping(tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.write_bytes(b"abc" + bytes(PAGE - 3))
    with open(path, "rb") as f:
        area = mmap.mmap(f.fileno(), PAGE, prot=mmap.PROT_READ)
    try:
        with memoryview(area)[1:] as view:
            assert ctypes.string_at(buffer_address(view), 2) == b"bc"
    finally:
        area.close()


def test_copy_batches_reads_every_batch_on_two_threads() -> None:
    area = mmap.mmap(-1, 16 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        for n in range(16):
            area[n * PAGE : (n + 1) * PAGE] = bytes([n + 1]) * PAGE
        base = buffer_address(area)
        batches = [[(base + n * PAGE, PAGE), (base + (n + 8) * PAGE, PAGE)] for n in range(8)]
        got: dict[int, bytes] = {}
        threads: set[int] = set()

        def store(batch: list[tuple[int, int]], view: memoryview) -> None:
            threads.add(threading.get_ident())
            for i, (address, _) in enumerate(batch):
                got[(address - base) // PAGE] = bytes(view[i * PAGE : (i + 1) * PAGE])

        copy_batches(os.getpid(), batches, store, [bytearray(2 * PAGE) for _ in range(2)])
        assert got == {n: bytes([n + 1]) * PAGE for n in range(16)}
        assert threading.get_ident() not in threads
    finally:
        area.close()


def test_copy_batches_of_a_running_process_stop_at_vanished_memory() -> None:
    """Pre-copy reads a process that runs on: memory it unmapped meanwhile ends
    the copy quietly; a frozen process's must all be there."""
    gone = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    address = buffer_address(gone)
    gone.close()
    stored: list[list[tuple[int, int]]] = []

    def store(batch: list[tuple[int, int]], view: memoryview) -> None:
        stored.append(batch)

    batches = [[(address, PAGE)]]
    copy_batches(os.getpid(), batches, store, [bytearray(PAGE)], running=True)
    assert stored == []
    with pytest.raises(SyscallFailed, match="process_vm read"):
        copy_batches(os.getpid(), batches, store, [bytearray(PAGE)])


def test_adjacent_anonymous_mappings_are_mapped_by_one_call() -> None:
    """Restore maps neighbours that would be mapped alike in one mmap (the
    kernel merges them anyway); later mprotects split them again."""
    page = PAGE

    def anon(start: int, pages: int, prot: int) -> VmaRecord:
        return VmaRecord(start, start + pages * page, prot, False, "anon")

    base = 0x10000000
    vmas = [
        anon(base, 2, PROT_READ),  # filled: mapped writable for now, like its neighbour
        anon(base + 2 * page, 1, PROT_READ | PROT_WRITE),
        anon(base + 3 * page, 1, PROT_NONE),  # a guard: another protection
        anon(base + 5 * page, 1, PROT_NONE),  # not adjacent
        VmaRecord(base + 6 * page, base + 7 * page, PROT_READ, False, "file", path="/x"),
        anon(base + 7 * page, 1, PROT_READ),  # after a file mapping
    ]
    fds = {("/x", os.O_RDONLY): 5}
    calls = _mmap_calls(vmas, fds, filled={base, base + 2 * page})
    assert [(c[1], c[2] // page, c[3]) for c in calls] == [
        (base, 3, PROT_READ | PROT_WRITE),
        (base + 3 * page, 1, PROT_NONE),
        (base + 5 * page, 1, PROT_NONE),
        (base + 6 * page, 1, PROT_READ),
        (base + 7 * page, 1, PROT_READ),
    ]
