"""Pre-copy: most pages are saved while the tree still runs, the rest while it is frozen.

Kernel interfaces: a userfaultfd made inside each large process (an injected
userfaultfd(2), taken with pidfd_getfd) in asynchronous write-protect mode
(kernel/uffd.py) is registered over its private anonymous mappings, and
PAGEMAP_SCAN write-protects their pages (kernel/pagescan.py). The tree is
resumed and its own pages are copied into the dump under an owner id of
their own (PRECOPY_OWNER + pid); then it is frozen again. A page the tree
wrote meanwhile shows PAGE_IS_WRITTEN. A running VE (`run_ahead`) is frozen
by its cgroup just to put the tracking on, and copied before it is
suspended: the suspend is its freeze for the final pass.

In the frozen phase a pre-copied page is taken as valid only if it lies in a
mapping that still carries our registration ("uw" in VmFlags: a mapping
unmapped, moved or made anew meanwhile does not), it was not written, and it
is still the process's own present page. Its range goes into the process's
MmRecord (`precopied`); every other page is copied as without pre-copy. At
restore the valid pre-copied runs are written first, then the final ones.

The userfaultfd is closed once the dump is captured, whatever happens next,
which ends the registration: a tree that runs on carries none, and a
restored one never had it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vzcpt.errors import VzcptError
from vzcpt.image.writer import DumpWriter
from vzcpt.inject.freeze import Freezer, FrozenTree, freeze_tree
from vzcpt.inject.remote import RemoteTask
from vzcpt.kernel import nr, pagescan, uffd
from vzcpt.kernel.fds import steal_fd
from vzcpt.kernel.vm import PAGE_SIZE
from vzcpt.proc import files as procfs
from vzcpt.proc.maps import MapEntry, parse_smaps
from vzcpt.proc.stat import parse_stat
from vzcpt.proc.status import parse_status
from vzcpt.resources.context import Stats
from vzcpt.resources.pages import Batch, copy_batches, new_buffers, store_nonzero
from vzcpt.resources.ranges import Range, intersect

PRECOPY_OWNER = 1 << 32  # page-run owners PRECOPY_OWNER + pid (below shmem.SHARED_OWNER)
THRESHOLD = 64 << 20  # anonymous memory of the tree worth a pre-copy
MIN_PROCESS = 16 << 20  # smaller processes cost little frozen: no tracking for them
UFFD_VMFLAGS = frozenset({"uw", "um", "ui"})  # already registered by the program itself
COPY_BATCH = 16 << 20


@dataclass
class Tracked:
    """One process whose writes are tracked: our userfaultfd and what was copied."""

    pid: int
    started: int  # its start time: a later process with its pid is another
    uffd: int
    registered: list[Range]
    protected: list[Range]  # its own pages when tracking began: the ones to copy
    copied: list[Range] = field(default_factory=list)


@dataclass
class PreCopy:
    tracked: dict[int, Tracked] = field(default_factory=dict)

    def of(self, pid: int) -> Tracked | None:
        return self.tracked.get(pid)

    def keep_only(self, processes: list[int]) -> None:
        """Forget the processes gone since they were tracked (their pid may
        even be another process's now): what they had is of no use."""
        for pid in list(self.tracked):
            if pid not in processes or _start_time(pid) != self.tracked[pid].started:
                os.close(self.tracked.pop(pid).uffd)

    def close(self) -> None:
        """End every registration: after this the tree carries none of ours."""
        for t in self.tracked.values():
            for start, end in t.registered:
                with contextlib.suppress(OSError):  # gone or changed: closing ends it anyway
                    uffd.unregister(t.uffd, start, end)
            os.close(t.uffd)
        self.tracked.clear()


def wanted(processes: list[int]) -> bool:
    """VZCPT_PRECOPY=1 or 0 forces it; else only a tree with much anonymous memory."""
    forced = os.environ.get("VZCPT_PRECOPY")
    if forced is not None:
        return forced == "1"
    return sum(_anon_bytes(pid) for pid in processes) >= THRESHOLD


def run(
    tree: FrozenTree,
    writer: DumpWriter,
    stats: Stats,
    find_gadget: Callable[[int, list[MapEntry]], int],
) -> PreCopy:
    """Track the large processes, let the tree run while their pages are
    copied, and freeze it again. The tree is frozen on return, or, after a
    failure, has no registration of ours left (and is the caller's to resume)."""
    started = time.monotonic()
    pre = PreCopy()
    try:
        _track_large(tree, pre, find_gadget)
        if not pre.tracked:
            return pre
        tree.resume()
        for t in pre.tracked.values():
            _copy(t, writer, stats)
        tree.refreeze()
        pre.keep_only(tree.processes())
    except BaseException:
        pre.close()
        raise
    stats.add_time("pre-copy", time.monotonic() - started)
    return pre


def run_ahead(
    root: int,
    freezer: Freezer,
    writer: DumpWriter,
    stats: Stats,
    find_gadget: Callable[[int, list[MapEntry]], int],
) -> PreCopy:
    """Pre-copy a running VE before it is suspended: it is frozen by its
    cgroup just long enough to track its large processes, and runs on while
    their pages are copied. It runs on return, tracked (its caller suspends
    it next and dumps it with this PreCopy); after a failure it runs on with
    no registration of ours."""
    started = time.monotonic()
    pre = PreCopy()
    freezer.freeze()
    try:
        tree = freeze_tree(root, held_by=freezer)  # seized, then thawed into ptrace stops
    except BaseException:
        freezer.thaw()
        raise
    try:
        try:
            _track_large(tree, pre, find_gadget)
        finally:
            tree.resume()
            stats.add_time("frozen", time.monotonic() - started)
        for t in pre.tracked.values():
            _copy(t, writer, stats)
    except BaseException:
        pre.close()
        raise
    stats.add_time("pre-copy", time.monotonic() - started)
    return pre


def _track_large(
    tree: FrozenTree, pre: PreCopy, find_gadget: Callable[[int, list[MapEntry]], int]
) -> None:
    forced = os.environ.get("VZCPT_PRECOPY") == "1"
    for pid in tree.processes():
        if forced or _anon_bytes(pid) >= MIN_PROCESS:
            tracked = _track(pid, find_gadget)
            if tracked is not None:
                pre.tracked[pid] = tracked


def _anon_bytes(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        return parse_status(procfs.read(pid, "status")).rss_anon
    return 0


def _track(pid: int, find_gadget: Callable[[int, list[MapEntry]], int]) -> Tracked | None:
    """Register the process's private anonymous writable mappings; None if it
    cannot be tracked (a userfaultfd refused in it): it is then copied frozen."""
    mappings = parse_smaps(procfs.read(pid, "smaps"))
    ranges = [
        (e.start, e.end)
        for e, flags in mappings
        if e.inode == 0
        and not e.shared
        and e.writable
        and not e.path.startswith("[v")  # vdso, vvar, vsyscall
        and not flags & UFFD_VMFLAGS
    ]
    if not ranges:
        return None
    task = RemoteTask(pid, find_gadget(pid, [e for e, _ in mappings]))
    try:
        flags = os.O_CLOEXEC | os.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY
        try:
            remote_fd = task.call(nr.USERFAULTFD, flags, what="userfaultfd")
        except VzcptError:
            return None
        try:
            fd = steal_fd(pid, remote_fd)
        finally:
            task.call(nr.CLOSE, remote_fd, what="close of the userfaultfd")
    finally:
        task.restore_regs()
    try:
        uffd.enable_async_wp(fd)
        pagemap = procfs.open_file(pid, "pagemap", os.O_RDONLY)
        try:
            own: list[Range] = []
            for start, end in ranges:
                uffd.register_wp(fd, start, end)
                own += pagescan.write_protect(
                    pagemap, start, end, anyof=pagescan.OWN, without=pagescan.NOT_OWN
                )
        finally:
            os.close(pagemap)
    except OSError:
        os.close(fd)  # ends whatever was registered
        return None
    return Tracked(pid, _start_time(pid), fd, ranges, own)


def _start_time(pid: int) -> int:
    try:
        return parse_stat(procfs.read(pid, "stat")).starttime
    except (OSError, VzcptError):
        return -1  # gone


def _copy(t: Tracked, writer: DumpWriter, stats: Stats) -> None:
    """Copy the tracked process's own pages while it runs, on the threads of
    pages.copy_batches. What it writes meanwhile is caught in the frozen
    phase; an exit or an unmapping ends the copy early (the frozen phase
    copies what is left)."""
    batches = [
        [(address, min(COPY_BATCH, end - address))]
        for start, end in t.protected
        for address in range(start, end, COPY_BATCH)
    ]
    writer.reserve(sum(length for [(_, length)] in batches))
    counting = threading.Lock()

    def store(batch: Batch, view: memoryview) -> None:
        [(address, length)] = batch
        stored, _ = store_nonzero(writer, PRECOPY_OWNER + t.pid, address, view)
        with counting:
            stats.pages_precopied += stored
            t.copied.append((address, address + length))
            stats.progress("pre-copying memory (still running)", stats.pages_precopied * PAGE_SIZE)

    copy_batches(t.pid, batches, store, new_buffers(COPY_BATCH), running=True)


def valid_ranges(
    t: Tracked, mappings: list[tuple[MapEntry, frozenset[str]]], own: list[pagescan.Region]
) -> list[Range]:
    """The pre-copied ranges still exact, in a process frozen again (see the
    module's notes); `own`: its own pages, reporting PAGE_IS_WRITTEN
    (pages.own_page_runs)."""
    still = [(e.start, e.end) for e, flags in mappings if "uw" in flags and not e.shared]
    unwritten = [(start, end) for start, end, cat in own if not cat & pagescan.PAGE_IS_WRITTEN]
    return intersect(intersect(t.copied, still), unwritten)
