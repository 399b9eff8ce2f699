"""Parser for /proc/PID/auxv: the ELF auxiliary vector, native (type, value)
pairs of unsigned longs, ended by AT_NULL.  Only 64-bit tasks are supported.
"""

import struct

AT_NULL = 0
AT_PHDR = 3
AT_PAGESZ = 6
AT_BASE = 7
AT_ENTRY = 9
AT_UID = 11
AT_EUID = 12
AT_GID = 13
AT_EGID = 14
AT_HWCAP = 16
AT_RANDOM = 25
AT_EXECFN = 31
AT_SYSINFO_EHDR = 33
AT_MINSIGSTKSZ = 51

_PAIR = struct.Struct("=QQ")


def parse_auxv(data: bytes) -> list[tuple[int, int]]:
    """The (type, value) pairs before AT_NULL."""
    pairs: list[tuple[int, int]] = []
    usable = len(data) - len(data) % _PAIR.size
    for kind, value in _PAIR.iter_unpack(data[:usable]):
        if kind == AT_NULL:
            break
        pairs.append((kind, value))
    return pairs
