"""Socket options read and written by kind: plain ints, SO_LINGER, timeouts and names.

getsockopt/setsockopt carry different C types per option; a caller names the
kind and gets or gives one Python value:

- "int": an int;
- "linger": struct linger, as -1 (off) or the seconds to linger;
- "timeval": struct timeval (SO_RCVTIMEO, SO_SNDTIMEO), as microseconds;
- "name": a string (TCP_CONGESTION, SO_BINDTODEVICE).

SO_PEERNAME gives the address a TCP socket connects to while its handshake
is under way (SYN-SENT), where getpeername answers ENOTCONN: the kernel
skips that state check for it.

Since Linux 6.16 SO_PASSCRED, SO_PASSPIDFD and SO_PASSSEC are refused on
inet sockets (EOPNOTSUPP); `readable` lets a caller skip what this kernel
does not offer on a given socket instead of failing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import sys
from collections.abc import Iterator
from typing import Any, Literal

OptionKind = Literal["int", "linger", "timeval", "name"]

_LINGER = struct.Struct("=ii")
_TIMEVAL = struct.Struct("=qq")
_NAME_LEN = 64
NOT_OFFERED = (errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EINVAL)


def get_option(sock: socket.socket, level: int, name: int, kind: OptionKind) -> int | str:
    if kind == "int":
        return int(sock.getsockopt(level, name))
    if kind == "linger":
        onoff, seconds = _LINGER.unpack(sock.getsockopt(level, name, _LINGER.size))
        return int(seconds) if onoff else -1
    if kind == "timeval":
        sec, usec = _TIMEVAL.unpack(sock.getsockopt(level, name, _TIMEVAL.size))
        return int(sec) * 1_000_000 + int(usec)
    raw = sock.getsockopt(level, name, _NAME_LEN)
    return raw.split(b"\0", 1)[0].decode()


def set_option(
    sock: socket.socket, level: int, name: int, kind: OptionKind, value: int | str
) -> None:
    if kind == "name":
        sock.setsockopt(level, name, str(value).encode())
        return
    assert isinstance(value, int)
    if kind == "int":
        sock.setsockopt(level, name, value)
    elif kind == "linger":
        sock.setsockopt(level, name, _LINGER.pack(int(value >= 0), max(value, 0)))
    else:
        sock.setsockopt(level, name, _TIMEVAL.pack(*divmod(value, 1_000_000)))


def readable(sock: socket.socket, level: int, name: int, kind: OptionKind) -> int | str | None:
    """The option's value, or None when this kernel does not offer it on this socket."""
    try:
        return get_option(sock, level, name, kind)
    except OSError as exc:
        if exc.errno in NOT_OFFERED:
            return None
        raise


def socket_kind(fd: int) -> tuple[int, int, int]:
    """(domain, type, protocol) of the socket open at descriptor `fd` (SO_DOMAIN, ...)."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        return int(sock.family), int(sock.type), sock.proto


SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


def buffer_sizes(sock: socket.socket) -> tuple[int, int]:
    """(SO_SNDBUF, SO_RCVBUF) as getsockopt reports them: twice what was asked for."""
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    )


def set_buffer_sizes(sock: socket.socket, sndbuf: int, rcvbuf: int) -> None:
    """Give the buffers the sizes getsockopt reported (0 leaves one alone).

    The kernel doubles what it is asked for, so half is asked; the FORCE
    variants (CAP_NET_ADMIN) pass the wmem_max/rmem_max limits, which a size
    the program got by autotuning may exceed.
    """
    if sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf // 2)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf // 2)


SO_PEERNAME = 28
_SOCKADDR_LEN = {socket.AF_INET: 16, socket.AF_INET6: 28}


def connecting_peer(sock: socket.socket) -> tuple[str, int] | tuple[str, int, int, int]:
    """The peer's address of a TCP socket, connected or still connecting, as getpeername's."""
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERNAME, _SOCKADDR_LEN[sock.family])
    port = int.from_bytes(raw[2:4], "big")
    if sock.family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    flowinfo, scope_id = int.from_bytes(raw[4:8], "big"), int.from_bytes(raw[24:28], sys.byteorder)
    return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flowinfo, scope_id


SO_PEEK_OFF = 42
PeekedMessage = tuple[bytes, list[tuple[int, int, bytes]], Any]  # data, ancillary, sender


@contextlib.contextmanager
def peeking(sock: socket.socket, *, credentials: bool = False) -> Iterator[None]:
    """For the while, each MSG_PEEK read moves past the message it read and
    leaves it queued (SO_PEEK_OFF at 0), so the whole queue can be read
    without taking anything. With `credentials`, SO_PASSCRED is on too: every
    unix message then comes with its sender's credentials, which tells an
    empty message from the end of a stream. Both options are put back."""
    old_offset = sock.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    old_passcred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) if credentials else None
    sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    try:
        if credentials:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        yield
    finally:
        sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, old_offset)
        if old_passcred is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, old_passcred)


def peek_next(sock: socket.socket, size: int, ancillary_space: int = 0) -> PeekedMessage | None:
    """The next queued message, left in place (inside `peeking`); None once none is left."""
    try:
        data, ancillary, _, sender = sock.recvmsg(
            size, ancillary_space, socket.MSG_PEEK | socket.MSG_DONTWAIT
        )
    except BlockingIOError:
        return None
    return data, ancillary, sender
