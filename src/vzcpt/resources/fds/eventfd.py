"""eventfd: its count and whether it counts as a semaphore.

Kernel interfaces: fdinfo's "eventfd-count" (hex) and "eventfd-semaphore";
the O_NONBLOCK status flag is EFD_NONBLOCK. At restore the restorer makes a
new eventfd (eventfd2 takes only 32 bits, so the count is written into it)
and hands it to every process that held the description.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vzcpt.errors import CorruptDump
from vzcpt.kernel.eventfds import eventfd
from vzcpt.proc.fdinfo import FdInfo, eventfd_state
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import AnonInodeKind, FileDesc

EFD_SEMAPHORE = 1
LINK = "anon_inode:[eventfd]"


@dataclass
class EventfdRecord:
    count: int = 0
    semaphore: bool = False

    def __str__(self) -> str:
        return f"count {self.count}{' semaphore' if self.semaphore else ''}"


class EventfdHandler(AnonInodeKind):
    kind = "eventfd"
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
        count, semaphore = eventfd_state(info)
        return FileDesc(
            id=0,
            kind=self.kind,
            flags=info.flags & ~os.O_CLOEXEC,
            eventfd=EventfdRecord(count=count, semaphore=semaphore),
        )

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        rec = desc.eventfd
        if rec is None:
            raise CorruptDump(f"file {desc.id} of kind eventfd has no eventfd record")
        flags = (desc.flags & os.O_NONBLOCK) | (EFD_SEMAPHORE if rec.semaphore else 0)
        return eventfd(rec.count, flags)


HANDLER = EventfdHandler()
