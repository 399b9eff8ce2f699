"""The seed: the one process the restorer forks itself, from which every stub is cloned.

The seed is a copy of the restorer that closes every descriptor but its end
of the descriptor channel, blocks every signal and waits in read(). We seize
it there: the two bytes before its `rip` are the `syscall` of that read, the
first gadget we borrow. Through it the seed maps our own gadget page and
scratch area at the start of the restore window, an address free in every
saved layout; every stub cloned from the seed inherits both, at the same place.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from vzcpt.errors import VzcptError
from vzcpt.inject.freeze import reap_tracees
from vzcpt.inject.remote import (
    MAP_ANONYMOUS,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    PROT_EXEC,
    PROT_READ,
    RemoteTask,
)
from vzcpt.kernel import nr, ptrace, vm
from vzcpt.proc import files as procfs
from vzcpt.resources import memory

GADGET = b"\x0f\x05\xcc"  # syscall; int3
RSEQ_FLAG_UNREGISTER = 1
PAGE = 4096


@dataclass
class Seed:
    task: RemoteTask  # the stopped seed, with our gadget and scratch area mapped
    channel: socket.socket  # our end of the descriptor channel every stub inherits
    specials: dict[str, tuple[int, int]]  # where the vDSO is parked in the window

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.task.tid, signal.SIGKILL)
        reap_tracees([self.task.tid])
        self.channel.close()


# Something that starts the seed's process: given the descriptor number
# and our socket's other end, it arranges for a process to run
# `become_seed(channel_fd, theirs)` and returns that process's pid.
SeedLauncher = Callable[[int, socket.socket], int]


def become_seed(channel_fd: int, theirs: socket.socket) -> None:
    """The seed's own code: keep only the channel, block every signal, wait. Never returns."""
    try:
        os.dup2(theirs.fileno(), channel_fd, inheritable=True)
        os.closerange(0, channel_fd)
        os.closerange(channel_fd + 1, 65536)
        signal.pthread_sigmask(signal.SIG_BLOCK, range(1, signal.NSIG))
        os.chdir("/")
        while True:
            os.read(channel_fd, 1)
    finally:
        os._exit(1)


def fork_seed(channel_fd: int, theirs: socket.socket) -> int:
    """The seed of a plain tree: a child of ours, in our namespaces."""
    pid = os.fork()
    if pid == 0:
        become_seed(channel_fd, theirs)
    return pid


def spawn_seed(channel_fd: int, window: tuple[int, int], launch: SeedLauncher = fork_seed) -> Seed:
    """Start and seize the seed; return it ready to clone stubs from."""
    window_start = window[0]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        pid = launch(channel_fd, theirs)
    except BaseException:
        ours.close()
        theirs.close()
        raise
    theirs.close()
    try:
        options = ptrace.O_TRACEFORK | ptrace.O_TRACECLONE | ptrace.O_TRACEVFORK
        ptrace.seize(pid, options | ptrace.O_EXITKILL)  # if we die, every stub dies with us
        _wait_until_blocked(pid)
        ptrace.interrupt(pid)
        status = ptrace.wait(pid)
        if status.event != ptrace.EVENT_STOP:
            raise VzcptError(f"the restore seed {pid} did not stop (status {status.status:#x})")
        regs = ptrace.get_regs(pid)
        if vm.read_mem(pid, regs.rip - 2, 2) != b"\x0f\x05":
            raise VzcptError(f"the restore seed {pid} is not stopped after a syscall")
        task = RemoteTask(pid, regs.rip - 2)
        task.call(
            nr.MMAP,
            window_start,
            PAGE,
            PROT_READ | PROT_EXEC,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
            -1,
            0,
            what="mmap of the gadget",
        )
        vm.write_mem(pid, window_start, GADGET)
        task.gadget = window_start
        task.map_scratch(window_start + PAGE)
        _default_dispositions(task)
        rseq = ptrace.get_rseq(pid)
        if rseq.pointer:  # glibc's, in memory about to go: the kernel would fault the seed
            task.call(
                nr.RSEQ,
                rseq.pointer,
                rseq.size,
                RSEQ_FLAG_UNREGISTER,
                rseq.signature,
                what="rseq unregistration",
            )
        parked = memory.empty_address_space(task, window)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        reap_tracees([pid])
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        ours.close()
        raise
    return Seed(task, ours, parked)


def _default_dispositions(seed: RemoteTask) -> None:
    """Every signal at SIG_DFL with no flags, as in a fresh process; stubs inherit it.

    Python's own signal.signal() would leave SA_ONSTACK set, which a restored
    program could see.
    """
    for signo in range(1, 65):
        if signo not in (signal.SIGKILL, signal.SIGSTOP):
            # struct kernel_sigaction: SIG_DFL, no flags, no mask
            seed.queue(nr.RT_SIGACTION, signo, bytes(32), 0, 8, what="rt_sigaction")
    seed.flush()


def _wait_until_blocked(pid: int) -> None:
    """Wait until the seed sits in its read(), so that its rip follows a syscall."""
    for _ in range(5000):
        if procfs.read(pid, "syscall").split(b" ", 1)[0] == str(nr.READ).encode():
            return
        time.sleep(0.001)
    raise VzcptError(f"the restore seed {pid} never reached its read()")
