"""Options of unix sockets: those that differ from a new socket's are kept.

Kernel interface: getsockopt/setsockopt (kernel/sockopts.py). The values of
a new socket of the same type are read once per dump; only the options a
program changed are saved, so a restore on a host with other defaults
changes nothing the program did not. Buffer sizes go back with the FORCE
variants (they may exceed the host's limits, as the program's could).
Options this kernel does not offer are skipped at dump.
"""

from __future__ import annotations

import socket

from vzcpt.kernel.sockopts import (
    OptionKind,
    buffer_sizes,
    readable,
    set_buffer_sizes,
    set_option,
)
from vzcpt.resources.context import DumpContext

_S = socket.SOL_SOCKET
OPTIONS: tuple[tuple[str, int, OptionKind], ...] = (
    ("SO_PASSCRED", 16, "int"),
    ("SO_PASSSEC", 34, "int"),
    ("SO_PASSPIDFD", 76, "int"),
    ("SO_PRIORITY", 12, "int"),
    ("SO_MARK", 36, "int"),
    ("SO_RCVLOWAT", 18, "int"),
    ("SO_RCVTIMEO", 20, "timeval"),
    ("SO_SNDTIMEO", 21, "timeval"),
    ("SO_PEEK_OFF", 42, "int"),
)
BUFFERS = ("SO_SNDBUF", "SO_RCVBUF")


def changed(ctx: DumpContext, sock: socket.socket) -> dict[str, int]:
    """The options of `sock` that differ from those of a new socket of its type."""
    key = ("unix-default-options", sock.type)
    if key not in ctx.shared:
        with socket.socket(socket.AF_UNIX, sock.type) as new:
            ctx.shared[key] = _values(new)
    fresh: dict[str, int] = ctx.shared[key]
    return {name: value for name, value in _values(sock).items() if fresh.get(name) != value}


def apply(sock: socket.socket, options: dict[str, int]) -> None:
    for name, number, kind in OPTIONS:
        if name in options:
            set_option(sock, _S, number, kind, options[name])
    set_buffer_sizes(sock, options.get("SO_SNDBUF", 0), options.get("SO_RCVBUF", 0))


def _values(sock: socket.socket) -> dict[str, int]:
    found = {}
    for name, number, kind in OPTIONS:
        value = readable(sock, _S, number, kind)
        if value is not None:
            assert isinstance(value, int)
            found[name] = value
    found.update(zip(BUFFERS, buffer_sizes(sock), strict=True))
    return found
