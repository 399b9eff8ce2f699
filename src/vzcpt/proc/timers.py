"""Parser for /proc/PID/timers: the POSIX timers of a process
(CONFIG_CHECKPOINT_RESTORE; kernel/time/posix-timers.c show_timer).

Four lines per timer:

    ID: 0
    signal: 12/0000000000001234       signo / sigev_value (hex)
    notify: signal/pid.3862           "signal"|"none"|"thread" / "pid"|"tid" . id
    ClockID: 1

"tid" means SIGEV_THREAD_ID: the signal goes to that one thread.  glibc's
SIGEV_THREAD timers show up as "signal/tid" to glibc's helper thread.
The timer's armed value is not here: read it with timer_gettime in the task.
"""

from dataclasses import dataclass

SIGEV_SIGNAL = 0
SIGEV_NONE = 1
SIGEV_THREAD = 2
SIGEV_THREAD_ID = 4
_NOTIFY = {"signal": SIGEV_SIGNAL, "none": SIGEV_NONE, "thread": SIGEV_THREAD}


@dataclass(frozen=True)
class PosixTimerInfo:
    id: int
    signal: int
    sigev_value: int
    notify: str  # "signal" | "none" | "thread"
    notify_tid: int  # the pid (or, with notify_thread, the tid) the kernel printed
    clock_id: int
    notify_thread: bool = False  # "tid": SIGEV_THREAD_ID, aimed at one thread

    @property
    def sigev_notify(self) -> int:
        """The sigev_notify value to recreate the timer with."""
        return _NOTIFY[self.notify] | (SIGEV_THREAD_ID if self.notify_thread else 0)


def parse_timers(data: bytes) -> list[PosixTimerInfo]:
    """Every timer of /proc/PID/timers, in the kernel's order."""
    timers: list[PosixTimerInfo] = []
    cur: dict[str, str] = {}

    def flush() -> None:
        if not cur:
            return
        signo, _, value = cur["signal"].partition("/")
        how, _, target = cur["notify"].partition("/")
        kind, _, tid = target.partition(".")
        timers.append(
            PosixTimerInfo(
                id=int(cur["ID"]),
                signal=int(signo),
                sigev_value=int(value, 16),
                notify=how,
                notify_tid=int(tid),
                clock_id=int(cur["ClockID"]),
                notify_thread=kind == "tid",
            )
        )
        cur.clear()

    for line in data.decode().split("\n"):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        if key == "ID":
            flush()
        cur[key] = value.strip()
    flush()
    return timers
