"""memfd: anonymous files with a name, content and seals, held as descriptors
and mapped, shared or private.

Kernel interfaces: a memfd shows as "/memfd:NAME (deleted)" both in
/proc/PID/fd and /proc/PID/maps; our descriptor on it (pidfd_getfd, or
/proc/PID/map_files for one only mapped) reads its content, skipping holes
(SEEK_DATA), its seals (F_GET_SEALS), mode and owner. One memfd is stored
once (MemfdRecord, keyed by inode) however many descriptions and mappings
name it.

At restore the restorer makes the memfd once (memfd_create, content written
back, mode, owner, seals) and every description and mapping is made from it:
descriptions by reopening it through /proc/self/fd with their own flags,
mappings by handing it to the process, which maps it at its place. So a
descriptor and a MAP_SHARED mapping share one memfd again. Seals go on
before any mapping, as they were when the program mapped (F_SEAL_WRITE
refuses no read-only mapping made after it, but cannot be added over a
writable one), except F_SEAL_FUTURE_WRITE: it allows the writable mappings
made before it but refuses new ones, so it is added once every process has
its memory.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from vzcpt.errors import CorruptDump, Unsupported
from vzcpt.image.schema import record
from vzcpt.inject.remote import MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PROT_WRITE, RemoteTask
from vzcpt.kernel import nr
from vzcpt.kernel.memfd import (
    F_SEAL_EXEC,
    F_SEAL_FUTURE_WRITE,
    F_SEAL_SEAL,
    F_SEAL_WRITE,
    HUGETLBFS_MAGIC,
    add_seals,
    fs_magic,
    get_seals,
    memfd_create,
    seal_names,
)
from vzcpt.proc import files as procfs
from vzcpt.proc.fdinfo import FdInfo
from vzcpt.proc.maps import MapEntry
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import FileDesc
from vzcpt.resources.shmem import SHARED_OWNER, store_content

PREFIX = "/memfd:"
DELETED = " (deleted)"
OPEN_ONLY_FLAGS = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY | os.O_CLOEXEC


@record("memfd")
@dataclass
class MemfdRecord:
    """One memfd, whatever holds it: descriptors, mappings or both."""

    id: int
    name: str  # as given to memfd_create, without the "memfd:" the kernel adds
    size: int
    seals: int
    mode: int
    uid: int
    gid: int
    pages_owner: int  # its content in the page store, at file offsets

    def __str__(self) -> str:
        seals = seal_names(self.seals)
        return f"memfd #{self.id} {self.name!r}: {self.size:,} bytes, seals {seals}"


def name_of(link: str) -> str:
    """The memfd's name from "/memfd:NAME (deleted)"."""
    name = link[len(PREFIX) :]
    return name[: -len(DELETED)] if name.endswith(DELETED) else name


def dump_object(ctx: DumpContext, held: int, name: str, where: str) -> int:
    """Store the memfd behind our descriptor `held` once; return its id."""
    st = os.fstat(held)
    key = ("memfd", st.st_dev, st.st_ino)
    if key in ctx.shared:
        return int(ctx.shared[key])
    if fs_magic(held) == HUGETLBFS_MAGIC:
        raise Unsupported(f"{where} is a hugetlbfs memfd, which vzcpt cannot checkpoint yet")
    ident = ctx.next_id("shmem")  # its pages are owned like shared memory's: one id space
    ctx.shared[key] = ident
    # Holes are found by seeking: on a description of our own, not the program's.
    fd = procfs.open_file(os.getpid(), f"fd/{held}", os.O_RDONLY)
    try:
        store_content(ctx, fd, st.st_size, SHARED_OWNER + ident)
    finally:
        os.close(fd)
    ctx.records.append(
        MemfdRecord(
            id=ident,
            name=name,
            size=st.st_size,
            seals=get_seals(held),
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            pages_owner=SHARED_OWNER + ident,
        )
    )
    return ident


def dump_mapping(ctx: DumpContext, pid: int, e: MapEntry) -> int:
    """Store the memfd a mapping maps; return its id."""
    fd = procfs.open_file(pid, f"map_files/{e.start:x}-{e.end:x}", os.O_RDONLY)
    try:
        return dump_object(ctx, fd, e.path[len(PREFIX) :], f"process {pid}: mapping {e.start:#x}")
    finally:
        os.close(fd)


def _record(ctx: RestoreContext, ident: int) -> MemfdRecord:
    known: dict[int, MemfdRecord] = ctx.extra.setdefault(
        "memfd-records", {r.id: r for r in ctx.image.records_of(MemfdRecord)}
    )
    if ident not in known:
        raise CorruptDump(f"the dump lacks memfd {ident}")
    return known[ident]


def open_object(ctx: RestoreContext, ident: int) -> int:
    """Our read-write descriptor on the rebuilt memfd `ident`, made on first use."""
    key = ("memfd", ident)
    if key in ctx.local_fds:
        return ctx.local_fds[key]
    rec = _record(ctx, ident)
    # Made sealed against exec if it was so made (vm.memfd_noexec may demand it).
    noexec = bool(rec.seals & F_SEAL_EXEC) and not rec.mode & 0o111
    fd = memfd_create(rec.name, noexec_seal=noexec)
    ctx.local_fds[key] = fd  # closed with the context, whatever happens next
    os.ftruncate(fd, rec.size)
    for run in ctx.image.pages_of(rec.pages_owner):
        data = memoryview(run.data)[: max(0, rec.size - run.address)]  # no padding past the end
        position = run.address
        while data:
            written = os.pwrite(fd, data, position)
            data, position = data[written:], position + written
    os.fchown(fd, rec.uid, rec.gid)
    os.fchmod(fd, rec.mode)
    late = rec.seals & (F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) if _seal_late(rec.seals) else 0
    add_seals(fd, rec.seals & ~late)
    if late:
        ctx.finishers.append(lambda: add_seals(fd, late))
    return fd


def _seal_late(seals: int) -> bool:
    """F_SEAL_FUTURE_WRITE waits for the mappings (F_SEAL_WRITE makes it moot)."""
    return bool(seals & F_SEAL_FUTURE_WRITE) and not seals & F_SEAL_WRITE


def _readonly(ctx: RestoreContext, ident: int) -> int:
    """Our read-only description of the memfd, for mappings that may never write it."""
    key = ("memfd-ro", ident)
    if key not in ctx.local_fds:
        ctx.local_fds[key] = procfs.open_file(
            os.getpid(), f"fd/{open_object(ctx, ident)}", os.O_RDONLY
        )
    return ctx.local_fds[key]


def map_into(
    ctx: RestoreContext,
    task: RemoteTask,
    start: int,
    end: int,
    prot: int,
    shared: bool,
    offset: int,
    ident: int,
) -> None:
    """Map memfd `ident` at [start, end) of the task, as the saved mapping was.

    A shared mapping that can write is made from a read-write description;
    any other from a read-only one, as a program's read-only mapping of a
    sealed memfd must be (and a private one writes only its own copies).
    """
    writes = shared and bool(prot & PROT_WRITE)
    local = open_object(ctx, ident) if writes else _readonly(ctx, ident)
    (fd,) = ctx.channel.install(task, [local])
    try:
        task.call(
            nr.MMAP,
            start,
            end - start,
            prot,
            (MAP_SHARED if shared else MAP_PRIVATE) | MAP_FIXED,
            fd,
            offset,
            what=f"mmap of memfd {ident} at {start:#x}",
        )
    finally:
        task.call(nr.CLOSE, fd, what="close")


class MemfdHandler:
    kind = "memfd"

    def claims(self, link: str, st: os.stat_result, local: int) -> bool:
        return stat.S_ISREG(st.st_mode) and link.startswith(PREFIX) and st.st_nlink == 0

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
        ident = dump_object(ctx, local, name_of(link), f"process {pid}: descriptor {fd}")
        return FileDesc(
            id=0, kind=self.kind, flags=info.flags & ~os.O_CLOEXEC, pos=info.pos, memfd=ident
        )

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        memfd = open_object(ctx, desc.memfd)
        fd = procfs.open_file(os.getpid(), f"fd/{memfd}", desc.flags & ~OPEN_ONLY_FLAGS)
        os.lseek(fd, desc.pos, os.SEEK_SET)
        return fd


HANDLER = MemfdHandler()
