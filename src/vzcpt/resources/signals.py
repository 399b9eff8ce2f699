"""Signal dispositions and the signals pending for the whole process.

Kernel interfaces: rt_sigaction(2) injected into the process (there is no
other way to read a handler's address, flags and mask); /proc/PID/status
SigCgt/SigIgn to ask only about signals that are not at their default;
PTRACE_PEEKSIGINFO with PTRACE_PEEKSIGINFO_SHARED for the shared queue, put
back with rt_sigqueueinfo(2) from inside the process (allowed for any
si_code when a process signals itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vzcpt.inject.remote import RemoteTask
from vzcpt.kernel import nr, ptrace
from vzcpt.proc import files as procfs
from vzcpt.proc.status import parse_status

SIGKILL = 9
SIGSTOP = 19
SIGSET_SIZE = 8


@dataclass
class SigAction:
    signo: int
    handler: int
    flags: int
    restorer: int
    mask: int


@dataclass
class SignalsRecord:
    actions: list[SigAction] = field(default_factory=list)
    shared_pending: list[bytes] = field(default_factory=list)


def dump_signals(pid: int, task: RemoteTask) -> Callable[[], SignalsRecord]:
    """Queue the questions; the function returned reads the answers once they ran."""
    status = parse_status(procfs.read(pid, "status"))
    interesting = status.sig_caught | status.sig_ignored
    asked = [
        (signo, task.queue(nr.RT_SIGACTION, signo, 0, bytes(32), SIGSET_SIZE, what="rt_sigaction"))
        for signo in range(1, 65)
        if signo not in (SIGKILL, SIGSTOP) and interesting & (1 << (signo - 1))
    ]
    shared_pending = ptrace.peek_siginfo(task.tid, shared=True)

    def answer() -> SignalsRecord:
        actions = [
            SigAction(signo, *(old.word(0, i) for i in range(0, 32, 8))) for signo, old in asked
        ]
        return SignalsRecord(actions, shared_pending)

    return answer


def restore_actions(task: RemoteTask, rec: SignalsRecord) -> None:
    """Queue the saved dispositions (every other signal is at SIG_DFL in a stub)."""
    for act in rec.actions:
        raw = b"".join(
            v.to_bytes(8, "little") for v in (act.handler, act.flags, act.restorer, act.mask)
        )
        task.queue(
            nr.RT_SIGACTION, act.signo, raw, 0, SIGSET_SIZE, what=f"rt_sigaction({act.signo})"
        )


def restore_shared_pending(task: RemoteTask, pid: int, rec: SignalsRecord) -> None:
    """Queue the signals pending for the whole process, sent by itself to itself."""
    for info in rec.shared_pending:
        signo = int.from_bytes(info[0:4], "little")
        task.queue(nr.RT_SIGQUEUEINFO, pid, signo, info, what=f"requeue of signal {signo}")
