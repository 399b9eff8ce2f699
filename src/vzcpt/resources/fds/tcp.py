"""TCP connections: read and rebuilt in repair mode (kernel/tcp_repair.py).

Dump (the connection already in repair mode, the network locked): the
sequence numbers of both queues, their content (the send queue: what was
written and not acknowledged, sent or not), what the handshake negotiated
(MSS, window scales, SACK, timestamps), the timestamp clock and the windows.

Restore, in repair mode: both sequence numbers are set, connect() enters
ESTABLISHED without a packet, the negotiated options, clock and windows
are set, the receive queue is refilled, and so is the part of the send
queue that had been sent (the kernel takes it as sent, unacknowledged: it
retransmits it if the peer does not acknowledge it). Then, once every
process is rebuilt and the network unlocked (resources/netlock.py), the
connection leaves repair mode and sends what had not been sent yet.

Half-closed connections: a FIN is one sequence number past the end of its
queue. A FIN we had sent (FIN-WAIT-1/2, CLOSING, LAST-ACK) is sent again by
shutdown(SHUT_WR) after the data; the peer acknowledges it again if it had
already. A FIN we had received (CLOSE-WAIT, LAST-ACK, CLOSING) cannot be
put in a queue: the restorer hands the socket a FIN "from the peer" through
a raw socket (kernel/packets.py), which the kernel takes as the peer's.
CLOSING comes back as LAST-ACK, the state it would reach on the same
packets with the FINs the other way round; the program sees no difference.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from dataclasses import asdict, dataclass

from vzcpt.errors import Unsupported, VzcptError
from vzcpt.kernel import packets
from vzcpt.kernel import tcp_repair as repair
from vzcpt.kernel.sockopts import set_buffer_sizes
from vzcpt.resources.fds.inet_record import Endpoint, TcpStreamRecord, TcpWindowRecord

ESTABLISHED = 1
SYN_SENT = 2
SYN_RECV = 3
FIN_WAIT1 = 4
FIN_WAIT2 = 5
CLOSE = 7
CLOSE_WAIT = 8
LAST_ACK = 9
LISTEN = 10
CLOSING = 11
STATE_NAMES = {
    ESTABLISHED: "established",
    SYN_SENT: "connecting (SYN sent)",
    SYN_RECV: "being accepted (SYN received)",
    FIN_WAIT1: "FIN-WAIT-1",
    FIN_WAIT2: "FIN-WAIT-2",
    CLOSE: "closed",
    CLOSE_WAIT: "CLOSE-WAIT",
    LAST_ACK: "LAST-ACK",
    LISTEN: "listening",
    CLOSING: "CLOSING",
}
CONNECTED = {ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING}
FIN_SENT = {FIN_WAIT1, FIN_WAIT2, LAST_ACK, CLOSING}
FIN_RECEIVED = {CLOSE_WAIT, LAST_ACK, CLOSING}
U32 = 0xFFFFFFFF
FIN_TIMEOUT_S = 2.0
SEND_TIMEOUT_S = 30.0


def dump_stream(sock: socket.socket, state: int, where: str) -> TcpStreamRecord:
    """The connection `sock`, in repair mode, as a record."""
    info = repair.tcp_info(sock)
    queued = repair.queued(sock)
    repair.select_queue(sock, repair.RECV_QUEUE)
    rcv_nxt = repair.queue_seq(sock)
    repair.select_queue(sock, repair.SEND_QUEUE)
    write_seq = repair.queue_seq(sock)
    repair.select_queue(sock, repair.NO_QUEUE)
    received = repair.peek_queue(sock, repair.RECV_QUEUE, queued.received)
    written = repair.peek_queue(sock, repair.SEND_QUEUE, queued.unacknowledged)
    fin_sent, fin_received = state in FIN_SENT, state in FIN_RECEIVED
    fin_pending = queued.unacknowledged - len(written)  # our FIN, not acknowledged yet
    if len(received) != queued.received or fin_pending not in (0, int(fin_sent)):
        raise Unsupported(
            f"{where}: its queues could not be read whole ({len(received)} of "
            f"{queued.received} bytes received, {len(written)} of {queued.unacknowledged} "
            "written; urgent data?), which vzcpt cannot checkpoint yet"
        )
    has_wscale = bool(info.options & repair.TCPI_OPT_WSCALE)
    return TcpStreamRecord(
        state=state,
        recv_seq=(rcv_nxt - len(received) - fin_received) & U32,
        send_seq=(write_seq - len(written) - fin_sent) & U32,
        recv_queue=received,
        send_queue=written,
        unsent=max(queued.unsent - fin_pending, 0),
        fin_received=fin_received,
        fin_sent=fin_sent,
        mss=repair.mss_clamp(sock),
        wscale=(info.snd_wscale, info.rcv_wscale) if has_wscale else None,
        sack=bool(info.options & repair.TCPI_OPT_SACK),
        timestamps=bool(info.options & repair.TCPI_OPT_TIMESTAMPS),
        timestamp=repair.timestamp(sock),
        window=TcpWindowRecord(**asdict(repair.window(sock))),
    )


@dataclass
class RestoredConnection:
    """A connection rebuilt in repair mode, and what to do once it may talk again."""

    fd: int  # the restorer's descriptor on it (RestoreContext.local_fds closes it)
    unsent: bytes
    fin_sent: bool
    reuseaddr: int  # SO_REUSEADDR to put back (leaving repair mode clears it)
    sndbuf: int  # SO_SNDBUF / SO_RCVBUF to set last, 0 to leave them
    rcvbuf: int
    status_flags: int  # O_NONBLOCK of the file, put back after sending


def restore_stream(
    sock: socket.socket, rec: TcpStreamRecord, local: Endpoint, peer: Endpoint, mark: int
) -> None:
    """Rebuild the connection in `sock`: a new socket, in repair mode, bound to `local`."""
    repair.select_queue(sock, repair.RECV_QUEUE)
    repair.set_queue_seq(sock, rec.recv_seq)
    repair.select_queue(sock, repair.SEND_QUEUE)
    repair.set_queue_seq(sock, rec.send_seq)
    repair.select_queue(sock, repair.NO_QUEUE)
    sock.connect(peer.sockaddr(sock.family))
    repair.set_negotiated(sock, rec.mss, rec.wscale, rec.sack, rec.timestamps)
    if rec.timestamps:
        repair.set_timestamp(sock, rec.timestamp)
    repair.fill_queue(sock, repair.RECV_QUEUE, rec.recv_queue)
    sent = len(rec.send_queue) - rec.unsent
    repair.fill_queue(sock, repair.SEND_QUEUE, rec.send_queue[:sent])
    if rec.fin_received:
        _receive_fin(sock, rec, local, peer, mark)
    win = rec.window
    repair.set_window(
        sock, repair.TcpWindow(win.snd_wl1, win.snd_wnd, win.max_window, win.rcv_wnd, win.rcv_wup)
    )


def _receive_fin(
    sock: socket.socket, rec: TcpStreamRecord, local: Endpoint, peer: Endpoint, mark: int
) -> None:
    """The peer's FIN, handed to the socket as the packet it came in."""
    scale = rec.wscale[0] if rec.wscale else 0
    packets.send_tcp_fin(
        (peer.host, peer.port),
        (local.host, local.port),
        seq=(rec.recv_seq + len(rec.recv_queue)) & U32,
        ack=rec.send_seq,
        window=min(rec.window.snd_wnd >> scale, 0xFFFF),
        mark=mark,
    )
    deadline = time.monotonic() + FIN_TIMEOUT_S
    while repair.tcp_info(sock).state != CLOSE_WAIT:
        if time.monotonic() > deadline:
            raise VzcptError(
                f"the TCP connection {local.host}:{local.port} -> {peer.host}:{peer.port} "
                "did not take the FIN its peer had sent"
            )
        time.sleep(0.001)


def resume(conn: RestoredConnection) -> None:
    """Out of repair mode (a window probe tells the peer we are back), then send the rest."""
    sock = socket.socket(fileno=os.dup(conn.fd))
    try:
        repair.set_repair(sock, repair.REPAIR_OFF)
        if conn.reuseaddr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, conn.reuseaddr)
        if conn.unsent or conn.fin_sent:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.sendall(conn.unsent)
            if conn.fin_sent:
                sock.shutdown(socket.SHUT_WR)
            fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, conn.status_flags)
        set_buffer_sizes(sock, conn.sndbuf, conn.rcvbuf)
    finally:
        sock.close()


@dataclass
class Connecting:
    """A socket that was connecting (SYN-SENT), bound again, to connect once unlocked."""

    fd: int  # the restorer's descriptor on it
    peer: Endpoint
    status_flags: int  # O_NONBLOCK of the file, put back after connecting


def connect_again(conn: Connecting) -> None:
    """Start the handshake again; the program finds its socket connecting, as it left it.

    An immediate failure (no route any more) is left for the program to
    meet, as it would have: its own connect() or poll reports it.
    """
    sock = socket.socket(fileno=os.dup(conn.fd))
    try:
        sock.setblocking(False)
        sock.connect_ex(conn.peer.sockaddr(sock.family))
        fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, conn.status_flags)
    finally:
        sock.close()
