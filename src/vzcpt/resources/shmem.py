"""Shared memory objects: MAP_SHARED|MAP_ANONYMOUS regions and System V segments.

Kernel interfaces: both are shmem files, reachable from any process that maps
them through /proc/PID/map_files/START-END (root); SEEK_DATA/SEEK_HOLE skip
the pages never touched. At restore the restorer creates a new shared
anonymous object in itself (an anonymous MAP_SHARED mapping, which the kernel
names "/dev/zero (deleted)" like the original), fills it through its
map_files descriptor, and hands that descriptor to every process that mapped
the object, which maps it at its saved place: sharing survives. System V
segments are re-attached with shmat when the segment still exists.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

from vzcpt.errors import FileChanged, Unsupported
from vzcpt.image.schema import record
from vzcpt.inject.remote import MAP_FIXED, MAP_SHARED, RemoteTask
from vzcpt.kernel import nr, sysv
from vzcpt.kernel.libc import buffer_address
from vzcpt.kernel.vm import PAGE_SIZE
from vzcpt.proc import files as procfs
from vzcpt.proc.maps import MapEntry
from vzcpt.resources import pages
from vzcpt.resources.context import DumpContext, RestoreContext

SHARED_OWNER = 1 << 40  # page-run owner ids at and above this are shared objects
BATCH_BYTES = 64 << 20
SHM_RDONLY = 0o10000
SHM_REMAP = 0o40000


@record("shared-memory")
@dataclass
class SharedMemRecord:
    """A shared memory object mapped by one or more processes of the tree."""

    id: int
    kind: str  # shmem (MAP_SHARED|MAP_ANONYMOUS) | sysv
    size: int
    sysv_id: int = -1
    pages_owner: int = 0


def dump_object(ctx: DumpContext, pid: int, e: MapEntry, kind: str) -> int:
    """Store a shared memory object once, however many processes map it; return its id."""
    key = ("shmem", e.dev, e.inode)
    if key in ctx.shared:
        return int(ctx.shared[key])
    ident = ctx.next_id("shmem")
    ctx.shared[key] = ident
    owner = SHARED_OWNER + ident
    fd = procfs.open_file(pid, f"map_files/{e.start:x}-{e.end:x}", os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        store_content(ctx, fd, size, owner)
    finally:
        os.close(fd)
    ctx.records.append(
        SharedMemRecord(
            id=ident,
            kind=kind,
            size=size,
            sysv_id=e.inode if kind == "sysv" else -1,
            pages_owner=owner,
        )
    )
    return ident


def store_content(ctx: DumpContext, fd: int, size: int, owner: int) -> None:
    """Store the data of a shmem file (shared memory, a memfd) as page runs of
    `owner`; its holes and its pages of zeros are not stored."""
    for start, end in data_extents(fd, size):
        for offset in range(start, end, BATCH_BYTES):
            chunk = bytearray(os.pread(fd, min(BATCH_BYTES, end - offset), offset))
            chunk += bytes(-len(chunk) % PAGE_SIZE)  # the last page, padded
            pages.write_nonzero(ctx, owner, offset, chunk)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The (start, end) byte ranges of a shmem file that hold data."""
    extents = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, end))
        pos = end
    return extents


def _object(ctx: RestoreContext, ident: int) -> SharedMemRecord:
    for rec in ctx.image.records_of(SharedMemRecord):
        if rec.id == ident:
            return rec
    raise Unsupported(f"the dump lacks shared memory object {ident}")


def _create_shmem(ctx: RestoreContext, obj: SharedMemRecord) -> int:
    """A new shared anonymous object holding the saved pages; return our fd on it."""
    area = mmap.mmap(-1, obj.size, flags=mmap.MAP_SHARED)
    try:
        address = buffer_address(area)
        fd = procfs.open_file(
            os.getpid(), f"map_files/{address:x}-{address + obj.size:x}", os.O_RDWR
        )
    finally:
        area.close()
    for run in ctx.image.pages_of(obj.pages_owner):
        os.pwrite(fd, run.data, run.address)
    return fd


def map_shared(
    ctx: RestoreContext,
    task: RemoteTask,
    start: int,
    end: int,
    prot: int,
    offset: int,
    kind: str,
    ident: int,
) -> None:
    """Map shared object `ident` at [start, end) of the task."""
    obj = _object(ctx, ident)
    if kind == "sysv":
        _attach_sysv(ctx, task, obj, start, prot)
        return
    key = ("shmem", ident)
    if key not in ctx.local_fds:
        ctx.local_fds[key] = _create_shmem(ctx, obj)
    (fd,) = ctx.channel.install(task, [ctx.local_fds[key]])
    try:
        task.call(
            nr.MMAP,
            start,
            end - start,
            prot,
            MAP_SHARED | MAP_FIXED,
            fd,
            offset,
            what=f"mmap of shared memory at {start:#x}",
        )
    finally:
        task.call(nr.CLOSE, fd, what="close")


def _attach_sysv(
    ctx: RestoreContext, task: RemoteTask, obj: SharedMemRecord, start: int, prot: int
) -> None:
    """Attach the segment: recreated from the dump in a VE's own IPC namespace, else
    it must still exist as it was in ours."""
    if ctx.own_ipc:
        flags = SHM_REMAP | (0 if prot & 2 else SHM_RDONLY)
        task.call(nr.SHMAT, obj.sysv_id, start, flags, what=f"shmat({obj.sysv_id})")
        return
    size = sysv.shm_size(obj.sysv_id)
    if size is None:
        raise FileChanged(
            f"System V shared memory segment {obj.sysv_id} no longer exists: "
            "it is recreated only when a whole VE (with its IPC namespace) is restored"
        )
    if size != obj.size:
        raise FileChanged(f"System V shared memory segment {obj.sysv_id} changed size")
    flags = SHM_REMAP | (0 if prot & 2 else SHM_RDONLY)
    task.call(nr.SHMAT, obj.sysv_id, start, flags, what=f"shmat({obj.sysv_id})")
