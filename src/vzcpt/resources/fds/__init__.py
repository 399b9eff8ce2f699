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
from vzcpt.proc.fdinfo import FdInfo
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds.inet_record import InetSocketRecord


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
    queue: list[bytes] = field(default_factory=list)  # received, not yet read, in order
    options: dict[str, int] = field(default_factory=dict)


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


def catalogue() -> list[Handler]:
    from vzcpt.resources.fds import chrdev, directory, inet, pipe, regular, unix

    return [
        regular.HANDLER,
        directory.HANDLER,
        chrdev.HANDLER,
        pipe.HANDLER,
        pipe.FIFO_HANDLER,
        unix.HANDLER,
        inet.HANDLER,
    ]


def handler_for(kind: str) -> Handler:
    for handler in catalogue():
        if handler.kind == kind:
            return handler
    raise Unsupported(f"the dump holds a file of unknown kind {kind!r}")


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
        return f"an {link[len('anon_inode:') :].strip('[]')} descriptor"
    return f"{link!r}"
