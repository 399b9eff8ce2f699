"""The network lock of a checkpoint: the tree's TCP and UDP sockets held still.

From the moment the tree is frozen until it runs again (restored, or let go),
no packet of its connections may come or go, or the two ends would disagree
about what was sent (and a peer talking to a socket that is gone gets a
reset). CRIU calls this the network lock; here it has two parts:

- an nftables table in the tree's network namespace (kernel/nftables.py)
  drops the packets of every connection, listening socket and bound UDP
  socket the tree holds. It is made right after freezing, before any socket
  is read: sock_diag (kernel/sockdiag.py) tells the addresses of the
  sockets the tree's descriptors name, without touching them. Its name is
  in the dump (`NetLockRecord`), for the restore to remove it;
- each TCP connection goes into repair mode as it is read
  (resources/fds/tcp.py): a socket in repair mode is closed without FIN or
  reset when its process dies.

What follows the dump:

- the tree is killed (or left stopped): the connections stay in repair mode
  and the lock stays, until the restore has rebuilt them;
- the tree runs on (--leave-running), or the dump failed: repair mode is
  left (SO_REUSEADDR put back: leaving repair mode clears it) and the lock
  removed, before the tree resumes.

At restore the sockets are rebuilt in repair mode; once every process is
rebuilt, `resume_network` removes the lock and takes the connections out of
repair mode (so their first packets get through at once), sending what
they had not sent yet.

A VE is also locked by a drop filter on its veth (ve/net.py); this lock
covers what that one cannot see, the connections inside the VE.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from dataclasses import dataclass

from vzcpt.image.schema import record
from vzcpt.kernel import nftables
from vzcpt.kernel.netns import same_as_ours
from vzcpt.kernel.sockdiag import InetSock, inet_sockets
from vzcpt.kernel.tcp_repair import REPAIR_OFF_NO_PROBE, REPAIR_ON, set_repair
from vzcpt.proc import files as procfs

MARK = 0x7A63_7074  # "zcpt": packets the restorer sends past its own lock
TCP_LISTEN = 10
TCP_CLOSE = 7


@record("netlock")
@dataclass
class NetLockRecord:
    """The nftables table that keeps the tree's sockets locked until restore."""

    table: str
    mark: int = MARK


@dataclass
class _Repairing:
    sock: socket.socket  # our own handle on the connection
    reuseaddr: int  # SO_REUSEADDR before repair mode changed it


class NetworkHold:
    """The lock of one dump, and the connections it put in repair mode."""

    def __init__(self, table: str, namespaces: list[str], covered: set[int]) -> None:
        self.table = table
        self.namespaces = namespaces  # where the table is: /proc/PID/ns/net, "" for ours
        self.covered = covered  # inodes of the sockets the lock blocks
        self.repairing: list[_Repairing] = []

    @classmethod
    def take(cls, pids: list[int]) -> NetworkHold:
        """Lock the sockets held by the (frozen) processes `pids`."""
        table = f"vzcpt_{os.getpid()}_{secrets.token_hex(4)}"
        by_netns: dict[int, tuple[int, set[int]]] = {}
        for pid in pids:
            inodes = _socket_inodes(pid)
            if inodes:
                ns = procfs.stat(pid, "ns/net").st_ino
                by_netns.setdefault(ns, (pid, set()))[1].update(inodes)
        hold = cls(table, [], set())
        try:
            for pid, inodes in by_netns.values():
                sockets = inet_sockets(pid)
                blocked = nftables.Blocked()
                for ino in inodes & sockets.keys():
                    if _block(blocked, sockets[ino]):
                        hold.covered.add(ino)
                if blocked:
                    netns = _netns_path(pid)
                    hold.namespaces.append(netns)
                    nftables.lock(table, MARK, blocked, netns)
        except BaseException:
            hold.release()
            raise
        return hold

    @property
    def record(self) -> NetLockRecord | None:
        return NetLockRecord(self.table) if self.namespaces else None

    def enter_repair(self, sock: socket.socket, reuseaddr: int) -> None:
        """Put the connection `sock` (ours to keep) in repair mode, to be left on release."""
        self.repairing.append(_Repairing(sock, reuseaddr))
        set_repair(sock, REPAIR_ON)

    def release(self) -> None:
        """The tree runs on: connections out of repair mode, lock removed. Idempotent."""
        for held in self.repairing:
            with contextlib.suppress(OSError):
                set_repair(held.sock, REPAIR_OFF_NO_PROBE)
                held.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, held.reuseaddr)
        self.keep()
        namespaces, self.namespaces = self.namespaces, []
        for netns in namespaces:
            nftables.unlock(self.table, netns)

    def keep(self) -> None:
        """The tree is gone (or stays stopped): connections stay in repair mode, lock stays."""
        for held in self.repairing:
            held.sock.close()
        self.repairing.clear()


def _socket_inodes(pid: int) -> set[int]:
    found = set()
    for fd in procfs.fds(pid):
        with contextlib.suppress(FileNotFoundError):
            link = procfs.readlink(pid, f"fd/{fd}")
            if link.startswith("socket:["):
                found.add(int(link[len("socket:[") : -1]))
    return found


def _block(blocked: nftables.Blocked, sock: InetSock) -> bool:
    """Add what the lock must drop for `sock`; False when nothing can reach it."""
    if sock.protocol == socket.IPPROTO_UDP:
        if sock.sport:
            blocked.udp_ports.append((sock.src, sock.sport))
        return bool(sock.sport)
    if sock.state == TCP_LISTEN:
        blocked.tcp_ports.append((sock.src, sock.sport))
        return True
    if sock.state == TCP_CLOSE:
        return False
    blocked.connections.append((sock.src, sock.sport, sock.dst, sock.dport))
    return True


def _netns_path(pid: int) -> str:
    path = f"/proc/{pid}/ns/net"
    return "" if same_as_ours(path) else path
