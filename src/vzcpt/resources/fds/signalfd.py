"""signalfd: the set of signals it reads.

Kernel interfaces: fdinfo's "sigmask" (hex, bit N-1 for signal N); the
O_NONBLOCK status flag is SFD_NONBLOCK. A signalfd holds nothing but its
mask: it reads the signals pending for whichever process reads it, so the
restorer may make it (signalfd4) and hand it over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vzcpt.errors import CorruptDump
from vzcpt.kernel.eventfds import signalfd
from vzcpt.proc.fdinfo import FdInfo, signalfd_mask
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import AnonInodeKind, FileDesc

LINK = "anon_inode:[signalfd]"


@dataclass
class SignalfdRecord:
    mask: int = 0  # bit N-1 for signal N

    def __str__(self) -> str:
        signals = [n + 1 for n in range(64) if self.mask >> n & 1]
        return "signals " + (" ".join(map(str, signals)) or "none")


class SignalfdHandler(AnonInodeKind):
    kind = "signalfd"
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
        return FileDesc(
            id=0,
            kind=self.kind,
            flags=info.flags & ~os.O_CLOEXEC,
            signalfd=SignalfdRecord(mask=signalfd_mask(info)),
        )

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        if desc.signalfd is None:
            raise CorruptDump(f"file {desc.id} of kind signalfd has no signalfd record")
        return signalfd(desc.signalfd.mask, desc.flags & os.O_NONBLOCK)


HANDLER = SignalfdHandler()
