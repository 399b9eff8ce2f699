"""Descriptors on POSIX message queues (mq_open, or open() in an mqueue mount).

Kernel interfaces: fstatfs tells a queue from a file (its link reads like
any path: "/name", " (deleted)" once unlinked); fdinfo gives the access
mode and O_NONBLOCK; a second description opened through /proc/self/fd
reads the queue's status line (so the tree's own file position stays) and,
for an unlinked queue, its messages (resources/mqueue.py).

A queue with a name lives in its IPC namespace: a VE's queues are saved
and made again with the VE (resources/mqueue.py), those of a plain tree
stay in ours, like files on disk; so a description only records the name,
and is opened again with mq_open — in the VE's IPC namespace, from a child
that joined it. An unlinked queue is reachable only through descriptors:
it is saved with the first description found on it, made again under a
passing name that is unlinked at once, and every other description on it
is opened from that one.

Refused at checkpoint: a queue with an mq_notify registration (its
sigevent is not visible; the registration belongs to one process).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from vzcpt.errors import FileChanged, Unsupported, VzcptError
from vzcpt.kernel import mqueue as kmq
from vzcpt.kernel.nsexec import descriptors_in_namespaces
from vzcpt.proc.fdinfo import FdInfo
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import FileDesc
from vzcpt.resources.mqueue import MqDescription, create_queue, read_queue

DELETED = " (deleted)"
KEPT_FLAGS = os.O_ACCMODE | os.O_NONBLOCK


class MqueueHandler:
    kind = "mqueue"

    def claims(self, link: str, st: os.stat_result, local: int) -> bool:
        """Never by its link: a queue is told by its file system (see by_file_system)."""
        return False

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
        unlinked = st.st_nlink == 0
        name = os.path.basename(link.removesuffix(DELETED) if unlinked else link)
        where = f"process {pid}: descriptor {fd} (POSIX message queue /{name})"
        own = os.open(f"/proc/self/fd/{local}", os.O_RDWR | os.O_CLOEXEC)
        try:
            status = kmq.read_status(own)
            if status.notify_pid:
                raise Unsupported(
                    f"{where} has an mq_notify registration (by process {status.notify_pid}), "
                    "which vzcpt cannot checkpoint yet"
                )
            rec = MqDescription(name=name, unlinked=unlinked)
            if unlinked:
                key = ("mqueue-unlinked", st.st_dev, st.st_ino)
                if key in ctx.shared:
                    rec.queue_id = ctx.shared[key]
                else:
                    rec.queue_id = ctx.shared[key] = ctx.next_id("mqueue")
                    rec.queue = read_queue(own, name, st)
        finally:
            os.close(own)
        return FileDesc(
            id=0, kind=self.kind, flags=info.flags & KEPT_FLAGS, pos=info.pos, path=link, mqueue=rec
        )

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        rec = desc.mqueue
        if rec is None:
            raise VzcptError(f"file {desc.id} of kind mqueue has no queue record")
        if rec.unlinked:
            fd = _open_unlinked(ctx, desc, rec)
        else:
            fd = _in_ipc_namespace(ctx, lambda: kmq.mq_open(rec.name, desc.flags), rec.name)
        os.lseek(fd, desc.pos, os.SEEK_SET)
        return fd


def _open_unlinked(ctx: RestoreContext, desc: FileDesc, rec: MqDescription) -> int:
    """A description on an unlinked queue: the first makes the queue, the others reopen it."""
    key = ("mqueue-unlinked", rec.queue_id)
    if key in ctx.extra:
        return os.open(f"/proc/self/fd/{ctx.extra[key]}", desc.flags | os.O_CLOEXEC)
    queue = next(
        (
            d.mqueue.queue
            for d in ctx.image.records_of(FileDesc)
            if d.mqueue is not None and d.mqueue.queue_id == rec.queue_id and d.mqueue.queue
        ),
        None,
    )
    if queue is None:
        raise VzcptError(f"the dump lacks the content of unlinked message queue /{rec.name}")
    passing = f"vzcpt-unlinked-{os.getpid()}-{rec.queue_id}"

    def make() -> int:
        fd = create_queue(queue, passing, os.O_RDWR)
        kmq.mq_unlink(passing)
        return fd

    first = _in_ipc_namespace(ctx, make, rec.name)
    ctx.extra[key] = first
    ctx.local_fds[key] = first  # closed with the others at the end
    return os.open(f"/proc/self/fd/{first}", desc.flags | os.O_CLOEXEC)


def _in_ipc_namespace(ctx: RestoreContext, opener: Callable[[], int], name: str) -> int:
    """Run `opener` in the programs' IPC namespace (a VE's, or ours)."""
    try:
        if not ctx.ns_pid:
            return opener()
        return descriptors_in_namespaces(
            ctx.ns_pid, ("ipc",), lambda: [opener()], f"open POSIX message queue /{name}"
        )[0]
    except VzcptError as exc:
        raise FileChanged(
            f"cannot open POSIX message queue /{name} again ({exc}): restore needs "
            "the queues the programs had open"
        ) from exc


HANDLER = MqueueHandler()
