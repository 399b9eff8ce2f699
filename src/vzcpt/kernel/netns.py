"""Network namespaces of threads and sockets.

A socket belongs to the network namespace of the thread that creates it,
and setns(CLONE_NEWNET) moves only the calling thread: a restorer that stays
in the host's namespaces steps into a VE's for the few calls that make its
sockets, then steps back. The other way round, ioctl(SIOCGSKNS) tells which
namespace a socket belongs to (a descriptor on it), whichever process holds
the socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from vzcpt.kernel.mounts import setns

CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """This thread inside the network namespace at `path` (e.g. /proc/PID/ns/net); "" stays."""
    if not path:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target, CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(home, CLONE_NEWNET)
    finally:
        os.close(home)


SIOCGSKNS = 0x894C


def of_socket(fd: int) -> int:
    """A new descriptor on the network namespace the socket open at `fd` belongs to."""
    return fcntl.ioctl(fd, SIOCGSKNS)


def inode(ns_fd: int) -> int:
    """The identity of the namespace open at `ns_fd`."""
    return os.fstat(ns_fd).st_ino


def ours() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino
