"""inotify: its watches, each with its path, mask and watch descriptor number.

Kernel interfaces: fdinfo lists each watch ("inotify wd:... ino:... sdev:...
mask:... f_handle:...", hex); the path of the watched file comes from its
file handle: open_by_handle_at() on a mount of that file system in the
process's mount namespace, then the link of the descriptor it gives.

Watch descriptors are the kernel's choice: inotify_add_watch() takes the
smallest free number from a cursor that only moves up (idr_alloc_cyclic from
1, fs/notify/inotify/inotify_user.c), and removing a watch frees its number
but leaves the cursor where it is. So the watches are added again in
ascending order; one that gets a number below its own is removed and added
again, which moves the cursor on by one, until it lands on its number. Each
removal queues an IN_IGNORED event: the queue is emptied at the end, so the
program finds no event it could not have seen (none is kept from the dump:
events not yet read at checkpoint cannot be put back, and are refused).
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass, field

from vzcpt.errors import CorruptDump, FileChanged, SyscallFailed, Unsupported, VzcptError
from vzcpt.kernel.eventfds import (
    IN_DONT_FOLLOW,
    inotify_add_watch,
    inotify_init,
    inotify_rm_watch,
    open_by_handle,
    queued_bytes,
)
from vzcpt.proc import files as procfs
from vzcpt.proc.fdinfo import FdInfo, InotifyMark, inotify_marks
from vzcpt.proc.mountinfo import parse_mountinfo
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import AnonInodeKind, FileDesc

LINK = "anon_inode:inotify"
DELETED = " (deleted)"


@dataclass
class InotifyWatch:
    wd: int
    path: str  # as the program sees it
    mask: int  # events and flags (IN_ONESHOT, IN_EXCL_UNLINK, ...)

    def __str__(self) -> str:
        return f"wd {self.wd} {self.path} mask {self.mask:#x}"


@dataclass
class InotifyRecord:
    watches: list[InotifyWatch] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{len(self.watches)} watches"


def _watched_path(pid: int, mark: InotifyMark, where: str) -> str:
    """The path of the file a watch is on, as the process sees it."""
    if not mark.handle:
        raise Unsupported(
            f"{where} watches inode {mark.ino} on a file system that gives no file "
            "handle, which vzcpt cannot checkpoint"
        )
    dev = (mark.sdev >> 20, mark.sdev & 0xFFFFF)
    mounts = [m for m in parse_mountinfo(procfs.read(pid, "mountinfo")) if m.dev == dev]
    mounts.sort(key=lambda m: m.root != "/")  # the whole file system first
    for mount in mounts:
        try:
            mount_fd = procfs.open_file(pid, "root" + mount.mountpoint, os.O_RDONLY)
        except OSError:
            continue
        try:
            if os.fstat(mount_fd).st_dev != os.makedev(*dev):
                continue  # another mount on top of it
            fd = open_by_handle(mount_fd, mark.handle_type, mark.handle, os.O_PATH)
        except SyscallFailed as exc:
            if exc.errno == errno.ESTALE:
                raise Unsupported(
                    f"{where} watches inode {mark.ino}, which was deleted: "
                    "vzcpt cannot watch it again"
                ) from exc
            raise
        finally:
            os.close(mount_fd)
        try:
            path = procfs.readlink(os.getpid(), f"fd/{fd}")
        finally:
            os.close(fd)
        if path.endswith(DELETED):
            raise Unsupported(f"{where} watches {path}, which vzcpt cannot watch again")
        return path
    raise Unsupported(f"{where} watches inode {mark.ino} on device {dev}, which is not mounted")


class InotifyHandler(AnonInodeKind):
    kind = "inotify"
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
        where = f"process {pid}: descriptor {fd} (inotify)"
        queued = queued_bytes(local)
        if queued:
            raise Unsupported(
                f"{where} has {queued} bytes of events not yet read, which cannot be put "
                "back after restore: checkpoint again once the program has read them"
            )
        watches = [
            InotifyWatch(wd=m.wd, path=_watched_path(pid, m, where), mask=m.mask)
            for m in inotify_marks(info)
        ]
        return FileDesc(
            id=0,
            kind=self.kind,
            flags=info.flags & ~os.O_CLOEXEC,
            inotify=InotifyRecord(watches=sorted(watches, key=lambda w: w.wd)),
        )

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        if desc.inotify is None:
            raise CorruptDump(f"file {desc.id} of kind inotify has no inotify record")
        fd = inotify_init(os.O_NONBLOCK)
        try:
            placed: set[int] = set()
            for watch in sorted(desc.inotify.watches, key=lambda w: w.wd):
                _add_at(ctx, fd, watch, placed)
                placed.add(watch.wd)
            while _drain(fd):
                pass
            fcntl.fcntl(fd, fcntl.F_SETFL, desc.flags & os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd


def _add_at(ctx: RestoreContext, fd: int, watch: InotifyWatch, placed: set[int]) -> None:
    """Add the watch so that it gets its saved number (see the module's docstring)."""
    path = ctx.host_path(watch.path)
    while True:
        try:
            wd = inotify_add_watch(fd, path, watch.mask | IN_DONT_FOLLOW)
        except SyscallFailed as exc:
            raise FileChanged(
                f"cannot watch {watch.path} again ({os.strerror(exc.errno)}): restore "
                "needs the files the programs watched"
            ) from exc
        if wd == watch.wd:
            return
        if wd in placed:
            raise FileChanged(
                f"{watch.path} is now the file another watch is on (watch {wd}): "
                "restore needs the files the programs watched as they were"
            )
        if wd > watch.wd:  # the cursor never passes a number still to place
            raise VzcptError(f"inotify gave watch {wd} where {watch.wd} was wanted")
        inotify_rm_watch(fd, wd)


def _drain(fd: int) -> bool:
    """Read queued events away; True if there were some."""
    try:
        return bool(os.read(fd, 1 << 16))
    except BlockingIOError:
        return False


HANDLER = InotifyHandler()
