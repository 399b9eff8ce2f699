"""The address space: mappings, their pages, and the mm fields of prctl(PR_SET_MM_MAP).

Kernel interfaces: /proc/PID/smaps lists the mappings with their VmFlags;
/proc/PID/pagemap tells which pages are present, swapped, file-backed or the
shared zero page; process_vm_readv/writev move the pages; shared memory
(MAP_SHARED|MAP_ANONYMOUS, System V shm) is read through
/proc/PID/map_files, skipping holes with SEEK_DATA; mmap, mremap, mprotect,
madvise and prctl(PR_SET_MM_MAP) run inside the restored task.

What is stored: for private mappings, the pages that are the process's own
(anonymous, or copied on write from a file), never those still backed by the
file nor the zero page, nor pages whose content is all zeros. Shared file
mappings need no pages: their content is the file. Shared anonymous memory and
memfds are stored once per object and mapped again by every process that
shared them (resources/shmem.py, resources/fds/memfd.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vzcpt.errors import FileChanged, KernelMismatch, Unsupported
from vzcpt.image.reader import PageRun
from vzcpt.inject.remote import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_GROWSDOWN,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    Placed,
    RemoteTask,
)
from vzcpt.kernel import nr, pagescan, vm
from vzcpt.kernel.vm import MM_MAP_SIZE, PAGE_SIZE, PrctlMmMap
from vzcpt.proc import files as procfs
from vzcpt.proc.auxv import parse_auxv
from vzcpt.proc.maps import MapEntry, parse_maps, parse_smaps
from vzcpt.proc.stat import parse_stat
from vzcpt.resources import pages, precopy, shmem
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import memfd
from vzcpt.resources.ranges import intersect

SPECIAL = ("[vdso]", "[vvar]", "[vvar_vclock]")
BATCH_BYTES = 64 << 20

MADV_DONTFORK = 10
MADV_WIPEONFORK = 18
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADVISE_BY_VMFLAG = {
    "dc": MADV_DONTFORK,
    "wf": MADV_WIPEONFORK,
    "hg": MADV_HUGEPAGE,
    "nh": MADV_NOHUGEPAGE,
}
MADVISE_FLAGS = frozenset(MADVISE_BY_VMFLAG)

PARALLEL_PIECE = 16 << 20  # pages written per piece when two threads share the work
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
TASK_SIZE = 0x7FFFFFFFF000  # top of the 47-bit user address space

PR_SET_MM = 35
PR_SET_MM_MAP = 14


@dataclass
class VmaRecord:
    start: int
    end: int
    prot: int
    shared: bool
    kind: str  # anon | file | shmem | sysv | memfd | vdso | vvar | vvar_vclock
    path: str = ""
    offset: int = 0  # file offset in bytes (shmem: offset in the object)
    growsdown: bool = False
    madvise: list[int] = field(default_factory=list)
    shmem_id: int = 0  # the SharedMemRecord for kind shmem / sysv, the MemfdRecord for memfd
    file_size: int = -1  # for file mappings: size at dump, checked at restore


@dataclass
class MmRecord:
    start_code: int
    end_code: int
    start_data: int
    end_data: int
    start_brk: int
    brk: int
    start_stack: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int
    auxv: list[int]
    exe: str
    vmas: list[VmaRecord]
    # Pages saved while the tree ran, still exact at the freeze: [start, end)
    # ranges of the page runs of owner `precopy_owner` (resources/precopy.py).
    precopy_owner: int = 0
    precopied: list[list[int]] = field(default_factory=list)


# ---------------------------------------------------------------- dump


def read_mappings(pid: int) -> list[tuple[MapEntry, frozenset[str]]]:
    """The mappings of a process with their VmFlags: smaps has both, so it is read alone."""
    return parse_smaps(procfs.read(pid, "smaps"))


def dump_mm(
    ctx: DumpContext,
    pid: int,
    mappings: list[tuple[MapEntry, frozenset[str]]],
    brk: int,
    tracked: precopy.Tracked | None = None,
) -> MmRecord:
    """Save the address space; `mappings` (read_mappings) must not include our
    scratch area; `brk` is what brk(0) returned in the process; `tracked`: its
    pages pre-copied while it ran, if any."""
    stat = parse_stat(procfs.read(pid, "stat"))
    auxv = [v for pair in parse_auxv(procfs.read(pid, "auxv")) for v in pair]
    vmas = []
    for entry, vmflags in mappings:
        if entry.path != "[vsyscall]":
            vmas.append(_vma_record(ctx, pid, entry, vmflags))
    # One walk of the page tables finds the pages to save and, in a tracked
    # process, which of them it wrote since they were pre-copied.
    written = pagescan.PAGE_IS_WRITTEN if tracked is not None else 0
    own = pages.own_page_runs(pid, [v for v in vmas if _has_own_pages(v)], report=written)
    valid = precopy.valid_ranges(tracked, mappings, own) if tracked is not None else []
    ctx.stats.pages_precopy_kept += sum(end - start for start, end in valid) // PAGE_SIZE
    pages.dump_private_pages(ctx, pid, [(start, end) for start, end, _ in own], valid)
    return MmRecord(
        start_code=stat.startcode,
        end_code=stat.endcode,
        start_data=stat.start_data,
        end_data=stat.end_data,
        start_brk=stat.start_brk,
        brk=brk,
        start_stack=stat.startstack,
        arg_start=stat.arg_start,
        arg_end=stat.arg_end,
        env_start=stat.env_start,
        env_end=stat.env_end,
        auxv=auxv,
        exe=procfs.readlink(pid, "exe"),
        vmas=vmas,
        precopy_owner=precopy.PRECOPY_OWNER + pid if valid else 0,
        precopied=[[start, end] for start, end in valid],
    )


def _vma_record(ctx: DumpContext, pid: int, e: MapEntry, vmflags: frozenset[str]) -> VmaRecord:
    prot = (
        (PROT_READ if e.readable else 0)
        | (PROT_WRITE if e.writable else 0)
        | (PROT_EXEC if e.executable else 0)
    )
    vma = VmaRecord(
        start=e.start,
        end=e.end,
        prot=prot,
        shared=e.shared,
        kind="anon",
        path=e.path,
        offset=e.offset,
        growsdown="gd" in vmflags,
        madvise=sorted(MADVISE_BY_VMFLAG[f] for f in vmflags & MADVISE_FLAGS),
    )
    if e.path in SPECIAL:
        vma.kind = e.path.strip("[]")
    elif e.path.startswith("/SYSV"):  # its inode is the shmid, which may well be 0
        vma.kind = "sysv"
        vma.shmem_id = shmem.dump_object(ctx, pid, e, "sysv")
    elif e.inode == 0:
        if e.shared:
            raise Unsupported(f"process {pid}: shared mapping {e.start:#x} without a file")
        vma.kind = "anon"
    elif e.shared and e.path == "/dev/zero" and e.deleted:
        vma.kind = "shmem"
        vma.shmem_id = shmem.dump_object(ctx, pid, e, "shmem")
    elif e.path.startswith(memfd.PREFIX) and e.deleted:
        vma.kind = "memfd"
        vma.shmem_id = memfd.dump_mapping(ctx, pid, e)
    elif e.deleted:
        raise Unsupported(
            f"process {pid}: mapping of {e.path!r}{' (deleted)' if e.deleted else ''} "
            f"at {e.start:#x} is not supported yet"
        )
    else:
        vma.kind = "file"
        vma.file_size = _file_size(ctx, pid, e)
    return vma


def _file_size(ctx: DumpContext, pid: int, e: MapEntry) -> int:
    """The size of a mapped file, asked once per file of the dump (a tree maps
    the same libraries many times over)."""
    sizes: dict[tuple[tuple[int, int], int], int] = ctx.shared.setdefault("file-sizes", {})
    key = (e.dev, e.inode)
    if key not in sizes:
        sizes[key] = procfs.stat(pid, f"map_files/{e.start:x}-{e.end:x}").st_size
    return sizes[key]


def _has_own_pages(vma: VmaRecord) -> bool:
    """Private mappings hold pages of their own; a file guard region (---p) cannot."""
    if vma.shared or vma.kind not in ("anon", "file", "memfd"):
        return False
    return vma.kind == "anon" or bool(vma.prot & PROT_READ)


# ---------------------------------------------------------------- restore


def check_files(fs_root: str, mm: MmRecord, pid: int) -> None:
    """Refuse before anything runs if a mapped file changed size or vanished."""
    checked: set[tuple[str, int]] = set()  # a file is mapped several times over
    for vma in mm.vmas:
        if vma.kind != "file" or (vma.path, vma.file_size) in checked:
            continue
        checked.add((vma.path, vma.file_size))
        try:
            size = os.stat(fs_root + vma.path).st_size
        except OSError as exc:
            raise FileChanged(
                f"process {pid} maps {vma.path}, which is gone ({exc.strerror}): "
                "restore needs the file system as it was at checkpoint"
            ) from exc
        if vma.file_size >= 0 and size != vma.file_size:
            raise FileChanged(
                f"process {pid} maps {vma.path}, which changed size "
                f"({vma.file_size} -> {size} bytes) since the checkpoint"
            )


def replace_mm(ctx: RestoreContext, task: RemoteTask, pid: int, mm: MmRecord) -> None:
    """Turn the stub's address space into the saved one.

    Before: the stub holds only the restore window (free in the saved
    layout): our gadget, scratch area and this kernel's vDSO parked there.
    After: exactly the saved mappings with their pages, plus gadget and
    scratch; the saved brk, stack, argv/env, auxv and exe link are set.
    """
    _place_specials(task, mm, ctx.stub_specials)
    exe_fd, fds = _open_files(task, mm)
    # Before any file is mapped: the kernel refuses a new exe link (EBUSY)
    # while the old exe file is still mapped, and the stub's exe (our Python)
    # may be the very file the saved process maps.
    _set_mm_map(task, mm, exe_fd)
    runs = _precopied_runs(ctx, mm) + ctx.image.pages_of(pid)
    filled = _vmas_with_pages(mm.vmas, [(r.address, len(r.data)) for r in runs])
    # Mappings never overlap: order does not matter, and they all go in one batch.
    for call in _mmap_calls(mm.vmas, fds, filled):
        task.queue(*call, what=f"mmap at {call[1]:#x}")
    for fd in fds.values():
        task.queue(nr.CLOSE, fd, what="close of a mapped file")
    for vma in mm.vmas:
        if vma.kind in ("shmem", "sysv"):
            shmem.map_shared(
                ctx, task, vma.start, vma.end, vma.prot, vma.offset, vma.kind, vma.shmem_id
            )
        elif vma.kind == "memfd":
            prot = vma.prot | (PROT_WRITE if vma.start in filled else 0)
            memfd.map_into(
                ctx, task, vma.start, vma.end, prot, vma.shared, vma.offset, vma.shmem_id
            )
        elif vma.kind not in ("anon", "file", "vdso", "vvar", "vvar_vclock"):
            raise Unsupported(f"process {pid}: cannot restore a mapping of kind {vma.kind}")
    task.flush()  # every mapping exists before its pages are written from outside
    _write_pages(ctx, task, runs)
    ctx.stats.pages += sum(len(r.data) for r in runs) // PAGE_SIZE
    ctx.stats.bytes += sum(len(r.data) for r in runs)
    ctx.stats.progress(f"restoring memory of {pid}")
    # Queued: they run with the process's next batch, once the pages are in.
    for vma in mm.vmas:
        if vma.start in filled and not vma.prot & PROT_WRITE:
            task.queue(nr.MPROTECT, vma.start, vma.end - vma.start, vma.prot, what="mprotect")
        for advice in vma.madvise:  # best effort: THP advice fails where THP is off
            task.queue(
                nr.MADVISE, vma.start, vma.end - vma.start, advice, what="madvise", may_fail=True
            )


def _precopied_runs(ctx: RestoreContext, mm: MmRecord) -> list[PageRun]:
    """The parts of the pre-copied page runs that were still exact at the freeze.

    They come first: the final runs never overlap them, but were they to,
    the later write would win.
    """
    if not mm.precopied:
        return []
    runs = ctx.image.pages_of(mm.precopy_owner)
    valid = [(start, end) for start, end in mm.precopied]
    out: list[PageRun] = []
    for run in runs:
        span = [(run.address, run.address + len(run.data))]
        for start, end in intersect(span, valid):
            piece = run.data[start - run.address : end - run.address]
            out.append(PageRun(run.owner, start, piece))
    return out


def _write_pages(ctx: RestoreContext, task: RemoteTask, runs: list[PageRun]) -> None:
    """Start writing the saved pages into the task; its next batch waits for them.

    Most of the time goes to faulting in the task's fresh memory. The page
    writer threads do that (the GIL is released in process_vm_writev) on
    the other core while this thread goes on rebuilding the next processes;
    a large amount is split between both threads.
    """
    pieces = [
        (run.address + off, run.data[off : off + PARALLEL_PIECE])
        for run in runs
        for off in range(0, len(run.data), PARALLEL_PIECE)
    ]
    if not pieces:
        return
    halves = [pieces] if len(pieces) < 2 else [pieces[0::2], pieces[1::2]]
    for half in halves:
        task.after(ctx.page_writers.submit(vm.write_runs, task.tid, half))


def _vmas_with_pages(vmas: list[VmaRecord], runs: list[tuple[int, int]]) -> set[int]:
    """Starts of the mappings that receive saved pages."""
    filled: set[int] = set()
    i = 0
    ordered = sorted(vmas, key=lambda v: v.start)
    for address, length in sorted(runs):
        while i < len(ordered) and ordered[i].end <= address:
            i += 1
        j = i
        while j < len(ordered) and ordered[j].start < address + length:
            filled.add(ordered[j].start)
            j += 1
    return filled


def _access(vma: VmaRecord) -> int:
    return os.O_RDWR if vma.shared and vma.prot & PROT_WRITE else os.O_RDONLY


def _open_files(task: RemoteTask, mm: MmRecord) -> tuple[int, dict[tuple[str, int], int]]:
    """Open the exe and each mapped file once, in the task, in one batch; return
    the exe's descriptor and those of the mapped files."""
    exe = task.queue(
        nr.OPEN, mm.exe.encode() + b"\0", os.O_RDONLY | os.O_CLOEXEC, 0, what=f"open {mm.exe}"
    )
    opened = {
        (path, access): task.queue(
            nr.OPEN, path.encode() + b"\0", access | os.O_CLOEXEC, 0, what=f"open {path}"
        )
        for path, access in sorted({(v.path, _access(v)) for v in mm.vmas if v.kind == "file"})
    }
    task.flush()
    return exe.value, {key: call.value for key, call in opened.items()}


def _mmap_calls(
    vmas: list[VmaRecord], fds: dict[tuple[str, int], int], filled: set[int]
) -> list[tuple[int, ...]]:
    """The mmaps that recreate the saved anonymous and file mappings.

    Adjacent anonymous mappings that would be mapped alike are mapped by one
    call: the kernel would merge them anyway, and the mprotects and
    madvises that follow split them again where they differed. Thousands of
    small mappings then cost a fraction of the calls.
    """
    calls: list[tuple[int, ...]] = []
    end = -1
    for vma in sorted((v for v in vmas if v.kind in ("anon", "file")), key=lambda v: v.start):
        call = _mmap_call(vma, fds, vma.start in filled)
        last = calls[-1] if calls else None
        if vma.kind == "anon" and last is not None and end == vma.start and last[3:] == call[3:]:
            calls[-1] = (nr.MMAP, last[1], last[2] + call[2], *call[3:])
        else:
            calls.append(call)
        end = vma.end
    return calls


def _mmap_call(vma: VmaRecord, fds: dict[tuple[str, int], int], writable: bool) -> tuple[int, ...]:
    """The mmap that recreates one saved mapping; writable for now if pages go into it."""
    prot = vma.prot | (PROT_WRITE if writable else 0)
    length = vma.end - vma.start
    if vma.kind == "anon":
        flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | (MAP_GROWSDOWN if vma.growsdown else 0)
        return (nr.MMAP, vma.start, length, prot, flags, -1, 0)
    flags = (MAP_SHARED if vma.shared else MAP_PRIVATE) | MAP_FIXED
    return (nr.MMAP, vma.start, length, prot, flags, fds[(vma.path, _access(vma))], vma.offset)


def empty_address_space(task: RemoteTask, window: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Unmap everything of the task outside `window`, parking the vDSO inside it.

    Done once, in the seed: every stub cloned from it is then born with
    nothing but the window (our gadget, scratch area and the parked vDSO),
    so cloning is cheap and nothing of the restorer's memory is left to
    remove. Returns where each special mapping is parked.
    """
    low, high = window
    parking = low + (1 << 20)
    parked: dict[str, tuple[int, int]] = {}
    calls: list[tuple[int, ...]] = []
    for e in parse_maps(procfs.read(task.tid, "maps")):
        if e.path in SPECIAL:
            calls.append(
                (nr.MREMAP, e.start, e.size, e.size, MREMAP_MAYMOVE | MREMAP_FIXED, parking)
            )
            parked[e.path] = (parking, e.size)
            parking += e.size + PAGE_SIZE
    if parking > high:
        raise Unsupported("the vDSO does not fit the restore window")
    calls += [(nr.MUNMAP, 0, low), (nr.MUNMAP, high, TASK_SIZE - high)]
    task.batch(calls, what="emptying the seed's address space")
    return parked


def _place_specials(task: RemoteTask, mm: MmRecord, parked: dict[str, tuple[int, int]]) -> None:
    """Move the parked vDSO and its data pages to where they were at checkpoint."""
    saved = {f"[{v.kind}]": v for v in mm.vmas if v.kind in ("vdso", "vvar", "vvar_vclock")}
    for name, (address, size) in parked.items():
        target = saved.get(name)
        if target is None:
            task.queue(nr.MUNMAP, address, size, what=f"munmap of {name}")
        elif target.end - target.start != size:
            raise KernelMismatch(
                f"{name} is {size} bytes here but was {target.end - target.start} at checkpoint"
            )
        else:
            flags = MREMAP_MAYMOVE | MREMAP_FIXED
            task.queue(
                nr.MREMAP, address, size, size, flags, target.start, what=f"mremap of {name}"
            )


def _set_mm_map(task: RemoteTask, mm: MmRecord, exe_fd: int) -> None:
    """Queue prctl(PR_SET_MM_MAP): the saved mm fields, auxv and exe link."""
    auxv = b"".join(v.to_bytes(8, "little") for v in mm.auxv) + bytes(16)
    size = MM_MAP_SIZE

    def fields(address: int) -> bytes:  # the struct, then the auxv it points to
        return (
            bytes(
                PrctlMmMap(
                    mm.start_code,
                    mm.end_code,
                    mm.start_data,
                    mm.end_data,
                    mm.start_brk,
                    mm.brk,
                    mm.start_stack,
                    mm.arg_start,
                    mm.arg_end,
                    mm.env_start,
                    mm.env_end,
                    address + size,
                    len(auxv),
                    exe_fd,
                )
            )
            + auxv
        )

    task.queue(
        nr.PRCTL,
        PR_SET_MM,
        PR_SET_MM_MAP,
        Placed(size + len(auxv), fields),
        size,
        0,
        what="prctl(PR_SET_MM_MAP)",
    )
    task.queue(nr.CLOSE, exe_fd, what="close of the exe")
