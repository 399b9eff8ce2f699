"""userfaultfd ioctls for dirty-page tracking (Documentation/admin-guide/mm/userfaultfd.rst).

A userfaultfd works on the address space of the process that created it, so
the descriptor is made inside the tracked task and then taken by us. With
UFFD_FEATURE_WP_ASYNC the kernel resolves write-protect faults itself (the
task never waits for us): a written page simply loses its uffd-wp bit, and
PAGEMAP_SCAN reports it as PAGE_IS_WRITTEN. WP_UNPOPULATED makes pages not
yet faulted in count as write-protected too, so a first write to them shows.
"""

from __future__ import annotations

import fcntl
import struct

UFFD_USER_MODE_ONLY = 1  # the flag of userfaultfd(2): no kernel-mode faults needed
UFFD_API = 0xAA
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFDIO_REGISTER_MODE_WP = 1 << 1


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (UFFD_API << 8) | nr


_API = struct.Struct("QQQ")  # struct uffdio_api: api, features, ioctls
_REGISTER = struct.Struct("QQQQ")  # struct uffdio_register: range (start, len), mode, ioctls
_RANGE = struct.Struct("QQ")  # struct uffdio_range
UFFDIO_API = _iowr(0x3F, _API.size)
UFFDIO_REGISTER = _iowr(0x00, _REGISTER.size)
UFFDIO_UNREGISTER = (2 << 30) | (_RANGE.size << 16) | (UFFD_API << 8) | 0x01  # _IOR


def enable_async_wp(fd: int) -> None:
    """The UFFDIO_API handshake asking for asynchronous write-protect tracking."""
    arg = bytearray(_API.pack(UFFD_API, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, 0))
    fcntl.ioctl(fd, UFFDIO_API, arg)


def register_wp(fd: int, start: int, end: int) -> None:
    """Track writes to [start, end): whole anonymous private mappings."""
    arg = bytearray(_REGISTER.pack(start, end - start, UFFDIO_REGISTER_MODE_WP, 0))
    fcntl.ioctl(fd, UFFDIO_REGISTER, arg)


def unregister(fd: int, start: int, end: int) -> None:
    fcntl.ioctl(fd, UFFDIO_UNREGISTER, bytearray(_RANGE.pack(start, end - start)))
