"""Checkpoint of a process tree: the ordered stages of a dump.

    pre-copy a running VE with much memory: tracked and copied while it
             runs, then suspended by the caller (resources/precopy.py,
             `run_ahead`)
    freeze   every thread seized and stopped (inject/freeze.py); a plain
             tree with much memory then runs again while its pages are
             copied, and is frozen again (precopy.run); if its listeners
             hold connections not yet accepted, the tree runs until it has
             accepted them, and is frozen again (resources/accept_queue.py)
    lock     no packet of the tree's TCP and UDP sockets comes or goes
             (resources/netlock.py); nothing of them has been read yet
    collect  each process saved by the resource modules, pages streamed out
             (those written since their pre-copy, and the rest), each run
             sent on to the disk as it is written
    write    the shared objects' records and the END frame; the file synced
    verify   a dump file on disk is read back and checked before anything
             is killed: the only copy of a running tree is never lost
    leave    kill (default), resume or leave stopped; connections of a tree
             that runs on leave repair mode and are unlocked first, those
             of a killed or stopped one stay locked until the restore

A failure in any stage before `leave` unlocks the network and resumes the
tree as it was, with no write tracking of ours left in it; the dump file is
removed.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import time
from collections.abc import Callable
from typing import BinaryIO, Literal

from vzcpt import __version__
from vzcpt.image.reader import open_dump
from vzcpt.image.writer import DumpWriter, create_dumpfile
from vzcpt.inject.freeze import Freezer, FrozenTree, freeze_tree
from vzcpt.inject.remote import RemoteTask
from vzcpt.kernel import nr, vm
from vzcpt.kernel.vdso import vdso_fingerprint
from vzcpt.proc import files as procfs
from vzcpt.proc.maps import MapEntry
from vzcpt.proc.stat import parse_stat
from vzcpt.proc.status import namespace_ids
from vzcpt.resources import memory, precopy, process, signals, thread, timers
from vzcpt.resources.accept_queue import DRAIN_TIMEOUT_S, drain
from vzcpt.resources.context import DumpContext, Stats
from vzcpt.resources.fds import tty, unix
from vzcpt.resources.fds.table import dump_table
from vzcpt.resources.netlock import NetworkHold, Sockets
from vzcpt.resources.precopy import PreCopy, Tracked
from vzcpt.resources.task_record import DumpHeader, ProcessRecord

Leave = Literal["kill", "running", "stopped"]


def dump_tree(
    root: int,
    dumpfile: str,
    *,
    leave: Leave = "kill",
    compress: bool = False,
    stats: Stats | None = None,
    own_pid_namespace: bool = False,
    extra_records: list[object] | None = None,
    held_by: Freezer | None = None,
    await_exit: bool = True,
    shell_job: bool = False,
    drain_timeout: float = DRAIN_TIMEOUT_S,
    suspend: Callable[[], None] | None = None,
) -> Stats:
    """Save the tree rooted at `root` into `dumpfile` ("-" for standard output).

    With `held_by`, the tree is frozen by that cgroup freezer (a suspended
    VE): it is seized as it is, and if it is not killed it is left frozen
    again, whatever happens. With `suspend` too, the VE still runs: its
    memory is pre-copied meanwhile (resources/precopy.py, `run_ahead`), then
    suspend() freezes it by `held_by`, and it is dumped as a suspended VE; a
    failure before suspend() has returned leaves it running, without a
    trace of ours. With `shell_job`, the tree may hold the terminal
    it was started from (resources/fds/tty.py). `drain_timeout`: how long the
    tree may run to accept the connections waiting on its listeners.
    Without `await_exit`, a killed tree may still be dying when we return
    (for a caller that exits next: restore waits for pids of dying tasks).
    """
    stats = stats or Stats()
    started = time.monotonic()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # we hold each file the tree has
    out: BinaryIO | None = None
    pre = PreCopy()
    try:
        if suspend is not None:
            if held_by is None:
                raise ValueError("dump_tree: suspend needs the freezer that holds the tree")
            out = create_dumpfile(dumpfile)
            writer = _writer(out, dumpfile, compress)
            if precopy.wanted(procfs.tree(root)):
                pre = precopy.run_ahead(root, held_by, writer, stats, find_gadget)
            freeze_started = time.monotonic()
            suspend()
        else:
            freeze_started = started
        tree = freeze_tree(root, held_by)
        pre.keep_only(tree.processes())
        if suspend is not None:  # frozen since the suspend, before we seized it
            stats.add_time("frozen", tree.frozen_at - freeze_started)
    except BaseException:
        pre.close()
        _discard(out, dumpfile)
        raise
    network = NetworkHold()

    def let_go() -> None:
        try:
            network.release()
        finally:
            if held_by is not None:
                tree.leave_frozen(held_by)
            else:
                tree.resume()

    stats.add_time("freeze", time.monotonic() - freeze_started)
    resumed = False
    try:
        if out is None:
            out = create_dumpfile(dumpfile)
            writer = _writer(out, dumpfile, compress)
        collect_started = time.monotonic()
        # A suspended VE stays frozen: it was pre-copied before (run_ahead), if at all.
        if held_by is None and precopy.wanted(tree.processes()):
            pre = precopy.run(tree, writer, stats, find_gadget)
        # A VE's queues were drained as it was suspended, by its freezer (ve/checkpoint.py).
        surveyed = (
            Sockets.survey(tree.processes())
            if held_by is not None
            else drain(tree, network, stats, drain_timeout)
        )
        with surveyed as sockets:
            network.lock(sockets)
        stats.add_time("lock", time.monotonic() - tree.frozen_at)
        _write_dump(
            tree,
            writer,
            stats,
            own_pid_namespace,
            extra_records or [],
            shell_job,
            network,
            pre,
        )
        pre.close()  # everything is captured: no tracking left in the tree
        stats.add_time("dump", time.monotonic() - collect_started)
        if leave == "running":
            # Everything is captured: a tree that runs on needn't wait for the disk.
            let_go()
            resumed = True
            stats.add_time("frozen", tree.frozen_for())
        if dumpfile != "-":
            _sync_and_verify(out, dumpfile, stats)
    except BaseException:
        pre.close()
        if not resumed:
            let_go()
        _discard(out, dumpfile)
        raise
    if out is not None and dumpfile != "-":
        out.close()
    if leave != "running":
        # The tree is let go (killed or stopped) only once its dump is safe.
        stats.add_time("frozen", tree.frozen_for())
        if leave == "kill":
            tree.kill(wait=await_exit)
        else:
            tree.leave_stopped()
        network.keep()
    stats.add_time("total", time.monotonic() - started)
    return stats


def _writer(out: BinaryIO, dumpfile: str, compress: bool) -> DumpWriter:
    # Synced before the tree is let go: its writeback starts as it is written.
    return DumpWriter(out, compress=compress, writeback=dumpfile != "-")


def _discard(out: BinaryIO | None, dumpfile: str) -> None:
    """Remove the dump of a failed checkpoint: it must never pass for one."""
    if out is not None and dumpfile != "-":
        out.close()
        os.unlink(dumpfile)


def _sync_and_verify(out: BinaryIO, dumpfile: str, stats: Stats) -> None:
    """The dump is on disk and reads back whole, checksums and all.

    The records are not decoded: what we wrote is what we meant (every record
    type round-trips in the tests); what can go wrong now is the file.
    """
    started = time.monotonic()
    out.flush()
    os.fsync(out.fileno())
    open_dump(dumpfile, decode=False).close()
    stats.add_time("sync+verify", time.monotonic() - started)


def _write_dump(
    tree: FrozenTree,
    writer: DumpWriter,
    stats: Stats,
    own_pid_namespace: bool,
    extra_records: list[object],
    shell_job: bool,
    network: NetworkHold,
    pre: PreCopy,
) -> None:
    ctx = DumpContext(
        writer=writer,
        stats=stats,
        pids=frozenset(tree.pids),
        shell_job=shell_job,
        network=network,
    )
    if own_pid_namespace:
        # The tree is a VE: it is saved with the ids its programs know (its
        # root is pid 1), so that it can be rebuilt in a fresh pid namespace.
        ctx.ids = {
            tid: namespace_ids(procfs.read(pid, "status", tid=tid)).pid
            for pid in tree.pids
            for tid in tree.threads.get(pid) or [pid]
        }
    try:
        writer.write_record(
            DumpHeader(
                tool=f"vzcpt {__version__}",
                kernel=platform.release(),
                vdso=vdso_fingerprint(),
                created=time.time(),
                root=ctx.saved_id(tree.root),
                hostname=platform.node(),
                processes=len(tree.pids),
            )
        )
        for pid in tree.pids:
            writer.write_record(_dump_process(ctx, tree, pid, pre.of(pid)))
            stats.processes += 1
        unix.check_peers(ctx)
        tty.finish_dump(ctx, tree.pids, tree.zombies)
        lock = [network.record] if network.record is not None else []
        for rec in [*ctx.records, *lock, *extra_records]:
            writer.write_record(rec)
        writer.close()
    finally:
        ctx.close()


def _dump_process(
    ctx: DumpContext, tree: FrozenTree, pid: int, tracked: Tracked | None
) -> ProcessRecord:
    stat = parse_stat(procfs.read(pid, "stat"))
    ppid, pgid, sid = stat.ppid, stat.pgrp, stat.session
    if ctx.ids:  # ids in the tree's own pid namespace; 0 for what lies outside it
        inner = namespace_ids(procfs.read(pid, "status"))
        ppid, pgid, sid = ctx.ids.get(ppid, 0), inner.pgid, inner.sid
    rec = ProcessRecord(
        pid=ctx.saved_id(pid),
        ppid=ppid,
        pgid=pgid,
        sid=sid,
        exit_signal=stat.exit_signal,
        job_stopped=pid in tree.job_stopped,
    )
    if pid in tree.zombies:
        rec.zombie = True
        rec.exit_status = stat.exit_code
        return rec
    tids = tree.threads[pid]
    # Read before our scratch area exists, so the saved layout cannot include
    # it; nothing we do while the process is frozen maps or unmaps anything else.
    mappings = memory.read_mappings(pid)
    main = RemoteTask(tids[0], find_gadget(pid, [entry for entry, _ in mappings]))
    others: list[RemoteTask] = []  # made inside the try: each one blocks its signals
    try:
        for tid in tids[1:]:
            others.append(RemoteTask(tid, main.gadget))
        main.map_scratch()
        for task in others:
            task.scratch = main.scratch
        # Every question to the process goes into one batch (one per thread):
        # each module queues its calls and returns what reads the answers.
        attrs = process.dump_attrs(pid, main)
        creds = process.dump_creds(pid, main)
        sigs = signals.dump_signals(pid, main)
        tmrs = timers.dump_timers(pid, main)
        thrs = [thread.dump_thread(pid, task) for task in [main, *others]]
        brk = main.queue(nr.BRK, 0, what="brk(0)")
        for task in [main, *others]:
            task.flush()
        rec.attrs, rec.creds, rec.signals, rec.timers = attrs(), creds(), sigs(), tmrs()
        rec.threads = [answer() for answer in thrs]
        for trec in rec.threads:
            trec.tid = ctx.saved_id(trec.tid)
        for timer in rec.timers.posix:
            timer.notify_tid = ctx.saved_id(timer.notify_tid)
        rec.fds = dump_table(ctx, pid)
        main.unmap_scratch()
        rec.mm = memory.dump_mm(ctx, pid, mappings, brk.value, tracked)
        ctx.stats.threads += len(tids)
    finally:
        for task in [main, *others]:
            task.pending.clear()  # after a failure: what was not asked yet never will be
        if main.scratch:
            main.unmap_scratch()
        for task in [main, *others]:
            task.restore_regs()
    return rec


def find_gadget(pid: int, maps: list[MapEntry]) -> int:
    """The address of a `syscall` instruction in the task: the vDSO has several."""
    ordered = sorted(maps, key=lambda e: (e.path != "[vdso]", not e.executable))
    for entry in ordered:
        if not entry.executable or not entry.readable:
            continue
        data = vm.read_mem(pid, entry.start, min(entry.size, 1 << 20))
        found = re.search(rb"\x0f\x05", data)
        if found:
            return entry.start + found.start()
    raise RuntimeError(f"process {pid} has no syscall instruction to borrow")
