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
- if the tree's listeners hold connections not yet accepted, the tree is
  let accept them first (resources/accept_queue.py), while a chain of the
  same table drops new connections to its listeners: that chain stays with
  the lock;
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
from vzcpt.kernel.sockopts import connecting_peer
from vzcpt.kernel.tcp_repair import REPAIR_OFF_NO_PROBE, REPAIR_ON, set_repair, tcp_info
from vzcpt.proc import files as procfs

MARK = 0x7A63_7074  # "zcpt": packets the restorer sends past its own lock
TCP_CLOSE = 7
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


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket of the tree, with the connections waiting in its accept queue."""

    pid: int  # a process holding it, and its descriptor there
    fd: int
    ino: int
    netns: int  # the inode of its network namespace
    family: int
    address: tuple[str, int]
    waiting: int


class Sockets:
    """The TCP and UDP sockets of frozen processes, as the lock must see them.

    Reading them changes nothing. Each socket is placed in its own network
    namespace (SIOCGSKNS), which is its process's unless the process moved
    after making it; a descriptor on each namespace other than ours is held
    until `close`.
    """

    def __init__(self) -> None:
        # Namespace inode -> (a descriptor on it, None for ours; what the lock drops there)
        self.namespaces: dict[int, tuple[int | None, nftables.Blocked]] = {}
        self.covered: set[int] = set()  # inodes of the sockets the lock blocks
        self.listeners: list[Listener] = []

    @classmethod
    def survey(cls, pids: list[int]) -> Sockets:
        """The sockets the (frozen) processes `pids` hold."""
        found = cls()
        here = netns.ours()
        seen: set[int] = set()
        try:
            for pid in pids:
                for fd, ino in _sockets(pid):
                    if ino in seen:
                        continue
                    seen.add(ino)
                    local = steal_fd(pid, fd)
                    try:
                        ns_fd = netns.of_socket(local)
                        ns = netns.inode(ns_fd)
                        if ns not in found.namespaces:
                            where = None if ns == here else ns_fd
                            found.namespaces[ns] = (where, nftables.Blocked())
                        if found.namespaces[ns][0] != ns_fd:
                            os.close(ns_fd)
                        with socket.socket(fileno=os.dup(local)) as sock:
                            found._add(sock, pid, fd, ino, ns)
                    finally:
                        os.close(local)
        except BaseException:
            found.close()
            raise
        return found

    def _add(self, sock: socket.socket, pid: int, fd: int, ino: int, ns: int) -> None:
        """What the lock must drop for `sock`, if anything reaches it."""
        blocked = self.namespaces[ns][1]
        if sock.family not in INET or (sock.type, sock.proto) not in KINDS:
            return
        host, port = sock.getsockname()[:2]
        if sock.proto == socket.IPPROTO_UDP:
            if port:
                blocked.udp_ports.append((host, port))
                self.covered.add(ino)
            return
        info = tcp_info(sock)
        if info.state == TCP_LISTEN:
            blocked.tcp_ports.append((host, port))
            self.covered.add(ino)
            self.listeners.append(
                Listener(pid, fd, ino, ns, sock.family, (host, port), waiting=info.unacked)
            )
            return
        if info.state == TCP_CLOSE:
            return
        # SYN-SENT too: its SYN, sent again while the tree is frozen, must not complete it.
        peer_host, peer_port = connecting_peer(sock)[:2]
        blocked.connections.append((host, port, peer_host, peer_port))
        self.covered.add(ino)

    @property
    def waiting(self) -> list[Listener]:
        """The listeners with connections not yet accepted."""
        return [found for found in self.listeners if found.waiting]

    def __enter__(self) -> Sockets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for where, _ in self.namespaces.values():
            if where is not None:
                os.close(where)
        self.namespaces.clear()


class NetworkHold:
    """The lock of one dump, and the connections it put in repair mode."""

    def __init__(self) -> None:
        self.table = f"vzcpt_{os.getpid()}_{secrets.token_hex(4)}"
        # The namespaces the table is in: inode -> a descriptor on it, None for ours.
        self.locked: dict[int, int | None] = {}
        self.holding_syns: set[int] = set()  # namespaces where the table drops SYNs
        self.covered: set[int] = set()  # inodes of the sockets the lock blocks
        self.repairing: list[_Repairing] = []

    def drop_syns(self, sockets: Sockets) -> None:
        """New connections to the listeners of `sockets` are dropped from now on.

        Only their SYNs: the connections they have go on. The table takes them
        into the lock: they stay dropped until the lock goes.
        """
        for ns, (where, blocked) in sockets.namespaces.items():
            if blocked.tcp_ports:
                with_chain = ns not in self.holding_syns
                self._remember(ns, where)
                nftables.drop_syns(self.table, blocked.tcp_ports, with_chain, self.locked[ns])
                self.holding_syns.add(ns)

    def lock(self, sockets: Sockets) -> None:
        """Drop every packet of the sockets found, both ways (the table made or completed)."""
        for ns, (where, blocked) in sockets.namespaces.items():
            if blocked:
                self._remember(ns, where)
                nftables.lock(self.table, MARK, blocked, self.locked[ns])
        self.covered = set(sockets.covered)

    def _remember(self, ns: int, where: int | None) -> None:
        """The table is (or is about to be) in namespace `ns`: remove it from there on release."""
        if ns not in self.locked:
            self.locked[ns] = os.dup(where) if where is not None else None

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
        locked, self.locked = self.locked, {}
        self.holding_syns.clear()
        try:
            for ns_fd in locked.values():
                nftables.unlock(self.table, ns_fd)
        finally:
            for ns_fd in locked.values():
                if ns_fd is not None:
                    os.close(ns_fd)

    def keep(self) -> None:
        """The tree is gone (or stays stopped): connections stay in repair mode, lock stays."""
        self._drop_handles()
        for ns_fd in self.locked.values():
            if ns_fd is not None:
                os.close(ns_fd)
        self.locked = {}
        self.holding_syns.clear()

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
