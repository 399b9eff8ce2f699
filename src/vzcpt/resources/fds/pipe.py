"""Pipes and FIFOs, with the data queued in them.

Kernel interfaces: a pipe shows as "pipe:[INODE]" in /proc/PID/fd; opening
that /proc link read-only gives us a read end of the very pipe, and tee(2)
copies its queue without consuming it; F_GETPIPE_SZ/F_SETPIPE_SZ its
capacity. A FIFO is a pipe with a name: the same, opened by path.
At restore one pipe is made per saved pipe, the data written back, and each
end handed to whoever held it.
"""

from __future__ import annotations

import fcntl
import os
import stat

from vzcpt.kernel.fds import F_GETPIPE_SZ, F_SETPIPE_SZ, peek_pipe
from vzcpt.proc import files as procfs
from vzcpt.proc.fdinfo import FdInfo
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import FileDesc

STATUS_FLAGS = os.O_NONBLOCK | os.O_APPEND | os.O_DIRECT


def _peek_once(ctx: DumpContext, pid: int, fd: int, inode: int) -> tuple[bytes | None, int]:
    """Queued data of a pipe, stored with the first of its ends we meet."""
    key = ("pipe-data", inode)
    if key in ctx.shared:
        return None, 0
    ctx.shared[key] = True
    reader = procfs.open_file(pid, f"fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return peek_pipe(reader), fcntl.fcntl(reader, F_GETPIPE_SZ)
    finally:
        os.close(reader)


class PipeHandler:
    kind = "pipe"

    def claims(self, link: str, st: os.stat_result, local: int) -> bool:
        return stat.S_ISFIFO(st.st_mode) and link.startswith("pipe:")

    def dump(
        self,
        ctx: DumpContext,
        pid: int,
        fd: int,
        local: int,
        link: str,
        st: os.stat_result,
        info: FdInfo,
    ) -> FileDesc:
        data, size = _peek_once(ctx, pid, fd, st.st_ino)
        return FileDesc(
            id=0,
            kind=self.kind,
            flags=info.flags & ~os.O_CLOEXEC,
            pipe_id=st.st_ino,
            content=data,
            pipe_size=size,
        )

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        ends = ctx.extra.get(("pipe", desc.pipe_id))
        if ends is None:
            r, w = os.pipe2(os.O_CLOEXEC)
            ctx.extra[("pipe", desc.pipe_id)] = ends = (r, w)
            ctx.local_fds[("pipe-r", desc.pipe_id)] = r
            ctx.local_fds[("pipe-w", desc.pipe_id)] = w
        r, w = ends
        _fill(ctx, desc, w)
        if ("pipe-filled", desc.pipe_id) in ctx.extra:
            _drop_unheld_end(ctx, desc.pipe_id)
        end = w if desc.flags & os.O_ACCMODE == os.O_WRONLY else r
        fcntl.fcntl(end, fcntl.F_SETFL, desc.flags & STATUS_FLAGS)
        return end


class FifoHandler:
    kind = "fifo"

    def claims(self, link: str, st: os.stat_result, local: int) -> bool:
        return stat.S_ISFIFO(st.st_mode) and link.startswith("/")

    def dump(
        self,
        ctx: DumpContext,
        pid: int,
        fd: int,
        local: int,
        link: str,
        st: os.stat_result,
        info: FdInfo,
    ) -> FileDesc:
        data, size = _peek_once(ctx, pid, fd, st.st_ino)
        return FileDesc(
            id=0,
            kind=self.kind,
            flags=info.flags & ~os.O_CLOEXEC,
            path=link,
            pipe_id=st.st_ino,
            content=data,
            pipe_size=size,
        )

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        key = ("fifo-keeper", desc.pipe_id)
        if key not in ctx.local_fds:
            # Holding it read-write ourselves lets any end open without blocking.
            ctx.local_fds[key] = os.open(
                ctx.host_path(desc.path), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
            )
        _fill(ctx, desc, ctx.local_fds[key])
        fd = os.open(
            ctx.host_path(desc.path), (desc.flags & ~os.O_CREAT) | os.O_NONBLOCK | os.O_CLOEXEC
        )
        fcntl.fcntl(fd, fcntl.F_SETFL, desc.flags & STATUS_FLAGS)
        return fd


def _drop_unheld_end(ctx: RestoreContext, pipe_id: int) -> None:
    """Close at once the end of a pipe no process held (once its data is in): its
    readers see end of file, or its writers EPIPE, already while the tree is
    rebuilt, as an epoll watch added meanwhile must see them."""
    held: dict[int, set[int]] | None = ctx.extra.get("pipe-ends")
    if held is None:
        held = {}
        for d in ctx.image.records_of(FileDesc):
            if d.kind == "pipe":  # O_RDWR (a pipe reopened through /proc) holds both
                access = d.flags & os.O_ACCMODE
                ends = {access} if access != os.O_RDWR else {os.O_RDONLY, os.O_WRONLY}
                held.setdefault(d.pipe_id, set()).update(ends)
        ctx.extra["pipe-ends"] = held
    for key, access in (("pipe-r", os.O_RDONLY), ("pipe-w", os.O_WRONLY)):
        if access not in held.get(pipe_id, set()) and (key, pipe_id) in ctx.local_fds:
            os.close(ctx.local_fds.pop((key, pipe_id)))


def _fill(ctx: RestoreContext, desc: FileDesc, writer: int) -> None:
    """Put the queued data back, once per pipe, from whichever end carried it."""
    if desc.content is None or ("pipe-filled", desc.pipe_id) in ctx.extra:
        return
    ctx.extra[("pipe-filled", desc.pipe_id)] = True
    if desc.pipe_size:
        fcntl.fcntl(writer, F_SETPIPE_SZ, desc.pipe_size)
    view = memoryview(desc.content)
    while view:
        view = view[os.write(writer, view) :]


HANDLER = PipeHandler()
FIFO_HANDLER = FifoHandler()
