"""Connections waiting to be accepted: drained by the tree itself before its dump.

A connection in a listener's accept queue has no descriptor yet: it cannot
be read without accept(), nor put back into a queue at restore. A busy
server nearly always has a few there, so rather than refuse the dump, the
tree is let accept them:

1. the frozen tree's sockets are surveyed (resources/netlock.py): TCP_INFO
   of a listener tells how many connections wait in its accept queue;
2. if some do, the SYNs to every listener of the tree are dropped from now
   on, by a chain of the nftables table of the dump's lock
   (kernel/nftables.py): no new connection arrives, the connections made
   go on, so the server can serve what it accepts;
3. the tree runs, and every few milliseconds sock_diag tells how many
   connections still wait on those listeners, found by inode
   (kernel/sockdiag.py): no descriptor of ours keeps alive a listener the
   tree closes meanwhile;
4. once none waits, the tree is frozen again and surveyed anew (a handshake
   under way at step 2 may have completed since): back to 2, or on to the
   dump, whose lock is added to the same table.

A tree that has not emptied its queues within the wait (a server that does
not accept) is refused, naming the listener; the caller removes the SYN
drop with the rest of the lock and lets the tree run on. A client whose
SYN was dropped sends it again (after 1 s, then 3 s, ...) and connects to
the restored server, or to the tree left running.

A VE is drained this way when it is suspended (ve/checkpoint.py): its
cgroup freezer stops and thaws it.
"""

from __future__ import annotations

import socket
import time
from typing import Protocol

from vzcpt.errors import Unsupported
from vzcpt.kernel.sockdiag import ListenQueues
from vzcpt.resources.context import Stats
from vzcpt.resources.fds.inet import describe_record
from vzcpt.resources.fds.inet_record import Endpoint, InetSocketRecord
from vzcpt.resources.fds.tcp import LISTEN
from vzcpt.resources.netlock import Listener, NetworkHold, Sockets

DRAIN_TIMEOUT_S = 2.0
POLL_S = 0.005


class Pausable(Protocol):
    """A stopped tree that can be let run and stopped again."""

    def processes(self) -> list[int]:
        """Its live processes, while it is stopped."""
        ...

    def resume(self) -> None: ...

    def refreeze(self) -> None: ...


def drain(
    tree: Pausable, hold: NetworkHold, stats: Stats, timeout: float = DRAIN_TIMEOUT_S
) -> Sockets:
    """The sockets of `tree` once no connection waits on its listeners.

    The tree is stopped on return, and when this raises: Unsupported if
    connections still wait after `timeout` seconds. From the first drain on,
    `hold` drops the SYNs to the tree's listeners, until it is released.
    """
    sockets = Sockets.survey(tree.processes())
    if not sockets.waiting:
        return sockets
    started = time.monotonic()
    deadline = started + timeout
    drained = 0
    try:
        while sockets.waiting:
            if time.monotonic() >= deadline:
                raise _refusal(sockets.waiting[0], timeout)
            drained += sum(found.waiting for found in sockets.waiting)
            hold.drop_syns(sockets)
            _run_until_accepted(tree, sockets, deadline)
            sockets = Sockets.survey(tree.processes())
    except BaseException:
        sockets.close()
        raise
    stats.drained += drained
    stats.add_time("drain", time.monotonic() - started)
    return sockets


def _run_until_accepted(tree: Pausable, sockets: Sockets, deadline: float) -> None:
    """Let the tree run until its waiting listeners are empty (or gone), or the deadline.

    `sockets` is closed: once the tree has run, it is out of date.
    """
    watched: list[tuple[ListenQueues, set[int]]] = []
    try:
        for ns, (where, _) in sockets.namespaces.items():
            inodes = {found.ino for found in sockets.waiting if found.netns == ns}
            if inodes:
                watched.append((ListenQueues(where), inodes))
        sockets.close()
        tree.resume()
        try:
            while time.monotonic() < deadline:
                if not any(
                    queues.lengths().get(ino, 0) for queues, inodes in watched for ino in inodes
                ):
                    break
                time.sleep(POLL_S)
        finally:
            tree.refreeze()
    finally:
        sockets.close()
        for queues, _ in watched:
            queues.close()


def _refusal(listener: Listener, wait: float) -> Unsupported:
    host, port = listener.address
    rec = InetSocketRecord(listener.family, socket.SOCK_STREAM, LISTEN, Endpoint(host, port), None)
    return Unsupported(
        f"process {listener.pid}: descriptor {listener.fd} ({describe_record(rec)}) has "
        f"{listener.waiting} connections not yet accepted after {wait:g} s of waiting for "
        "the program to accept them, which vzcpt cannot checkpoint"
    )
