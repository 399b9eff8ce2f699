"""Directories held open (opendir, O_PATH-less O_DIRECTORY): path, flags, position."""

from __future__ import annotations

import os
import stat

from vzcpt.errors import FileChanged
from vzcpt.proc.fdinfo import FdInfo
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import FileDesc


class DirectoryHandler:
    kind = "directory"

    def claims(self, link: str, st: os.stat_result, local: int) -> bool:
        return stat.S_ISDIR(st.st_mode) and link.startswith("/")

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
            id=0, kind=self.kind, flags=info.flags & ~os.O_CLOEXEC, pos=info.pos, path=link
        )

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        try:
            fd = os.open(
                ctx.host_path(desc.path), (desc.flags & ~os.O_CREAT) | os.O_DIRECTORY | os.O_CLOEXEC
            )
        except OSError as exc:
            raise FileChanged(f"directory {desc.path} cannot be opened: {exc.strerror}") from exc
        if desc.pos:
            os.lseek(fd, desc.pos, os.SEEK_SET)
        return fd


HANDLER = DirectoryHandler()
