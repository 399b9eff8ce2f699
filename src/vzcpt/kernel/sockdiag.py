"""sock_diag(7): unix sockets by inode, and the accept queues of TCP listeners.

Nothing else tells which socket is the peer of a socket: UNIX_DIAG_PEER
gives its inode. Nor which clients wait in a listener's queue: a connection
not yet accepted is a socket with no inode of its own (the "embryo" accept()
hands out), so UNIX_DIAG_ICONS names each by its client's inode instead, in
the order accept() takes them, and the client's UNIX_DIAG_PEER is 0. The
query sees the sockets of one network namespace; for another one (a VE's)
it runs in a child that joins that namespace.

A TCP listener's idiag_rqueue is the number of connections waiting in its
accept queue. `ListenQueues` asks for it again and again while a tree
drains its queues: its netlink socket is made once inside the namespace
(this thread steps in for that, kernel/netns.py) and answers for that
namespace from then on, holding no socket of the tree.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import asdict, dataclass

from vzcpt.kernel import netns
from vzcpt.kernel.nsexec import in_namespace

TCP_LISTEN = 10
# UNIX_DIAG_SHUTDOWN (RCV_SHUTDOWN 1, SEND_SHUTDOWN 2) -> the shutdown() that sets it.
SHUT_BY_DIAG = {1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}


@dataclass(frozen=True)
class UnixSock:
    ino: int
    type: int  # socket.SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
    state: int  # 1 established/unconnected-bound (TCP_ESTABLISHED), 7 close, 10 listen
    name: str | None  # a path, "@abstract", or None
    peer: int  # inode of the peer, 0 when none
    rqueue: int  # listeners: connections waiting to be accepted
    wqueue: int  # listeners: the backlog; others: bytes sent the peer has not read
    shutdown: int
    # Listeners: the clients waiting to be accepted, by inode, the next to be
    # accepted first; 0 for one whose client has closed its socket.
    pending: tuple[int, ...] = ()


def unix_sockets(netns_of: int | None = None) -> dict[int, UnixSock]:
    """Every unix socket of our network namespace, or of that of process `netns_of`."""
    if netns_of is None or _same_netns(netns_of):
        return _query()
    found = in_namespace(
        netns_of, "net", lambda: [asdict(s) for s in _query().values()], "list unix sockets"
    )
    return {s["ino"]: UnixSock(**{**s, "pending": tuple(s["pending"])}) for s in found}


def _same_netns(pid: int) -> bool:
    return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino


def _query() -> dict[int, UnixSock]:
    # pyroute2 takes ~0.1 s to import: only dumps that meet a socket pay it.
    from pyroute2.netlink.diag import (  # type: ignore[import-untyped]
        UDIAG_SHOW_ICONS,
        UDIAG_SHOW_NAME,
        UDIAG_SHOW_PEER,
        UDIAG_SHOW_RQLEN,
        DiagSocket,
    )

    found: dict[int, UnixSock] = {}
    with DiagSocket() as diag:
        diag.bind()
        show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN | UDIAG_SHOW_ICONS
        for msg in diag.get_sock_stats(family=socket.AF_UNIX, show=show):
            attrs = dict(msg["attrs"])
            queues = attrs.get("UNIX_DIAG_RQLEN") or {}
            name = attrs.get("UNIX_DIAG_NAME")
            if isinstance(name, str) and name.startswith("\0"):
                name = "@" + name[1:]
            found[msg["udiag_ino"]] = UnixSock(
                ino=msg["udiag_ino"],
                type=msg["udiag_type"],
                state=msg["udiag_state"],
                name=name or None,
                peer=int(attrs.get("UNIX_DIAG_PEER") or 0),
                rqueue=int(queues.get("udiag_rqueue", 0)),
                wqueue=int(queues.get("udiag_wqueue", 0)),
                shutdown=int(attrs.get("UNIX_DIAG_SHUTDOWN") or 0),
                pending=_inodes(attrs.get("UNIX_DIAG_ICONS")),
            )
    return found


class ListenQueues:
    """The accept queues of the TCP listeners of one network namespace."""

    def __init__(self, ns_fd: int | None) -> None:
        """`ns_fd`: a descriptor on the namespace; None for ours."""
        from pyroute2.netlink.diag import DiagSocket  # type: ignore[import-untyped]

        with netns.entered(f"/proc/self/fd/{ns_fd}" if ns_fd is not None else ""):
            self.diag = DiagSocket()
        try:
            self.diag.bind()
        except BaseException:
            self.diag.close()
            raise

    def lengths(self) -> dict[int, int]:
        """Connections waiting to be accepted, by the inode of their listener."""
        found = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self.diag.get_sock_stats(family=family, states=1 << TCP_LISTEN):
                found[msg["idiag_inode"]] = msg["idiag_rqueue"]
        return found

    def close(self) -> None:
        self.diag.close()


def _inodes(icons: str | None) -> tuple[int, ...]:
    """UNIX_DIAG_ICONS: an array of u32 inodes, which pyroute2 shows as "a2:6c:31:00:..."."""
    raw = bytes.fromhex((icons or "").replace(":", ""))
    return struct.unpack(f"={len(raw) // 4}I", raw[: len(raw) // 4 * 4])
