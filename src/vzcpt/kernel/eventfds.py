"""Event descriptors: eventfd, signalfd, timerfd, epoll and inotify.

Raw syscalls where Python's os module has none, and three interfaces that
exist for checkpoint/restore: ioctl(TFD_IOC_SET_TICKS) gives a new timerfd
its unread expirations (CONFIG_CHECKPOINT_RESTORE); kcmp(KCMP_EPOLL_TFD)
tells whether a descriptor is the very file an epoll watch is on; and
open_by_handle_at() reaches the file an inotify watch is on from the handle
fdinfo shows (CAP_DAC_READ_SEARCH).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import termios

from vzcpt.kernel import nr
from vzcpt.kernel.fds import kcmp
from vzcpt.kernel.libc import syscall

SIGSET_BYTES = 8
TFD_TIMER_ABSTIME = 1
TFD_TIMER_CANCEL_ON_SET = 2
TFD_IOC_SET_TICKS = 0x40085400  # _IOW('T', 0, u64)
KCMP_EPOLL_TFD = 7
EPOLL_CTL_ADD = 1
EPOLL_CTL_DEL = 2
EPOLL_CTL_MOD = 3
EPOLL_EVENT_BYTES = 12  # struct epoll_event is packed on x86_64
POLLFD_BYTES = 8
# Every event poll(2) can report but POLLNVAL: the same bits as epoll's.
POLL_ALL = 0x001 | 0x002 | 0x004 | 0x040 | 0x080 | 0x100 | 0x200 | 0x400 | 0x2000
EPOLLEXCLUSIVE = 1 << 28
EPOLLWAKEUP = 1 << 29
EPOLLONESHOT = 1 << 30
EPOLLET = 1 << 31
EPOLLERR = 0x008
EPOLLHUP = 0x010
# Bits that say how a watch reports, not what: a fired one-shot watch keeps only these.
EPOLL_MODE_BITS = EPOLLEXCLUSIVE | EPOLLWAKEUP | EPOLLONESHOT | EPOLLET
IN_DONT_FOLLOW = 0x02000000
IN_MASK_ADD = 0x20000000
IN_MASK_CREATE = 0x10000000
NSEC = 1_000_000_000


def eventfd(count: int, flags: int) -> int:
    """A new eventfd holding `count` (any u64 a write could reach)."""
    fd = syscall(nr.EVENTFD2, 0, flags | os.O_CLOEXEC, what="eventfd2")
    if count:
        try:
            os.write(fd, count.to_bytes(8, "little"))
        except BaseException:
            os.close(fd)
            raise
    return fd


def signalfd(mask: int, flags: int) -> int:
    """A new signalfd for the signals of `mask` (bit N-1 for signal N)."""
    sigset = ctypes.c_uint64(mask)
    return syscall(
        nr.SIGNALFD4,
        -1,
        ctypes.byref(sigset),
        SIGSET_BYTES,
        flags | os.O_CLOEXEC,
        what="signalfd4",
    )


def _itimerspec(value_ns: int, interval_ns: int) -> ctypes.Array[ctypes.c_int64]:
    words = (ctypes.c_int64 * 4)()
    words[0], words[1] = divmod(interval_ns, NSEC)
    words[2], words[3] = divmod(value_ns, NSEC)
    return words


def timerfd_create(clockid: int, flags: int) -> int:
    return syscall(nr.TIMERFD_CREATE, clockid, flags | os.O_CLOEXEC, what="timerfd_create")


def timerfd_settime(fd: int, flags: int, value_ns: int, interval_ns: int) -> None:
    spec = _itimerspec(value_ns, interval_ns)
    syscall(nr.TIMERFD_SETTIME, fd, flags, ctypes.byref(spec), 0, what="timerfd_settime")


def timerfd_gettime(fd: int) -> tuple[int, int]:
    """(time left, interval) in nanoseconds. As a read would, this folds the
    expirations of a periodic timer that fired into its count and re-arms it,
    consuming nothing."""
    spec = _itimerspec(0, 0)
    syscall(nr.TIMERFD_GETTIME, fd, ctypes.byref(spec), what="timerfd_gettime")
    return spec[2] * NSEC + spec[3], spec[0] * NSEC + spec[1]


def timerfd_set_ticks(fd: int, ticks: int) -> None:
    """Give the timer `ticks` unread expirations (ticks > 0)."""
    value = ctypes.c_uint64(ticks)
    syscall(nr.IOCTL, fd, TFD_IOC_SET_TICKS, ctypes.byref(value), what="TFD_IOC_SET_TICKS")


def epoll_create(flags: int) -> int:
    return syscall(nr.EPOLL_CREATE1, flags | os.O_CLOEXEC, what="epoll_create1")


def epoll_event(events: int, data: int) -> bytes:
    """struct epoll_event, as epoll_ctl() reads it and epoll_wait() writes it."""
    return struct.pack("<IQ", events & 0xFFFFFFFF, data)


def epoll_events(raw: bytes) -> list[tuple[int, int]]:
    """(events, data) of each struct epoll_event in raw."""
    return list(struct.iter_unpack("<IQ", raw))


def pollfds(fds: list[int], events: int) -> bytes:
    """An array of struct pollfd asking each descriptor for `events`."""
    return b"".join(struct.pack("<ihh", fd, events, 0) for fd in fds)


def revents(raw: bytes) -> list[int]:
    """The revents of each struct pollfd in raw, as epoll event bits."""
    return [ev & (POLL_ALL | EPOLLERR | EPOLLHUP) for _, _, ev in struct.iter_unpack("<ihh", raw)]


class _EpollSlot(ctypes.Structure):
    """struct kcmp_epoll_slot."""

    _fields_ = [("efd", ctypes.c_uint32), ("tfd", ctypes.c_uint32), ("toff", ctypes.c_uint32)]


def epoll_watches_file(pid: int, epfd: int, tfd: int, toff: int, fd: int) -> bool:
    """Is descriptor `fd` of `pid` the file that its epoll `epfd` watches as
    `tfd` (the toff-th watch added with that number)?"""
    slot = _EpollSlot(epfd, tfd, toff)
    return kcmp(pid, pid, KCMP_EPOLL_TFD, fd, ctypes.addressof(slot)) == 0


def inotify_init(flags: int) -> int:
    return syscall(nr.INOTIFY_INIT1, flags | os.O_CLOEXEC, what="inotify_init1")


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    return syscall(
        nr.INOTIFY_ADD_WATCH,
        fd,
        ctypes.c_char_p(os.fsencode(path)),
        mask,
        what=f"inotify_add_watch({path})",
    )


def inotify_rm_watch(fd: int, wd: int) -> None:
    syscall(nr.INOTIFY_RM_WATCH, fd, wd, what="inotify_rm_watch")


def open_by_handle(mount_fd: int, handle_type: int, handle: bytes, flags: int) -> int:
    """The file a file handle names, on the file system of mount_fd."""
    raw = struct.pack("<Ii", len(handle), handle_type) + handle
    buf = ctypes.create_string_buffer(raw, len(raw))
    return syscall(
        nr.OPEN_BY_HANDLE_AT, mount_fd, buf, flags | os.O_CLOEXEC, what="open_by_handle_at"
    )


def queued_bytes(fd: int) -> int:
    """How many bytes a read would find queued (FIONREAD): inotify events."""
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, "little")
