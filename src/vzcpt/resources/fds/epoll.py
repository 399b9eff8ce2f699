"""epoll: the watches of an instance, with their events, data and modes.

Kernel interfaces: fdinfo lists each watch ("tfd: N events: ... data: ...");
kcmp(KCMP_EPOLL_TFD) checks that descriptor N of the process is still the
very file watched. The kernel keys a watch by (file, descriptor number), and
EPOLL_CTL_MOD/DEL by the program look it up by that number: so at restore
the instance is made by the restorer (epoll_create1), and its watches are
added by the program's own process, through epoll_ctl(EPOLL_CTL_ADD) calls
injected once its descriptors are at their numbers (`add_watches`).

What a watch reports after restore: adding it polls its file, so a watch on
a ready file is ready at once (an eventfd with a count, data queued in a
pipe) and no readiness is lost. An edge-triggered watch whose file stayed
ready after its edge was reported reports it once more: a spurious wake-up,
which edge-triggered programs must take anyway, where missing an edge that
came while the tree was down would hang them. A one-shot watch that fired
keeps only its mode bits, and only firing disarms one (the kernel arms any
watch added for EPOLLERR and EPOLLHUP): so such watches are added first,
armed for what their file is ready for now (polled from inside the
process), and fire into the void. One whose file is ready for nothing stays
armed for EPOLLERR and EPOLLHUP.

Refused: a watch whose descriptor number the process has closed or reused
while the file lives on elsewhere (that watch cannot be keyed again).
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass, field

from vzcpt.errors import CorruptDump, SyscallFailed, Unsupported
from vzcpt.inject.remote import RemoteTask
from vzcpt.kernel import nr
from vzcpt.kernel.eventfds import (
    EPOLL_CTL_ADD,
    EPOLL_EVENT_BYTES,
    EPOLL_MODE_BITS,
    EPOLLONESHOT,
    POLL_ALL,
    POLLFD_BYTES,
    epoll_create,
    epoll_event,
    epoll_watches_file,
    pollfds,
    revents,
)
from vzcpt.proc.fdinfo import FdInfo, epoll_targets
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import AnonInodeKind, FdEntry, FileDesc

LINK = "anon_inode:[eventpoll]"
WATCHES_PER_BATCH = 3000  # their events fit the scratch area below the fd channel's
EVENT_NAMES = {
    0x001: "IN",
    0x002: "PRI",
    0x004: "OUT",
    0x008: "ERR",
    0x010: "HUP",
    0x040: "RDNORM",
    0x080: "RDBAND",
    0x100: "WRNORM",
    0x200: "WRBAND",
    0x400: "MSG",
    0x2000: "RDHUP",
    1 << 28: "EXCLUSIVE",
    1 << 29: "WAKEUP",
    1 << 30: "ONESHOT",
    1 << 31: "ET",
}


@dataclass
class EpollWatch:
    fd: int  # the watched descriptor, in the owner's table
    events: int
    data: int

    @property
    def fired_oneshot(self) -> bool:
        return bool(self.events & EPOLLONESHOT) and not self.events & ~EPOLL_MODE_BITS

    def __str__(self) -> str:
        names = [n for bit, n in EVENT_NAMES.items() if self.events & bit]
        return f"fd {self.fd} {'|'.join(names) or '-'} data {self.data:#x}"


@dataclass
class EpollRecord:
    owner: int  # the process whose descriptor numbers key the watches
    fd: int  # the instance's own number in that process
    watches: list[EpollWatch] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{len(self.watches)} watches"


class EpollHandler(AnonInodeKind):
    kind = "epoll"
    link = LINK

    def dump(
        self,
        ctx: DumpContext,
        pid: int,
        fd: int,
        local: int,
        link: str,
        st: os.stat_result,
        info: FdInfo,
    ) -> FileDesc:
        watches = []
        seen: dict[int, int] = {}  # number -> watches with it so far (kcmp's toff)
        for target in epoll_targets(info):
            toff = seen.get(target.fd, 0)
            seen[target.fd] = toff + 1
            if not _still_there(pid, fd, target.fd, toff):
                raise Unsupported(
                    f"process {pid}: descriptor {fd} (epoll) watches a file it added as "
                    f"descriptor {target.fd}, which the process has closed or reused since: "
                    "vzcpt cannot checkpoint such a watch"
                )
            watches.append(EpollWatch(fd=target.fd, events=target.events, data=target.data))
        return FileDesc(
            id=0,
            kind=self.kind,
            flags=info.flags & ~os.O_CLOEXEC,
            epoll=EpollRecord(
                owner=ctx.saved_id(pid), fd=fd, watches=sorted(watches, key=lambda w: w.fd)
            ),
        )

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        if desc.epoll is None:
            raise CorruptDump(f"file {desc.id} of kind epoll has no epoll record")
        fd = epoll_create(0)  # its watches come once the owner's table is in place
        fcntl.fcntl(fd, fcntl.F_SETFL, desc.flags & os.O_NONBLOCK)
        return fd


def _still_there(pid: int, epfd: int, tfd: int, toff: int) -> bool:
    try:
        return epoll_watches_file(pid, epfd, tfd, toff, tfd)
    except SyscallFailed as exc:
        if exc.errno == errno.EBADF:  # no descriptor with that number any more
            return False
        raise


def add_watches(
    task: RemoteTask, pid: int, entries: list[FdEntry], files: dict[int, FileDesc]
) -> None:
    """Add the watches of the epoll instances process `pid` owns, from inside it.

    Runs once its descriptors are at their numbers. An instance watched by
    another gets its watches first, so the outer one sees it as it will be.
    """
    owned = {
        e.fd: desc.epoll
        for e in entries
        if (desc := files[e.file_id]).epoll is not None
        and desc.epoll.owner == pid
        and desc.epoll.fd == e.fd
    }
    for epfd in _inner_first(owned):
        rec = owned[epfd]
        fired = [w for w in rec.watches if w.fired_oneshot]
        if fired:
            _add(task, epfd, fired, _readiness(task, [w.fd for w in fired]))
            _report_into_the_void(task, epfd, len(fired))
        _add(task, epfd, [w for w in rec.watches if not w.fired_oneshot])


def _report_into_the_void(task: RemoteTask, epfd: int, count: int) -> None:
    """Take every event ready on the instance (at most `count` are): fired one-shot
    watches just added report what they are armed for, and are disarmed again."""
    room = min(count, WATCHES_PER_BATCH)
    while room and task.call(nr.EPOLL_WAIT, epfd, task.scratch, room, 0, what="epoll_wait") == room:
        pass


def _inner_first(owned: dict[int, EpollRecord]) -> list[int]:
    """The instances' numbers, each after every instance among them it watches."""
    order: list[int] = []

    def visit(epfd: int) -> None:
        if epfd in order:
            return
        for watch in owned[epfd].watches:
            if watch.fd in owned and watch.fd != epfd:
                visit(watch.fd)
        order.append(epfd)

    for epfd in sorted(owned):
        visit(epfd)
    return order


def _readiness(task: RemoteTask, fds: list[int]) -> list[int]:
    """What each descriptor is ready for now, polled from inside the task (a
    signalfd answers for the process that polls it)."""
    found: list[int] = []
    for first in range(0, len(fds), WATCHES_PER_BATCH):
        part = fds[first : first + WATCHES_PER_BATCH]
        task.put(0, pollfds(part, POLL_ALL))
        task.call(nr.POLL, task.scratch, len(part), 0, what="poll")
        found += revents(task.get(0, len(part) * POLLFD_BYTES))
    return found


def _add(
    task: RemoteTask, epfd: int, watches: list[EpollWatch], extra: list[int] | None = None
) -> None:
    """EPOLL_CTL_ADD each watch, with the events of `extra` added to its own."""
    extra = extra or [0] * len(watches)
    for first in range(0, len(watches), WATCHES_PER_BATCH):
        part = watches[first : first + WATCHES_PER_BATCH]
        more = extra[first : first + WATCHES_PER_BATCH]
        task.batch(
            [
                (
                    nr.EPOLL_CTL,
                    epfd,
                    EPOLL_CTL_ADD,
                    w.fd,
                    task.put(i * EPOLL_EVENT_BYTES, epoll_event(w.events | m, w.data)),
                )
                for i, (w, m) in enumerate(zip(part, more, strict=True))
            ],
            what=f"epoll_ctl(EPOLL_CTL_ADD) on epoll {epfd}",
        )


HANDLER = EpollHandler()
