"""Descriptors of other processes: pidfds, pidfd_getfd, kcmp, tee; fstatfs."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat

from vzcpt.errors import SyscallFailed
from vzcpt.kernel import nr
from vzcpt.kernel.libc import check, libc, syscall

KCMP_FILE = 0
KCMP_VM = 1
KCMP_FILES = 2
KCMP_FS = 3
KCMP_SIGHAND = 4
KCMP_IO = 5
KCMP_SYSVSEM = 6

SPLICE_F_NONBLOCK = 2
F_GETPIPE_SZ = 1032
F_SETPIPE_SZ = 1031


def pidfd_open(pid: int, flags: int = 0) -> int:
    return syscall(nr.PIDFD_OPEN, pid, flags, what=f"pidfd_open({pid})", pid=pid)


def steal_fd(pid: int, fd: int) -> int:
    """Duplicate descriptor `fd` of process `pid` into this process (pidfd_getfd)."""
    pidfd = pidfd_open(pid)
    try:
        return syscall(nr.PIDFD_GETFD, pidfd, fd, 0, what=f"pidfd_getfd({pid}, {fd})", pid=pid)
    finally:
        os.close(pidfd)


def kcmp(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> int:
    """0 when both refer to the same kernel object, else an ordering (1, 2)."""
    return syscall(nr.KCMP, pid1, pid2, kind, idx1, idx2, what="kcmp")


def same_file(fd1: int, fd2: int) -> bool:
    """Do two descriptors of this process share one open file description?"""
    me = os.getpid()
    return kcmp(me, me, KCMP_FILE, fd1, fd2) == 0


def peek_pipe(read_fd: int) -> bytes:
    """Copy what is queued in a pipe without consuming it (tee into a private pipe)."""
    size = fcntl.fcntl(read_fd, F_GETPIPE_SZ)
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, size)
        try:
            copied = syscall(nr.TEE, read_fd, w, size, SPLICE_F_NONBLOCK, what="tee")
        except SyscallFailed as exc:
            if exc.errno == errno.EAGAIN:  # nothing queued
                return b""
            raise
        chunks = []
        while copied > 0:
            chunk = os.read(r, copied)
            chunks.append(chunk)
            copied -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(r)
        os.close(w)


def fs_magic(fd: int) -> int:
    """f_type of the file system `fd` lives on (fstatfs; include/uapi/linux/magic.h)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs: 120 bytes, f_type first
    check(libc.fstatfs(fd, buf), "fstatfs")
    return int.from_bytes(buf.raw[:8], "little", signed=True)


PIPE_SIZE = 1 << 20  # a dump through a pipe: fewer wakeups per GiB than the default 64 KiB


def grow_pipe(fd: int) -> None:
    """Make `fd`'s pipe hold PIPE_SIZE bytes, if it is a pipe (an optimisation:
    the limit may be lower for non-root, and nothing else is asked)."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass
