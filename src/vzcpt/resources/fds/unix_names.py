"""Unix sockets made again where their names mean what they meant to the programs.

Names belong to namespaces: a path to the mount namespace (and its root),
an abstract name to the network namespace, and a socket to the network
namespace of the thread that made it. The restorer stays in the host's, so
for a VE every bind and connect by name is done by a child that joined the
VE's network and mount namespaces, which hands the sockets back
(kernel/nsexec.py); the name is then the one the programs know, not a
/proc/PID/root path the restorer would see. An unnamed socket is made by
the restorer's thread stepping into the VE's network namespace
(kernel/netns.py), so that sock_diag finds it there at the next checkpoint.

A socket file left at the path (by the dumped socket) is replaced, its mode
and owner kept. One made where there was none is removed if the restore
fails (`RestoreContext.undo`): the path is left as the restore found it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Callable

from vzcpt.errors import VzcptError
from vzcpt.kernel import netns
from vzcpt.kernel.nsexec import descriptors_in_namespaces
from vzcpt.resources.context import RestoreContext
from vzcpt.resources.fds import UnixSocketRecord

File = tuple[int, int, int]  # a socket file's mode, uid, gid


def by_name(ctx: RestoreContext, name: bytes, work: Callable[[], list[int]]) -> list[socket.socket]:
    """Sockets `work` makes where `name` means what it meant to the programs: in
    our namespaces, or in a VE's network and mount namespaces."""
    # The file a path name makes, as the restorer reaches it (not a VE's relative
    # name: relative to a directory inside the VE).
    path = ""
    if name.startswith(b"/") or not (name.startswith(b"\0") or ctx.fs_root):
        path = ctx.host_path(os.fsdecode(name))
    was_there = bool(path) and os.path.lexists(path)
    if ctx.ns_pid:
        what = f"make unix socket {os.fsdecode(name)!r} again"
        fds = descriptors_in_namespaces(ctx.ns_pid, ("net", "mnt"), work, what)
    else:
        fds = work()
    if path and not was_there and _is_socket(path):
        ctx.undo.append(lambda: _remove_socket(path))
    return [socket.socket(fileno=fd) for fd in fds]


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _remove_socket(path: str) -> None:
    if _is_socket(path):
        os.unlink(path)


def unnamed(ctx: RestoreContext, kind: int) -> socket.socket:
    """A new unix socket of the programs' network namespace."""
    with netns.entered(ctx.netns):
        return socket.socket(socket.AF_UNIX, kind)


def unnamed_pair(ctx: RestoreContext, kind: int) -> tuple[socket.socket, socket.socket]:
    with netns.entered(ctx.netns):
        return socket.socketpair(socket.AF_UNIX, kind)


def socket_file(rec: UnixSocketRecord) -> File | None:
    """The socket file at the record's path name as it was, if one was found."""
    return (rec.file_mode, rec.file_uid, rec.file_gid) if rec.file_mode else None


def bound(
    kind: int,
    name: bytes,
    backlog: int | None,
    queue: list[bytes],
    file: File | None = None,
) -> int:
    """A socket bound to `name`, listening with `backlog` unless None, with the
    datagrams of `queue` waiting in it, its file given `file` (mode, uid, gid) if
    known; its descriptor."""
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        _bind(sock, name, file)
        if backlog is not None:
            sock.listen(backlog)
        if queue:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                for message in queue:
                    sender.sendto(message, name)
    except OSError as exc:
        sock.close()
        raise VzcptError(f"unix socket {os.fsdecode(name)!r}: {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock.detach()


def connected(kind: int, name: bytes) -> int:
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.connect(name)
    except OSError as exc:
        sock.close()
        raise VzcptError(f"cannot connect to {os.fsdecode(name)!r}: {exc.strerror}") from None
    return sock.detach()


def through_passing(kind: int, name: bytes) -> list[int]:
    """A passing listener bound to `name` and a client connected to it; the
    listener's socket file is removed at once (the connection stays)."""
    listener = bound(kind, name, 1, [])
    try:
        client = connected(kind, name)
    finally:
        if not name.startswith(b"\0"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
    return [listener, client]


def _bind(sock: socket.socket, name: bytes, file: File | None = None) -> None:
    """Bind to `name`; a socket file at the path (the one the dumped socket left
    behind) is replaced. The new file gets the mode and owner `file` says, else
    those of the file it replaced (a socket file the VE's /dev lost is made anew)."""
    if name.startswith(b"\0"):
        sock.bind(name)
        return
    with contextlib.suppress(FileNotFoundError):
        left = os.lstat(name)
        if stat.S_ISSOCK(left.st_mode):
            os.unlink(name)
            file = file or (stat.S_IMODE(left.st_mode), left.st_uid, left.st_gid)
    sock.bind(name)
    if file is not None:
        mode, uid, gid = file
        os.chown(name, uid, gid)
        os.chmod(name, mode)
