"""pidfd: a descriptor on a process of the tree.

Kernel interfaces: fdinfo's "Pid" (the process in our pid namespace, -1 once
it is gone and reaped); the status flags O_NONBLOCK (PIDFD_NONBLOCK) and
O_EXCL (PIDFD_THREAD). At restore pidfd_open(2) on the rebuilt process: it
is the saved process (same struct pid, so polling reports its exit and
waitid(P_PIDFD) reaps it). A pidfd on a process already reaped is made on a
child of ours that exits and is reaped at once. A pidfd on a process
outside the tree is refused: it would name another process after restore.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vzcpt.errors import CorruptDump, Unsupported
from vzcpt.kernel.fds import pidfd_open
from vzcpt.proc.fdinfo import FdInfo, pidfd_pid
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import AnonInodeKind, FileDesc

LINK = "anon_inode:[pidfd]"
PIDFD_THREAD = os.O_EXCL
GONE = -1


@dataclass
class PidfdRecord:
    pid: int = GONE  # as the programs know it; GONE once reaped

    def __str__(self) -> str:
        return "of a process already reaped" if self.pid == GONE else f"of process {self.pid}"


class PidfdHandler(AnonInodeKind):
    kind = "pidfd"
    link = LINK

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
        target = pidfd_pid(info)
        if target != GONE and target not in ctx.pids:
            if info.flags & PIDFD_THREAD:
                raise Unsupported(
                    f"process {pid}: descriptor {fd} is a pidfd of thread {target}, which is "
                    "not the main thread of a process of the tree: vzcpt cannot checkpoint it"
                )
            raise Unsupported(
                f"process {pid}: descriptor {fd} is a pidfd of process {target}, which is "
                "outside the dumped tree: dump a tree that holds both"
            )
        return FileDesc(
            id=0,
            kind=self.kind,
            flags=info.flags & ~os.O_CLOEXEC,
            pidfd=PidfdRecord(pid=target if target == GONE else ctx.saved_id(target)),
        )

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        if desc.pidfd is None:
            raise CorruptDump(f"file {desc.id} of kind pidfd has no pidfd record")
        flags = desc.flags & (os.O_NONBLOCK | PIDFD_THREAD)
        if desc.pidfd.pid == GONE:
            return _reaped_pidfd(flags & os.O_NONBLOCK)
        return pidfd_open(ctx.host_pids.get(desc.pidfd.pid, desc.pidfd.pid), flags)


def _reaped_pidfd(flags: int) -> int:
    """A pidfd whose process has exited and been reaped, as the saved one had."""
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        return pidfd_open(child, flags)  # an exited child keeps its pid until reaped
    finally:
        os.waitpid(child, 0)


HANDLER = PidfdHandler()
