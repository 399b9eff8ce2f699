"""File I/O calls Python's os module lacks."""

from __future__ import annotations

import ctypes

from vzcpt.kernel.libc import libc

SYNC_FILE_RANGE_WRITE = 2

_sync_file_range = libc.sync_file_range
_sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_sync_file_range.restype = ctypes.c_int


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range of a file to disk now, without waiting for it.

    A later fsync() then has little left to wait for. Best effort: a file
    that cannot (a pipe) is simply left alone.
    """
    _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)
