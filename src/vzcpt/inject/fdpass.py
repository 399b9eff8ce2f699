"""Handing descriptors from the restorer to a stopped task (SCM_RIGHTS).

Every stub is born holding one end of a socketpair at a known descriptor
number; the restorer keeps the other end. To give the task a descriptor the
restorer sends it with SCM_RIGHTS and the task, through an injected
recvmsg(), receives it at its lowest free number. The same open file
description can be sent to many tasks, which is exactly how sharing between
processes is rebuilt.
"""

from __future__ import annotations

import ctypes
import socket

from vzcpt.errors import VzcptError
from vzcpt.inject.remote import Placed, RemoteTask
from vzcpt.kernel import nr

SCM_MAX_FD = 253
MSG_CMSG_CLOEXEC = 0x40000000


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_uint64),
        ("namelen", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("iov", ctypes.c_uint64),
        ("iovlen", ctypes.c_uint64),
        ("control", ctypes.c_uint64),
        ("controllen", ctypes.c_uint64),
        ("flags", ctypes.c_int32),
        ("pad2", ctypes.c_int32),
    ]


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class FdChannel:
    """The restorer's end of the channel; the tasks' end is `remote_fd` in each."""

    def __init__(self, local: socket.socket, remote_fd: int) -> None:
        self.local = local
        self.remote_fd = remote_fd

    def install(self, task: RemoteTask, local_fds: list[int]) -> list[int]:
        """Give the task these descriptors; return their numbers in the task (close-on-exec)."""
        received: list[int] = []
        for first in range(0, len(local_fds), SCM_MAX_FD):
            batch = local_fds[first : first + SCM_MAX_FD]
            socket.send_fds(self.local, [b"F"], batch)
            received.extend(self._receive(task, len(batch)))
        return received

    def _receive(self, task: RemoteTask, count: int) -> list[int]:
        control_len = 16 + 4 * count + 8  # cmsghdr + ints, rounded up

        def message(base: int) -> bytes:
            """struct msghdr at base, its iovec at +64 for one byte at +128, control at +256."""
            msg = _MsgHdr(0, 0, 0, base + 64, 1, base + 256, control_len, 0, 0)
            iov = _IoVec(base + 128, 1)
            return bytes(msg).ljust(64, b"\0") + bytes(iov).ljust(192, b"\0") + bytes(control_len)

        call = task.queue(
            nr.RECVMSG,
            self.remote_fd,
            Placed(256 + control_len, message),
            MSG_CMSG_CLOEXEC,
            what="recvmsg of passed descriptors",
        )
        task.flush()  # with whatever was queued before: one round trip
        if call.value != 1:
            raise VzcptError(f"task {task.tid}: descriptor passing returned {call.value}")
        control = call.memory[0][256:]
        length = int.from_bytes(control[:8], "little")
        fds = (length - 16) // 4
        if fds != count:
            raise VzcptError(f"task {task.tid}: expected {count} descriptors, received {fds}")
        return [int.from_bytes(control[16 + 4 * i : 20 + 4 * i], "little") for i in range(fds)]
