"""TCP repair mode (setsockopt TCP_REPAIR, Linux 3.5+; windows 4.8+).

A socket in repair mode sends nothing of its own accord and is closed
silently (no FIN, no RST); through it the checkpointer reads and rebuilds
what the kernel holds for a connection:

- TCP_REPAIR_QUEUE selects the send or the receive queue; TCP_QUEUE_SEQ then
  reads (or, before connect(), sets) its sequence number: write_seq for the
  send queue, rcv_nxt for the receive queue; recv(MSG_PEEK) reads the
  selected queue without taking it (the send queue holds what was written
  and not yet acknowledged); send() appends to it (to the send queue as if
  already sent, to the receive queue as if received);
- connect() of a repairing socket enters ESTABLISHED without a handshake;
- TCP_REPAIR_OPTIONS sets what the handshake negotiated (MSS, window
  scales, SACK, timestamps), TCP_TIMESTAMP the connection's timestamp clock,
  TCP_REPAIR_WINDOW the send and receive windows;
- TCP_INFO tells the state and the negotiated options, SIOCINQ and SIOCOUTQ
  the bytes queued each way.

Repair mode needs CAP_NET_ADMIN and is refused to listening sockets (EPERM).
Turning it on makes the socket ignore address conflicts at bind()
(SO_REUSEADDR becomes "force"); turning it off clears SO_REUSEADDR, so the
caller puts the saved value back.
"""

from __future__ import annotations

import array
import errno
import fcntl
import socket
import struct
from dataclasses import dataclass

TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_TIMESTAMP = 24
TCP_REPAIR_WINDOW = 29

REPAIR_ON = 1
REPAIR_OFF = 0
REPAIR_OFF_NO_PROBE = -1  # TCP_REPAIR_OFF_NO_WP: leave repair mode without a window probe

NO_QUEUE = 0
RECV_QUEUE = 1
SEND_QUEUE = 2

TCPOPT_MAXSEG = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERM = 4
TCPOPT_TIMESTAMP = 8

TCPI_OPT_TIMESTAMPS = 1
TCPI_OPT_SACK = 2
TCPI_OPT_WSCALE = 4

SIOCINQ = 0x541B  # FIONREAD
SIOCOUTQ = 0x5411  # TIOCOUTQ
SIOCOUTQNSD = 0x894B

_WINDOW = struct.Struct("=5I")  # struct tcp_repair_window
_TCP_INFO_LEN = 104  # enough for the fields below (struct tcp_info grows over time)
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class TcpWindow:
    """struct tcp_repair_window: what both ends last told each other of their windows."""

    snd_wl1: int
    snd_wnd: int
    max_window: int
    rcv_wnd: int
    rcv_wup: int


@dataclass(frozen=True)
class TcpInfo:
    """The parts of struct tcp_info a checkpoint needs."""

    state: int
    options: int  # TCPI_OPT_* bits
    snd_wscale: int
    rcv_wscale: int
    unacked: int  # listeners: connections waiting for accept()
    sacked: int  # listeners: the backlog given to listen()


def tcp_info(sock: socket.socket) -> TcpInfo:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    unacked, sacked = struct.unpack_from("=II", raw, 24)
    return TcpInfo(
        state=raw[0],
        options=raw[5],
        snd_wscale=raw[6] & 0xF,
        rcv_wscale=raw[6] >> 4,
        unacked=unacked,
        sacked=sacked,
    )


def set_repair(sock: socket.socket, mode: int) -> None:
    """REPAIR_ON, REPAIR_OFF (sends a window probe when established) or REPAIR_OFF_NO_PROBE."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, struct.pack("=i", mode))


def select_queue(sock: socket.socket, queue: int) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)


def queue_seq(sock: socket.socket) -> int:
    """The sequence number of the selected queue: write_seq or rcv_nxt."""
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ) & _U32


def set_queue_seq(sock: socket.socket, seq: int) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, struct.pack("=I", seq & _U32))


@dataclass(frozen=True)
class Queued:
    """Bytes queued in a connection; a FIN counts one while it is not acknowledged."""

    received: int  # received, not read (a FIN received is not counted)
    unacknowledged: int  # written, not acknowledged by the peer (sent or not)
    unsent: int  # written, not sent yet: the tail of the above


def queued(sock: socket.socket) -> Queued:
    sizes = []
    for request in (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD):
        value = array.array("i", [0])
        fcntl.ioctl(sock.fileno(), request, value)
        sizes.append(value[0])
    return Queued(*sizes)


def peek_queue(sock: socket.socket, queue: int, length: int) -> bytes:
    """The first `length` bytes of the send or receive queue, left in place."""
    if length <= 0:
        return b""
    select_queue(sock, queue)
    try:
        return sock.recv(length, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    finally:
        select_queue(sock, NO_QUEUE)


def fill_queue(sock: socket.socket, queue: int, data: bytes) -> None:
    """Append `data` to the send queue (as sent, unacknowledged) or the receive queue.

    The receive queue takes one buffer per call, of limited size: the data
    goes in pieces, smaller ones while the kernel answers ENOMEM.
    """
    select_queue(sock, queue)
    try:
        view, piece = memoryview(data), 1 << 18
        while view:
            try:
                view = view[sock.send(view[:piece]) :]
            except OSError as exc:
                if exc.errno != errno.ENOMEM or piece <= 4096:
                    raise
                piece //= 2
    finally:
        select_queue(sock, NO_QUEUE)


def window(sock: socket.socket) -> TcpWindow:
    raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, _WINDOW.size)
    return TcpWindow(*_WINDOW.unpack(raw))


def set_window(sock: socket.socket, win: TcpWindow) -> None:
    sock.setsockopt(
        socket.IPPROTO_TCP,
        TCP_REPAIR_WINDOW,
        _WINDOW.pack(win.snd_wl1, win.snd_wnd, win.max_window, win.rcv_wnd, win.rcv_wup),
    )


def mss_clamp(sock: socket.socket) -> int:
    """In repair mode TCP_MAXSEG reads the MSS the peer announced (mss_clamp)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)


def timestamp(sock: socket.socket) -> int:
    """The connection's TCP timestamp clock now (its offset included)."""
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP) & _U32


def set_timestamp(sock: socket.socket, value: int) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP, struct.pack("=I", value & _U32))


def set_negotiated(
    sock: socket.socket,
    mss: int,
    wscale: tuple[int, int] | None,
    sack: bool,
    timestamps: bool,
) -> None:
    """TCP_REPAIR_OPTIONS: what the handshake agreed on. Only once, right after connect().

    `wscale` is (ours, theirs): the scale we apply to the peer's windows and
    the one the peer applies to ours.
    """
    opts = [(TCPOPT_MAXSEG, mss)]
    if wscale is not None:
        opts.append((TCPOPT_WINDOW, wscale[0] | (wscale[1] << 16)))
    if sack:
        opts.append((TCPOPT_SACK_PERM, 0))
    if timestamps:
        opts.append((TCPOPT_TIMESTAMP, 0))
    sock.setsockopt(
        socket.IPPROTO_TCP, TCP_REPAIR_OPTIONS, b"".join(struct.pack("=II", *o) for o in opts)
    )
