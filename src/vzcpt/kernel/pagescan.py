"""The PAGEMAP_SCAN ioctl (Linux 6.7+) on /proc/PID/pagemap: runs of pages by category.

The kernel walks the page tables itself and hands back merged regions, so a
gigabyte costs one call and a few dozen bytes instead of two megabytes of
pagemap entries to sift through (Documentation/admin-guide/mm/pagemap.rst).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl

from vzcpt.errors import Unsupported

PAGE_IS_WRITTEN = 1 << 1  # written since write-protected (userfaultfd async WP)
PAGE_IS_FILE = 1 << 2  # backed by a file (or shmem): not the process's own copy
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5  # the shared zero page: read, never written


# A process's own pages: present or swapped, not a file's (a private file
# mapping's pages copied on write are its own), not the shared zero page.
OWN = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
NOT_OWN = PAGE_IS_FILE | PAGE_IS_PFNZERO


class PageRegion(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("start", "end", "categories")]


class ScanArg(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "size",
            "flags",
            "start",
            "end",
            "walk_end",
            "vec",
            "vec_len",
            "max_pages",
            "category_inverted",
            "category_mask",
            "category_anyof_mask",
            "return_mask",
        )
    ]


PAGEMAP_SCAN = (3 << 30) | (ctypes.sizeof(ScanArg) << 16) | (ord("f") << 8) | 16
REGIONS_PER_CALL = 1024
PM_SCAN_WP_MATCHING = 1 << 0  # write-protect the pages that match
PM_SCAN_CHECK_WPASYNC = 1 << 1  # fail (EPERM) on a range not registered for async WP


Region = tuple[int, int, int]  # start, end, categories (of those asked to be reported)


def regions(
    pagemap_fd: int,
    start: int,
    end: int,
    *,
    anyof: int,
    without: int = 0,
    report: int = 0,
    flags: int = 0,
) -> list[Region]:
    """The runs in [start, end) of pages having a category of `anyof` and none
    of `without`, each with the categories of `anyof | report` its pages
    have: adjacent pages alike come as one run. `flags`: PM_SCAN_* (with
    PM_SCAN_WP_MATCHING the pages found are also write-protected)."""
    vec = (PageRegion * REGIONS_PER_CALL)()
    arg = ScanArg(
        size=ctypes.sizeof(ScanArg),
        flags=flags,
        start=start,
        end=end,
        vec=ctypes.addressof(vec),
        vec_len=REGIONS_PER_CALL,
        category_inverted=without,
        category_mask=without,
        category_anyof_mask=anyof,
        return_mask=anyof | report,
    )
    found: list[Region] = []
    while arg.start < end:
        try:
            count = fcntl.ioctl(pagemap_fd, PAGEMAP_SCAN, arg)  # type: ignore[call-overload]
        except OSError as exc:
            if exc.errno == errno.ENOTTY:
                raise Unsupported(
                    "this kernel has no PAGEMAP_SCAN ioctl (Linux 6.7+), which vzcpt "
                    "needs to find the pages to save: see `vzcpt check`"
                ) from None
            raise
        for r in vec[:count]:
            if found and found[-1][1] == r.start and found[-1][2] == r.categories:
                found[-1] = (found[-1][0], r.end, r.categories)  # split by a call's end
            else:
                found.append((r.start, r.end, r.categories))
        if arg.walk_end <= arg.start:
            raise OSError(f"PAGEMAP_SCAN made no progress at {arg.start:#x}")
        arg.start = arg.walk_end
    return found


def scan(
    pagemap_fd: int, start: int, end: int, *, anyof: int, without: int = 0
) -> list[tuple[int, int]]:
    """(start, end) of the runs in [start, end) of pages having a category of
    `anyof` and none of `without`; adjacent matching pages come as one run."""
    runs: list[tuple[int, int]] = []
    for first, last, _ in regions(pagemap_fd, start, end, anyof=anyof, without=without):
        if runs and runs[-1][1] == first:  # split only by category
            runs[-1] = (runs[-1][0], last)
        else:
            runs.append((first, last))
    return runs


def write_protect(
    pagemap_fd: int, start: int, end: int, *, anyof: int, without: int = 0
) -> list[tuple[int, int]]:
    """Write-protect the pages of [start, end) having a category of `anyof` and
    none of `without`, and return their runs. The range must be registered
    with a userfaultfd in async write-protect mode (kernel/uffd.py): from now
    on such a page the task writes shows PAGE_IS_WRITTEN (a page it had not
    yet, or shared with the zero page, shows it anyway)."""
    found = regions(
        pagemap_fd,
        start,
        end,
        anyof=anyof,
        without=without,
        flags=PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
    )
    return [(first, last) for first, last, _ in found]
