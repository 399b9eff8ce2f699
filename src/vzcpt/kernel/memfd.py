"""memfd: anonymous files, their seals, and what file system a file is on.

memfd_create(2) makes the file; fcntl(F_GET_SEALS/F_ADD_SEALS) reads and
sets its seals; fstatfs(2) tells a hugetlbfs memfd from a shmem one.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl

from vzcpt.errors import SyscallFailed
from vzcpt.kernel import nr
from vzcpt.kernel.libc import check, libc, syscall

MFD_CLOEXEC = 0x1
MFD_ALLOW_SEALING = 0x2
MFD_NOEXEC_SEAL = 0x8
MFD_EXEC = 0x10
F_ADD_SEALS = 1033
F_GET_SEALS = 1034
F_SEAL_SEAL = 0x1
F_SEAL_SHRINK = 0x2
F_SEAL_GROW = 0x4
F_SEAL_WRITE = 0x8
F_SEAL_FUTURE_WRITE = 0x10
F_SEAL_EXEC = 0x20
HUGETLBFS_MAGIC = 0x958458F6
TMPFS_MAGIC = 0x01021994
SEAL_NAMES = {
    F_SEAL_SEAL: "seal",
    F_SEAL_SHRINK: "shrink",
    F_SEAL_GROW: "grow",
    F_SEAL_WRITE: "write",
    F_SEAL_FUTURE_WRITE: "future-write",
    F_SEAL_EXEC: "exec",
}


def memfd_create(name: str, noexec_seal: bool) -> int:
    """A new memfd that accepts seals: sealed against exec (mode 0666, F_SEAL_EXEC)
    with `noexec_seal`, else executable (0777); callers set mode and seals."""
    raw = ctypes.c_char_p(name.encode("utf-8", "surrogateescape"))
    base = MFD_CLOEXEC | MFD_ALLOW_SEALING
    exec_flag = MFD_NOEXEC_SEAL if noexec_seal else MFD_EXEC
    try:
        return syscall(nr.MEMFD_CREATE, raw, base | exec_flag, what=f"memfd_create({name!r})")
    except SyscallFailed as exc:
        if exc.errno != errno.EINVAL:  # kernels before 6.3 know neither flag
            raise
    return syscall(nr.MEMFD_CREATE, raw, base, what=f"memfd_create({name!r})")


def get_seals(fd: int) -> int:
    """The seals of a memfd; F_SEAL_SEAL alone for one made without MFD_ALLOW_SEALING."""
    return fcntl.fcntl(fd, F_GET_SEALS)


def add_seals(fd: int, seals: int) -> None:
    if seals:
        fcntl.fcntl(fd, F_ADD_SEALS, seals)


def seal_names(seals: int) -> str:
    return ",".join(name for bit, name in SEAL_NAMES.items() if seals & bit) or "none"


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]


def fs_magic(fd: int) -> int:
    """The f_type of the file system a descriptor's file is on."""
    buf = _StatFs()
    check(libc.fstatfs(fd, ctypes.byref(buf)), "fstatfs")
    return int(buf.f_type) & 0xFFFFFFFF
