"""Interval timers (setitimer) and POSIX timers (timer_create), with remaining time.

Kernel interfaces: getitimer/setitimer and timer_gettime/timer_settime
injected into the process; /proc/PID/timers lists the POSIX timers with their
id, signal, notification and clock; prctl(PR_TIMER_CREATE_RESTORE_IDS) lets
timer_create() take the saved id (Linux 6.17+); on older kernels ids are
reached by creating timers in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vzcpt.errors import Unsupported
from vzcpt.inject.remote import RemoteTask
from vzcpt.kernel import nr
from vzcpt.proc import files as procfs
from vzcpt.proc.timers import parse_timers

PR_TIMER_CREATE_RESTORE_IDS = 77
SIGEV_NOTIFY = {"signal": 0, "none": 1, "thread": 4}


@dataclass
class PosixTimer:
    id: int
    clock_id: int
    signo: int
    sigev_value: int
    notify: str
    notify_tid: int
    value: tuple[int, int, int, int]  # itimerspec: interval sec, nsec, value sec, nsec


@dataclass
class TimersRecord:
    itimers: list[tuple[int, int, int, int]] = field(default_factory=list)  # real, virtual, prof
    posix: list[PosixTimer] = field(default_factory=list)


def _words(raw: bytes) -> tuple[int, int, int, int]:
    a, b, c, d = (int.from_bytes(raw[i : i + 8], "little", signed=True) for i in range(0, 32, 8))
    return a, b, c, d


def _raw(words: tuple[int, int, int, int]) -> bytes:
    return b"".join(w.to_bytes(8, "little", signed=True) for w in words)


def dump_timers(pid: int, task: RemoteTask) -> Callable[[], TimersRecord]:
    """Queue the questions; the function returned reads the answers once they ran."""
    itimers = [task.queue(nr.GETITIMER, which, bytes(32), what="getitimer") for which in range(3)]
    posix = [
        (info, task.queue(nr.TIMER_GETTIME, info.id, bytes(32), what=f"timer_gettime({info.id})"))
        for info in parse_timers(procfs.read(pid, "timers"))
    ]

    def answer() -> TimersRecord:
        rec = TimersRecord(itimers=[_words(call.memory[0]) for call in itimers])
        for info, call in posix:
            rec.posix.append(
                PosixTimer(
                    id=info.id,
                    clock_id=info.clock_id,
                    signo=info.signal,
                    sigev_value=info.sigev_value,
                    notify=info.notify,
                    notify_tid=info.notify_tid,
                    value=_words(call.memory[0]),
                )
            )
        return rec

    return answer


def restore_timers(task: RemoteTask, pid: int, rec: TimersRecord) -> None:
    for which, value in enumerate(rec.itimers):
        if any(value):
            task.queue(nr.SETITIMER, which, _raw(value), 0, what="setitimer")
    if not rec.posix:
        return
    exact = task.call_raw(nr.PRCTL, PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0) == 0
    try:
        for timer in sorted(rec.posix, key=lambda t: t.id):
            _create(task, pid, timer, exact)
    finally:
        if exact:
            task.call_raw(nr.PRCTL, PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0)


def _create(task: RemoteTask, pid: int, timer: PosixTimer, exact: bool) -> None:
    notify = SIGEV_NOTIFY.get(timer.notify)
    if notify is None:
        raise Unsupported(f"process {pid}: POSIX timer {timer.id} notifies by {timer.notify!r}")
    sigevent = (
        timer.sigev_value.to_bytes(8, "little")
        + timer.signo.to_bytes(4, "little")
        + notify.to_bytes(4, "little")
        + timer.notify_tid.to_bytes(4, "little")
    )
    sigevent = sigevent.ljust(64, b"\0")
    task.put(0, sigevent)
    fillers: list[int] = []
    while True:
        task.put(64, timer.id.to_bytes(4, "little"))
        task.call(
            nr.TIMER_CREATE,
            timer.clock_id,
            task.scratch,
            task.scratch + 64,
            what=f"timer_create of timer {timer.id}",
        )
        got = int.from_bytes(task.get(64, 4), "little")
        if got == timer.id:
            break
        if exact or got > timer.id:
            raise Unsupported(f"process {pid}: POSIX timer {timer.id} came back as {got}")
        fillers.append(got)  # without exact ids, ids come in order: fill the gap
    for filler in fillers:
        task.call(nr.TIMER_DELETE, filler, what="timer_delete")
    task.put(128, _raw(timer.value))
    task.call(nr.TIMER_SETTIME, timer.id, 0, task.scratch + 128, 0, what="timer_settime")
