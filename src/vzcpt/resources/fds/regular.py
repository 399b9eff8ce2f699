"""Regular files: path, access mode and status flags, offset; unlinked files with content.

Kernel interfaces: the /proc/PID/fd link names the file (" (deleted)" when
unlinked, then st_nlink is 0 and the content is read through our own
descriptor on the description); fdinfo gives pos and flags. At restore the
file must still be what it was: same size, else the restore is refused.
"""

from __future__ import annotations

import os
import stat

from vzcpt.errors import FileChanged
from vzcpt.proc.fdinfo import FdInfo
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import FileDesc

DELETED = " (deleted)"
OPEN_ONLY_FLAGS = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY | os.O_CLOEXEC


class RegularHandler:
    kind = "regular"

    def claims(self, link: str, st: os.stat_result, local: int) -> bool:
        return stat.S_ISREG(st.st_mode) and link.startswith("/")

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
        deleted = st.st_nlink == 0
        path = link[: -len(DELETED)] if deleted and link.endswith(DELETED) else link
        content = _read_all(local, st.st_size) if deleted else None
        return FileDesc(
            id=0,
            kind=self.kind,
            flags=info.flags & ~os.O_CLOEXEC,
            pos=info.pos,
            path=path,
            size=st.st_size,
            deleted=deleted,
            content=content,
        )

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        flags = desc.flags & ~OPEN_ONLY_FLAGS
        path = ctx.host_path(desc.path)
        if desc.deleted:
            fd = _recreate_unlinked(desc, flags, path)
        else:
            check_unchanged(desc, path)
            fd = os.open(path, flags | os.O_CLOEXEC)
        os.lseek(fd, desc.pos, os.SEEK_SET)
        return fd


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 24), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def check_unchanged(desc: FileDesc, path: str) -> None:
    """Refuse a file that vanished or changed size; `path` is how we reach desc.path."""
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise FileChanged(
            f"{desc.path} is gone ({exc.strerror}); the restored program had it "
            "open: restore needs the file system as it was at checkpoint"
        ) from exc
    if desc.size >= 0 and size != desc.size and not desc.flags & os.O_APPEND:
        raise FileChanged(
            f"{desc.path} changed size since the checkpoint ({desc.size} -> {size} bytes)"
        )


def _recreate_unlinked(desc: FileDesc, flags: int, path: str) -> int:
    """Bring an unlinked file back: create it, fill it, open it, unlink it again."""
    directory, name = os.path.split(path)
    candidate = path
    n = 0
    while os.path.lexists(candidate):
        n += 1
        candidate = os.path.join(directory, f".{name}.vzcpt-{n}")
    fd = os.open(candidate, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, desc.content or b"")
        final = os.open(candidate, flags | os.O_CLOEXEC)
    finally:
        os.close(fd)
        os.unlink(candidate)
    return final


HANDLER = RegularHandler()
