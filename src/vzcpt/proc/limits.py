"""Parser for /proc/PID/limits (fs/proc/base.c proc_pid_limits).

One row per resource, in RLIMIT_* order, "%-25s %-20s %-20s %-10s" (name,
soft, hard, units); "unlimited" is RLIM_INFINITY.  Rows are matched by name,
not position, so a kernel with more or fewer rows is read correctly.
"""

RLIM_INFINITY = 2**64 - 1

# The kernel's row names (lnames[] in fs/proc/base.c) -> RLIMIT_* number.
_NAMES = {
    "Max cpu time": 0,
    "Max file size": 1,
    "Max data size": 2,
    "Max stack size": 3,
    "Max core file size": 4,
    "Max resident set": 5,
    "Max processes": 6,
    "Max open files": 7,
    "Max locked memory": 8,
    "Max address space": 9,
    "Max file locks": 10,
    "Max pending signals": 11,
    "Max msgqueue size": 12,
    "Max nice priority": 13,
    "Max realtime priority": 14,
    "Max realtime timeout": 15,
}


def _value(text: str) -> int:
    return RLIM_INFINITY if text == "unlimited" else int(text)


def parse_limits(data: bytes) -> dict[int, tuple[int, int]]:
    """RLIMIT_* number -> (soft, hard)."""
    limits: dict[int, tuple[int, int]] = {}
    for line in data.decode().split("\n"):
        for name, resource in _NAMES.items():
            # Names are padded to 25 columns; "Max file size" must not match
            # "Max file locks", hence the check on what follows the name.
            rest = line.removeprefix(name)
            if rest != line and rest[:1] == " ":
                soft, hard = rest.split()[:2]
                limits[resource] = (_value(soft), _value(hard))
                break
    return limits
