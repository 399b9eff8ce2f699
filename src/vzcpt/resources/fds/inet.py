"""TCP and UDP sockets over IPv4 and IPv6: bound, listening, connected, with their options.

Kernel interfaces: getsockname/getpeername for the addresses; TCP_INFO for
the state, a listener's backlog and the connections waiting in it;
getsockopt for the options (those that differ from a new socket's are
saved); recvmsg(MSG_PEEK) stepping with SO_PEEK_OFF for the datagrams
waiting in a UDP socket, with their senders. Connections are read and
rebuilt in TCP repair mode (resources/fds/tcp.py), under the network lock
of the checkpoint (resources/netlock.py).

At restore each socket is made again in the programs' network namespace
(a VE's: the restorer's thread steps into it, kernel/netns.py), its options
set, bound to its address; a listener listens with its backlog; a
connection is rebuilt in repair mode; a UDP socket gets its datagrams back,
sent "by their senders" through a raw socket (kernel/packets.py), then is
connected to its peer. O_NONBLOCK is kept.

A socket still connecting (SYN-SENT; its peer from SO_PEERNAME) is bound
to its address at restore and connects again once every process is rebuilt
and the lock gone: a fresh handshake, its SYN count started anew. A program
blocked in connect() goes on waiting in it (the call, restarted, finds the
socket connecting and waits for the handshake).

A listener's connections not yet accepted are accepted by the tree itself
before the dump (resources/accept_queue.py).

Refused at checkpoint, with a line naming process, descriptor and reason:
a listener with connections not yet accepted even so, a connection being
accepted (SYN received, TCP Fast Open), a socket the lock cannot see (not
in its process's network namespace), a corked UDP socket (its pending data
cannot be read).
A closed TCP socket comes back new (bound if it was): an error or
end-of-stream it would still report is not kept. SO_SNDBUF and SO_RCVBUF
are restored when they differ from a new socket's, which also ends their
autotuning. SO_PASSCRED and SO_PASSSEC are not read: since Linux 6.16 inet
sockets refuse them (EOPNOTSUPP), which is what stops CRIU 4.1's dump of
TCP sockets there.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import time
from dataclasses import dataclass

from vzcpt.errors import Unsupported, VzcptError
from vzcpt.kernel import netns, packets
from vzcpt.kernel import tcp_repair as repair
from vzcpt.kernel.sockopts import (
    OptionKind,
    buffer_sizes,
    connecting_peer,
    peek_next,
    peeking,
    readable,
    set_buffer_sizes,
    set_option,
    socket_kind,
)
from vzcpt.proc.fdinfo import FdInfo
from vzcpt.resources import netlock
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import FileDesc
from vzcpt.resources.fds import tcp as tcp_stream
from vzcpt.resources.fds.inet_record import Datagram, Endpoint, InetSocketRecord

UDP_CORK = 1
STATUS_FLAGS = os.O_NONBLOCK
RESTORED = "tcp-restored"  # RestoreContext.extra: connections waiting to leave repair mode
CONNECTING = "tcp-connecting"  # RestoreContext.extra: sockets to connect once unlocked
DATAGRAM_TIMEOUT_S = 2.0
TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
BOTH = frozenset({TCP, UDP})
ANY_ADDRESS = ("0.0.0.0", "::")


@dataclass(frozen=True)
class Option:
    """A socket option kept across a checkpoint."""

    name: str
    level: int
    number: int
    kind: OptionKind = "int"
    protocols: frozenset[int] = BOTH
    family: int | None = None  # only on sockets of this family
    before_bind: bool = False


_S, _IP, _IP6 = socket.SOL_SOCKET, socket.IPPROTO_IP, socket.IPPROTO_IPV6
_V4, _V6 = socket.AF_INET, socket.AF_INET6
_T, _U = frozenset({TCP}), frozenset({UDP})

# In the order they are set: IP_TOS changes SO_PRIORITY, so the latter comes after.
OPTIONS = (
    Option("IPV6_V6ONLY", _IP6, 26, family=_V6, before_bind=True),
    Option("SO_REUSEADDR", _S, 2, before_bind=True),
    Option("SO_REUSEPORT", _S, 15, before_bind=True),
    Option("SO_BINDTODEVICE", _S, 25, "name", before_bind=True),
    Option("IP_FREEBIND", _IP, 15, family=_V4, before_bind=True),
    Option("IP_TRANSPARENT", _IP, 19, family=_V4, before_bind=True),
    Option("IP_BIND_ADDRESS_NO_PORT", _IP, 24, family=_V4, before_bind=True),
    Option("IPV6_FREEBIND", _IP6, 78, family=_V6, before_bind=True),
    Option("IPV6_TRANSPARENT", _IP6, 75, family=_V6, before_bind=True),
    Option("IP_TOS", _IP, 1, family=_V4),
    Option("IP_TTL", _IP, 2, family=_V4),
    Option("IP_MTU_DISCOVER", _IP, 10, family=_V4),
    Option("IP_RECVERR", _IP, 11, family=_V4),
    Option("IP_PKTINFO", _IP, 8, protocols=_U, family=_V4),
    Option("IP_RECVTTL", _IP, 12, protocols=_U, family=_V4),
    Option("IP_RECVTOS", _IP, 13, protocols=_U, family=_V4),
    Option("IP_MULTICAST_TTL", _IP, 33, protocols=_U, family=_V4),
    Option("IP_MULTICAST_LOOP", _IP, 34, protocols=_U, family=_V4),
    Option("IPV6_TCLASS", _IP6, 67, family=_V6),
    Option("IPV6_UNICAST_HOPS", _IP6, 16, family=_V6),
    Option("IPV6_MTU_DISCOVER", _IP6, 23, family=_V6),
    Option("IPV6_RECVERR", _IP6, 25, family=_V6),
    Option("IPV6_RECVPKTINFO", _IP6, 49, protocols=_U, family=_V6),
    Option("IPV6_RECVTCLASS", _IP6, 66, protocols=_U, family=_V6),
    Option("IPV6_MULTICAST_HOPS", _IP6, 18, protocols=_U, family=_V6),
    Option("IPV6_MULTICAST_LOOP", _IP6, 19, protocols=_U, family=_V6),
    Option("TCP_NODELAY", TCP, 1, protocols=_T),
    Option("TCP_CORK", TCP, 3, protocols=_T),
    Option("TCP_KEEPIDLE", TCP, 4, protocols=_T),
    Option("TCP_KEEPINTVL", TCP, 5, protocols=_T),
    Option("TCP_KEEPCNT", TCP, 6, protocols=_T),
    Option("TCP_SYNCNT", TCP, 7, protocols=_T),
    Option("TCP_LINGER2", TCP, 8, protocols=_T),
    Option("TCP_DEFER_ACCEPT", TCP, 9, protocols=_T),
    Option("TCP_CONGESTION", TCP, 13, "name", protocols=_T),
    Option("TCP_THIN_LINEAR_TIMEOUTS", TCP, 16, protocols=_T),
    Option("TCP_USER_TIMEOUT", TCP, 18, protocols=_T),
    Option("TCP_FASTOPEN", TCP, 23, protocols=_T),
    Option("TCP_NOTSENT_LOWAT", TCP, 25, protocols=_T),
    Option("TCP_INQ", TCP, 36, protocols=_T),
    Option("UDP_SEGMENT", UDP, 103, protocols=_U),
    Option("UDP_GRO", UDP, 104, protocols=_U),
    Option("SO_KEEPALIVE", _S, 9, protocols=_T),
    Option("SO_OOBINLINE", _S, 10, protocols=_T),
    Option("SO_BROADCAST", _S, 6, protocols=_U),
    Option("SO_DONTROUTE", _S, 5),
    Option("SO_PRIORITY", _S, 12),
    Option("SO_MARK", _S, 36),
    Option("SO_LINGER", _S, 13, "linger"),
    Option("SO_RCVLOWAT", _S, 18),
    Option("SO_RCVTIMEO", _S, 20, "timeval"),
    Option("SO_SNDTIMEO", _S, 21, "timeval"),
    Option("SO_TIMESTAMP", _S, 29),
    Option("SO_TIMESTAMPNS", _S, 35),
)


class InetHandler:
    kind = "inet"

    def claims(self, link: str, st: os.stat_result, local: int) -> bool:
        if not stat.S_ISSOCK(st.st_mode):
            return False
        family, kind, protocol = socket_kind(local)
        return family in (_V4, _V6) and (kind, protocol) in (
            (socket.SOCK_STREAM, TCP),
            (socket.SOCK_DGRAM, UDP),
        )

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
        with socket.socket(fileno=os.dup(local)) as sock:
            rec = InetSocketRecord(
                family=sock.family,
                type=sock.type,
                state=tcp_stream.CLOSE,
                local=_local_endpoint(sock),
                peer=_peer_endpoint(sock),
            )
            where = f"process {pid}: descriptor {fd} ({describe_record(rec)})"
            rec.options = _changed_options(ctx, sock)
            rec.sndbuf, rec.rcvbuf = _changed_buffers(ctx, sock)
            if rec.type == socket.SOCK_STREAM:
                _dump_tcp(ctx, sock, rec, st.st_ino, where)
            else:
                _dump_udp(ctx, sock, rec, st.st_ino, where)
        return FileDesc(id=0, kind=self.kind, flags=info.flags & ~os.O_CLOEXEC, inet=rec)

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        rec = desc.inet
        if rec is None:
            raise VzcptError(f"file {desc.id} of kind inet has no socket record")
        protocol = TCP if rec.type == socket.SOCK_STREAM else UDP
        with netns.entered(ctx.netns):
            sock = socket.socket(rec.family, rec.type, protocol)
            try:
                _rebuild(ctx, sock, rec, desc.flags & STATUS_FLAGS)
            except OSError as exc:
                sock.close()
                raise VzcptError(
                    f"cannot rebuild {describe_record(rec)} ({exc.strerror}): restore "
                    "where its addresses exist, in the network namespace it was dumped from"
                ) from exc
            except BaseException:
                sock.close()
                raise
        fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, desc.flags & STATUS_FLAGS)
        return sock.detach()


# ------------------------------------------------------------------ dump


def _endpoint(name: tuple[str, int] | tuple[str, int, int, int]) -> Endpoint:
    return Endpoint(name[0], name[1], name[3] if len(name) == 4 else 0)


def _local_endpoint(sock: socket.socket) -> Endpoint | None:
    name = sock.getsockname()
    return _endpoint(name) if name[1] else None  # port 0: not bound


def _peer_endpoint(sock: socket.socket) -> Endpoint | None:
    try:
        return _endpoint(sock.getpeername())
    except OSError:  # ENOTCONN
        return None


def describe_record(rec: InetSocketRecord) -> str:
    """E.g. "a TCP socket 127.0.0.1:5000 -> 127.0.0.1:41234"."""

    def text(e: Endpoint | None) -> str:
        if e is None:
            return "unbound"
        return f"[{e.host}]:{e.port}" if ":" in e.host else f"{e.host}:{e.port}"

    what = "a TCP" if rec.type == socket.SOCK_STREAM else "a UDP"
    what += " (IPv6)" if rec.family == _V6 else ""
    if rec.peer is not None:
        return f"{what} socket {text(rec.local)} -> {text(rec.peer)}"
    return f"{what} socket {text(rec.local)}"


def _applies(opt: Option, sock: socket.socket) -> bool:
    return sock.proto in opt.protocols and opt.family in (None, sock.family)


def _option_values(sock: socket.socket) -> dict[str, int | str]:
    found = {}
    for opt in OPTIONS:
        if _applies(opt, sock):
            value = readable(sock, opt.level, opt.number, opt.kind)
            if value is not None:
                found[opt.name] = value
    return found


def _defaults(ctx: DumpContext, sock: socket.socket) -> tuple[dict[str, int | str], int, int]:
    """The options and buffer sizes of a new socket of the same kind, found once per dump."""
    key = ("inet-defaults", sock.family, sock.type)
    if key not in ctx.shared:
        with socket.socket(sock.family, sock.type, sock.proto) as new:
            ctx.shared[key] = (_option_values(new), *buffer_sizes(new))
    found: tuple[dict[str, int | str], int, int] = ctx.shared[key]
    return found


def _changed_options(ctx: DumpContext, sock: socket.socket) -> dict[str, int | str]:
    fresh = _defaults(ctx, sock)[0]
    return {k: v for k, v in _option_values(sock).items() if fresh.get(k) != v}


def _changed_buffers(ctx: DumpContext, sock: socket.socket) -> tuple[int, int]:
    _, sndbuf, rcvbuf = _defaults(ctx, sock)
    mine = buffer_sizes(sock)
    return (mine[0] if mine[0] != sndbuf else 0), (mine[1] if mine[1] != rcvbuf else 0)


def _require_lock(ctx: DumpContext, ino: int, where: str) -> None:
    if ctx.network is None or ino not in ctx.network.covered:
        raise Unsupported(
            f"{where} is not in its process's network namespace, which vzcpt cannot checkpoint yet"
        )


def _dump_tcp(
    ctx: DumpContext, sock: socket.socket, rec: InetSocketRecord, ino: int, where: str
) -> None:
    """Fill in the TCP state; a connection is read in repair mode, left to the lock."""
    info = repair.tcp_info(sock)
    rec.state = info.state
    if info.state == tcp_stream.LISTEN:
        _require_lock(ctx, ino, where)
        if info.unacked:
            raise Unsupported(
                f"{where} has {info.unacked} connections not yet accepted, which vzcpt "
                "cannot checkpoint yet"
            )
        rec.backlog = info.sacked
        return
    if info.state == tcp_stream.CLOSE:
        return
    if info.state == tcp_stream.SYN_SENT:
        # Connected again at restore: a fresh handshake, its SYN held by the lock till then.
        _require_lock(ctx, ino, where)
        rec.peer = _endpoint(connecting_peer(sock))
        return
    if info.state not in tcp_stream.CONNECTED:
        state = tcp_stream.STATE_NAMES.get(info.state, f"in TCP state {info.state}")
        raise Unsupported(f"{where} is {state}, which vzcpt cannot checkpoint yet")
    _require_lock(ctx, ino, where)
    assert ctx.network is not None
    # The lock keeps a handle of its own: it takes the socket out of repair mode if
    # the tree runs on, even when reading it fails below.
    reuseaddr = sock.getsockopt(_S, socket.SO_REUSEADDR)
    ctx.network.enter_repair(socket.socket(fileno=os.dup(sock.fileno())), reuseaddr)
    rec.stream = tcp_stream.dump_stream(sock, info.state, where)


def _dump_udp(
    ctx: DumpContext, sock: socket.socket, rec: InetSocketRecord, ino: int, where: str
) -> None:
    rec.state = tcp_stream.ESTABLISHED if rec.peer else tcp_stream.CLOSE
    if rec.local is not None:
        _require_lock(ctx, ino, where)
    if readable(sock, UDP, UDP_CORK, "int"):
        raise Unsupported(f"{where} is corked (UDP_CORK), which vzcpt cannot checkpoint yet")
    rec.datagrams = _peek_datagrams(sock)


def _peek_datagrams(sock: socket.socket) -> list[Datagram]:
    """Every datagram waiting, in order, with its sender, left in place."""
    found = []
    with peeking(sock):
        while (message := peek_next(sock, 1 << 16)) is not None:
            data, _, sender = message
            found.append(Datagram(_endpoint(sender), data))
    return found


# ------------------------------------------------------------------ restore


def _set_options(sock: socket.socket, rec: InetSocketRecord, before_bind: bool) -> None:
    for opt in OPTIONS:
        if opt.before_bind == before_bind and opt.name in rec.options:
            set_option(sock, opt.level, opt.number, opt.kind, rec.options[opt.name])


def _rebuild(ctx: RestoreContext, sock: socket.socket, rec: InetSocketRecord, flags: int) -> None:
    _set_options(sock, rec, before_bind=True)
    reuseaddr = int(rec.options.get("SO_REUSEADDR", 0))
    if rec.stream is not None:
        _rebuild_connection(ctx, sock, rec, reuseaddr, flags)
        return
    if rec.type == socket.SOCK_STREAM and rec.local is not None:
        # Sockets of connections closed before the checkpoint may still hold the port.
        sock.setsockopt(_S, socket.SO_REUSEADDR, 1)
        sock.bind(rec.local.sockaddr(rec.family))
        if rec.state == tcp_stream.LISTEN:
            sock.listen(rec.backlog)
        sock.setsockopt(_S, socket.SO_REUSEADDR, reuseaddr)
    elif rec.local is not None:
        sock.bind(rec.local.sockaddr(rec.family))
    _set_options(sock, rec, before_bind=False)
    set_buffer_sizes(sock, rec.sndbuf, rec.rcvbuf)
    if rec.datagrams:
        _give_datagrams(ctx, sock, rec)
    if rec.type == socket.SOCK_DGRAM and rec.peer is not None:
        sock.connect(rec.peer.sockaddr(rec.family))
    if rec.state == tcp_stream.SYN_SENT and rec.peer is not None:
        ctx.extra.setdefault(CONNECTING, []).append(
            tcp_stream.Connecting(fd=sock.fileno(), peer=rec.peer, status_flags=flags)
        )


def _rebuild_connection(
    ctx: RestoreContext, sock: socket.socket, rec: InetSocketRecord, reuseaddr: int, flags: int
) -> None:
    stream, local, peer = rec.stream, rec.local, rec.peer
    assert stream is not None and local is not None and peer is not None
    repair.set_repair(sock, repair.REPAIR_ON)
    sock.bind(local.sockaddr(rec.family))
    _set_options(sock, rec, before_bind=False)
    # Room for the queues, whatever the buffers' sizes: the kernel would block or refuse.
    sndbuf, rcvbuf = buffer_sizes(sock)
    set_buffer_sizes(
        sock,
        max(rec.sndbuf, sndbuf, 4 * len(stream.send_queue) + (1 << 20)),
        max(rec.rcvbuf, rcvbuf, 4 * len(stream.recv_queue) + (1 << 20)),
    )
    tcp_stream.restore_stream(sock, stream, local, peer, _mark(ctx))
    ctx.extra.setdefault(RESTORED, []).append(
        tcp_stream.RestoredConnection(
            fd=sock.fileno(),  # the descriptor open() returns
            unsent=stream.send_queue[len(stream.send_queue) - stream.unsent :],
            fin_sent=stream.fin_sent,
            reuseaddr=reuseaddr,
            sndbuf=rec.sndbuf,
            rcvbuf=rec.rcvbuf,
            status_flags=flags,
        )
    )


def resume_network(ctx: RestoreContext) -> None:
    """Every process rebuilt: the lock goes, then the connections leave repair mode,
    then the sockets that were connecting connect again.

    In that order, so that the window probe each connection sends as it
    leaves repair mode, the data it had not sent, and the SYNs, reach the
    peer at once (a listener of the tree included: it exists by now).
    """
    from vzcpt.kernel import nftables

    for lock in ctx.image.records_of(netlock.NetLockRecord):
        ns_fd = os.open(ctx.netns, os.O_RDONLY | os.O_CLOEXEC) if ctx.netns else None
        try:
            nftables.unlock(lock.table, ns_fd)
        finally:
            if ns_fd is not None:
                os.close(ns_fd)
    restored: list[tcp_stream.RestoredConnection] = ctx.extra.pop(RESTORED, [])
    for conn in restored:
        tcp_stream.resume(conn)
    connecting: list[tcp_stream.Connecting] = ctx.extra.pop(CONNECTING, [])
    for pending in connecting:
        tcp_stream.connect_again(pending)


def _mark(ctx: RestoreContext) -> int:
    """The mark that passes the dump's lock (looked up once: the image holds many records)."""
    if "netlock-mark" not in ctx.extra:
        locks = ctx.image.records_of(netlock.NetLockRecord)
        ctx.extra["netlock-mark"] = locks[0].mark if locks else netlock.MARK
    mark: int = ctx.extra["netlock-mark"]
    return mark


def _give_datagrams(ctx: RestoreContext, sock: socket.socket, rec: InetSocketRecord) -> None:
    """Each waiting datagram sent again by its sender, to the socket's own address."""
    assert rec.local is not None
    mark = _mark(ctx)
    for datagram in rec.datagrams:
        target = rec.local.host
        if target in ANY_ADDRESS:
            target = "127.0.0.1" if "." in datagram.sender.host else "::1"
        packets.send_udp(
            (datagram.sender.host, datagram.sender.port),
            (target, rec.local.port),
            datagram.data,
            mark,
        )
    deadline = time.monotonic() + DATAGRAM_TIMEOUT_S
    while len(_peek_datagrams(sock)) < len(rec.datagrams):
        if time.monotonic() > deadline:
            raise VzcptError(f"the {describe_record(rec)} socket did not get its datagrams back")
        time.sleep(0.001)


HANDLER = InetHandler()
