"""Parser for /proc/PID/fdinfo/FD (Documentation/filesystems/proc.rst).

The first lines are always pos (decimal), flags (OCTAL), mnt_id and ino
(5.14+).  What follows depends on the file: "eventfd-count: 5",
"sigmask:\\t...", timerfd's "clockid:"/"it_value:", one "tfd: ..." line per
epoll target, one "inotify wd:..." line per watch, and one "lock:" line per
lock this open file holds, printed by fs/locks.c lock_get_status:

    lock:\\t1: FLOCK  ADVISORY  WRITE 1234 fe:00:567 0 EOF
    lock:\\t1: POSIX  ADVISORY  WRITE 1234 fe:00:568 5 14
    lock:\\t1: OFDLCK ADVISORY  WRITE -1 fe:00:569 100 EOF
    lock:\\t1: LEASE  ACTIVE    READ 1234 fe:00:570 0 EOF

(dev is hex major:minor, then the decimal inode; a lock without an inode
prints "<none>:0"; "MANDATORY" only existed before 5.15.)
"""

from dataclasses import dataclass, field

_FIXED = ("pos", "flags", "mnt_id", "ino")


@dataclass(frozen=True)
class LockInfo:
    kind: str  # "FLOCK", "POSIX", "OFDLCK", "LEASE", "DELEG", "ACCESS"
    mandatory: bool
    write: bool  # WRITE; False for READ (and for a lease breaking to UNLCK)
    pid: int  # -1 for OFD locks, which belong to the open file
    dev: tuple[int, int]
    ino: int
    start: int
    end: int | None  # None: to end of file
    status: str = "ADVISORY"  # second word: ADVISORY, ACTIVE, BREAKING, BREAKER...


@dataclass(frozen=True)
class FdInfo:
    pos: int
    flags: int  # O_* flags of the open file, as for fcntl(F_GETFL) plus O_CLOEXEC
    mnt_id: int
    ino: int
    extra: dict[str, str] = field(default_factory=dict)  # last value wins on repeats
    locks: tuple[LockInfo, ...] = ()
    lines: tuple[str, ...] = ()  # every line after the fixed ones, raw


def parse_lock(text: str) -> LockInfo:
    """One lock description, the text after "lock:\\t" (or a /proc/locks line)."""
    words = text.split()
    if words and words[0].endswith(":"):
        words = words[1:]  # the "1:" ordinal
    if len(words) < 7:
        raise ValueError(f"malformed lock line: {text!r}")
    kind, status, access, pid, devino, start, end = words[:7]
    if devino.startswith("<none>"):
        dev, ino = (0, 0), 0
    else:
        major, minor, ino_s = devino.split(":")
        dev, ino = (int(major, 16), int(minor, 16)), int(ino_s)
    return LockInfo(
        kind=kind,
        mandatory=status == "MANDATORY",
        write=access == "WRITE",
        pid=int(pid),
        dev=dev,
        ino=ino,
        start=int(start),
        end=None if end == "EOF" else int(end),
        status=status,
    )


def parse_fdinfo(data: bytes) -> FdInfo:
    """The fields of one /proc/PID/fdinfo/FD."""
    fixed: dict[str, int] = {}
    extra: dict[str, str] = {}
    locks: list[LockInfo] = []
    lines: list[str] = []
    for line in data.decode(errors="surrogateescape").split("\n"):
        if not line:
            continue
        key, _, value = line.partition(":")
        if not lines and key in _FIXED and key not in fixed:
            fixed[key] = int(value, 8 if key == "flags" else 10)
            continue
        lines.append(line)
        if key == "lock":
            locks.append(parse_lock(value))
        else:
            extra[key] = value.strip()
    if "pos" not in fixed or "flags" not in fixed:
        raise ValueError(f"malformed fdinfo: {data[:80]!r}")
    return FdInfo(
        pos=fixed["pos"],
        flags=fixed["flags"],
        mnt_id=fixed.get("mnt_id", 0),
        ino=fixed.get("ino", 0),
        extra=extra,
        locks=tuple(locks),
        lines=tuple(lines),
    )


# ------------------------------------------------- what fdinfo tells per kind
#
# Every number below is printed by the kernel in a fixed base; the comment of
# each parser names the printing function.


def eventfd_state(info: FdInfo) -> tuple[int, bool]:
    """(count, semaphore mode) of an eventfd (fs/eventfd.c eventfd_show_fdinfo:
    "eventfd-count: %16llx", "eventfd-semaphore: %d")."""
    try:
        count = int(info.extra["eventfd-count"], 16)
    except (KeyError, ValueError):
        raise ValueError("fdinfo of an eventfd without eventfd-count") from None
    return count, info.extra.get("eventfd-semaphore", "0") == "1"


def signalfd_mask(info: FdInfo) -> int:
    """The signals a signalfd accepts, bit N-1 for signal N (fs/signalfd.c
    signalfd_show_fdinfo: render_sigset_t, hex)."""
    try:
        return int(info.extra["sigmask"], 16)
    except (KeyError, ValueError):
        raise ValueError("fdinfo of a signalfd without sigmask") from None


@dataclass(frozen=True)
class TimerfdInfo:
    """fs/timerfd.c timerfd_show: times are (seconds, nanoseconds), decimal;
    it_value is the time left, whatever the settime flags."""

    clockid: int
    ticks: int  # expirations not yet read
    settime_flags: int  # TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET (printed octal)
    value_ns: int
    interval_ns: int


def _timespec_ns(text: str) -> int:
    sec, _, nsec = text.strip("()").partition(",")
    return int(sec) * 1_000_000_000 + int(nsec)


def timerfd_state(info: FdInfo) -> TimerfdInfo:
    try:
        return TimerfdInfo(
            clockid=int(info.extra["clockid"]),
            ticks=int(info.extra["ticks"]),
            settime_flags=int(info.extra["settime flags"], 8),
            value_ns=_timespec_ns(info.extra["it_value"]),
            interval_ns=_timespec_ns(info.extra["it_interval"]),
        )
    except (KeyError, ValueError):
        raise ValueError(f"malformed fdinfo of a timerfd: {info.lines!r}") from None


@dataclass(frozen=True)
class EpollTarget:
    """One watch of an epoll instance (fs/eventpoll.c ep_show_fdinfo:
    "tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x")."""

    fd: int  # the descriptor number it was added with, in the adder's table
    events: int  # as registered, EPOLLET/EPOLLONESHOT/... included
    data: int
    ino: int
    sdev: int  # the kernel's dev_t: major << 20 | minor


def _fields(text: str) -> dict[str, str]:
    """ "a:1 b: 2" -> {"a": "1", "b": "2"}: values may be padded after the colon."""
    out: dict[str, str] = {}
    key = ""
    for word in text.split():
        name, colon, value = word.partition(":")
        if colon:
            key = name
            out[key] = value
        elif key and not out[key]:
            out[key] = word
    return out


def epoll_targets(info: FdInfo) -> list[EpollTarget]:
    """Every watch of an epoll instance, in the kernel's order."""
    found = []
    for line in info.lines:
        if not line.startswith("tfd:"):
            continue
        f = _fields(line)
        try:
            found.append(
                EpollTarget(
                    fd=int(f["tfd"]),
                    events=int(f["events"], 16),
                    data=int(f["data"], 16),
                    ino=int(f["ino"], 16),
                    sdev=int(f["sdev"], 16),
                )
            )
        except (KeyError, ValueError):
            raise ValueError(f"malformed epoll fdinfo line: {line!r}") from None
    return found


@dataclass(frozen=True)
class InotifyMark:
    """One watch of an inotify instance (fs/notify/fdinfo.c
    inotify_fdinfo: every number hex, f_handle as hex bytes)."""

    wd: int
    ino: int
    sdev: int  # the kernel's dev_t: major << 20 | minor
    mask: int  # events and IN_ONESHOT/IN_EXCL_UNLINK/... flags, as the watch has them
    ignored_mask: int
    handle_type: int
    handle: bytes  # b"" when the file system gives no handle


def inotify_marks(info: FdInfo) -> list[InotifyMark]:
    found = []
    for line in info.lines:
        if not line.startswith("inotify "):
            continue
        f = _fields(line[len("inotify ") :])
        try:
            size = int(f.get("fhandle-bytes", "0"), 16)
            found.append(
                InotifyMark(
                    wd=int(f["wd"], 16),
                    ino=int(f["ino"], 16),
                    sdev=int(f["sdev"], 16),
                    mask=int(f["mask"], 16),
                    ignored_mask=int(f.get("ignored_mask", "0"), 16),
                    handle_type=int(f.get("fhandle-type", "0"), 16),
                    handle=bytes.fromhex(f["f_handle"])[:size] if size else b"",
                )
            )
        except (KeyError, ValueError):
            raise ValueError(f"malformed inotify fdinfo line: {line!r}") from None
    return found


def pidfd_pid(info: FdInfo) -> int:
    """The pid a pidfd refers to, in the pid namespace of the /proc it was read
    from; -1 once that process is gone and reaped (kernel/pid.c
    pidfd_show_fdinfo, "Pid:\\t%d")."""
    try:
        return int(info.extra["Pid"])
    except (KeyError, ValueError):
        raise ValueError("fdinfo of a pidfd without Pid") from None
