"""The image records of TCP and UDP sockets (resources/fds/inet.py, tcp.py).

Kept apart from the handlers so that `FileDesc` can name them without an
import cycle.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field


@dataclass
class Endpoint:
    """An IPv4 or IPv6 address and port, as getsockname()/getpeername() give them."""

    host: str
    port: int
    scope_id: int = 0  # IPv6 link-local: the interface index

    def sockaddr(self, family: int) -> tuple[str, int] | tuple[str, int, int, int]:
        if family == socket.AF_INET6:
            return (self.host, self.port, 0, self.scope_id)
        return (self.host, self.port)


@dataclass
class TcpWindowRecord:
    """struct tcp_repair_window."""

    snd_wl1: int
    snd_wnd: int
    max_window: int
    rcv_wnd: int
    rcv_wup: int


@dataclass
class TcpStreamRecord:
    """A TCP connection as repair mode reads it: sequence numbers, queues, negotiated options.

    `send_queue` is what was written and not acknowledged; its last `unsent`
    bytes had not even been sent. A FIN sent or received is not in the
    queues: it comes after them, one sequence number past their end.
    """

    state: int  # the kernel's TCP state (1 established, 4 fin-wait-1, 8 close-wait, ...)
    recv_seq: int  # sequence number of the first byte of recv_queue
    send_seq: int  # sequence number of the first byte of send_queue
    recv_queue: bytes
    send_queue: bytes
    unsent: int
    fin_received: bool
    fin_sent: bool
    mss: int  # the MSS the peer announced
    wscale: tuple[int, int] | None  # (ours on their windows, theirs on ours); None: no scaling
    sack: bool
    timestamps: bool
    timestamp: int  # the connection's timestamp clock at the checkpoint
    window: TcpWindowRecord


@dataclass
class Datagram:
    """A datagram waiting in a UDP socket, with its sender."""

    sender: Endpoint
    data: bytes


@dataclass
class InetSocketRecord:
    """A TCP or UDP socket over IPv4 or IPv6."""

    family: int  # socket.AF_INET or AF_INET6
    type: int  # SOCK_STREAM (TCP) or SOCK_DGRAM (UDP)
    state: int  # TCP: the kernel's TCP state; UDP: 1 connected, 7 not
    local: Endpoint | None  # None: not bound
    peer: Endpoint | None  # None: not connected
    backlog: int = 0  # listening sockets
    # Options whose value differs from a new socket's, by name (resources/fds/inet.py).
    options: dict[str, int | str] = field(default_factory=dict)
    sndbuf: int = 0  # SO_SNDBUF / SO_RCVBUF as getsockopt reads them; 0: as a new socket's
    rcvbuf: int = 0
    stream: TcpStreamRecord | None = None  # a connection, established or half-closed
    datagrams: list[Datagram] = field(default_factory=list)  # UDP: waiting to be read
