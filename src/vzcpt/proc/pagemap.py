"""/proc/PID/pagemap: one native u64 per virtual page
(Documentation/admin-guide/mm/pagemap.rst).  Read a range of it with
`files.read_range(pid, "pagemap", (addr // page_size) * 8, npages * 8)`.

PFNs read as 0 without CAP_SYS_ADMIN.  PM_SOFT_DIRTY is always 0 on kernels
without CONFIG_MEM_SOFT_DIRTY (such as the development hosts).
"""

from __future__ import annotations  # array.array[int] is not subscriptable at runtime

import array

PM_PRESENT = 1 << 63
PM_SWAP = 1 << 62
PM_FILE = 1 << 61  # file page or shared anon; cleared by copy-on-write
PM_GUARD_REGION = 1 << 58  # 6.15+: MADV_GUARD_INSTALL
PM_UFFD_WP = 1 << 57
PM_EXCLUSIVE = 1 << 56  # page mapped only here
PM_SOFT_DIRTY = 1 << 55
PM_PFN_MASK = (1 << 55) - 1  # PFN if present, else swap type (bits 0-4) and offset


def parse_pagemap(data: bytes) -> array.array[int]:
    """The entries of a chunk of pagemap, one per page."""
    entries = array.array("Q")
    if entries.itemsize != 8:
        raise RuntimeError("array 'Q' is not 64-bit on this platform")
    entries.frombytes(data[: len(data) - len(data) % 8])
    return entries
