"""Parser for /proc/PID/stat (proc(5), fs/proc/array.c do_task_stat).

`comm` is printed raw between parentheses: it may hold spaces, ")", "(" and
even a newline, so it is everything between the first "(" and the LAST ")".
Field numbers below are proc(5)'s, 1-based: startcode/endcode/startstack are
26-28 (0 unless the reader may ptrace the task: we are root), start_data ..
env_end are 45-51 and exit_code is 52.  Older kernels print fewer fields;
missing ones read as 0.
"""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    tty_nr: int
    tpgid: int
    flags: int
    utime: int
    stime: int
    priority: int
    nice: int
    num_threads: int
    starttime: int
    vsize: int
    rss: int
    rsslim: int
    startcode: int
    endcode: int
    startstack: int
    exit_signal: int
    processor: int
    rt_priority: int
    policy: int
    start_data: int
    end_data: int
    start_brk: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int
    exit_code: int


# proc(5) field number of every integer field of ProcStat.
_FIELDS = {
    "ppid": 4,
    "pgrp": 5,
    "session": 6,
    "tty_nr": 7,
    "tpgid": 8,
    "flags": 9,
    "utime": 14,
    "stime": 15,
    "priority": 18,
    "nice": 19,
    "num_threads": 20,
    "starttime": 22,
    "vsize": 23,
    "rss": 24,
    "rsslim": 25,
    "startcode": 26,
    "endcode": 27,
    "startstack": 28,
    "exit_signal": 38,
    "processor": 39,
    "rt_priority": 40,
    "policy": 41,
    "start_data": 45,
    "end_data": 46,
    "start_brk": 47,
    "arg_start": 48,
    "arg_end": 49,
    "env_start": 50,
    "env_end": 51,
    "exit_code": 52,
}


def parse_stat(data: bytes) -> ProcStat:
    """The fields of one /proc/PID/stat (or /proc/PID/task/TID/stat)."""
    open_ = data.find(b"(")
    close = data.rfind(b")")
    if open_ < 0 or close < open_:
        raise ValueError(f"malformed stat: {data[:80]!r}")
    # rest[0] is field 3 (state), so field N is rest[N - 3].
    rest = data[close + 1 :].split()
    if not rest:
        raise ValueError(f"malformed stat: {data[:80]!r}")

    def field(n: int) -> int:
        return int(rest[n - 3]) if n - 3 < len(rest) else 0

    return ProcStat(
        pid=int(data[:open_]),
        comm=os.fsdecode(data[open_ + 1 : close]),
        state=rest[0].decode(),
        **{name: field(n) for name, n in _FIELDS.items()},
    )
