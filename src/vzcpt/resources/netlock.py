"""The network lock of a checkpoint: the tree's TCP and UDP sockets held still.

From the moment the tree is frozen until it runs again (restored, or let go),
no packet of its connections may come or go, or the two ends would disagree
about what was sent (and a peer talking to a socket that is gone gets a
reset). CRIU calls this the network lock; here it has two parts:

- an nftables table in the tree's network namespace (kernel/nftables.py)
  drops the packets of every connection, listening socket and bound UDP
  socket the tree holds. It is made right after freezing, before any socket
  is read: the sockets the tree's descriptors name are taken (pidfd_getfd)
  only for their addresses and state, which reading does not change, and
  the namespace each belongs to (SIOCGSKNS). The table's name is in the
  dump (`NetLockRecord`), for the restore to remove it;
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
from vzcpt.kernel import netns, nftables
from vzcpt.kernel.fds import steal_fd
from vzcpt.kernel.tcp_repair import REPAIR_OFF_NO_PROBE, REPAIR_ON, set_repair, tcp_info
from vzcpt.proc import files as procfs

MARK = 0x7A63_7074  # "zcpt": packets the restorer sends past its own lock
TCP_LISTEN = 10
INET = (socket.AF_INET, socket.AF_INET6)
KINDS = ((socket.SOCK_STREAM, socket.IPPROTO_TCP), (socket.SOCK_DGRAM, socket.IPPROTO_UDP))


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

    def __init__(self, table: str) -> None:
        self.table = table
        # The namespaces the table is in: a descriptor on each, None for ours.
        self.locked: list[int | None] = []
        self.covered: set[int] = set()  # inodes of the sockets the lock blocks
        self.repairing: list[_Repairing] = []

    @classmethod
    def take(cls, pids: list[int]) -> NetworkHold:
        """Lock the TCP and UDP sockets the (frozen) processes `pids` hold.

        Each socket is locked in its own network namespace (SIOCGSKNS), which
        is its process's unless the process moved after making it.
        """
        hold = cls(f"vzcpt_{os.getpid()}_{secrets.token_hex(4)}")
        here = netns.ours()
        blocked: dict[int, tuple[int | None, nftables.Blocked]] = {}
        try:
            seen: set[int] = set()
            for pid in pids:
                for fd, ino in _sockets(pid):
                    if ino in seen:
                        continue
                    seen.add(ino)
                    local = steal_fd(pid, fd)
                    try:
                        ns_fd = netns.of_socket(local)
                        ns = netns.inode(ns_fd)
                        if ns not in blocked:
                            blocked[ns] = (None if ns == here else ns_fd, nftables.Blocked())
                        if blocked[ns][0] != ns_fd:
                            os.close(ns_fd)
                        if _block(blocked[ns][1], local):
                            hold.covered.add(ino)
                    finally:
                        os.close(local)
            for where, what in blocked.values():
                if what:
                    nftables.lock(hold.table, MARK, what, where)
                    hold.locked.append(where)
                elif where is not None:
                    os.close(where)
        except BaseException:
            locked = set(hold.locked)
            hold.release()  # closes those
            for where, _ in blocked.values():
                if where is not None and where not in locked:
                    os.close(where)
            raise
        return hold

    @property
    def record(self) -> NetLockRecord | None:
        return NetLockRecord(self.table) if self.locked else None

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
        self._drop_handles()
        locked, self.locked = self.locked, []
        try:
            for ns_fd in locked:
                nftables.unlock(self.table, ns_fd)
        finally:
            for ns_fd in locked:
                if ns_fd is not None:
                    os.close(ns_fd)

    def keep(self) -> None:
        """The tree is gone (or stays stopped): connections stay in repair mode, lock stays."""
        self._drop_handles()
        for ns_fd in self.locked:
            if ns_fd is not None:
                os.close(ns_fd)
        self.locked = []

    def _drop_handles(self) -> None:
        for held in self.repairing:
            held.sock.close()
        self.repairing.clear()


def _sockets(pid: int) -> list[tuple[int, int]]:
    """(descriptor, inode) of each socket process `pid` holds."""
    found = []
    for fd in procfs.fds(pid):
        with contextlib.suppress(FileNotFoundError):
            link = procfs.readlink(pid, f"fd/{fd}")
            if link.startswith("socket:["):
                found.append((fd, int(link[len("socket:[") : -1])))
    return found


def _block(blocked: nftables.Blocked, local: int) -> bool:
    """Add what the lock must drop for the socket at `local`; False if nothing reaches it."""
    with socket.socket(fileno=os.dup(local)) as sock:
        if sock.family not in INET or (sock.type, sock.proto) not in KINDS:
            return False
        host, port = sock.getsockname()[:2]
        if sock.proto == socket.IPPROTO_UDP:
            if port:
                blocked.udp_ports.append((host, port))
            return bool(port)
        state = tcp_info(sock).state
        if state == TCP_LISTEN:
            blocked.tcp_ports.append((host, port))
            return True
        try:
            peer_host, peer_port = sock.getpeername()[:2]
        except OSError:  # ENOTCONN: closed, or still connecting (refused when dumped)
            return False
    blocked.connections.append((host, port, peer_host, peer_port))
    return True
