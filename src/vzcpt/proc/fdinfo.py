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
