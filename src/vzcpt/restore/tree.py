"""Building the process tree out of stubs, with the saved pids, sessions and groups.

Every stub is made by an injected clone3() with set_tid, from the stub of its
parent (the root from the seed, with CLONE_PARENT so that the restorer is its
parent, as `criu restore -d` leaves it). A child inherits the session of the
process that clones it, so a process that leads its own session calls
setsid() only after cloning those of its children that stayed in the old one;
right after, `on_session` may give the new session its controlling terminal,
which the members cloned next inherit. Process groups are joined once every
process exists.

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
from collections.abc import Callable

from vzcpt.errors import PidBusy, SyscallFailed, Unsupported, VzcptError
from vzcpt.inject.freeze import reap_tracees
from vzcpt.inject.remote import RemoteTask
from vzcpt.kernel import nr, ptrace
from vzcpt.kernel.threads import CLONE_PARENT, THREAD_FLAGS, CloneArgs
from vzcpt.proc import files as procfs
from vzcpt.proc.stat import parse_stat
from vzcpt.resources.task_record import ProcessRecord

EEXIST = 17
SIGCHLD = 17
WALL = 0x40000000


def inherited_ids(procs: list[ProcessRecord], root: int) -> set[int]:
    """Session and group ids the root had from outside the tree: it keeps the restorer's."""
    rec = next(p for p in procs if p.pid == root)
    return {rec.sid, rec.pgid} - {p.pid for p in procs}


def orphaned_ids(procs: list[ProcessRecord], root: int) -> set[int]:
    """Sessions and process groups whose leader is gone: each needs a helper with that pid."""
    pids = {p.pid for p in procs}
    outside = inherited_ids(procs, root)
    return {i for p in procs for i in (p.sid, p.pgid) if i not in pids and i not in outside}


PF_EXITING = 0x4  # task flag (stat field 9): in do_exit(), its pid soon free


def check_ids(procs: list[ProcessRecord], root: int) -> None:
    """Refuse, before creating anything, a pid the tree needs that is taken."""
    wanted = [(p.pid, p.pid) for p in procs]
    wanted += [(t.tid, p.pid) for p in procs for t in p.threads[1:]]
    wanted += [(i, 0) for i in sorted(orphaned_ids(procs, root))]
    for pid, owner in wanted:
        if not _free_soon(pid):
            what = f"process {owner} of the dump" if owner else "a session or group id of the dump"
            raise PidBusy(
                f"pid {pid} ({what}) is in use on this host: "
                "stop whatever holds it, or restore in a fresh pid namespace"
            )


def _free_soon(pid: int, patience: float = 3.0) -> bool:
    """Is the pid free? A task that is dying or dead (the dumped original,
    still tearing down its memory or not yet reaped by its parent) gets a few
    seconds to go away."""
    deadline = time.monotonic() + patience
    while True:
        try:
            stat = parse_stat(procfs.read(pid, "stat"))
        except VzcptError:
            return True
        dying = stat.state in "ZX" or stat.flags & PF_EXITING
        if not dying or time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def clone_stub(creator: RemoteTask, pid: int, flags: int, exit_signal: int) -> RemoteTask:
    """Clone a new stopped task with the given pid from `creator`.

    `pid` is the id in the creator's pid namespace (a VE's own); the task
    returned is addressed by its id in ours, which ptrace reports.
    """
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
    host_tid = creator.spawned[-1] if creator.spawned else got
    status = ptrace.wait(host_tid)
    if status.event != ptrace.EVENT_STOP:
        raise VzcptError(f"new task {pid} did not stop (status {status.status:#x})")
    return RemoteTask(host_tid, creator.gadget, creator.scratch)


def clone_thread(main: RemoteTask, tid: int) -> RemoteTask:
    return clone_stub(main, tid, THREAD_FLAGS, 0)


class TreeBuilder:
    """Makes the stubs. Sessions and process groups whose leader is gone are
    rebuilt with helpers: a stub with the leader's pid that founds the session
    (setsid) or group (setpgid) and, for a session, clones its members with
    CLONE_PARENT so their parent is still the right one; helpers exit and
    are reaped by their parent before anything runs."""

    def __init__(
        self,
        seed: RemoteTask,
        procs: list[ProcessRecord],
        root: int,
        root_is_seed: bool = False,
        on_session: Callable[[int, RemoteTask], None] | None = None,
    ) -> None:
        self.seed = seed
        self.on_session = on_session  # called with each new live session and its leader
        self.root_is_seed = root_is_seed  # a VE's init: the seed is already its pid 1
        self.procs = {p.pid: p for p in procs}
        self.children: dict[int, list[ProcessRecord]] = {}
        for p in procs:
            if p.pid != root:
                self.children.setdefault(p.ppid, []).append(p)
        self.root = root
        self.inherited = inherited_ids(procs, root)
        self.tasks: dict[int, RemoteTask] = {}  # live stubs by pid
        self.created: list[int] = []  # host pid of every task made, zombies and helpers too
        self.session_of: dict[int, int] = {}  # the session each stub is in now
        self.helpers: dict[int, tuple[RemoteTask, int]] = {}  # id -> (helper, its parent)

    def build(self) -> dict[int, RemoteTask]:
        root = self.procs[self.root]
        # The root is cloned with CLONE_PARENT (clone3 then takes no exit signal:
        # the seed's SIGCHLD is inherited), unless the seed is the root itself.
        task = self.seed if self.root_is_seed else clone_stub(self.seed, root.pid, CLONE_PARENT, 0)
        self.session_of[root.pid] = root.sid if root.sid != root.pid else -1
        self._grow(root, task)
        self._join_groups()
        self._dismiss_helpers()
        return self.tasks

    def _grow(self, rec: ProcessRecord, task: RemoteTask) -> None:
        self.created.append(task.tid)
        self.tasks[rec.pid] = task
        kids = self.children.get(rec.pid, [])
        if rec.sid == rec.pid:
            # Children that stayed in the old session were cloned before setsid().
            first = [k for k in kids if k.sid == self.session_of[rec.pid]]
            for kid in first:
                self._child(rec.pid, task, kid)
            task.call(nr.SETSID, what="setsid")
            self.session_of[rec.pid] = rec.pid
            if self.on_session is not None:
                self.on_session(rec.pid, task)
            kids = [k for k in kids if k not in first]
        for kid in kids:
            self._child(rec.pid, task, kid)

    def _child(self, parent: int, parent_task: RemoteTask, rec: ProcessRecord) -> None:
        if rec.sid in (rec.pid, self.session_of[parent]):
            task = clone_stub(parent_task, rec.pid, 0, rec.exit_signal)
        elif rec.sid not in self.procs:
            helper = self._helper(rec.sid, parent, parent_task, nr.SETSID)
            task = clone_stub(helper, rec.pid, CLONE_PARENT, 0)
        else:
            raise Unsupported(
                f"process {rec.pid} is in session {rec.sid}, which its parent {parent} "
                "is not in: vzcpt cannot rebuild that session yet"
            )
        # A future session leader is still in its parent's session: _grow calls setsid().
        self.session_of[rec.pid] = self.session_of[parent] if rec.sid == rec.pid else rec.sid
        if rec.zombie:
            if rec.sid == rec.pid:
                task.call(nr.SETSID, what="setsid")
            self.created.append(task.tid)
            self.tasks[rec.pid] = task  # dies in become_zombies(), after groups are joined
            return
        self._grow(rec, task)

    def _helper(self, ident: int, parent: int, parent_task: RemoteTask, found: int) -> RemoteTask:
        """The stand-in for a gone leader: a stub with its pid that founds its session or group."""
        if ident in self.helpers:
            helper, helper_parent = self.helpers[ident]
            if helper_parent != parent and found == nr.SETSID:
                raise Unsupported(
                    f"the members of session {ident}, whose leader is gone, have different "
                    "parents: vzcpt cannot rebuild that session yet"
                )
            return helper
        helper = clone_stub(parent_task, ident, 0, SIGCHLD)
        self.created.append(helper.tid)
        if found == nr.SETSID:
            helper.call(nr.SETSID, what="setsid in a session helper")
        else:
            helper.call(nr.SETPGID, 0, 0, what="setpgid in a group helper")
        self.helpers[ident] = (helper, parent)
        return helper

    def _join_groups(self) -> None:
        for rec in sorted(self.procs.values(), key=lambda p: p.pgid != p.pid):
            if rec.sid == rec.pid or rec.pgid in self.inherited:
                continue  # a session leader leads its group; an inherited group is joined
            task = self.tasks[rec.pid]
            if rec.pgid not in self.procs and rec.pgid not in self.helpers:
                self._helper(rec.pgid, rec.pid, task, nr.SETPGID)
            task.call(nr.SETPGID, 0, rec.pgid, what=f"setpgid to {rec.pgid}")

    def _dismiss_helpers(self) -> None:
        """Helpers exit once their groups have members; their parents reap them."""
        for ident, (helper, parent) in self.helpers.items():
            _die(helper, 0)
            self.tasks[parent].call(nr.WAIT4, ident, 0, WALL, 0, what="wait4 of a helper")
        self.helpers.clear()

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
