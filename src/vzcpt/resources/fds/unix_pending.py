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

At restore the listener is bound and listens, from the restorer, with room
for all its clients; each client is made (bound to its name if it had one)
and put in its process unconnected. Once every process is rebuilt and has
its own credentials back, before any runs, the listener's process calls
listen() again and each client's process calls connect(), in the saved
order, each then shut down and given its options as it was; the listener's
process then sets the saved backlog (listen() on a listener changes only
its backlog and credentials). Made by the programs themselves (injected:
inject/remote.py), these calls give each end the right SO_PEERCRED: the
process at the other end and its user as they were at checkpoint (of a
description several processes hold, the first in the dump). Waiting until
then also keeps the queue clear while the connections accepted before the
checkpoint are rebuilt through the same listener (a connect() and an
accept() at once, in unix.py). Every restored listener listens again so,
waiting clients or not.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable

from vzcpt.errors import Unsupported, VzcptError
from vzcpt.inject.remote import RemoteTask, errno_of
from vzcpt.kernel import nr
from vzcpt.kernel.sockdiag import SHUT_BY_DIAG, UnixSock
from vzcpt.resources.context import RestoreContext
from vzcpt.resources.fds import FileDesc, UnixSocketRecord, unix_options
from vzcpt.resources.fds.table import open_description
from vzcpt.resources.fds.unix_names import bound, by_name, socket_file, unnamed
from vzcpt.resources.task_record import ProcessRecord

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


def listen_as_owner(ctx: RestoreContext, listener: FileDesc) -> None:
    """Once the processes are who they were, the listener listens again from its
    own process, and its waiting clients connect from theirs, in order."""
    ctx.as_owners.append(lambda tasks: _listen_and_queue(ctx, listener, tasks))


def _listen_and_queue(
    ctx: RestoreContext, listener: FileDesc, tasks: dict[int, RemoteTask]
) -> None:
    rec = listener.socket
    assert rec is not None
    holders = _holders(ctx)
    descs = {d.socket.ino: d for d in ctx.image.records_of(FileDesc) if d.socket is not None}
    if any(ino not in descs for ino in rec.pending):
        raise VzcptError(f"the dump lacks a client waiting in unix socket {rec.ino}")
    owner, fd = holders[listener.id]
    tasks[owner].call(nr.LISTEN, fd, backlog_to_listen(rec), what="listen() of a unix socket")
    address = _sockaddr(rec.name)
    for desc in (descs[ino] for ino in rec.pending):
        assert desc.socket is not None
        pid, client_fd = holders[desc.id]
        _connect(tasks[pid], client_fd, open_description(ctx, desc), address, rec.name)
        with socket.socket(fileno=os.dup(open_description(ctx, desc))) as sock:
            if desc.socket.shutdown in SHUT_BY_DIAG:
                sock.shutdown(SHUT_BY_DIAG[desc.socket.shutdown])
            # Only now: with SO_PASSCRED, connect() would have given it a name.
            unix_options.apply(sock, desc.socket.options)
    if rec.pending:
        tasks[owner].call(nr.LISTEN, fd, rec.backlog, what="listen() of a unix socket")


def _holders(ctx: RestoreContext) -> dict[int, tuple[int, int]]:
    """File id -> (saved pid, descriptor) of the first live process holding it."""
    key = "unix-holders"
    if key not in ctx.extra:
        found: dict[int, tuple[int, int]] = {}
        for proc in ctx.image.records_of(ProcessRecord):
            for entry in proc.fds:
                found.setdefault(entry.file_id, (proc.pid, entry.fd))
        ctx.extra[key] = found
    holders: dict[int, tuple[int, int]] = ctx.extra[key]
    return holders


def _sockaddr(name: bytes) -> bytes:
    """struct sockaddr_un for `name`, as long as connect() is told it is."""
    return struct.pack("=H", socket.AF_UNIX) + name


def _connect(task: RemoteTask, fd: int, local: int, address: bytes, name: bytes) -> None:
    """connect() made by the client's own process at its descriptor `fd` (ours:
    `local`). Non-blocking for the while: a full queue fails at once."""
    flags = fcntl.fcntl(local, fcntl.F_GETFL)
    fcntl.fcntl(local, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        result = task.call_raw(nr.CONNECT, fd, task.put(0, address), len(address))
    finally:
        fcntl.fcntl(local, fcntl.F_SETFL, flags)
    err = errno_of(result)
    if err == errno.EAGAIN:
        raise VzcptError(f"the queue of unix socket {os.fsdecode(name)!r} is full")
    if err:
        raise VzcptError(f"cannot connect to {os.fsdecode(name)!r}: {os.strerror(err)}")
