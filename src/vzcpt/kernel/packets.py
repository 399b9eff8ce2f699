"""Handing a restored socket a packet "from its peer", through a raw socket.

Some state enters a socket only with a packet: a FIN the peer sent before
the checkpoint (a TCP connection in CLOSE_WAIT), a datagram queued for a UDP
socket with its sender's address. We build that packet whole (IP header
included: IP_HDRINCL, or IPPROTO_RAW for IPv6), with the peer's address as
its source, and send it to the socket's own address: it loops back through
`lo` and is received as if it came from the peer. SO_MARK tags it, so that
the network lock of the checkpoint (kernel/nftables.py) lets it through.
An IPv6 socket talking to an IPv4 peer (::ffff:a.b.c.d) is handed IPv4.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

_TCP_FIN_ACK = 0x11


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _plain(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    found = ipaddress.ip_address(address)
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped:
        return found.ipv4_mapped
    return found


def _addresses(src: str, dst: str) -> tuple[int, bytes, bytes]:
    """(family, source bytes, destination bytes), IPv4-mapped IPv6 addresses taken as IPv4."""
    a, b = _plain(src), _plain(dst)
    if a.version != b.version:
        raise ValueError(f"cannot send from {src} to {dst}: not one IP version")
    return (socket.AF_INET if a.version == 4 else socket.AF_INET6), a.packed, b.packed


def _send(family: int, src: bytes, dst: bytes, proto: int, segment: bytes, mark: int) -> None:
    if family == socket.AF_INET:
        pseudo = src + dst + struct.pack("!BBH", 0, proto, len(segment))
    else:
        pseudo = src + dst + struct.pack("!I3xB", len(segment), proto)
    where = 16 if proto == socket.IPPROTO_TCP else 6
    csum = _checksum(pseudo + segment) or 0xFFFF
    segment = segment[:where] + struct.pack("!H", csum) + segment[where + 2 :]
    if family == socket.AF_INET:
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 0, 0x4000, 64, proto, 0, src, dst
        )
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    else:
        header = struct.pack("!IHBB16s16s", 6 << 28, len(segment), proto, 64, src, dst)
        raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        raw.sendto(header + segment, (socket.inet_ntop(family, dst), 0))


def send_tcp_fin(
    peer: tuple[str, int], local: tuple[str, int], seq: int, ack: int, window: int, mark: int
) -> None:
    """A FIN|ACK from `peer` to `local`: sequence `seq`, acknowledging `ack`."""
    family, src, dst = _addresses(peer[0], local[0])
    segment = struct.pack(
        "!HHIIBBHHH", peer[1], local[1], seq, ack, 5 << 4, _TCP_FIN_ACK, window, 0, 0
    )
    _send(family, src, dst, socket.IPPROTO_TCP, segment, mark)


def send_udp(peer: tuple[str, int], local: tuple[str, int], payload: bytes, mark: int) -> None:
    """A UDP datagram from `peer` to `local`."""
    family, src, dst = _addresses(peer[0], local[0])
    segment = struct.pack("!HHHH", peer[1], local[1], 8 + len(payload), 0) + payload
    _send(family, src, dst, socket.IPPROTO_UDP, segment, mark)
