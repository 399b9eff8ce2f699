"""Mounts and namespaces: mount(2), umount2(2), pivot_root(2), unshare(2), setns(2).

Thin wrappers: each raises `SyscallFailed` (with the errno and the paths) on
failure. The constants are the kernel's (include/uapi/linux/mount.h, sched.h).
Python 3.11's `os` has neither mount nor unshare/setns, hence ctypes here.
"""

from __future__ import annotations

import ctypes
import os

from vzcpt.kernel.libc import check, libc, syscall

# mount(2) flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

# umount2(2) flags
MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8

# unshare(2) / setns(2) / clone(2) namespace flags
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# x86_64 numbers for the calls libc does not wrap (pivot_root) or that we
# want without libc's help; kept here rather than in nr.py, which is frozen.
_NR_PIVOT_ROOT = 155

# statvfs f_flag bits (ST_*) -> the MS_* flag a remount must repeat. A bind
# remount replaces the per-mount flags, and the kernel refuses (EPERM) to
# clear flags locked by a more privileged mount namespace, so we carry the
# current ones over (as runc does).
_ST_TO_MS = {
    os.ST_RDONLY: MS_RDONLY,
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME,
    os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}
if hasattr(os, "ST_NOSYMFOLLOW"):
    _ST_TO_MS[os.ST_NOSYMFOLLOW] = MS_NOSYMFOLLOW

_mount = libc.mount
_mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_mount.restype = ctypes.c_int
_umount2 = libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int
_unshare = libc.unshare
_unshare.argtypes = [ctypes.c_int]
_unshare.restype = ctypes.c_int
_setns = libc.setns
_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_setns.restype = ctypes.c_int


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(
    source: str | None,
    target: str,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """mount(2); `data` is the file system's option string ("mode=755,size=1m")."""
    what = " ".join(w for w in ("mount", fstype, source, "on", target) if w)
    check(_mount(_b(source), _b(target), _b(fstype), flags, _b(data)), what)


def bind(source: str, target: str, recursive: bool = False) -> None:
    """Bind-mount `source` onto `target` (with its sub-mounts if `recursive`)."""
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))


def mount_flags(path: str) -> int:
    """The MS_* per-mount flags the mount at `path` has now (from statvfs)."""
    f_flag = os.statvfs(path).f_flag
    return sum(ms for st, ms in _ST_TO_MS.items() if f_flag & st)


def remount_bind(target: str, add: int, drop: int = 0) -> None:
    """Change the per-mount flags of the (bind) mount at `target`.

    Adds `add` (e.g. MS_RDONLY|MS_NODEV) to the flags the mount has now and
    removes `drop`; flags not named are kept, so locked ones stay set.
    """
    flags = (mount_flags(target) | add) & ~drop
    mount(None, target, None, MS_REMOUNT | MS_BIND | flags)


def set_propagation(target: str, kind: int, recursive: bool = False) -> None:
    """Make the mount at `target` MS_PRIVATE, MS_SLAVE, MS_SHARED or MS_UNBINDABLE."""
    mount(None, target, None, kind | (MS_REC if recursive else 0))


def umount(target: str, flags: int = 0) -> None:
    """umount2(2): MNT_DETACH for a lazy unmount of a busy mount."""
    check(_umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): `new_root` becomes the root of this mount namespace.

    pivot_root(".", ".") from inside new_root stacks the old root on top of
    it, so a following umount(".", MNT_DETACH) removes it without needing a
    directory for it in the new tree.
    """
    syscall(_NR_PIVOT_ROOT, _b(new_root), _b(put_old), what=f"pivot_root {new_root}")


def unshare(flags: int) -> None:
    """unshare(2): move this process (or, for CLONE_NEWPID, its future children)
    into new namespaces."""
    check(_unshare(flags), f"unshare {flags:#x}")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace open at `fd` (0 accepts any type)."""
    check(_setns(fd, nstype), f"setns {nstype:#x}")
