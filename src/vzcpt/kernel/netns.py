"""Creating sockets in another network namespace, from this thread.

A socket belongs to the network namespace of the thread that creates it,
and setns(CLONE_NEWNET) moves only the calling thread: a restorer that stays
in the host's namespaces steps into a VE's for the few calls that make its
sockets, then steps back.
"""

from __future__ import annotations

import contextlib
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


def same_as_ours(path: str) -> bool:
    """Is the namespace at `path` the one this thread is in?"""
    return os.stat(path).st_ino == os.stat("/proc/thread-self/ns/net").st_ino
