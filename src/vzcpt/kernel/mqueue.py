"""POSIX message queues: the mq_* syscalls, and the mqueue file system of an IPC namespace.

Raw syscalls rather than librt: the kernel's mq_open takes the name
without glibc's leading slash, and every call here is about the IPC
namespace of the calling process (its queues live in that namespace's
internal mqueue mount, whatever the mount namespace shows).

Reading a queue takes its messages: mq_timedreceive has no peek. Receive
and send are given an absolute timeout in the past, so they never block,
whatever O_NONBLOCK says on the description (which may be the tree's own).

The queues of a namespace are listed through its mqueue file system,
mounted detached (fsopen/fsmount: no mount point, nothing to clean up);
each queue is a file there whose mode and owner are the queue's, and
whose content is one line "QSIZE:n NOTIFY:n SIGNO:n NOTIFY_PID:n".
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from vzcpt.errors import SyscallFailed
from vzcpt.kernel.libc import syscall

# x86_64 (arch/x86/entry/syscalls/syscall_64.tbl); nr.py is frozen.
_NR_MQ_OPEN = 240
_NR_MQ_UNLINK = 241
_NR_MQ_TIMEDSEND = 242
_NR_MQ_TIMEDRECEIVE = 243
_NR_MQ_GETSETATTR = 245
_NR_FSOPEN = 430
_NR_FSCONFIG = 431
_NR_FSMOUNT = 432

MQUEUE_MAGIC = 0x19800202  # include/uapi/linux/magic.h
_FSOPEN_CLOEXEC = 1
_FSMOUNT_CLOEXEC = 1
_FSCONFIG_CMD_CREATE = 6


class _MqAttr(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_long),
        ("maxmsg", ctypes.c_long),
        ("msgsize", ctypes.c_long),
        ("curmsgs", ctypes.c_long),
        ("reserved", ctypes.c_long * 4),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


_PAST = _Timespec(0, 0)  # the epoch: an absolute timeout that has always expired


@dataclass(frozen=True)
class MqAttr:
    flags: int  # O_NONBLOCK of the description
    maxmsg: int
    msgsize: int
    curmsgs: int


@dataclass(frozen=True)
class MqStatus:
    """The queue file's line: QSIZE, and the mq_notify registration if any."""

    qsize: int
    notify: int  # SIGEV_* of the registration
    signo: int
    notify_pid: int  # 0: nobody is registered


def mq_open(name: str, flags: int, mode: int = 0o600, maxmsg: int = 0, msgsize: int = 0) -> int:
    """mq_open(2) of queue `name` (no slash); with O_CREAT and maxmsg, of that size."""
    attr = _MqAttr(0, maxmsg, msgsize, 0) if maxmsg else None
    return syscall(
        _NR_MQ_OPEN,
        os.fsencode(name),
        flags | os.O_CLOEXEC,
        mode,
        ctypes.byref(attr) if attr is not None else None,
        what=f"mq_open /{name}",
    )


def mq_unlink(name: str) -> None:
    syscall(_NR_MQ_UNLINK, os.fsencode(name), what=f"mq_unlink /{name}")


def mq_getattr(fd: int) -> MqAttr:
    out = _MqAttr()
    syscall(_NR_MQ_GETSETATTR, fd, None, ctypes.byref(out), what="mq_getattr")
    return MqAttr(out.flags, out.maxmsg, out.msgsize, out.curmsgs)


def mq_receive_now(fd: int, msgsize: int) -> tuple[bytes, int] | None:
    """The first message (highest priority, oldest) and its priority; None if empty."""
    buf = ctypes.create_string_buffer(max(msgsize, 1))
    prio = ctypes.c_uint()
    try:
        n = syscall(
            _NR_MQ_TIMEDRECEIVE,
            fd,
            buf,
            len(buf),
            ctypes.byref(prio),
            ctypes.byref(_PAST),
            what="mq_timedreceive",
        )
    except SyscallFailed as exc:
        if exc.errno in (errno.ETIMEDOUT, errno.EAGAIN):
            return None
        raise
    return buf.raw[:n], prio.value


def mq_send_now(fd: int, data: bytes, prio: int) -> None:
    """Queue one message; fails (ETIMEDOUT/EAGAIN) rather than wait if the queue is full."""
    syscall(_NR_MQ_TIMEDSEND, fd, data, len(data), prio, ctypes.byref(_PAST), what="mq_timedsend")


def open_mqueue_fs() -> int:
    """A directory descriptor on the mqueue file system of our IPC namespace."""
    fs = syscall(_NR_FSOPEN, b"mqueue", _FSOPEN_CLOEXEC, what="fsopen mqueue")
    try:
        syscall(_NR_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0, what="fsconfig mqueue")
        mnt = syscall(_NR_FSMOUNT, fs, _FSMOUNT_CLOEXEC, 0, what="fsmount mqueue")
    finally:
        os.close(fs)
    try:
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=mnt)
    finally:
        os.close(mnt)


def queue_status(dir_fd: int, name: str) -> MqStatus:
    """The status of queue `name` in the mqueue file system open at `dir_fd`."""
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return read_status(fd)
    finally:
        os.close(fd)


def read_status(fd: int) -> MqStatus:
    """The status line of the queue open at `fd` (read at offset 0: its position stays)."""
    text = os.pread(fd, 4096, 0).decode()
    fields = dict(item.split(":", 1) for item in text.split())
    return MqStatus(
        int(fields["QSIZE"]), int(fields["NOTIFY"]), int(fields["SIGNO"]), int(fields["NOTIFY_PID"])
    )
