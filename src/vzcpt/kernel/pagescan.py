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


def scan(
    pagemap_fd: int, start: int, end: int, *, anyof: int, without: int = 0
) -> list[tuple[int, int]]:
    """(start, end) of the runs in [start, end) of pages having a category of
    `anyof` and none of `without`; adjacent matching pages come as one run."""
    regions = (PageRegion * REGIONS_PER_CALL)()
    arg = ScanArg(
        size=ctypes.sizeof(ScanArg),
        start=start,
        end=end,
        vec=ctypes.addressof(regions),
        vec_len=REGIONS_PER_CALL,
        category_inverted=without,
        category_mask=without,
        category_anyof_mask=anyof,
        return_mask=anyof,
    )
    runs: list[tuple[int, int]] = []
    while arg.start < end:
        try:
            found = fcntl.ioctl(pagemap_fd, PAGEMAP_SCAN, arg)  # type: ignore[call-overload]
        except OSError as exc:
            if exc.errno == errno.ENOTTY:
                raise Unsupported(
                    "this kernel has no PAGEMAP_SCAN ioctl (Linux 6.7+), which vzcpt "
                    "needs to find the pages to save: see `vzcpt check`"
                ) from None
            raise
        for region in regions[:found]:
            if runs and runs[-1][1] == region.start:  # split only by category
                runs[-1] = (runs[-1][0], region.end)
            else:
                runs.append((region.start, region.end))
        if arg.walk_end <= arg.start:
            raise OSError(f"PAGEMAP_SCAN made no progress at {arg.start:#x}")
        arg.start = arg.walk_end
    return runs


def write_protect(pagemap_fd: int, start: int, end: int) -> None:
    """Write-protect every page of [start, end), which must be registered with a
    userfaultfd in async write-protect mode (kernel/uffd.py): from now on a page
    the task writes shows PAGE_IS_WRITTEN, and no other does."""
    arg = ScanArg(
        size=ctypes.sizeof(ScanArg),
        flags=PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        start=start,
        end=end,
    )
    while arg.start < end:
        fcntl.ioctl(pagemap_fd, PAGEMAP_SCAN, arg)  # type: ignore[call-overload]
        if arg.walk_end <= arg.start:
            raise OSError(f"PAGEMAP_SCAN made no progress at {arg.start:#x}")
        arg.start = arg.walk_end
