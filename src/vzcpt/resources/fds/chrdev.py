"""Character devices such as /dev/null, /dev/zero, /dev/urandom: path, device number, flags.

Terminals are character devices too: resources/fds/tty.py claims them first.
"""

from __future__ import annotations

import os
import stat

from vzcpt.errors import FileChanged, Unsupported
from vzcpt.proc.fdinfo import FdInfo
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import FileDesc

# Memory devices (major 1): null, zero, full, random, urandom, ...
SIMPLE_MAJORS = {1}


class CharDeviceHandler:
    kind = "chrdev"

    def claims(self, link: str, st: os.stat_result, local: int) -> bool:
        return stat.S_ISCHR(st.st_mode)

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
        if os.major(st.st_rdev) not in SIMPLE_MAJORS:
            raise Unsupported(
                f"process {pid}: descriptor {fd} is the character device {link} "
                f"({os.major(st.st_rdev)}:{os.minor(st.st_rdev)}), "
                "which vzcpt cannot checkpoint yet"
            )
        return FileDesc(
            id=0,
            kind=self.kind,
            flags=info.flags & ~os.O_CLOEXEC,
            pos=info.pos,
            path=link,
            rdev=st.st_rdev,
        )

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        fd = os.open(ctx.host_path(desc.path), (desc.flags & ~os.O_CREAT) | os.O_CLOEXEC)
        if os.fstat(fd).st_rdev != desc.rdev:
            os.close(fd)
            raise FileChanged(f"{desc.path} is not the same device as at checkpoint")
        return fd


HANDLER = CharDeviceHandler()
