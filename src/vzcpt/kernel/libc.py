"""The C library handle and the errno-checking raw syscall entry point.

Every other module of `kernel/` goes through `syscall()` or `check()`, so an
error from the kernel always becomes a `SyscallFailed` (or a `ProcessGone`
when the target vanished) carrying the errno and what we were doing.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
from typing import Any

from vzcpt.errors import ProcessGone, SyscallFailed

libc = ctypes.CDLL(None, use_errno=True)

_syscall = libc.syscall
_syscall.restype = ctypes.c_long

ULONG_MASK = (1 << 64) - 1


def _arg(value: Any) -> Any:
    """Pass plain ints as unsigned longs, so large addresses and -1 survive ctypes."""
    if isinstance(value, int):
        return ctypes.c_ulong(value & ULONG_MASK)
    return value


def syscall(nr: int, *args: Any, what: str = "", pid: int | None = None) -> int:
    """Make syscall `nr` in this process; raise on error.

    `pid` names the process the call is about: ESRCH then means it is gone.
    """
    result = int(_syscall(ctypes.c_long(nr), *(_arg(a) for a in args)))
    if result == -1:
        err = ctypes.get_errno()
        if pid is not None and err == errno.ESRCH:
            raise ProcessGone(f"process {pid} is gone")
        raise SyscallFailed(what or f"syscall {nr}", err)
    return result


def check(result: int, what: str, pid: int | None = None) -> int:
    """Raise for a libc call that returned -1 with errno set."""
    if result == -1:
        err = ctypes.get_errno()
        if pid is not None and err == errno.ESRCH:
            raise ProcessGone(f"process {pid} is gone")
        raise SyscallFailed(what, err)
    return result


def own_personality() -> int:
    """personality(0xffffffff): this process's execution domain, unchanged."""
    return int(libc.personality(ctypes.c_ulong(0xFFFFFFFF)))


def own_securebits() -> int:
    PR_GET_SECUREBITS = 27
    return check(int(libc.prctl(PR_GET_SECUREBITS, 0, 0, 0, 0)), "PR_GET_SECUREBITS")


class _PyBuffer(ctypes.Structure):
    # CPython's Py_buffer (Include/pybuffer.h); only `buf` is read.
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]


def buffer_address(data: bytes | bytearray | memoryview | mmap.mmap) -> int:
    """The address of the first byte of a contiguous buffer, read-only ones
    included (ctypes' from_buffer takes only writable ones: an mmap of the
    dump file is not). Valid while the caller holds `data`."""
    view = _PyBuffer()
    if _get_buffer(data, ctypes.byref(view), 0) != 0:  # PyBUF_SIMPLE: contiguous bytes
        raise ValueError("not a contiguous buffer")
    try:
        return int(view.buf or 0)
    finally:
        _release_buffer(ctypes.byref(view))


SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE): start writing
    the dirty pages of that part of the file (length 0: to its end) to disk,
    without waiting for them and without a journal commit."""
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    check(int(libc.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)), "sync_file_range")


FALLOC_FL_KEEP_SIZE = 1


def reserve_blocks(fd: int, offset: int, length: int) -> None:
    """fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length): give the file its
    disk blocks ahead of the writes, leaving its size as it is."""
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    check(int(libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length)), "fallocate")
