"""The mounts of a VE: what it did to those start gave it, and those it made itself.

Kernel interfaces: /proc/PID/mountinfo of the VE's init lists its mount
namespace in mount order, with each mount's file system, the directory of
that file system it shows (its root), per-mount flags and propagation
(shared:N, master:N, unbindable); the VE's files are read from the host
through /proc/PID/root. At restore one child joins the VE's mount, pid,
network and IPC namespaces (kernel/nsexec.py), so that paths are the VE's
and a new proc, sysfs or mqueue mount is the VE's own, and rebuilds every
mount in the saved order with mount(2).

What is saved, mount by mount, in order:

- runtime: the mounts start makes (root, system directories, /proc, /sys,
  /dev...). Start makes them again; restore gives back the per-mount flags
  the VE changed (a read-only remount), their propagation, and the content
  of /dev/shm. One the VE unmounted is unmounted again.
- tmpfs: a memory-backed mount the VE made, with every file, directory,
  symlink, socket and fifo in it (a socket's file is made again by mknod;
  the socket itself is bound by resources/fds/unix.py).
- fs: a new proc, sysfs, devpts or mqueue mount, made again with its options.
- bind: a mount of a file system the VE already shows elsewhere: a bind
  mount inside the VE (or a second mount of its sysfs or mqueue, which is
  the same thing), made again from that path as the VE saw it.

Propagation: a mount shared with its bind source is bound from it while
that one is shared, so it joins the same peer group; one that is shared
on its own gets a group of its own; a slave is bound from a member of its
master's group and made a slave. Unbindable mounts become so at the end.
Mounts that propagation makes while rebuilding (a mount under a shared
one is copied to its peers and slaves, as it was at the time) stand for
saved ones still to come, which are then not made a second time; one
that stands for none stops the restore.

Refused at checkpoint, with the mount point: any other file system (a
block device, FUSE, NFS, cgroup...), a bind of something the VE does not
see elsewhere (a host path outside its root), a mount that receives
propagation from outside the VE, and a tmpfs hidden under another mount.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from vzcpt.errors import Unsupported, VzcptError
from vzcpt.kernel import mounts as kmounts
from vzcpt.kernel.nsexec import in_namespaces
from vzcpt.proc import files as procfs
from vzcpt.proc.mountinfo import MountInfo, own_mounts, parse_mountinfo
from vzcpt.ve import rootfs

# What start mounts in every VE besides its root and the host's system dirs,
# with the file system each is.
RUNTIME_MOUNTS = {
    "/proc": "proc",
    "/proc/sys": "proc",
    "/proc/sys/net": "proc",
    "/sys": "sysfs",
    "/dev": "tmpfs",
    "/dev/pts": "devpts",
    "/dev/shm": "tmpfs",
    "/dev/mqueue": "mqueue",
}
# New mounts of these are made again with their options.
REMADE_FILE_SYSTEMS = frozenset({"proc", "sysfs", "devpts", "mqueue"})
# The per-mount options of mountinfo and the MS_* flag each stands for; no
# atime option at all is strictatime.
FLAG_OPTIONS = {
    "ro": kmounts.MS_RDONLY,
    "nosuid": kmounts.MS_NOSUID,
    "nodev": kmounts.MS_NODEV,
    "noexec": kmounts.MS_NOEXEC,
    "noatime": kmounts.MS_NOATIME,
    "nodiratime": kmounts.MS_NODIRATIME,
    "relatime": kmounts.MS_RELATIME,
    "nosymfollow": kmounts.MS_NOSYMFOLLOW,
}
_ATIME = kmounts.MS_NOATIME | kmounts.MS_RELATIME | kmounts.MS_STRICTATIME


@dataclass
class TmpfsEntry:
    """A file, directory, symlink, socket or fifo of a memory-backed mount of the VE."""

    path: str  # as the VE sees it
    mode: int  # with the file type bits
    uid: int
    gid: int
    content: bytes | None = None  # a file's
    target: str = ""  # a symlink's
    mtime_ns: int = 0


@dataclass
class VeMount:
    """One mount of the VE's namespace, in mount order."""

    mountpoint: str  # as the VE sees it
    kind: str  # "runtime", "tmpfs", "fs" or "bind" (see the module doc)
    fstype: str = ""
    source: str = ""
    data: str = ""  # file system options of a new mount: size=..., mode=..., hidepid=...
    flags: int = 0  # MS_* per-mount flags, atime included
    readonly_fs: bool = False  # the file system itself is read-only (not just this mount)
    bind_from: str = ""  # a bind: the path, as the VE saw it, that is mounted here
    peer_of_source: bool = False  # shared, in the peer group of its bind source
    slave: bool = False  # receives from the peer group of its bind source
    shared: bool = False  # shared, in a peer group of its own
    unbindable: bool = False
    entries: list[TmpfsEntry] = field(default_factory=list)  # a tmpfs's (and /dev/shm's)


# ---------------------------------------------------------------------- dump


def dump_mounts(init_pid: int, private: str) -> list[VeMount]:
    """Every mount of the VE, in order, tmpfs with their content; refuse what cannot be remade."""
    standard = {"/": "", **{"/" + d: "" for d in rootfs.readonly_binds(private)}, **RUNTIME_MOUNTS}
    root = f"/proc/{init_pid}/root"
    infos = parse_mountinfo(procfs.read(init_pid, "mountinfo"))
    saved: list[VeMount] = []
    found_standard: set[str] = set()
    for index, m in enumerate(infos):
        earlier = infos[:index]
        wanted = standard.get(m.mountpoint)
        if wanted is not None and m.mountpoint not in found_standard and wanted in ("", m.fstype):
            found_standard.add(m.mountpoint)
            saved.append(_runtime(root, m))
        else:
            saved.append(_own(root, m, earlier))
        if saved[-1].kind == "tmpfs" or m.mountpoint == "/dev/shm":
            _refuse_hidden(m, infos[index + 1 :])
    return saved


def _runtime(root: str, m: MountInfo) -> VeMount:
    if m.master is not None:
        raise Unsupported(
            f"the VE's {m.mountpoint} receives mounts from another peer group, "
            "which vzcpt cannot checkpoint yet"
        )
    return VeMount(
        m.mountpoint,
        "runtime",
        fstype=m.fstype,
        flags=mount_flags(m.options),
        shared=m.shared is not None,
        unbindable="unbindable" in m.optional,
        entries=_read_tree(root, m.mountpoint) if m.mountpoint == "/dev/shm" else [],
    )


def _own(root: str, m: MountInfo, earlier: list[MountInfo]) -> VeMount:
    """A mount the VE made: a bind of what it shows elsewhere, or a new file system."""
    mount = VeMount(
        m.mountpoint,
        "",
        fstype=m.fstype,
        source=m.source,
        flags=mount_flags(m.options),
        readonly_fs="ro" in m.super_options.split(","),
        unbindable="unbindable" in m.optional,
    )
    same_fs = [e for e in earlier if e.dev == m.dev]
    if same_fs:
        source = _bind_source(m, same_fs)
        mount.kind = "bind"
        mount.bind_from = _join(source.mountpoint, m.root[len(source.root.rstrip("/")) :])
        mount.peer_of_source = m.shared is not None and m.shared == source.shared
        mount.slave = m.master is not None and m.master == source.shared
        mount.shared = m.shared is not None and not mount.peer_of_source
        if m.master is not None and not (mount.peer_of_source or mount.slave):
            raise Unsupported(
                f"the VE's {m.mountpoint} receives mounts from a peer group "
                "vzcpt cannot rebuild, which vzcpt cannot checkpoint yet"
            )
        return mount
    if m.master is not None:
        raise Unsupported(
            f"the VE's {m.mountpoint} receives mounts from another peer group, "
            "which vzcpt cannot checkpoint yet"
        )
    mount.shared = m.shared is not None
    mount.data = ",".join(o for o in m.super_options.split(",") if o not in ("rw", "ro"))
    if m.fstype == "tmpfs":
        mount.kind = "tmpfs"
        mount.entries = _read_tree(root, m.mountpoint)
    elif m.fstype in REMADE_FILE_SYSTEMS and m.root == "/":
        mount.kind = "fs"
    else:
        raise Unsupported(
            f"the VE mounted {m.fstype} ({m.source}) on {m.mountpoint}, which vzcpt cannot "
            "checkpoint yet (tmpfs, proc, sysfs, devpts, mqueue and bind mounts are saved)"
        )
    return mount


def _bind_source(m: MountInfo, same_fs: list[MountInfo]) -> MountInfo:
    """The earlier mount m was bound from: its peer or master if it can be, else the
    one showing the most of what m shows."""
    covering = [e for e in same_fs if _covers(e.root, m.root)]
    if not covering:
        raise Unsupported(
            f"the VE's {m.mountpoint} shows {m.root} of {m.fstype} {m.source}, which is not "
            "anywhere else in the VE (a host path outside its root?): vzcpt cannot rebuild it"
        )

    def preference(e: MountInfo) -> tuple[bool, bool, int]:
        peer = e.shared is not None and e.shared == m.shared
        master = e.shared is not None and e.shared == m.master
        return peer, master, len(e.root)

    return max(covering, key=preference)


def _covers(outer: str, inner: str) -> bool:
    return outer == "/" or inner == outer or inner.startswith(outer.rstrip("/") + "/")


def _join(mountpoint: str, rest: str) -> str:
    return (mountpoint.rstrip("/") + rest) or "/"


def _refuse_hidden(m: MountInfo, later: list[MountInfo]) -> None:
    """A tmpfs is read through its path: nothing may be mounted over it."""
    for other in later:
        if other.mountpoint == m.mountpoint or _covers(other.mountpoint, m.mountpoint):
            raise Unsupported(
                f"the VE's tmpfs on {m.mountpoint} is hidden under {other.mountpoint}, "
                "which vzcpt cannot checkpoint yet"
            )


def mount_flags(options: str) -> int:
    """The MS_* per-mount flags of a mountinfo option string, atime included."""
    flags = sum(FLAG_OPTIONS.get(o, 0) for o in options.split(","))
    if not flags & (kmounts.MS_NOATIME | kmounts.MS_RELATIME):
        flags |= kmounts.MS_STRICTATIME
    return flags


def _read_tree(root: str, mountpoint: str) -> list[TmpfsEntry]:
    """Every entry of the tmpfs at `mountpoint`, parents first; mounts inside it are
    not entered (their own entries save them)."""
    base = root + mountpoint
    top = os.lstat(base)
    entries = [_entry(mountpoint, top)]
    dev = top.st_dev
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        inside_dirs = []
        for name in dirnames + sorted(filenames):
            host = os.path.join(dirpath, name)
            st = os.lstat(host)
            inside = mountpoint.rstrip("/") + host[len(base) :]
            entry = _entry(inside, st)
            if stat.S_ISDIR(st.st_mode):
                if st.st_dev != dev:  # a mount point: made by the mount below it
                    entry.mode = stat.S_IFDIR | 0o755
                else:
                    inside_dirs.append(name)
            elif stat.S_ISREG(st.st_mode):
                with open(host, "rb") as f:
                    entry.content = f.read()
            elif stat.S_ISLNK(st.st_mode):
                entry.target = os.readlink(host)
            elif not (stat.S_ISSOCK(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
                raise Unsupported(
                    f"{inside} in the VE is a device node on a tmpfs, which vzcpt cannot "
                    "checkpoint yet"
                )
            entries.append(entry)
        dirnames[:] = [d for d in dirnames if d in inside_dirs]
    return entries


def _entry(path: str, st: os.stat_result) -> TmpfsEntry:
    return TmpfsEntry(path, st.st_mode, st.st_uid, st.st_gid, mtime_ns=st.st_mtime_ns)


# ------------------------------------------------------------------- restore


def restore_mounts(seed_pid: int, saved: list[VeMount]) -> None:
    """Rebuild the VE's mounts in the namespace of its seed (start's mounts are there)."""
    kinds = ("net", "ipc", "pid", "mnt")  # proc, sysfs and mqueue are the namespace's own
    in_namespaces(seed_pid, kinds, lambda: _rebuild(saved), "rebuild the VE's mounts")


def _rebuild(saved: list[VeMount]) -> None:
    """In the VE's namespaces (its root, its /proc): every mount, in order."""
    namespace = _Namespace()
    for index, mount in enumerate(saved):
        if mount.kind == "runtime":
            _fix_runtime(mount)
        elif not namespace.claim(mount):
            _make(mount)
            namespace.settle(mount.mountpoint, saved[index + 1 :])
    for mount in saved:
        if mount.unbindable:
            kmounts.set_propagation(mount.mountpoint, kmounts.MS_UNBINDABLE)
    runtime = {m.mountpoint for m in saved if m.kind == "runtime"}
    for info in reversed(own_mounts()):  # last: /proc may be one of them
        if info.mountpoint in RUNTIME_MOUNTS and info.mountpoint not in runtime:
            kmounts.umount(info.mountpoint, kmounts.MNT_DETACH)  # the VE had unmounted it


class _Namespace:
    """Our mounts, and those propagation made on its own while we rebuilt."""

    def __init__(self) -> None:
        self.known = {m.mnt_id for m in own_mounts()}
        self.propagated: dict[str, int] = {}  # mount point -> copies made there

    def settle(self, made_at: str, later: list[VeMount]) -> None:
        """Note the mounts that appeared with the one just made at `made_at`: copies
        that propagation made, which must be saved mounts still to come."""
        new = [m for m in own_mounts() if m.mnt_id not in self.known]
        self.known |= {m.mnt_id for m in new}
        copies = [m.mountpoint for m in new if m.mountpoint != made_at]
        copies += [made_at] * (sum(m.mountpoint == made_at for m in new) - 1)
        for mountpoint in copies:
            if not any(m.mountpoint == mountpoint and m.kind != "runtime" for m in later):
                raise VzcptError(
                    f"mounting {made_at} again made a mount on {mountpoint} by propagation, "
                    "which the VE did not have"
                )
            self.propagated[mountpoint] = self.propagated.get(mountpoint, 0) + 1

    def claim(self, mount: VeMount) -> bool:
        """Is `mount` a copy propagation made already? Then only its flags are set."""
        if not self.propagated.get(mount.mountpoint):
            return False
        self.propagated[mount.mountpoint] -= 1
        _remount(mount.mountpoint, mount.flags)
        return True


def _fix_runtime(mount: VeMount) -> None:
    """Start made it; give it its content, and the flags and propagation the VE gave it."""
    _write_tree(mount.entries)
    now = next(m for m in own_mounts() if m.mountpoint == mount.mountpoint)
    if mount_flags(now.options) != mount.flags:
        _remount(mount.mountpoint, mount.flags)
    if mount.shared:
        kmounts.set_propagation(mount.mountpoint, kmounts.MS_SHARED)


def _make(mount: VeMount) -> None:
    target = mount.mountpoint
    if mount.kind == "bind":
        _ensure_mountpoint(target, os.path.isdir(mount.bind_from))
        kmounts.mount(mount.bind_from, target, None, kmounts.MS_BIND)
        if not mount.peer_of_source:
            # Bound from a shared mount it joined that peer group: a slave
            # leaves it as its slave, anything else leaves it altogether.
            kind = kmounts.MS_SLAVE if mount.slave else kmounts.MS_PRIVATE
            kmounts.set_propagation(target, kind)
    else:
        _ensure_mountpoint(target, True)
        # Read-write first: a tmpfs is filled before it becomes read-only.
        kmounts.mount(mount.source or mount.fstype, target, mount.fstype, 0, mount.data or None)
        _write_tree(mount.entries)
        if mount.readonly_fs:
            flags = kmounts.MS_REMOUNT | kmounts.MS_RDONLY
            kmounts.mount(None, target, None, flags, mount.data or None)
    _remount(target, mount.flags)
    if mount.shared:
        kmounts.set_propagation(target, kmounts.MS_SHARED)


def _remount(target: str, flags: int) -> None:
    kmounts.mount(None, target, None, kmounts.MS_REMOUNT | kmounts.MS_BIND | flags)


def _ensure_mountpoint(path: str, directory: bool) -> None:
    if os.path.lexists(path):
        return
    if directory:
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))


def _write_tree(entries: list[TmpfsEntry]) -> None:
    """Make every entry (parents come before their children), owners, modes and
    modification times too (children first, whose making touched their parent's)."""
    for entry in entries:
        _make_entry(entry)
    for entry in reversed(entries):
        if entry.mtime_ns:
            times = (entry.mtime_ns, entry.mtime_ns)
            os.utime(entry.path, ns=times, follow_symlinks=False)


def _make_entry(entry: TmpfsEntry) -> None:
    kind = stat.S_IFMT(entry.mode)
    path = entry.path
    if kind == stat.S_IFDIR:
        if not os.path.isdir(path):
            os.mkdir(path, 0o700)
    elif kind == stat.S_IFREG:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(entry.content or b"")
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    elif kind == stat.S_IFLNK:
        os.symlink(entry.target, path)
        os.lchown(path, entry.uid, entry.gid)
        return
    else:  # a socket's or fifo's file: a node of its kind, as it was
        os.mknod(path, kind | 0o600)
    os.chown(path, entry.uid, entry.gid)
    os.chmod(path, stat.S_IMODE(entry.mode))
