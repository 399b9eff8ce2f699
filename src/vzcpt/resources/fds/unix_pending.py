"""Connections not yet accepted: the clients waiting in a unix listener's queue.

A connect() to a stream or seqpacket listener makes the server's end of the
connection at once (the "embryo") and queues it on the listener until
accept() takes it. The embryo has no inode and no descriptor, so sock_diag
(kernel/sockdiag.py) names the waiting connections by their clients'
inodes, in the order accept() takes them; 0 stands for a client whose
socket is closed.

At checkpoint a listener records its clients in that order, and each client
the listener it waits in. What a client sent before the accept waits in the
embryo's queue, which nothing reaches but accept(): taking the connection
to read it would change the tree for good if the dump then failed, or if
the tree runs on. So a client that has sent anything (its send buffer is in
use: sock_diag's wqueue of the client) is refused, and so is a waiting
connection whose client is closed (what it sent cannot be told). Both ends
must be in the tree; `check_both_ends` refuses a client or a listener
outside it. Nothing can have been queued the other way before accept().

At restore the listener listens with room for all its clients; each client
is made (bound to its name if it had one) and put in its process
unconnected. Once every process is rebuilt, before any runs, the clients
connect in the saved order, each is shut down as it was, and the listener
gets its saved backlog back (listen() again only changes the backlog). The
wait keeps the queue clear while the connections accepted before the
checkpoint are rebuilt through the same listener (a connect() and an
accept() at once, in unix.py).
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable

from vzcpt.errors import Unsupported, VzcptError
from vzcpt.kernel.sockdiag import SHUT_BY_DIAG, UnixSock
from vzcpt.resources.context import RestoreContext
from vzcpt.resources.fds import FileDesc, UnixSocketRecord
from vzcpt.resources.fds.table import open_description
from vzcpt.resources.fds.unix_names import bound, by_name, socket_file, unnamed, where_named

# ------------------------------------------------------------------ checkpoint


def waiting_clients(diag: dict[int, UnixSock]) -> dict[int, int]:
    """Client inode -> inode of the listener it waits in, for one listing of sock_diag."""
    return {client: ino for ino, sock in diag.items() for client in sock.pending if client}


def check_listener(where: str, diag: UnixSock) -> list[int]:
    """The clients waiting in a listener, the next to be accepted first."""
    if 0 in diag.pending:
        raise Unsupported(
            f"{where} has a connection not yet accepted whose client is closed (what it "
            "sent cannot be read without accept()), which vzcpt cannot checkpoint yet"
        )
    return list(diag.pending)


def check_client(where: str, diag: UnixSock) -> None:
    if diag.wqueue:
        raise Unsupported(
            f"{where} has sent data on a connection not yet accepted (it cannot be read "
            "without accept()), which vzcpt cannot checkpoint yet"
        )


def check_both_ends(socks: dict[int, UnixSocketRecord], where: Callable[[int], str]) -> None:
    """Refuse a waiting connection one end of which the dump does not hold."""
    for rec in socks.values():
        outside = [ino for ino in rec.pending if ino not in socks]
        if outside:
            raise Unsupported(
                f"{where(rec.ino)} has a connection not yet accepted from a client outside "
                "the tree, which vzcpt cannot checkpoint yet"
            )
        if rec.listener and rec.listener not in socks:
            raise Unsupported(
                f"{where(rec.ino)} waits to be accepted by a listener outside the tree, "
                "which vzcpt cannot checkpoint yet"
            )


# ------------------------------------------------------------------ restore


def backlog_to_listen(rec: UnixSocketRecord) -> int:
    """Room for every waiting client (connect() fails on a full queue), whatever
    the backlog became since they came; the saved one is set back later."""
    return max(rec.backlog, len(rec.pending))


def open_client(ctx: RestoreContext, rec: UnixSocketRecord) -> int:
    """A waiting client, bound to its name if it had one; it connects later."""
    if rec.name:
        file = socket_file(rec)
        (sock,) = by_name(ctx, rec.name, lambda: [bound(rec.type, rec.name, None, [], file)])
    else:
        sock = unnamed(ctx, rec.type)
    return sock.detach()


def connect_later(ctx: RestoreContext, rec: UnixSocketRecord, listener: int) -> None:
    """Queue the listener's clients again once every process is rebuilt."""
    ctx.finishers.append(lambda: _queue_clients(ctx, rec, listener))


def _queue_clients(ctx: RestoreContext, rec: UnixSocketRecord, listener: int) -> None:
    descs = {d.socket.ino: d for d in ctx.image.records_of(FileDesc) if d.socket is not None}
    clients = [descs[ino] for ino in rec.pending if ino in descs]
    if len(clients) != len(rec.pending):
        raise VzcptError(f"the dump lacks a client waiting in unix socket {rec.ino}")
    fds = [open_description(ctx, desc) for desc in clients]
    name = rec.name
    what = f"connect the clients waiting in unix socket {os.fsdecode(name)!r} again"
    where_named(ctx, what, lambda: _connect_all(fds, name))
    for desc, fd in zip(clients, fds, strict=True):
        assert desc.socket is not None
        if desc.socket.shutdown in SHUT_BY_DIAG:
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(SHUT_BY_DIAG[desc.socket.shutdown])
    with socket.socket(fileno=os.dup(listener)) as sock:
        sock.listen(rec.backlog)


def _connect_all(fds: list[int], name: bytes) -> None:
    """Connect each socket to `name`, in order. Non-blocking for the while: a full
    queue fails at once instead of waiting forever."""
    for fd in fds:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.connect(name)
        except BlockingIOError:
            raise VzcptError(f"the queue of unix socket {os.fsdecode(name)!r} is full") from None
        except OSError as exc:
            raise VzcptError(f"cannot connect to {os.fsdecode(name)!r}: {exc.strerror}") from None
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
