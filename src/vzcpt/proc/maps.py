"""Parsers for /proc/PID/maps and /proc/PID/smaps.

Line format (fs/proc/task_mmu.c, show_map_vma):
    start-end perms offset major:minor inode   path
all numbers hex except the inode (decimal); the path is padded to a column,
may contain spaces, and ends in " (deleted)" when the file was unlinked.
The kernel escapes only a newline in the path (as the octal escape 012);
we undo that one escape.  Special mappings keep their bracketed name as
path ("[heap]", "[stack]", "[vdso]", "[vvar]", "[vvar_vclock]",
"[vsyscall]", "[anon:NAME]", "[anon_shmem:NAME]").

smaps repeats that line for every mapping, followed by lines of counters
and, last, "VmFlags:" (show_smap). A process may have tens of thousands of
mappings, so both files are parsed with one regular expression run over
the whole text rather than line by line in Python.
"""

import os
import re
from typing import Any, NamedTuple

DELETED_SUFFIX = " (deleted)"
_HEADER = (
    rb"([0-9a-f]+)-([0-9a-f]+) ([-r][-w][-x][ps]) ([0-9a-f]+) "  # start-end perms offset
    rb"([0-9a-f]+):([0-9a-f]+) ([0-9]+) *([^\n]*)\n"  # major:minor inode path
)
_MAPS = re.compile(_HEADER)
# One mapping of smaps: its header, the counter lines (lazily, up to the
# first VmFlags line), the VmFlags line.
_SMAPS = re.compile(_HEADER + rb"(?:[^\n]*\n)*?VmFlags:([^\n]*)\n")


class MapEntry(NamedTuple):
    """One line of maps. A NamedTuple: thousands are made per process, and a
    frozen dataclass takes four times as long to build."""

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


def _entry(fields: tuple[bytes, ...]) -> MapEntry:
    start, end, perms, offset, major, minor, inode, raw_path = fields[:8]
    path = os.fsdecode(raw_path.replace(b"\\012", b"\n")) if raw_path else ""
    deleted = path.endswith(DELETED_SUFFIX)
    if deleted:
        path = path[: -len(DELETED_SUFFIX)]
    return MapEntry(
        int(start, 16),
        int(end, 16),
        perms.decode(),
        int(offset, 16),
        (int(major, 16), int(minor, 16)),
        int(inode),
        path,
        deleted,
    )


def _all(pattern: re.Pattern[bytes], data: bytes, count: int, what: str) -> list[Any]:
    """Every match of `pattern` in `data`, which must hold `count` of them.

    A line the pattern does not recognise would simply be skipped by the
    search: the count (of lines, of VmFlags lines) tells it happened.
    """
    found = pattern.findall(data)
    if len(found) != count:
        raise ValueError(f"malformed {what}: {count} mappings, {len(found)} understood")
    return found


def parse_maps(data: bytes) -> list[MapEntry]:
    """Every mapping of /proc/PID/maps, in address order."""
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return [_entry(fields) for fields in _all(_MAPS, data, data.count(b"\n"), "maps")]


def parse_smaps(data: bytes) -> list[tuple[MapEntry, frozenset[str]]]:
    """Every mapping of /proc/PID/smaps with its VmFlags mnemonics ("rd", "gd", ...)."""
    found = _all(_SMAPS, data, data.count(b"\nVmFlags:"), "smaps")
    sets: dict[bytes, frozenset[str]] = {}  # most mappings share a few combinations
    result = []
    for fields in found:
        flags = sets.get(fields[8])
        if flags is None:
            flags = sets[fields[8]] = frozenset(fields[8].decode().split())
        result.append((_entry(fields), flags))
    return result


def parse_smaps_flags(data: bytes) -> dict[int, frozenset[str]]:
    """VMA start -> its VmFlags mnemonics ("rd", "wr", "mr", "gd", "dd", ...)."""
    return {entry.start: flags for entry, flags in parse_smaps(data)}
