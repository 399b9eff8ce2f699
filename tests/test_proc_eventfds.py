"""The fdinfo parsers of event descriptors, on captured samples and on the
live kernel (objects made here with the wrappers of vzcpt.kernel)."""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vzcpt.kernel import eventfds, memfd
from vzcpt.kernel.fds import pidfd_open
from vzcpt.proc.fdinfo import (
    FdInfo,
    epoll_targets,
    eventfd_state,
    inotify_marks,
    parse_fdinfo,
    pidfd_pid,
    signalfd_mask,
    timerfd_state,
)

DATA = Path(__file__).parent / "data" / "proc"


def sample(name: str) -> FdInfo:
    return parse_fdinfo((DATA / name).read_bytes())


def live(fd: int) -> FdInfo:
    return parse_fdinfo(Path(f"/proc/self/fdinfo/{fd}").read_bytes())


@pytest.fixture
def fds() -> Iterator[list[int]]:
    """Descriptors a test opens, closed after it."""
    opened: list[int] = []
    yield opened
    for fd in opened:
        os.close(fd)


def test_samples() -> None:
    assert eventfd_state(sample("fdinfo.event")) == (5, False)
    assert signalfd_mask(sample("fdinfo.signal")) == 1 << (signal.SIGUSR1 - 1)
    timer = timerfd_state(sample("fdinfo.timer"))
    assert (timer.clockid, timer.ticks, timer.settime_flags) == (1, 0, 0)
    assert (timer.value_ns, timer.interval_ns) == (99_478_193_611, 1_000_000_000)
    first, second = epoll_targets(sample("fdinfo.epoll"))
    assert (first.fd, first.events, first.data) == (11, 0x1C, 0x43)
    assert (first.ino, first.sdev) == (0x2554, 0xF)
    assert (second.fd, second.events, second.data) == (7, 0x19, 0x42)
    (mark,) = inotify_marks(sample("fdinfo.inotify"))
    assert (mark.wd, mark.ino, mark.sdev, mark.mask) == (1, 0x20C1AD, 0xFE00000, 0x100)
    assert (mark.handle_type, mark.handle) == (1, bytes.fromhex("adc120007a237dc2"))


def test_eventfd_count_is_hex(fds: list[int]) -> None:
    fds.append(eventfds.eventfd(0x1234_5678_9A, os.O_NONBLOCK | 1))  # EFD_SEMAPHORE
    assert eventfd_state(live(fds[0])) == (0x1234_5678_9A, True)


def test_signalfd_mask(fds: list[int]) -> None:
    mask = 1 << (signal.SIGUSR2 - 1) | 1 << (signal.SIGRTMIN + 2 - 1)
    fds.append(eventfds.signalfd(mask, 0))
    assert signalfd_mask(live(fds[0])) == mask


def test_timerfd_state_and_ticks(fds: list[int]) -> None:
    fd = eventfds.timerfd_create(time.CLOCK_MONOTONIC, 0)
    fds.append(fd)
    eventfds.timerfd_settime(fd, 0, 1_000_000, 1_000_000)
    time.sleep(0.02)
    value, interval = eventfds.timerfd_gettime(fd)  # counts the periods that passed
    state = timerfd_state(live(fd))
    assert interval == state.interval_ns == 1_000_000
    assert 0 < value <= 1_000_000 and state.ticks >= 15
    eventfds.timerfd_set_ticks(fd, 1234)
    assert timerfd_state(live(fd)).ticks == 1234
    assert int.from_bytes(os.read(fd, 8), "little") >= 1234


def test_epoll_targets(fds: list[int]) -> None:
    ep = eventfds.epoll_create(0)
    ev = eventfds.eventfd(1, 0)
    fds += [ep, ev]
    poller = select.epoll.fromfd(os.dup(ep))
    try:
        poller.register(ev, select.EPOLLIN | select.EPOLLET)
        (target,) = epoll_targets(live(ep))
        assert target.fd == ev and target.data == ev  # Python stores the fd as data
        assert target.events == select.EPOLLIN | select.EPOLLET | select.EPOLLERR | select.EPOLLHUP
        assert eventfds.epoll_watches_file(os.getpid(), ep, ev, 0, ev)
        assert not eventfds.epoll_watches_file(os.getpid(), ep, ev, 0, ep)
    finally:
        poller.close()


def test_inotify_marks(fds: list[int], tmp_path: Path) -> None:
    fd = eventfds.inotify_init(os.O_NONBLOCK)
    fds.append(fd)
    wd = eventfds.inotify_add_watch(fd, str(tmp_path), 0x100 | 0x80000000)  # CREATE, ONESHOT
    (mark,) = inotify_marks(live(fd))
    assert (mark.wd, mark.mask, mark.ino) == (wd, 0x80000100, tmp_path.stat().st_ino)
    assert mark.handle, "this file system gives file handles"
    assert eventfds.queued_bytes(fd) == 0


def test_pidfd_pid(fds: list[int]) -> None:
    fds.append(pidfd_open(os.getpid()))
    assert pidfd_pid(live(fds[0])) == os.getpid()


def test_memfd_seals(fds: list[int]) -> None:
    fd = memfd.memfd_create("vzcpt test", noexec_seal=False)
    fds.append(fd)
    assert memfd.get_seals(fd) == 0
    memfd.add_seals(fd, memfd.F_SEAL_GROW | memfd.F_SEAL_SEAL)
    assert memfd.get_seals(fd) == memfd.F_SEAL_GROW | memfd.F_SEAL_SEAL
    assert memfd.fs_magic(fd) == memfd.TMPFS_MAGIC
    assert os.readlink(f"/proc/self/fd/{fd}") == "/memfd:vzcpt test (deleted)"
