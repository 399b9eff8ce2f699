"""Running a function inside another process's namespaces, from a forked child.

Some state answers only to a process inside a namespace: the sockets
sock_diag lists, the values /proc/sys/net shows, the POSIX message queues
of an IPC namespace, the paths of a mount namespace. A child joins the
namespaces of `pid` (setns), runs the function, sends its result back and
exits; the parent turns any failure into one line.

The child, not the caller, joins: a multi-threaded process cannot join a
mount namespace (setns refuses with EINVAL), and the caller must stay where
it is. Every namespace file is opened before the first setns, since joining
the mount namespace changes what /proc is. Joining a pid namespace only
places the children made afterwards, so with "pid" the work is done by a
grandchild forked after the setns; it is then pid N of that namespace, as a
`mount -t proc` there needs.

Two kinds of result: a JSON-able value (`in_namespaces`), or descriptors
the function made there, which come back over a unix socket with
SCM_RIGHTS (`descriptors_in_namespaces`): a socket bound to a path of the
VE's mount namespace, or a message queue of its IPC namespace, is then ours
to hand on.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from vzcpt.errors import VzcptError
from vzcpt.kernel.mounts import setns

NAMESPACE_FLAGS = {
    "net": 0x40000000,
    "ipc": 0x08000000,
    "uts": 0x04000000,
    "pid": 0x20000000,
    "mnt": 0x00020000,
}
# The order of joining: the mount namespace last, once the others are open
# and joined through our own /proc.
_ORDER = ("net", "ipc", "uts", "pid", "mnt")
SCM_MAX_FD = 253
_HEADER = struct.Struct("<cQ")  # 'O' or 'E', length of what follows


def in_namespace(pid: int, kind: str, work: Callable[[], Any], what: str) -> Any:
    """`work()` run in the `kind` namespace ("net", "ipc", "mnt"...) of process `pid`."""
    return in_namespaces(pid, (kind,), work, what)


def in_namespaces(pid: int, kinds: Sequence[str], work: Callable[[], Any], what: str) -> Any:
    """`work()` run in the namespaces `kinds` of process `pid`; its JSON-able result."""
    payload, fds = _run(pid, kinds, lambda: (json.dumps(work()).encode(), []), what)
    assert not fds
    return json.loads(payload)


def descriptors_in_namespaces(
    pid: int, kinds: Sequence[str], work: Callable[[], list[int]], what: str
) -> list[int]:
    """The descriptors `work()` opened in the namespaces `kinds` of process `pid`
    (at most SCM_MAX_FD), now ours, close-on-exec, in the same order."""

    def body() -> tuple[bytes, list[int]]:
        fds = work()
        if len(fds) > SCM_MAX_FD:
            raise VzcptError(f"{len(fds)} descriptors are more than one message carries")
        return b"", fds

    return _run(pid, kinds, body, what)[1]


def _run(
    pid: int, kinds: Sequence[str], body: Callable[[], tuple[bytes, list[int]]], what: str
) -> tuple[bytes, list[int]]:
    unknown = set(kinds) - set(NAMESPACE_FLAGS)
    if unknown:
        raise ValueError(f"unknown namespace kinds {sorted(unknown)}")
    ns_fds: list[tuple[str, int]] = []
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            for kind in sorted(set(kinds), key=_ORDER.index):
                ns_fds.append((kind, os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)))
        except FileNotFoundError:
            raise VzcptError(f"could not {what}: process {pid} is gone") from None
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            ours.close()
            _child(ns_fds, theirs, body)
        theirs.close()
        try:
            answer, fds = _receive(ours)
        finally:
            _, status = os.waitpid(child, 0)
    finally:
        ours.close()
        with contextlib.suppress(OSError):
            theirs.close()
        for _, fd in ns_fds:
            os.close(fd)
    where = f"in the {'+'.join(kinds)} namespaces of process {pid}"
    if answer[:1] == b"O" and status == 0:
        return answer[1:], fds
    for fd in fds:
        os.close(fd)
    if answer[:1] == b"E":
        raise VzcptError(f"could not {what} ({where}): {answer[1:].decode(errors='replace')}")
    raise VzcptError(f"could not {what} ({where}): the helper died (status {status:#x})")


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Read the child's whole answer: its header, descriptors and payload."""
    chunks: list[bytes] = []
    fds: list[int] = []
    first = True
    while True:
        if first:
            data, received, _, _ = socket.recv_fds(sock, 1 << 16, SCM_MAX_FD)
            fds.extend(received)
            first = False
        else:
            data = sock.recv(1 << 16)
        if not data:
            break
        chunks.append(data)
    for fd in fds:
        os.set_inheritable(fd, False)
    raw = b"".join(chunks)
    if len(raw) < _HEADER.size:
        return b"", fds
    status, length = _HEADER.unpack_from(raw)
    return status + raw[_HEADER.size : _HEADER.size + length], fds


def _child(  # pragma: no cover - runs in the child
    ns_fds: list[tuple[str, int]], sock: socket.socket, body: Callable[[], tuple[bytes, list[int]]]
) -> None:
    code = 1
    try:
        try:
            for kind, fd in ns_fds:
                setns(fd, NAMESPACE_FLAGS[kind])
            if any(kind == "pid" for kind, _ in ns_fds):
                worker = os.fork()
                if worker != 0:  # the worker, in the pid namespace, answers for us
                    _, status = os.waitpid(worker, 0)
                    code = 0 if status == 0 else 1
                    return
            payload, fds = body()
            message = _HEADER.pack(b"O", len(payload)) + payload
            code = 0
        except VzcptError as e:
            message = _error(str(e))
            fds = []
        except Exception as e:  # a bug: keep the traceback on stderr, one line back
            traceback.print_exc(file=sys.stderr)
            message = _error(f"{type(e).__name__}: {e}")
            fds = []
        sent = socket.send_fds(sock, [message[: 1 << 16]], fds) if fds else sock.send(message)
        sock.sendall(message[sent:])
    finally:
        os._exit(code)


def _error(text: str) -> bytes:
    encoded = " ".join(text.split()).encode()
    return _HEADER.pack(b"E", len(encoded)) + encoded
