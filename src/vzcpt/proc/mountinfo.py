"""Parser for /proc/PID/mountinfo (fs/proc_namespace.c show_mountinfo).

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)     (10)       (11)

(3) is decimal major:minor; (7) is zero or more optional fields ("shared:N",
"master:N", "propagate_from:N", "unbindable") ended by "-".  Paths, source
and options escape space, tab, newline and backslash as octal (\\040 ...).
"""

import os
import re
from dataclasses import dataclass

_OCTAL = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class MountInfo:
    mnt_id: int
    parent_id: int
    dev: tuple[int, int]  # (major, minor)
    root: str  # the directory of the file system mounted here
    mountpoint: str  # relative to the reader's root
    options: str  # per-mount options ("rw,nosuid,relatime")
    fstype: str  # "ext4", "fuse.sshfs" ...
    source: str
    super_options: str
    optional: tuple[str, ...] = ()  # propagation: "shared:N", "master:N", ...

    def _tag(self, name: str) -> int | None:
        for field in self.optional:
            key, _, value = field.partition(":")
            if key == name:
                return int(value)
        return None

    @property
    def shared(self) -> int | None:
        """Peer group id if the mount is shared."""
        return self._tag("shared")

    @property
    def master(self) -> int | None:
        """Peer group id of the master if the mount is a slave."""
        return self._tag("master")


def unescape(field: bytes) -> str:
    """Undo the kernel's octal escapes (\\040 -> space)."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def _parse_line(line: bytes) -> MountInfo:
    fields = line.split(b" ")
    try:
        sep = fields.index(b"-", 6)
        major, minor = fields[2].split(b":")
        return MountInfo(
            mnt_id=int(fields[0]),
            parent_id=int(fields[1]),
            dev=(int(major), int(minor)),
            root=unescape(fields[3]),
            mountpoint=unescape(fields[4]),
            options=unescape(fields[5]),
            fstype=unescape(fields[sep + 1]),
            source=unescape(fields[sep + 2]),
            super_options=unescape(fields[sep + 3]),
            optional=tuple(f.decode() for f in fields[6:sep]),
        )
    except (ValueError, IndexError):
        raise ValueError(f"malformed mountinfo line: {line!r}") from None


def parse_mountinfo(data: bytes) -> list[MountInfo]:
    """Every mount of /proc/PID/mountinfo, in the kernel's order."""
    return [_parse_line(line) for line in data.split(b"\n") if line]


def own_mounts() -> list[MountInfo]:
    """The mounts of our own mount namespace (/proc/self/mountinfo)."""
    with open("/proc/self/mountinfo", "rb") as f:
        return parse_mountinfo(f.read())
