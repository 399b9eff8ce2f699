"""Building the process tree out of stubs, with the saved pids, sessions and groups.

Every stub is made by an injected clone3() with set_tid, from the stub of its
parent (the root from the seed, with CLONE_PARENT so that the restorer is its
parent, as `criu restore -d` leaves it). A child inherits the session of the
process that clones it, so a process that leads its own session calls
setsid() only after cloning those of its children that stayed in the old one.
Process groups are joined once every process exists.

Once `build_tree` returns: every saved process and zombie exists with its
pid, parent, session and process group; each live one is a stopped stub (a
copy of the seed) driven by a RemoteTask, attached with PTRACE_O_EXITKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time

from vzcpt.errors import PidBusy, SyscallFailed, Unsupported, VzcptError
from vzcpt.inject.freeze import reap_tracees
from vzcpt.inject.remote import RemoteTask
from vzcpt.kernel import nr, ptrace
from vzcpt.kernel.threads import CLONE_PARENT, THREAD_FLAGS, CloneArgs
from vzcpt.proc import files as procfs
from vzcpt.proc.stat import parse_stat
from vzcpt.resources.task_record import ProcessRecord

EEXIST = 17


def check_ids(procs: list[ProcessRecord], root: int) -> None:
    """Refuse, before creating anything, what cannot be rebuilt."""
    pids = {p.pid for p in procs}
    for p in procs:
        for tid in [p.pid] + [t.tid for t in p.threads[1:]]:
            if not _free_soon(tid):
                raise PidBusy(
                    f"pid {tid} (process {p.pid} of the dump) is in use on this host: "
                    "stop whatever holds it, or restore in a fresh pid namespace"
                )
    by_pid = {p.pid: p for p in procs}
    for p in procs:
        if p.pid == root:
            continue
        for what, ident in (("session", p.sid), ("process group", p.pgid)):
            outside_but_inherited = ident == by_pid[root].sid or ident == by_pid[root].pgid
            if ident not in pids and not outside_but_inherited:
                raise Unsupported(
                    f"process {p.pid} is in {what} {ident}, whose leader is gone: "
                    "restoring such orphaned groups is not supported yet"
                )


def _free_soon(pid: int, patience: float = 3.0) -> bool:
    """Is the pid free? A zombie (the dumped original not yet reaped by its
    parent) gets a few seconds to go away."""
    deadline = time.monotonic() + patience
    while True:
        try:
            state = parse_stat(procfs.read(pid, "stat")).state
        except VzcptError:
            return True
        if state not in "ZX" or time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def clone_stub(creator: RemoteTask, pid: int, flags: int, exit_signal: int) -> RemoteTask:
    """Clone a new stopped task with the given pid from `creator`."""
    tid_array = creator.put(1024, pid.to_bytes(4, "little", signed=True))
    args = CloneArgs(flags=flags, exit_signal=exit_signal, set_tid=tid_array, set_tid_size=1)
    address = creator.put(0, bytes(args))
    creator.spawned.clear()
    try:
        got = creator.call(nr.CLONE3, address, ctypes.sizeof(args), what=f"clone3 of {pid}")
    except SyscallFailed as exc:
        if exc.errno == EEXIST:
            raise PidBusy(f"pid {pid} was taken while restoring") from exc
        raise
    if got != pid:
        raise VzcptError(f"clone3 gave pid {got} instead of {pid}")
    status = ptrace.wait(pid)
    if status.event != ptrace.EVENT_STOP:
        raise VzcptError(f"new task {pid} did not stop (status {status.status:#x})")
    return RemoteTask(pid, creator.gadget, creator.scratch)


def clone_thread(main: RemoteTask, tid: int) -> RemoteTask:
    return clone_stub(main, tid, THREAD_FLAGS, 0)


class TreeBuilder:
    def __init__(self, seed: RemoteTask, procs: list[ProcessRecord], root: int) -> None:
        self.seed = seed
        self.procs = {p.pid: p for p in procs}
        self.children: dict[int, list[ProcessRecord]] = {}
        for p in procs:
            if p.pid != root:
                self.children.setdefault(p.ppid, []).append(p)
        self.root = root
        self.tasks: dict[int, RemoteTask] = {}  # live stubs by pid
        self.created: list[int] = []  # every pid made, zombies included, in order

    def build(self) -> dict[int, RemoteTask]:
        root = self.procs[self.root]
        # clone3 takes no exit signal with CLONE_PARENT: the seed's (SIGCHLD) is inherited.
        task = clone_stub(self.seed, root.pid, CLONE_PARENT, 0)
        self._grow(root, task)
        self._join_groups()
        return self.tasks

    def _grow(self, rec: ProcessRecord, task: RemoteTask) -> None:
        self.created.append(rec.pid)
        self.tasks[rec.pid] = task
        kids = self.children.get(rec.pid, [])
        leads_session = rec.sid == rec.pid
        first = [k for k in kids if leads_session and k.sid != rec.pid]
        for kid in first:
            self._child(task, kid)
        if leads_session:
            task.call(nr.SETSID, what="setsid")
        for kid in kids:
            if kid not in first:
                self._child(task, kid)

    def _child(self, parent: RemoteTask, rec: ProcessRecord) -> None:
        task = clone_stub(parent, rec.pid, 0, rec.exit_signal)
        if rec.zombie:
            self.created.append(rec.pid)
            self.tasks[rec.pid] = task  # dies in become_zombies(), after groups are joined
            return
        self._grow(rec, task)

    def _join_groups(self) -> None:
        for rec in sorted(self.procs.values(), key=lambda p: p.pgid != p.pid):
            task = self.tasks[rec.pid]
            if rec.sid == rec.pid:
                continue  # setsid made it the leader of its own group already
            if rec.pgid == rec.pid or rec.pgid in self.procs:
                task.call(nr.SETPGID, 0, rec.pgid, what=f"setpgid to {rec.pgid}")

    def become_zombies(self) -> None:
        """Let the saved zombies die the way they died; their parents will reap them."""
        for rec in self.procs.values():
            if rec.zombie:
                _die(self.tasks.pop(rec.pid), rec.exit_status)

    def kill_all(self) -> None:
        """Remove every process made so far: a failed restore leaves nothing behind."""
        tids: list[int] = []
        for pid in self.created:
            with contextlib.suppress(VzcptError):
                tids.extend(procfs.tids(pid))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        reap_tracees(tids)


def _die(task: RemoteTask, status: int) -> None:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        task.put(0, bytes(16))  # RLIMIT_CORE 0: a saved core-dumping death dumps no core
        task.call(nr.PRLIMIT64, 0, 4, task.scratch, 0, what="prlimit64")
        ptrace.set_sigmask(task.tid, 0)
        regs = task.saved_regs.copy()
        regs.rax, regs.rdi, regs.rsi = nr.KILL, task.tid, sig
        regs.orig_rax, regs.rip = (1 << 64) - 1, task.gadget
        ptrace.set_regs(task.tid, regs)
        ptrace.singlestep(task.tid)
        while True:
            st = ptrace.wait(task.tid)
            if st.exited:
                return
            ptrace.cont(task.tid, st.stop_sig if st.stop_sig != 5 else 0)
    elif os.WIFEXITED(status):
        regs = task.saved_regs.copy()
        regs.rax, regs.rdi = nr.EXIT_GROUP, os.WEXITSTATUS(status)
        regs.orig_rax, regs.rip = (1 << 64) - 1, task.gadget
        ptrace.set_regs(task.tid, regs)
        ptrace.singlestep(task.tid)
        while not ptrace.wait(task.tid).exited:
            ptrace.cont(task.tid, 0)
    else:
        raise Unsupported(f"zombie {task.tid} has an unknown exit status {status:#x}")
