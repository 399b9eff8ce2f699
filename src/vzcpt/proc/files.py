"""Reading /proc/PID files, with OSError turned into typed errors.

This is the only module of `vzcpt.proc` that touches the file system; the
other modules are pure parsers of the bytes read here.  As in psutil's
`_pslinux.py`, one wrapper (`_mapped`) maps the errors of every access:

- ENOENT / ESRCH while the process (or thread) is gone -> `ProcessGone`;
- EACCES / EPERM -> `AccessDenied`;
- ENOENT while the process is still there means the *file* is missing (a
  closed fd, a kernel built without that file): the `FileNotFoundError` is
  re-raised unchanged, so a closed fd is not mistaken for a dead process.

The children/task lists are only stable while the tree is frozen; on a
running tree they are a snapshot and callers must tolerate `ProcessGone`.
"""

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from vzcpt.errors import AccessDenied, ProcessGone

PROC = "/proc"
_CHUNK = 1 << 16


def _path(pid: int, name: str, tid: int | None = None) -> str:
    if tid is None:
        return f"{PROC}/{pid}/{name}"
    return f"{PROC}/{pid}/task/{tid}/{name}"


def _alive(pid: int, tid: int | None) -> bool:
    base = f"{PROC}/{pid}" if tid is None else f"{PROC}/{pid}/task/{tid}"
    return os.path.exists(base)


@contextmanager
def _mapped(pid: int, name: str, tid: int | None = None) -> Iterator[None]:
    """Turn an OSError raised while accessing /proc/PID/NAME into a typed error."""
    try:
        yield
    except OSError as e:
        who = f"process {pid}" if tid is None else f"thread {tid} of process {pid}"
        if e.errno == errno.ESRCH or (e.errno == errno.ENOENT and not _alive(pid, tid)):
            raise ProcessGone(f"{who} is gone") from e
        if e.errno in (errno.EACCES, errno.EPERM):
            raise AccessDenied(
                f"no permission to read {_path(pid, name, tid)} of {who}; run as root"
            ) from e
        raise


def read(pid: int, name: str, tid: int | None = None) -> bytes:
    """The whole content of /proc/PID/NAME (or /proc/PID/task/TID/NAME).

    Not for sparse files such as `pagemap` or `mem`: use `read_range`.
    """
    with _mapped(pid, name, tid):
        fd = os.open(_path(pid, name, tid), os.O_RDONLY | os.O_CLOEXEC)
        try:
            # seq_file hands out at most a page or so per read: loop to EOF.
            parts: list[bytes] = []
            while chunk := os.read(fd, _CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        finally:
            os.close(fd)


def read_range(pid: int, name: str, offset: int, size: int) -> bytes:
    """`size` bytes at `offset` of /proc/PID/NAME (pagemap, mem).

    Short if the range runs past the end of the file or, for `mem`, into an
    unmapped page; EIO if `mem` has nothing mapped at `offset`.
    """
    with _mapped(pid, name):
        fd = os.open(_path(pid, name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            parts: list[bytes] = []
            while size > 0:
                try:
                    chunk = os.pread(fd, size, offset)
                except OSError as e:
                    # mem: EIO once the range runs into unmapped memory.
                    if e.errno == errno.EIO and parts:
                        break
                    raise
                if not chunk:
                    break
                parts.append(chunk)
                offset += len(chunk)
                size -= len(chunk)
            return b"".join(parts)
        finally:
            os.close(fd)


def open_file(pid: int, name: str, flags: int) -> int:
    """A descriptor on /proc/PID/NAME (pagemap, map_files/A-B, fd/N, ns/net...),
    opened with `flags` (O_CLOEXEC added), errors mapped like read()."""
    with _mapped(pid, name):
        return os.open(_path(pid, name), flags | os.O_CLOEXEC)


def stat(pid: int, name: str) -> os.stat_result:
    """os.stat() of /proc/PID/NAME, following its link (a mapped file, a namespace)."""
    with _mapped(pid, name):
        return os.stat(_path(pid, name))


def readlink(pid: int, name: str) -> str:
    """The target of the link /proc/PID/NAME ("cwd", "exe", "root", "fd/3", "ns/pid")."""
    with _mapped(pid, name):
        return os.readlink(_path(pid, name))


def _listdir_ints(pid: int, name: str) -> list[int]:
    with _mapped(pid, name):
        return sorted(int(n) for n in os.listdir(_path(pid, name)) if n.isdigit())


def tids(pid: int) -> list[int]:
    """The thread ids of a process, main thread first, then ascending."""
    ids = _listdir_ints(pid, "task")
    if pid in ids:
        ids.remove(pid)
        ids.insert(0, pid)
    return ids


def fds(pid: int) -> list[int]:
    """The open file descriptors of a process, ascending."""
    return _listdir_ints(pid, "fd")


def children(pid: int) -> list[int]:
    """The child processes of every thread of `pid`, ascending."""
    found: set[int] = set()
    for tid in tids(pid):
        try:
            data = read(pid, "children", tid)
        except ProcessGone:
            if tid == pid:
                raise
            continue  # a thread that exited has no children to report
        except FileNotFoundError:
            return _children_by_scan(pid)  # kernel without CONFIG_PROC_CHILDREN
        found.update(int(x) for x in data.split())
    return sorted(found)


def _children_by_scan(pid: int) -> list[int]:
    from vzcpt.proc.stat import parse_stat

    found = []
    for n in os.listdir(PROC):
        if not n.isdigit():
            continue
        try:
            if parse_stat(read(int(n), "stat")).ppid == pid:
                found.append(int(n))
        except (ProcessGone, FileNotFoundError):
            continue
    return sorted(found)


def tree(root: int) -> list[int]:
    """`root` and all its descendants, every parent before its children (DFS).

    Raises `ProcessGone` if `root` is gone; a descendant that exits during the
    walk is left out with its subtree.
    """
    order: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            kids = children(pid)
        except ProcessGone:
            if pid == root:
                raise
            continue
        order.append(pid)
        stack.extend(reversed(kids))
    return order
