"""The descriptor table of a process: dump every slot, restore every slot.

Descriptions are found once: a descriptor whose description we already know
(kcmp says so) becomes a reference to it. At restore, descriptions are
opened by the restorer, handed to the task in one batch, then moved to their
numbers without ever closing one that is still to be placed.
"""

from __future__ import annotations

import fcntl
import os
import struct

from vzcpt.errors import FileChanged, Unsupported
from vzcpt.inject.fdpass import FdChannel
from vzcpt.inject.remote import RemoteTask
from vzcpt.kernel import nr
from vzcpt.kernel.fds import fs_magic, same_file, steal_fd
from vzcpt.proc import files as procfs
from vzcpt.proc.fdinfo import parse_fdinfo
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import (
    FdEntry,
    FileDesc,
    LockRecord,
    by_file_system,
    catalogue,
    describe,
    handler_for,
)

F_SETFD = 2
FD_CLOEXEC = 1
F_SETLK = 6
F_OFD_SETLK = 37
F_DUPFD_CLOEXEC = 1030
F_WRLCK = 1
F_RDLCK = 0


def dump_table(ctx: DumpContext, pid: int, skip: frozenset[int] = frozenset()) -> list[FdEntry]:
    entries = []
    known: dict[tuple[int, int], list[tuple[int, int]]] = ctx.shared.setdefault("files", {})
    for fd in procfs.fds(pid):
        if fd in skip:
            continue
        link = procfs.readlink(pid, f"fd/{fd}")
        info = parse_fdinfo(procfs.read(pid, f"fdinfo/{fd}"))
        local = steal_fd(pid, fd)
        st = os.fstat(local)
        same_inode = known.setdefault((st.st_dev, st.st_ino), [])
        file_id = next((fid for fid, other in same_inode if same_file(local, other)), 0)
        if file_id:
            os.close(local)
        else:
            ctx.held_fds.append(local)
            handler = by_file_system().get(fs_magic(local)) or next(
                (h for h in catalogue() if h.claims(link, st, local)), None
            )
            if handler is None:
                raise Unsupported(
                    f"process {pid}: descriptor {fd} is {describe(link, local)}, "
                    "which vzcpt cannot checkpoint yet"
                )
            desc = handler.dump(ctx, pid, fd, local, link, st, info)
            desc.id = file_id = ctx.next_id("file")
            desc.locks = [LockRecord(lk.kind, lk.write, lk.start, lk.end) for lk in info.locks]
            ctx.records.append(desc)
            same_inode.append((file_id, local))
            ctx.stats.files += 1
        entries.append(FdEntry(fd=fd, file_id=file_id, cloexec=bool(info.flags & os.O_CLOEXEC)))
    return entries


def open_description(ctx: RestoreContext, desc: FileDesc) -> int:
    key = ("file", desc.id)
    if key not in ctx.local_fds:
        try:
            ctx.local_fds[key] = handler_for(desc.kind).open(ctx, desc)
        except OSError as exc:
            what = desc.path or f"a {desc.kind}"
            raise FileChanged(
                f"cannot open {what} again ({exc.strerror}): restore needs the files "
                "the programs had open as they were at checkpoint"
            ) from exc
        for lock in desc.locks:  # these belong to the description: take them here
            if lock.kind == "FLOCK":
                fcntl.flock(ctx.local_fds[key], fcntl.LOCK_EX if lock.write else fcntl.LOCK_SH)
            elif lock.kind == "OFDLCK":
                fcntl.fcntl(ctx.local_fds[key], F_OFD_SETLK, _flock(lock))
    return ctx.local_fds[key]


def restore_table(
    ctx: RestoreContext,
    task: RemoteTask,
    entries: list[FdEntry],
    files: dict[int, FileDesc],
    channel: FdChannel,
) -> None:
    """Install every descriptor at its number; the channel's own slot is left alone.

    Received descriptors land on the lowest free numbers. Those already on
    their number stay; the others are first lifted above every number in
    play and then put down on theirs, so no move ever closes one still to
    be placed. One round trip to receive them, one more to lift the misplaced
    ones if any; the rest is queued, to run with the process's next batch.
    """
    if not entries:
        return
    received = channel.install(task, [open_description(ctx, files[e.file_id]) for e in entries])
    misplaced = [(e, r) for e, r in zip(entries, received, strict=True) if e.fd != r]
    base = max([channel.remote_fd, *received, *(e.fd for e in entries)]) + 1
    lifted = task.batch(
        [(nr.FCNTL, r, F_DUPFD_CLOEXEC, base) for _, r in misplaced], what="fcntl(F_DUPFD)"
    )
    calls: list[tuple[int, ...]] = [(nr.CLOSE, r) for _, r in misplaced]
    for (entry, _), high in zip(misplaced, lifted, strict=True):
        calls.append((nr.DUP3, high, entry.fd, os.O_CLOEXEC if entry.cloexec else 0))
        calls.append((nr.CLOSE, high))
    calls += [
        (nr.FCNTL, e.fd, F_SETFD, 0)  # received close-on-exec; keep it only where it was
        for e, r in zip(entries, received, strict=True)
        if e.fd == r and not e.cloexec
    ]
    for number, *args in calls:
        task.queue(number, *args, what=f"placing descriptors (syscall {number})")
    for entry in entries:
        for lock in files[entry.file_id].locks:
            if lock.kind == "POSIX":  # the process's own: taken from inside it
                task.queue(nr.FCNTL, entry.fd, F_SETLK, _flock(lock), what="fcntl(F_SETLK)")


def _flock(lock: LockRecord) -> bytes:
    """struct flock for a saved byte-range lock (l_whence SEEK_SET, l_len 0 = to EOF)."""
    length = 0 if lock.end is None else lock.end - lock.start + 1
    kind = F_WRLCK if lock.write else F_RDLCK
    return struct.pack("<hhxxxxqqixxxx", kind, 0, lock.start, length, 0)
