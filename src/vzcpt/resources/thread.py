"""A thread: registers, extended FPU state, signal mask, rseq, robust list,
clear_child_tid, alternate signal stack, name and its private pending signals.

Kernel interfaces: PTRACE_GETREGS/SETREGS (general registers with fs_base and
gs_base), PTRACE_GETREGSET/SETREGSET with NT_X86_XSTATE (x87, SSE, AVX,
AVX-512...), PTRACE_GETSIGMASK/SETSIGMASK, PTRACE_PEEKSIGINFO,
PTRACE_GET_RSEQ_CONFIGURATION, get_robust_list(2); and, injected into the
thread itself, prctl(PR_GET_TID_ADDRESS), sigaltstack(2), set_tid_address,
set_robust_list, rseq(2), prctl(PR_SET_NAME) and rt_tgsigqueueinfo(2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vzcpt.inject.remote import RemoteTask, to_signed
from vzcpt.kernel import nr, ptrace
from vzcpt.kernel.ptrace import REG_NAMES, Regs
from vzcpt.kernel.threads import robust_list
from vzcpt.proc import files as procfs

PR_SET_NAME = 15
PR_GET_TID_ADDRESS = 40
SS_ONSTACK = 1
SS_DISABLE = 2
XSTATE_MAX = 16384

ERESTARTSYS = 512
ERESTARTNOINTR = 513
ERESTARTNOHAND = 514
ERESTART_RESTARTBLOCK = 516
EINTR = 4


@dataclass
class ThreadRecord:
    tid: int
    regs: list[int]  # user_regs_struct, in REG_NAMES order
    xstate: bytes
    sigmask: int
    comm: str
    rseq: tuple[int, int, int] | None = None  # (pointer, size, signature)
    robust_list: tuple[int, int] = (0, 0)
    clear_child_tid: int = 0
    altstack: tuple[int, int, int] = (0, SS_DISABLE, 0)  # (sp, flags, size)
    pending: list[bytes] = field(default_factory=list)  # siginfo of private pending signals


def dump_thread(pid: int, task: RemoteTask) -> Callable[[], ThreadRecord]:
    """Save one stopped thread; `task` must have its scratch area mapped.

    Queues what is asked from inside the thread; the function returned
    reads the answers once they ran."""
    tid = task.tid
    regs = task.saved_regs
    rseq = ptrace.get_rseq(tid)
    clear_tid = task.queue(
        nr.PRCTL, PR_GET_TID_ADDRESS, bytes(8), 0, 0, 0, what="PR_GET_TID_ADDRESS"
    )
    altstack = task.queue(nr.SIGALTSTACK, 0, bytes(24), what="sigaltstack")
    rec = ThreadRecord(
        tid=tid,
        regs=[getattr(regs, name) for name in REG_NAMES],
        xstate=ptrace.get_regset(tid, ptrace.NT_X86_XSTATE, XSTATE_MAX),
        sigmask=task.saved_sigmask,
        comm=procfs.read(pid, "comm", tid=tid).decode(errors="replace").rstrip("\n"),
        rseq=(rseq.pointer, rseq.size, rseq.signature) if rseq.pointer else None,
        robust_list=robust_list(tid),
        pending=ptrace.peek_siginfo(tid, shared=False),
    )

    def answer() -> ThreadRecord:
        rec.clear_child_tid = clear_tid.word()
        rec.altstack = (altstack.word(0, 0), altstack.word(0, 8, 4), altstack.word(0, 16))
        return rec

    return answer


def restore_thread_state(task: RemoteTask, pid: int, rec: ThreadRecord) -> None:
    """Queue everything of the thread but its registers and mask, set from inside it."""
    task.queue(nr.SET_TID_ADDRESS, rec.clear_child_tid, what="set_tid_address")
    if rec.robust_list[0]:
        task.queue(nr.SET_ROBUST_LIST, *rec.robust_list, what="set_robust_list")
    sp, flags, size = rec.altstack
    if not flags & SS_DISABLE:
        stack = sp.to_bytes(8, "little") + (flags & ~SS_ONSTACK).to_bytes(4, "little") + bytes(4)
        task.queue(nr.SIGALTSTACK, stack + size.to_bytes(8, "little"), 0, what="sigaltstack")
    name = rec.comm.encode()[:15] + b"\0"
    task.queue(nr.PRCTL, PR_SET_NAME, name, 0, 0, 0, what="PR_SET_NAME")
    if rec.rseq is not None:
        pointer, length, signature = rec.rseq
        task.queue(nr.RSEQ, pointer, length, 0, signature, what="rseq")
    for info in rec.pending:
        signo = int.from_bytes(info[0:4], "little")
        task.queue(
            nr.RT_TGSIGQUEUEINFO, pid, rec.tid, signo, info, what=f"requeue of signal {signo}"
        )


def final_regs(rec: ThreadRecord) -> Regs:
    """The saved registers, with an interrupted syscall set up to run again.

    A syscall interrupted by the checkpoint shows orig_rax >= 0 and one of the
    kernel's restart codes in rax. The kernel would have restarted it by
    stepping back over the 2-byte `syscall` instruction; we do the same. The
    restart block of -ERESTART_RESTARTBLOCK (nanosleep and friends) is gone
    with the old task, so that call returns -EINTR instead, as after a signal.
    """
    regs = Regs(*rec.regs)
    orig = to_signed(regs.orig_rax)
    result = to_signed(regs.rax)
    if orig >= 0:
        if result in (-ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND):
            regs.rip -= 2
            regs.rax = regs.orig_rax
        elif result == -ERESTART_RESTARTBLOCK:
            regs.rax = (-EINTR) & ((1 << 64) - 1)
    regs.orig_rax = (1 << 64) - 1
    return regs


def load_regs(task: RemoteTask, rec: ThreadRecord) -> None:
    """Run what is queued in the thread, then give it its saved registers and mask."""
    task.flush()
    ptrace.set_regset(task.tid, ptrace.NT_X86_XSTATE, rec.xstate)
    ptrace.set_regs(task.tid, final_regs(rec))
    ptrace.set_sigmask(task.tid, rec.sigmask)
