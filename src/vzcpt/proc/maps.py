"""Parsers for /proc/PID/maps and the VmFlags of /proc/PID/smaps.

Line format (fs/proc/task_mmu.c, show_map_vma):
    start-end perms offset major:minor inode   path
all numbers hex except the inode (decimal); the path is padded to a column,
may contain spaces, and ends in " (deleted)" when the file was unlinked.
The kernel escapes only a newline in the path (as the octal escape 012);
we undo that one escape.  Special mappings keep their bracketed name as
path ("[heap]", "[stack]", "[vdso]", "[vvar]", "[vvar_vclock]",
"[vsyscall]", "[anon:NAME]", "[anon_shmem:NAME]").
"""

import os
import re
from dataclasses import dataclass

DELETED_SUFFIX = " (deleted)"
_HEADER = re.compile(rb"^[0-9a-f]+-[0-9a-f]+ ")


@dataclass(frozen=True)
class MapEntry:
    start: int
    end: int
    perms: str  # e.g. "rw-p"; the last char is "p" (private) or "s" (shared)
    offset: int
    dev: tuple[int, int]  # (major, minor)
    inode: int
    path: str  # "" for anonymous memory; " (deleted)" stripped
    deleted: bool

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def size(self) -> int:
        return self.end - self.start


def _parse_line(line: bytes) -> MapEntry:
    fields = line.split(None, 5)
    if len(fields) < 5:
        raise ValueError(f"malformed maps line: {line!r}")
    start, end = (int(x, 16) for x in fields[0].split(b"-"))
    major, minor = (int(x, 16) for x in fields[3].split(b":"))
    path = os.fsdecode(fields[5].replace(b"\\012", b"\n")) if len(fields) == 6 else ""
    deleted = path.endswith(DELETED_SUFFIX)
    if deleted:
        path = path[: -len(DELETED_SUFFIX)]
    return MapEntry(
        start=start,
        end=end,
        perms=fields[1].decode(),
        offset=int(fields[2], 16),
        dev=(major, minor),
        inode=int(fields[4]),
        path=path,
        deleted=deleted,
    )


def parse_maps(data: bytes) -> list[MapEntry]:
    """Every mapping of /proc/PID/maps, in address order."""
    return [_parse_line(line) for line in data.split(b"\n") if line]


def parse_smaps_flags(data: bytes) -> dict[int, frozenset[str]]:
    """VMA start -> its VmFlags mnemonics ("rd", "wr", "mr", "gd", "dd", ...)."""
    flags: dict[int, frozenset[str]] = {}
    start = None
    for line in data.split(b"\n"):
        if _HEADER.match(line):
            start = int(line.split(b"-", 1)[0], 16)
        elif line.startswith(b"VmFlags:") and start is not None:
            flags[start] = frozenset(line[len(b"VmFlags:") :].decode().split())
    return flags
