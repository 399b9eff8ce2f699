"""The mounts a VE made itself, on top of what start gives every VE.

Kernel interfaces: /proc/PID/mountinfo of the VE's init lists its mount
namespace; a child that joins that namespace (setns) can mount in it; files
are reached from the host through /proc/PID/root.

Memory-backed mounts (tmpfs) are saved with their content and mounted again
at restore; /dev/shm, which every VE has, keeps its content the same way.
Any other mount the VE made is refused at checkpoint with its mount point.
(The queues /dev/mqueue shows belong to the IPC namespace: resources/mqueue.py.)
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from vzcpt.errors import Unsupported
from vzcpt.kernel import mounts as kmounts
from vzcpt.kernel.nsexec import in_namespace
from vzcpt.proc import files as procfs
from vzcpt.proc.mountinfo import parse_mountinfo
from vzcpt.ve import rootfs

# What start mounts in every VE besides its root and the host's system dirs.
RUNTIME_MOUNTS = frozenset(
    {"/proc", "/proc/sys", "/proc/sys/net", "/sys", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"}
)
FLAG_OPTIONS = {
    "ro": kmounts.MS_RDONLY,
    "nosuid": kmounts.MS_NOSUID,
    "nodev": kmounts.MS_NODEV,
    "noexec": kmounts.MS_NOEXEC,
}


@dataclass
class TmpfsEntry:
    """A file or directory of a memory-backed mount of the VE."""

    path: str  # as the VE sees it
    mode: int
    uid: int
    gid: int
    content: bytes | None = None  # None for a directory


@dataclass
class TmpfsMount:
    mountpoint: str
    flags: int  # MS_* of the mount
    data: str  # tmpfs options: size=..., mode=...
    entries: list[TmpfsEntry] = field(default_factory=list)


def dump_mounts(init_pid: int, private: str) -> list[TmpfsMount]:
    """/dev/shm and every tmpfs the VE mounted, with content; refuse anything else."""
    standard = {"/"} | {"/" + d for d in rootfs.readonly_binds(private)} | RUNTIME_MOUNTS
    root = f"/proc/{init_pid}/root"
    saved = []
    for m in parse_mountinfo(procfs.read(init_pid, "mountinfo")):
        if m.mountpoint in standard and m.mountpoint != "/dev/shm":
            continue
        if m.fstype != "tmpfs":
            raise Unsupported(
                f"the VE mounted {m.fstype} on {m.mountpoint}, which vzcpt "
                "cannot checkpoint yet (only tmpfs mounts are saved)"
            )
        flags = sum(FLAG_OPTIONS.get(o, 0) for o in m.options.split(","))
        data = ",".join(o for o in m.super_options.split(",") if o not in ("rw", "ro"))
        saved.append(TmpfsMount(m.mountpoint, flags, data, _read_tree(root, m.mountpoint)))
    return saved


def restore_mounts(seed_pid: int, saved: list[TmpfsMount]) -> None:
    """Mount the VE's own tmpfs mounts again and put every file back (through the seed)."""
    for mount in saved:
        if mount.mountpoint not in RUNTIME_MOUNTS:
            _mount_in(seed_pid, mount)
        _write_tree(f"/proc/{seed_pid}/root", mount.entries)


def _read_tree(root: str, mountpoint: str) -> list[TmpfsEntry]:
    entries: list[TmpfsEntry] = []
    base = root + mountpoint
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in dirnames + sorted(filenames):
            host = os.path.join(dirpath, name)
            st = os.lstat(host)
            inside = mountpoint.rstrip("/") + host[len(base) :]
            if stat.S_ISDIR(st.st_mode):
                entries.append(TmpfsEntry(inside, st.st_mode, st.st_uid, st.st_gid))
            elif stat.S_ISREG(st.st_mode):
                with open(host, "rb") as f:
                    entries.append(TmpfsEntry(inside, st.st_mode, st.st_uid, st.st_gid, f.read()))
            else:
                raise Unsupported(f"{inside} in the VE is neither a file nor a directory")
    return entries


def _write_tree(root: str, entries: list[TmpfsEntry]) -> None:
    for entry in entries:  # parents come before their children
        host = root + entry.path
        if entry.content is None:
            os.mkdir(host, 0o700)
        else:
            fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, entry.content)
            finally:
                os.close(fd)
        os.chown(host, entry.uid, entry.gid)
        os.chmod(host, stat.S_IMODE(entry.mode))


def _mount_in(pid: int, mount: TmpfsMount) -> None:
    """Mount a tmpfs inside the mount namespace of `pid`, from a child that joins it."""

    def work() -> None:
        os.makedirs(mount.mountpoint, exist_ok=True)
        kmounts.mount("tmpfs", mount.mountpoint, "tmpfs", mount.flags, mount.data)

    in_namespace(pid, "mnt", work, f"mount the VE's tmpfs on {mount.mountpoint} again")
