"""Open files: the descriptor table of each process and the open file
descriptions behind it, shared between descriptors and processes.

Kernel interfaces: /proc/PID/fd (links) and /proc/PID/fdinfo (position,
flags with O_CLOEXEC, locks); pidfd_getfd(2) to hold the very description the
process holds; kcmp(KCMP_FILE) to tell whether two descriptors share one
description. At restore the restorer opens each description once and hands
it to every process that held it (SCM_RIGHTS), so a shared offset stays
shared.

Each kind of file is one module of this package with a `Handler`; the
catalogue below is the only list of them.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Protocol

from vzcpt.errors import Unsupported
from vzcpt.image.schema import record
from vzcpt.kernel.sockopts import socket_kind
from vzcpt.kernel.tty import Termios, WinSize
from vzcpt.proc.fdinfo import FdInfo
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds.inet_record import InetSocketRecord
from vzcpt.resources.mqueue import MqDescription


@dataclass
class FdEntry:
    """One slot of a descriptor table."""

    fd: int
    file_id: int
    cloexec: bool


@dataclass
class LockRecord:
    kind: str  # FLOCK | POSIX | OFDLCK
    write: bool
    start: int
    end: int | None


@dataclass
class UnixSocketRecord:
    """What a unix socket is: its type, state, names, peer and queued messages."""

    ino: int
    type: int
    listening: bool
    backlog: int
    name: bytes  # getsockname(): b"" unnamed, b"\0..." abstract, else a path
    peer: int  # inode of its peer in the tree, 0 for none
    shutdown: int
    peer_name: bytes = b""  # getpeername(): the listener's name for a client
    # A listener: the clients waiting to be accepted, by inode, the next first.
    pending: list[int] = field(default_factory=list)
    listener: int = 0  # a client not yet accepted: the inode of the listener it waits in
    queue: list[bytes] = field(default_factory=list)  # received, not yet read, in order
    options: dict[str, int] = field(default_factory=dict)
    # The socket file at a path name, as it was: mode (0: none found), owner.
    file_mode: int = 0
    file_uid: int = 0
    file_gid: int = 0


@dataclass
class TtyState:
    """A terminal as its readers and writers left it: saved once per pty pair (with the
    first of its descriptions), and for the terminal of a shell job."""

    termios: Termios
    winsize: WinSize
    locked_termios: Termios | None = None
    locked: bool = False  # TIOCSPTLCK: the slave cannot be opened
    packet: bool = False  # TIOCPKT on the master
    exclusive: bool = False  # TIOCEXCL on the slave
    slave_open: bool = True  # False once every slave was closed (the master reads EIO)
    session: int = 0  # whose controlling terminal it is (saved id); 0: none, or outside
    foreground: int = 0  # its foreground process group (saved id), 0 if none in the tree
    input: bytes = b""  # for the slave's readers: whole lines, then a partial one
    output: bytes = b""  # for the master's reader
    mode: int = 0o620  # of /dev/pts/N
    uid: int = 0
    gid: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0


@dataclass
class TtyRecord:
    """Which terminal a description is: one side of a pty of the tree, or the terminal
    of a shell job (outside the tree, given back at restore by the restore's own)."""

    role: str  # master | slave | external
    index: int = -1  # the pty's number N (/dev/pts/N); -1 for the external terminal
    state: TtyState | None = None


@record("file")
@dataclass
class FileDesc:
    """An open file description, as many descriptors may share it."""

    id: int
    kind: str
    flags: int
    pos: int = 0
    path: str = ""
    size: int = -1  # regular files: size at dump, checked at restore
    rdev: int = 0
    deleted: bool = False
    content: bytes | None = None  # unlinked files and queued pipe data
    pipe_id: int = 0
    pipe_size: int = 0
    locks: list[LockRecord] = field(default_factory=list)
    socket: UnixSocketRecord | None = None
    mqueue: MqDescription | None = None
    eventfd: EventfdRecord | None = None
    epoll: EpollRecord | None = None
    signalfd: SignalfdRecord | None = None
    timerfd: TimerfdRecord | None = None
    inotify: InotifyRecord | None = None
    pidfd: PidfdRecord | None = None
    memfd: int = 0  # the MemfdRecord of a memfd
    tty: TtyRecord | None = None
    inet: InetSocketRecord | None = None


class Handler(Protocol):
    kind: str

    def claims(self, link: str, st: os.stat_result, local: int) -> bool:
        """Is the file at our descriptor `local` (its /proc link, its stat) of this kind?"""
        ...

    def dump(
        self,
        ctx: DumpContext,
        pid: int,
        fd: int,
        local: int,
        link: str,
        st: os.stat_result,
        info: FdInfo,
    ) -> FileDesc: ...

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        """Open the description in the restorer; return our descriptor on it."""
        ...


class AnonInodeKind:
    """A kind told by its /proc link alone, as anonymous-inode files are
    ("anon_inode:[eventfd]"): a handler names its `link` and claims just those."""

    link: str

    def claims(self, link: str, st: os.stat_result, local: int) -> bool:
        return link == self.link


def catalogue() -> list[Handler]:
    from vzcpt.resources.fds import (
        chrdev,
        directory,
        epoll,
        eventfd,
        inet,
        inotify,
        memfd,
        mqueue,
        pidfd,
        pipe,
        regular,
        signalfd,
        timerfd,
        tty,
        unix,
    )

    return [
        mqueue.HANDLER,
        memfd.HANDLER,  # before regular files: a memfd is one, unlinked
        regular.HANDLER,
        directory.HANDLER,
        tty.HANDLER,  # before chrdev: terminals are character devices too
        chrdev.HANDLER,
        pipe.HANDLER,
        pipe.FIFO_HANDLER,
        unix.HANDLER,
        inet.HANDLER,
        eventfd.HANDLER,
        epoll.HANDLER,
        signalfd.HANDLER,
        timerfd.HANDLER,
        inotify.HANDLER,
        pidfd.HANDLER,
    ]


def by_file_system() -> dict[int, Handler]:
    """Kinds told by the file system their files live on (fstatfs f_type), before
    any handler is asked: a message queue's link reads like any file's."""
    from vzcpt.kernel.mqueue import MQUEUE_MAGIC
    from vzcpt.resources.fds import mqueue

    return {MQUEUE_MAGIC: mqueue.HANDLER}


def handler_for(kind: str) -> Handler:
    for handler in catalogue():
        if handler.kind == kind:
            return handler
    raise Unsupported(f"the dump holds a file of unknown kind {kind!r}")


# What the anonymous inodes we cannot save are, by the name the kernel gives them.
ANON_KINDS = {
    "io_uring": "an io_uring instance",
    "fanotify": "a fanotify group",
    "perf_event": "a perf event",
    "bpf-map": "a BPF map",
    "bpf-prog": "a BPF program",
    "bpf_link": "a BPF link",
    "bpf_iter": "a BPF iterator",
    "bpf-token": "a BPF token",
    "userfaultfd": "a userfaultfd",
    "secretmem": "a memfd_secret area",
    "kvm-vm": "a KVM virtual machine",
    "kvm-vcpu": "a KVM virtual CPU",
    "dmabuf": "a DMA buffer",
    "sync_file": "a sync file",
    "landlock-ruleset": "a Landlock ruleset",
}


SOCKET_FAMILIES: dict[int, str] = {
    socket.AF_NETLINK: "a netlink",
    socket.AF_PACKET: "a packet",
    socket.AF_INET: "an IPv4",
    socket.AF_INET6: "an IPv6",
    socket.AF_UNIX: "a unix",
}
SOCKET_TYPES: dict[int, str] = {socket.SOCK_RAW: "raw", socket.SOCK_SEQPACKET: "seqpacket"}
PROTOCOLS: dict[int, str] = {
    socket.IPPROTO_SCTP: "SCTP",
    262: "MPTCP",
    socket.IPPROTO_UDPLITE: "UDP-Lite",
}


def describe(link: str, local: int) -> str:
    """A human name for a descriptor we cannot save, open at our `local`."""
    if link.startswith("socket:"):
        family, kind, protocol = socket_kind(local)
        what = SOCKET_FAMILIES.get(family, f"a family {family}")
        if family in (socket.AF_INET, socket.AF_INET6):
            what += f" {SOCKET_TYPES[kind]}" if kind in SOCKET_TYPES else ""
            what += f" {PROTOCOLS[protocol]}" if protocol in PROTOCOLS else ""
        return f"{what} socket"
    if link.startswith("anon_inode:"):
        name = link[len("anon_inode:") :].strip("[]")
        return ANON_KINDS.get(name, f"an anonymous-inode descriptor ({name})")
    return f"{link!r}"


# The records of the kinds that have one, named in FileDesc's fields above:
# imported last, since their modules build FileDescs.
from vzcpt.resources.fds.epoll import EpollRecord  # noqa: E402
from vzcpt.resources.fds.eventfd import EventfdRecord  # noqa: E402
from vzcpt.resources.fds.inotify import InotifyRecord  # noqa: E402
from vzcpt.resources.fds.pidfd import PidfdRecord  # noqa: E402
from vzcpt.resources.fds.signalfd import SignalfdRecord  # noqa: E402
from vzcpt.resources.fds.timerfd import TimerfdRecord  # noqa: E402
