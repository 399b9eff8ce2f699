"""The descriptor table of a process: dump every slot, restore every slot.

Descriptions are found once: a descriptor whose description we already know
(kcmp says so) becomes a reference to it. At restore, descriptions are
opened by the restorer, handed to the task in one batch, then moved to their
numbers without ever closing one that is still to be placed.
"""

from __future__ import annotations

import os

from vzcpt.errors import FileChanged, Unsupported
from vzcpt.inject.fdpass import FdChannel
from vzcpt.inject.remote import RemoteTask
from vzcpt.kernel import nr
from vzcpt.kernel.fds import same_file, steal_fd
from vzcpt.proc import files as procfs
from vzcpt.proc.fdinfo import parse_fdinfo
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import FdEntry, FileDesc, LockRecord, catalogue, describe, handler_for

F_SETFD = 2
FD_CLOEXEC = 1
F_SETLK = 6
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
            handler = next((h for h in catalogue() if h.claims(link, st)), None)
            if handler is None:
                raise Unsupported(
                    f"process {pid}: descriptor {fd} is {describe(link)}, "
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
        for lock in desc.locks:
            if lock.kind == "FLOCK":  # belongs to the description: take it here
                import fcntl

                fcntl.flock(ctx.local_fds[key], fcntl.LOCK_EX if lock.write else fcntl.LOCK_SH)
    return ctx.local_fds[key]


def restore_table(
    ctx: RestoreContext,
    task: RemoteTask,
    entries: list[FdEntry],
    files: dict[int, FileDesc],
    channel: FdChannel,
) -> None:
    """Install every descriptor at its number; the channel's own slot is left alone."""
    if not entries:
        return
    locals_ = [open_description(ctx, files[e.file_id]) for e in entries]
    received = channel.install(task, locals_)
    placed: dict[int, int] = {}  # number in the task -> index of the entry living there
    pending = {num: i for i, num in enumerate(received)}
    for i, entry in enumerate(entries):
        current = received[i]
        if current != entry.fd:
            if entry.fd in pending and pending[entry.fd] != i:
                # Another received descriptor sits on our number: move it away first.
                other = pending.pop(entry.fd)
                moved = task.call(
                    nr.FCNTL,
                    entry.fd,
                    1030,
                    channel.remote_fd + 1,  # F_DUPFD_CLOEXEC
                    what="fcntl(F_DUPFD_CLOEXEC)",
                )
                task.call(nr.CLOSE, entry.fd, what="close")
                received[other] = moved
                pending[moved] = other
            task.call(
                nr.DUP3,
                current,
                entry.fd,
                os.O_CLOEXEC if entry.cloexec else 0,
                what=f"dup3 to descriptor {entry.fd}",
            )
            task.call(nr.CLOSE, current, what="close")
            pending.pop(current, None)
        elif not entry.cloexec:
            task.call(nr.FCNTL, entry.fd, F_SETFD, 0, what="fcntl(F_SETFD)")
        placed[entry.fd] = i
        pending.pop(entry.fd, None)
    for entry in entries:
        for lock in files[entry.file_id].locks:
            if lock.kind == "POSIX":  # belongs to the process: take it from inside
                _posix_lock(task, entry.fd, lock)


def _posix_lock(task: RemoteTask, fd: int, lock: LockRecord) -> None:
    length = 0 if lock.end is None else lock.end - lock.start + 1
    flock = (
        (F_WRLCK if lock.write else F_RDLCK).to_bytes(2, "little")
        + (0).to_bytes(2, "little")
        + bytes(4)
        + lock.start.to_bytes(8, "little")
        + length.to_bytes(8, "little")
        + bytes(8)
    )
    task.put(0, flock)
    task.call_raw(nr.FCNTL, fd, F_SETLK, task.scratch)
