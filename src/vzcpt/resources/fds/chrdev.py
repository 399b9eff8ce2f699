"""Character devices such as /dev/null, /dev/zero, /dev/urandom: path, device number, flags.

Terminals are character devices too, but they are the subject of their own
module: a tty here is refused until then.
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
# Terminals: virtual consoles and serial lines (4), /dev/tty and ptmx (5),
# pseudo-terminal slaves (136-143).
TTY_MAJORS = {4, 5, *range(136, 144)}


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
        if os.major(st.st_rdev) in TTY_MAJORS:
            raise Unsupported(
                f"process {pid}: descriptor {fd} is the terminal {link}, which vzcpt cannot "
                "checkpoint yet: start the program with setsid and its input and output "
                "redirected (e.g. setsid prog </dev/null >log 2>&1)"
            )
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
