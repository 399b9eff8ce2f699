"""Unix sockets: socketpairs and connected pairs inside the tree, bound and
listening sockets, with the messages queued in them, their options
(resources/fds/unix_options.py) and the connections waiting to be accepted
(resources/fds/unix_pending.py).

Kernel interfaces: sock_diag (kernel/sockdiag.py) gives each socket's type,
state, peer (by inode) and queue lengths; getsockname() its name; recvmsg()
with MSG_PEEK after setting SO_PEEK_OFF reads every queued message without
taking it, message boundaries kept, and shows descriptors in flight.

At restore a connected pair is made again with socketpair() and each side's
queue is refilled by sending from the other side, in order; a listening
socket is bound to its name and listens with its backlog; a bound datagram
socket is bound again and its queue refilled by a passing sender; a
connection accepted by a listener is made again through a listener on that
name, so both ends keep their names.

Names mean what they meant to the programs, in a VE too: binds and
connects by name are done where they are (resources/fds/unix_names.py).

Refused at checkpoint, with a line naming process, descriptor and reason: a
peer outside the tree, datagram sockets connected to a named one,
connections not yet accepted that hold data or whose client is closed,
descriptors in flight, names that are relative paths.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat

from vzcpt.errors import Unsupported, VzcptError
from vzcpt.kernel.sockdiag import SHUT_BY_DIAG, UnixSock, unix_sockets
from vzcpt.kernel.sockopts import peek_next, peeking, socket_kind
from vzcpt.proc import files as procfs
from vzcpt.proc.fdinfo import FdInfo
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import FileDesc, UnixSocketRecord, unix_options, unix_pending
from vzcpt.resources.fds.unix_names import (
    bound,
    by_name,
    connected,
    socket_file,
    through_passing,
    unnamed,
    unnamed_pair,
)

STATE_LISTEN = 10
STATUS_FLAGS = os.O_NONBLOCK
# Room for the most descriptors one message carries, and for the sender's credentials.
ANCILLARY_SPACE = socket.CMSG_SPACE(4 * 253) + socket.CMSG_SPACE(12)


class UnixHandler:
    kind = "unix"

    def claims(self, link: str, st: os.stat_result, local: int) -> bool:
        return stat.S_ISSOCK(st.st_mode) and socket_kind(local)[0] == socket.AF_UNIX

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
        sock = socket.socket(fileno=os.dup(local))
        try:
            diag = _diag(ctx, pid).get(st.st_ino)
            if diag is None:
                raise Unsupported(
                    f"process {pid}: descriptor {fd}: its unix socket is not visible to sock_diag"
                )
            where = f"process {pid}: descriptor {fd} (a unix socket)"
            rec = _record(ctx, pid, where, sock, diag)
            ctx.shared.setdefault("unix-where", {})[rec.ino] = where
        finally:
            sock.close()
        return FileDesc(id=0, kind=self.kind, flags=info.flags & ~os.O_CLOEXEC, socket=rec)

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        rec = desc.socket
        if rec is None:
            raise VzcptError(f"file {desc.id} of kind unix has no socket record")
        if rec.peer:
            fd = _pair_end(ctx, rec)
        elif rec.listener:
            fd = unix_pending.open_client(ctx, rec)
        elif rec.name:
            backlog = unix_pending.backlog_to_listen(rec) if rec.listening else None
            queue = [] if rec.listening else rec.queue
            file = socket_file(rec)
            (sock,) = by_name(
                ctx, rec.name, lambda: [bound(rec.type, rec.name, backlog, queue, file)]
            )
            fd = sock.detach()
            if rec.listening:
                unix_pending.listen_as_owner(ctx, desc)
        else:  # unbound, so not listening: listen() refuses a socket with no name
            fd = unnamed(ctx, rec.type).detach()
        fcntl.fcntl(fd, fcntl.F_SETFL, desc.flags & STATUS_FLAGS)
        if not rec.listener:  # a waiting client's, once it has connected (unix_pending)
            with socket.socket(fileno=os.dup(fd)) as sock:
                unix_options.apply(sock, rec.options)
        return fd


def _diag(ctx: DumpContext, pid: int) -> dict[int, UnixSock]:
    """The unix sockets of the process's network namespace, listed once per dump."""
    key = ("unix-diag", procfs.stat(pid, "ns/net").st_ino)
    if key not in ctx.shared:
        ctx.shared[key] = unix_sockets(pid)
    found: dict[int, UnixSock] = ctx.shared[key]
    return found


def _waiting(ctx: DumpContext, pid: int) -> dict[int, int]:
    """The clients waiting in a listener of the process's network namespace:
    client inode -> listener inode."""
    key = ("unix-waiting", procfs.stat(pid, "ns/net").st_ino)
    if key not in ctx.shared:
        ctx.shared[key] = unix_pending.waiting_clients(_diag(ctx, pid))
    found: dict[int, int] = ctx.shared[key]
    return found


def _record(
    ctx: DumpContext, pid: int, where: str, sock: socket.socket, diag: UnixSock
) -> UnixSocketRecord:
    name = sock.getsockname()
    name = os.fsencode(name) if isinstance(name, str) else bytes(name)
    listening = diag.state == STATE_LISTEN
    pending = unix_pending.check_listener(where, diag) if listening else []
    listener = _waiting(ctx, pid).get(diag.ino, 0)
    if listener:
        unix_pending.check_client(where, diag)
    if name and not name.startswith((b"\0", b"/")):
        raise Unsupported(
            f"{where} has a relative path as its name ({os.fsdecode(name)!r}), "
            "which vzcpt cannot checkpoint yet"
        )
    try:
        peer = sock.getpeername()
        connected = True
    except OSError:  # ENOTCONN
        peer, connected = "", False
    peer_name = os.fsencode(peer) if isinstance(peer, str) else bytes(peer)
    if connected and not diag.peer and not listener:
        raise Unsupported(
            f"{where} is connected to a peer outside the tree, which vzcpt cannot checkpoint yet"
        )
    if connected and (name or peer_name) and diag.type == socket.SOCK_DGRAM:
        raise Unsupported(
            f"{where} is a datagram socket connected to a named one, which vzcpt "
            "cannot checkpoint yet"
        )
    file = _socket_file(pid, name)
    return UnixSocketRecord(
        file_mode=stat.S_IMODE(file.st_mode) if file else 0,
        file_uid=file.st_uid if file else 0,
        file_gid=file.st_gid if file else 0,
        ino=diag.ino,
        type=diag.type,
        listening=listening,
        backlog=diag.wqueue if listening else 0,
        name=name,
        peer=diag.peer,
        shutdown=diag.shutdown,
        queue=[] if listening else _peek_all(sock, where),
        peer_name=peer_name,
        options=unix_options.changed(ctx, sock),
        pending=pending,
        listener=listener,
    )


def _socket_file(pid: int, name: bytes) -> os.stat_result | None:
    """The socket file at a path name, seen from the process's root; None if none."""
    if not name.startswith(b"/"):
        return None
    try:
        st = procfs.stat(pid, "root" + os.fsdecode(name))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if stat.S_ISSOCK(st.st_mode) else None


def _peek_all(sock: socket.socket, where: str) -> list[bytes]:
    """Every queued message, in order, left in place.

    An empty read ends a stream. A seqpacket socket reads empty too once its peer
    has shut down, but a message may be empty: with the sender's credentials on
    every message for the while, the two tell apart.
    """
    seqpacket = sock.type == socket.SOCK_SEQPACKET
    messages = []
    with peeking(sock, credentials=seqpacket):
        while (message := peek_next(sock, 1 << 20, ANCILLARY_SPACE)) is not None:
            data, ancillary, _ = message
            kinds = {kind for level, kind, _ in ancillary if level == socket.SOL_SOCKET}
            if socket.SCM_RIGHTS in kinds:
                raise Unsupported(
                    f"{where} has descriptors in flight (SCM_RIGHTS), which "
                    "vzcpt cannot checkpoint yet"
                )
            if not data and (
                sock.type == socket.SOCK_STREAM
                or (seqpacket and socket.SCM_CREDENTIALS not in kinds)
            ):
                break  # end of stream: the peer shut down its sending side
            messages.append(data)
    return messages


def check_peers(ctx: DumpContext) -> None:
    """Refuse a socket whose peer the dump does not hold: it lives outside the tree."""
    socks = {r.socket.ino: r.socket for r in ctx.records if isinstance(r, FileDesc) and r.socket}
    known: dict[int, str] = ctx.shared.get("unix-where", {})

    def where(ino: int) -> str:
        return known.get(ino, f"a unix socket of the tree (inode {ino})")

    for rec in socks.values():
        if rec.peer and rec.peer not in socks:
            raise Unsupported(
                f"{where(rec.ino)} is connected to a peer outside the tree, "
                "which vzcpt cannot checkpoint yet"
            )
    unix_pending.check_both_ends(socks, where)


def _pair_end(ctx: RestoreContext, rec: UnixSocketRecord) -> int:
    """This end of a connected pair, made (and both queues refilled) on first use.

    A pair made by socketpair() is made again so; a connection accepted by a
    listener is made again through a listener on the same name (the tree's
    own, or a passing one), so both ends keep their names.
    """
    key = ("unix", rec.ino)
    if key not in ctx.local_fds:
        peer = _peer_record(ctx, rec)
        listener_name = rec.peer_name or peer.peer_name
        if listener_name:
            client_is_me = bool(rec.peer_name)
            client, server = _connect_through(ctx, listener_name, rec.type)
            mine, theirs = (client, server) if client_is_me else (server, client)
        else:
            mine, theirs = unnamed_pair(ctx, rec.type)
        try:
            for receiver, sender in ((rec, theirs), (peer, mine)):
                for message in receiver.queue:  # datagrams keep their boundaries
                    if rec.type == socket.SOCK_STREAM:
                        sender.sendall(message)
                    else:
                        sender.send(message)
            for record, sock in ((rec, mine), (peer, theirs)):
                if record.shutdown in SHUT_BY_DIAG:
                    sock.shutdown(SHUT_BY_DIAG[record.shutdown])
        except BaseException:
            mine.close()
            theirs.close()
            raise
        ctx.local_fds[key] = mine.detach()
        ctx.local_fds[("unix", peer.ino)] = theirs.detach()
    return ctx.local_fds[key]


def _connect_through(
    ctx: RestoreContext, name: bytes, kind: int
) -> tuple[socket.socket, socket.socket]:
    """A (client, accepted) pair through a listener bound to `name`."""
    from vzcpt.resources.fds.table import open_description  # the tree's own listener

    own = next(
        (
            d
            for d in ctx.image.records_of(FileDesc)
            if d.socket and d.socket.listening and d.socket.name == name
        ),
        None,
    )
    if own is not None:
        listener = socket.socket(fileno=os.dup(open_description(ctx, own)))
        try:
            (client,) = by_name(ctx, name, lambda: [connected(kind, name)])
        except BaseException:
            listener.close()
            raise
    else:  # the listener is gone: a passing one stands in, on the same name
        listener, client = by_name(ctx, name, lambda: through_passing(kind, name))
    try:
        # The connection is queued once connect() returns: accept() takes it at
        # once, whatever O_NONBLOCK the tree gave its listener (which stays).
        server, _ = listener.accept()
    except BaseException:
        client.close()
        raise
    finally:
        listener.close()
    return client, server


def _peer_record(ctx: RestoreContext, rec: UnixSocketRecord) -> UnixSocketRecord:
    for desc in ctx.image.records_of(FileDesc):
        if desc.socket is not None and desc.socket.ino == rec.peer:
            return desc.socket
    raise VzcptError(f"the dump lacks the peer of unix socket {rec.ino}")


HANDLER = UnixHandler()
