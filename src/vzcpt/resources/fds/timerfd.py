"""timerfd: clock, time left, interval, settime flags and unread expirations.

Kernel interfaces: fdinfo ("clockid", "ticks", "settime flags", "it_value",
"it_interval"); timerfd_gettime(2) on our own descriptor on the description
first, because a periodic timer that fired waits for its next read to count
the periods since and re-arm: gettime does the same without consuming, so
the count read next is complete and the timer armed. At restore: a new
timer on the same clock, armed with the time that was left (time stands
still for a checkpointed program, as for its POSIX timers; with
TFD_TIMER_ABSTIME the deadline is now plus that time, so the flag and
TFD_TIMER_CANCEL_ON_SET hold again), then ioctl(TFD_IOC_SET_TICKS) gives it
the unread expirations: a read returns them at once and poll reports it
readable. Setting the time clears the count, hence that order.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from vzcpt.errors import CorruptDump
from vzcpt.kernel.eventfds import (
    TFD_TIMER_ABSTIME,
    TFD_TIMER_CANCEL_ON_SET,
    timerfd_create,
    timerfd_gettime,
    timerfd_set_ticks,
    timerfd_settime,
)
from vzcpt.proc import files as procfs
from vzcpt.proc.fdinfo import FdInfo, TimerfdInfo, parse_fdinfo, timerfd_state
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import AnonInodeKind, FileDesc

LINK = "anon_inode:[timerfd]"
CLOCK_NAMES = {
    0: "realtime",
    1: "monotonic",
    7: "boottime",
    8: "realtime-alarm",
    9: "boottime-alarm",
}
ATTEMPTS = 20


@dataclass
class TimerfdRecord:
    clockid: int = 1
    ticks: int = 0  # expirations not yet read
    settime_flags: int = 0  # TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET
    value_ns: int = 0  # time left; 0: disarmed
    interval_ns: int = 0

    def __str__(self) -> str:
        parts = [f"clock {CLOCK_NAMES.get(self.clockid, self.clockid)}"]
        parts.append(f"{self.value_ns / 1e9:.6f} s left" if self.value_ns else "disarmed")
        if self.interval_ns:
            parts.append(f"every {self.interval_ns / 1e9:.6f} s")
        parts.append(f"{self.ticks} unread")
        if self.settime_flags & TFD_TIMER_ABSTIME:
            parts.append("abstime")
        if self.settime_flags & TFD_TIMER_CANCEL_ON_SET:
            parts.append("cancel-on-set")
        return ", ".join(parts)


def _settled_state(pid: int, fd: int, local: int) -> TimerfdInfo:
    """The timer's state once every expiration so far is counted.

    A periodic timer that fires between our gettime and the fdinfo read is
    seen expired and not yet re-armed (no time left, interval set, unread
    expirations): count again. The timer keeps running while we look, so a
    timer firing faster than we can look settles for its interval.
    """
    for _ in range(ATTEMPTS):
        timerfd_gettime(local)
        state = timerfd_state(parse_fdinfo(procfs.read(pid, f"fdinfo/{fd}")))
        if not (state.interval_ns and state.ticks and not state.value_ns):
            return state
    return TimerfdInfo(
        state.clockid, state.ticks, state.settime_flags, state.interval_ns, state.interval_ns
    )


class TimerfdHandler(AnonInodeKind):
    kind = "timerfd"
    link = LINK

    def dump(
        self,
        ctx: DumpContext,
        pid: int,
        fd: int,
        local: int,
        link: str,
        st: os.stat_result,
        info: FdInfo,
    ) -> FileDesc:
        state = _settled_state(pid, fd, local)
        return FileDesc(
            id=0,
            kind=self.kind,
            flags=info.flags & ~os.O_CLOEXEC,
            timerfd=TimerfdRecord(
                clockid=state.clockid,
                ticks=state.ticks,
                settime_flags=state.settime_flags,
                value_ns=state.value_ns,
                interval_ns=state.interval_ns,
            ),
        )

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        rec = desc.timerfd
        if rec is None:
            raise CorruptDump(f"file {desc.id} of kind timerfd has no timerfd record")
        fd = timerfd_create(rec.clockid, desc.flags & os.O_NONBLOCK)
        try:
            if rec.value_ns or rec.interval_ns or rec.settime_flags:
                value = rec.value_ns
                if value and rec.settime_flags & TFD_TIMER_ABSTIME:
                    value += time.clock_gettime_ns(rec.clockid)
                timerfd_settime(fd, rec.settime_flags, value, rec.interval_ns)
            if rec.ticks:
                timerfd_set_ticks(fd, rec.ticks)
        except BaseException:
            os.close(fd)
            raise
        return fd


HANDLER = TimerfdHandler()
