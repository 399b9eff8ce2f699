"""Freezing a process tree with ptrace, race-free against forks and new threads.

Every thread is attached with PTRACE_SEIZE and stopped with PTRACE_INTERRUPT:
no signal is sent, so the programs cannot notice. A task may fork or spawn a
thread between our listing and its stop, so the tree is listed again after
each round until a round finds nothing new; once every task is stopped none
can create another.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from vzcpt.errors import ProcessGone, SyscallFailed, VzcptError
from vzcpt.kernel import ptrace
from vzcpt.proc import files as procfs
from vzcpt.proc.stat import parse_stat


@dataclass
class FrozenTree:
    """A stopped tree: every live thread is seized and in a ptrace stop."""

    root: int
    pids: list[int] = field(default_factory=list)  # parents before children
    threads: dict[int, list[int]] = field(default_factory=dict)  # pid -> tids, leader first
    zombies: set[int] = field(default_factory=set)
    job_stopped: set[int] = field(default_factory=set)  # processes stopped by SIGSTOP before us
    frozen_at: float = 0.0  # when it was frozen last
    frozen_before: float = 0.0  # seconds it spent frozen before that (let run meanwhile)
    _ran_at: float = 0.0  # when it was last let run

    def frozen_for(self) -> float:
        """Seconds the programs have been frozen in all, across every time they
        were let run meanwhile (to drain accept queues, to pre-copy memory)."""
        return self.frozen_before + time.monotonic() - self.frozen_at

    def all_tids(self) -> list[int]:
        return [tid for pid in self.pids for tid in self.threads.get(pid, [])]

    def processes(self) -> list[int]:
        """The processes that run (not zombies), parents first."""
        return [pid for pid in self.pids if pid not in self.zombies]

    def resume(self) -> None:
        """Let every task run on exactly where it was stopped."""
        self._ran_at = time.monotonic()
        for tid in self.all_tids():
            _detach_quietly(tid, 0)

    def refreeze(self) -> None:
        """After `resume`: freeze the tree again (by ptrace alone), as it is now, into this object.

        If that fails, the tree runs on and this holds nothing to resume.
        """
        self.frozen_before += self._ran_at - self.frozen_at
        self.pids, self.threads = [], {}
        again = freeze_tree(self.root)
        self.pids, self.threads, self.zombies = again.pids, again.threads, again.zombies
        self.job_stopped, self.frozen_at = again.job_stopped, again.frozen_at

    def leave_frozen(self, freezer: Freezer) -> None:
        """Detach into the cgroup freezer: frozen again before any task may run."""
        freezer.freeze()  # counts our ptrace-stopped tasks as frozen
        self.resume()

    def leave_stopped(self) -> None:
        """Detach, leaving every process stopped as by SIGSTOP."""
        for pid in self.pids:
            if pid not in self.zombies:
                _kill_quietly(pid, signal.SIGSTOP)
        self.resume()

    def kill(self, *, wait: bool = True) -> None:
        """Kill the tree; with `wait`, consume the exit reports owed to us as
        tracer, so that its pids are free when we return.

        A caller about to exit need not wait: tearing down a large address
        space takes a while, and when the tracer exits the kernel hands the
        dying tasks on to their parents by itself.
        """
        for pid in self.pids:
            _kill_quietly(pid, signal.SIGKILL)
        if wait:
            reap_tracees(self.all_tids())


class Freezer(Protocol):
    """A cgroup freezer holding a whole tree (a VE's)."""

    def freeze(self) -> None: ...

    def thaw(self) -> None: ...


def freeze_tree(root: int, held_by: Freezer | None = None) -> FrozenTree:
    """Seize and stop every thread of the tree rooted at `root`.

    With `held_by`, the tree is already frozen by that cgroup freezer, so it
    cannot change: every thread is seized and interrupted while frozen, then
    the cgroup is thawed, and each thread traps into its ptrace stop before
    it runs a single instruction of its own.
    """
    tree = FrozenTree(root)
    seized: set[int] = set()
    stop = _seize_and_stop if held_by is None else _seize_and_interrupt
    try:
        while True:
            new = 0
            for pid in procfs.tree(root):
                if pid == os.getpid():
                    raise VzcptError(
                        f"the tree of process {root} contains vzcpt itself: "
                        "run vzcpt from outside the tree it checkpoints"
                    )
                try:
                    new += _seize_process(tree, pid, seized, stop)
                except ProcessGone:
                    if pid == root or pid in tree.threads:
                        raise
                    # It exited between our listing and our reaching it (a
                    # short-lived child): its zombie, if any, is met next round.
                    new += 1
            if new == 0 or held_by is not None:
                break
        if held_by is not None:
            held_by.thaw()
            for tid in sorted(seized):
                _wait_for_stop(tid)
    except ProcessGone as exc:
        if root not in seized:
            for tid in seized:
                _detach_quietly(tid, 0)
            raise VzcptError(f"process {root} does not exist") from exc
        for tid in seized:
            _detach_quietly(tid, 0)
        raise
    except BaseException:
        for tid in seized:
            _detach_quietly(tid, 0)
        raise
    tree.pids = procfs_order(root, tree.pids)
    tree.frozen_at = time.monotonic()
    return tree


def _seize_process(
    tree: FrozenTree, pid: int, seized: set[int], stop: Callable[[int], None]
) -> int:
    """Seize the threads of `pid` not yet seized; return how many were."""
    stat = parse_stat(procfs.read(pid, "stat"))
    if pid not in tree.pids:
        tree.pids.append(pid)
    if stat.state in "ZX":
        tree.zombies.add(pid)
        tree.threads.setdefault(pid, [])
        return 0
    if stat.state == "T" and pid not in seized:
        tree.job_stopped.add(pid)
    count = 0
    for tid in procfs.tids(pid):
        if tid in seized:
            continue
        try:
            stop(tid)
        except ProcessGone:
            if tid == pid and not tree.threads.get(pid):
                tree.pids.remove(pid)  # the whole process went while we came
                raise
            continue  # a thread that ended just now
        seized.add(tid)
        tree.threads.setdefault(pid, []).append(tid)
        count += 1
    return count


def procfs_order(root: int, pids: list[int]) -> list[int]:
    """Parents before children; processes that vanished meanwhile are dropped."""
    alive = set(pids)
    return [pid for pid in procfs.tree(root) if pid in alive]


def _seize_and_stop(tid: int) -> None:
    _seize_and_interrupt(tid)
    _wait_for_stop(tid)


def _seize_and_interrupt(tid: int) -> None:
    try:
        ptrace.seize(tid)
    except SyscallFailed as exc:
        # The kernel refuses to attach to a task that is exiting: that is a
        # task gone (its zombie is met next round), not a permission problem.
        if exc.errno == errno.EPERM and _exiting(tid):
            raise ProcessGone(f"task {tid} exited while being frozen") from exc
        raise
    ptrace.interrupt(tid)


def _exiting(tid: int) -> bool:
    try:
        return parse_stat(procfs.read(tid, "stat")).state in "ZXx"
    except ProcessGone:
        return True


def _wait_for_stop(tid: int) -> None:
    while True:
        status = ptrace.wait(tid)
        if status.exited:
            raise ProcessGone(f"task {tid} exited while being frozen")
        if status.event == ptrace.EVENT_STOP:
            return
        # A signal arrived first: deliver it and wait for our interrupt stop,
        # which is still pending.
        ptrace.cont(tid, status.stop_sig)


def _detach_quietly(tid: int, sig: int) -> None:
    with contextlib.suppress(VzcptError):
        ptrace.detach(tid, sig)


def _kill_quietly(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def reap_tracees(tids: list[int]) -> None:
    """Consume the exit reports owed to us as tracer of killed tasks.

    Never block on one task: a thread-group leader reports only after all its
    threads did, so tasks are polled together until each has reported.
    """
    waiting = set(tids)
    deadline = time.monotonic() + 10
    while waiting and time.monotonic() < deadline:
        for tid in list(waiting):
            try:
                status = ptrace.wait(tid, nohang=True)
            except ProcessGone:
                waiting.discard(tid)
                continue
            if status.tid == 0:
                continue
            if status.exited:
                waiting.discard(tid)
            else:  # a last stop before death: let it go on dying
                _detach_quietly(tid, 0)
        if waiting:
            time.sleep(0.001)
