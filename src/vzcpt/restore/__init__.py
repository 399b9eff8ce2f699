"""Restore of a process tree: the ordered stages, and what is true after each.

    read      the whole dump is read and verified (checksums, END frame);
              nothing on the host has changed yet
    check     the vDSO is this kernel's, every pid is free, every file the
              programs held or mapped is as it was; still nothing changed
    seed      one stopped copy of the restorer holds our gadget and scratch
              page at the start of the restore window, the vDSO parked
              there too, and nothing else: its own memory is gone
    terminals every pty pair exists again at its number, with its settings
              and queued data, held by the restorer (resources/fds/tty.py)
    tree      every process exists as a stopped stub with its saved pid,
              parent, session and process group (restore/tree.py); every
              session that had a controlling terminal has it again, with
              its foreground group (resources/ctty.py)
    files     every stub holds its descriptors at their saved numbers, and
              its epoll instances their watches
    memory    every stub's address space is the saved one (vDSO moved in)
    state     threads cloned with their tids; signals, timers, limits,
              attributes, thread state set (or queued to run with the
              release); zombies have died as they died
    network   the network lock of the dump is gone; TCP connections, rebuilt
              in repair mode with the files, have left it and sent what
              they had not sent (resources/fds/inet.py)
    release   pending signals queued, scratch unmapped, credentials taken,
              registers loaded, a shell job given the terminal
              (restore/shelljob.py), and every task detached at once

Any failure before `release` kills every process created so far and removes
the socket files bound anew: a failed restore leaves nothing behind.
"""

from __future__ import annotations

import os
import resource
import signal
import time

from vzcpt.errors import CorruptDump, KernelMismatch, VzcptError
from vzcpt.image.reader import DumpImage, open_dump
from vzcpt.inject.fdpass import FdChannel
from vzcpt.inject.freeze import Freezer
from vzcpt.inject.remote import SCRATCH_SIZE, RemoteTask
from vzcpt.kernel import nr, ptrace
from vzcpt.kernel.vdso import vdso_fingerprint
from vzcpt.resources import ctty, memory, process, signals, thread, timers
from vzcpt.resources.context import RestoreContext, Stats
from vzcpt.resources.fds import FileDesc, epoll, tty
from vzcpt.resources.fds.inet import resume_network
from vzcpt.resources.fds.regular import check_unchanged
from vzcpt.resources.fds.table import restore_table
from vzcpt.resources.task_record import DumpHeader, ProcessRecord
from vzcpt.restore import shelljob
from vzcpt.restore.seed import SeedLauncher, fork_seed, spawn_seed
from vzcpt.restore.tree import TreeBuilder, check_ids, clone_thread
from vzcpt.restore.window import choose_window


def restore_tree(
    dumpfile: str,
    *,
    leave_stopped: bool = False,
    stats: Stats | None = None,
    launch_init: SeedLauncher | None = None,
    hold: Freezer | None = None,
    shell_job: bool = False,
) -> int:
    """Rebuild the dumped tree; return the root's host pid once it runs (or is stopped).

    A plain tree is restored into our own namespaces. With `launch_init`
    (a VE), that launcher starts the VE's pid 1 in the VE's fresh namespaces
    and root, as the seed; the seed then becomes the saved init itself. With
    `hold` (the VE's cgroup freezer), the rebuilt tree is left frozen there.
    With `shell_job`, the tree continues as a job on our terminal
    (restore/shelljob.py: `shelljob.wait` then stays with it).
    """
    stats = stats or Stats()
    started = time.monotonic()
    image = open_dump(dumpfile)
    stats.add_time("read", time.monotonic() - started)
    try:
        return _restore(image, leave_stopped, stats, started, launch_init, hold, shell_job)
    finally:
        image.close()


def _restore(
    image: DumpImage,
    leave_stopped: bool,
    stats: Stats,
    started: float,
    launch_init: SeedLauncher | None,
    hold: Freezer | None,
    shell_job: bool,
) -> int:
    headers = image.records_of(DumpHeader)
    if not headers:
        raise VzcptError("the dump file has no header record")
    header = headers[0]
    procs = image.records_of(ProcessRecord)
    files = {f.id: f for f in image.records_of(FileDesc)}
    if not any(p.pid == header.root for p in procs):
        raise CorruptDump(f"the dump has no record of its root process {header.root}")
    _check_kernel(header)
    steal_terminal = shelljob.check(files.values()) if shell_job else False
    if launch_init is None:
        check_ids(procs, header.root)  # a VE gets a fresh pid namespace
        _check_files("", procs, files, shell_job)
    saved_ranges = [(v.start, v.end) for p in procs if p.mm for v in p.mm.vmas]
    window = choose_window(saved_ranges)
    max_fd = max((e.fd for p in procs for e in p.fds), default=2)
    channel_fd = max(max_fd + 1, 10)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # stubs inherit it until restored
    baseline = process.restorer_baseline()
    seed = spawn_seed(channel_fd, window, launch_init or fork_seed)
    ctx = RestoreContext(
        image=image,
        stats=stats,
        channel=FdChannel(seed.channel, channel_fd),
        stub_specials=seed.specials,
        fs_root=f"/proc/{seed.task.tid}/root" if launch_init else "",
        ns_pid=seed.task.tid if launch_init else 0,
        own_ipc=launch_init is not None,
        shell_job=shell_job,
        netns=f"/proc/{seed.task.tid}/ns/net" if launch_init else "",
    )
    builder = TreeBuilder(seed.task, procs, header.root, root_is_seed=launch_init is not None)
    warnings: list[str] = []
    try:
        if launch_init is not None:
            _check_files(ctx.fs_root, procs, files, shell_job)  # reachable once the VE has its root
        stage = time.monotonic()
        tty.open_terminals(ctx, files.values())
        terminals = ctty.SessionTerminals(ctx, files.values(), steal_external=steal_terminal)
        builder.on_session = terminals.acquire
        tasks = builder.build()
        ctx.host_pids = {pid: task.tid for pid, task in tasks.items()}
        terminals.set_foregrounds(tasks)
        stats.add_time("tree", time.monotonic() - stage)
        threads: dict[int, list[RemoteTask]] = {}
        for rec in procs:
            if rec.zombie:
                continue
            stage = time.monotonic()
            threads[rec.pid] = _rebuild_process(ctx, rec, tasks[rec.pid], files, baseline, warnings)
            stats.add_time("memory+state", time.monotonic() - stage)
        # The end of each process's rebuilding is queued (inject/remote.py), to
        # run once its pages are in (written meanwhile, while the next processes
        # were rebuilt), in one batch with its release by _finish. Finishers act
        # on what processes share: they come after every call is made.
        if ctx.finishers:
            for rebuilt in threads.values():
                for thread_task in rebuilt:
                    thread_task.flush()
        for finish in ctx.finishers:
            finish()
        builder.become_zombies()
        live = [rec for rec in procs if not rec.zombie]
        for rec in live:
            _take_own_creds(rec, threads[rec.pid], channel_fd, baseline)
        mains = {rec.pid: threads[rec.pid][0] for rec in live}
        for call in ctx.as_owners:
            call(mains)
        for rec in live:
            _finish(rec, threads[rec.pid], window)
        resume_network(ctx)
        stats.processes = len(procs)
        stats.threads = sum(len(t) for t in threads.values())
        if shell_job:
            shelljob.hand_over(procs, header.root, files.values())
    except BaseException:
        ctx.undo_all()  # while a VE's files are still reachable through its seed
        builder.kill_all()
        seed.kill()
        ctx.close()
        raise
    if launch_init is None:
        seed.kill()
    else:
        seed.channel.close()  # the seed has become the VE's init
    ctx.close()
    if hold is not None:
        hold.freeze()  # our stopped tasks count as frozen: detached, they stay so
    for rec in procs:
        if rec.zombie:
            continue
        if leave_stopped or rec.job_stopped:
            os.kill(threads[rec.pid][0].tid, signal.SIGSTOP)  # stays stopped once detached
        for task in threads[rec.pid]:
            ptrace.detach(task.tid, 0)
    stats.add_time("total", time.monotonic() - started)
    stats.warnings.extend(warnings)
    return threads[header.root][0].tid


def _check_kernel(header: DumpHeader) -> None:
    here = vdso_fingerprint()
    if header.vdso != here:
        raise KernelMismatch(
            f"the dump was made on kernel {header.kernel} whose vDSO differs from this one's "
            "(restoring would crash the programs): restore on a host with the same kernel"
        )


def _check_files(
    fs_root: str, procs: list[ProcessRecord], files: dict[int, FileDesc], shell_job: bool
) -> None:
    """Every file the programs mapped or held open is as it was at checkpoint; every
    pty they held can be made again."""
    for rec in procs:
        if rec.mm is not None:
            memory.check_files(fs_root, rec.mm, rec.pid)
    for desc in files.values():
        if desc.kind == "regular" and not desc.deleted:
            check_unchanged(desc, fs_root + desc.path)
    tty.check_restorable(fs_root, files.values(), shell_job)


def _rebuild_process(
    ctx: RestoreContext,
    rec: ProcessRecord,
    main: RemoteTask,
    files: dict[int, FileDesc],
    baseline: process.Baseline,
    warnings: list[str],
) -> list[RemoteTask]:
    """Files, memory, signals, timers, attributes and threads of one process."""
    assert rec.mm is not None and rec.attrs is not None and rec.signals is not None
    assert rec.timers is not None
    restore_table(ctx, main, rec.fds, files, ctx.channel)
    epoll.add_watches(main, rec.pid, rec.fds, files)  # keyed by the numbers just placed
    memory.replace_mm(ctx, main, rec.pid, rec.mm)
    signals.restore_actions(main, rec.signals)
    timers.restore_timers(main, rec.pid, rec.timers)
    process.restore_attrs(main, rec.attrs, baseline.attrs, warnings)
    tasks = [main] + [clone_thread(main, t.tid) for t in rec.threads[1:]]
    for task, trec in zip(tasks, rec.threads, strict=True):
        thread.restore_thread_state(task, rec.pid, trec)
    signals.restore_shared_pending(main, rec.pid, rec.signals)
    return tasks


def _take_own_creds(
    rec: ProcessRecord, tasks: list[RemoteTask], channel_fd: int, baseline: process.Baseline
) -> None:
    """Close our channel, then become who the process was."""
    assert rec.creds is not None
    main = tasks[0]
    main.queue(nr.CLOSE, channel_fd, what="close of the descriptor channel")
    for task in tasks:  # credentials are per thread, and the last thing we may change
        process.restore_creds(task, rec.creds, baseline.creds)
    assert rec.attrs is not None
    process.restore_attrs_after_creds(main, rec.attrs)
    # The other threads' queues run first: before main's dumpable flag (a change
    # of credentials resets it) and while the batch runner is still mapped.
    # (Their process's pages are in: cloning them ran main's queue.)
    for task in tasks[1:]:
        task.flush()


def _finish(rec: ProcessRecord, tasks: list[RemoteTask], window: tuple[int, int]) -> None:
    """Remove the last traces of ours, then become the saved threads."""
    main = tasks[0]
    # Gadget and scratch area (the batch runner's too) in one single step: the
    # syscall instruction unmaps its own page and traps before fetching another.
    # Calls still queued on main (its credentials...) run first.
    main.step(nr.MUNMAP, window[0], 4096 + SCRATCH_SIZE, what="munmap of the gadget and scratch")
    for task, trec in zip(tasks, rec.threads, strict=True):
        thread.load_regs(task, trec)
