"""A VE's root file system: mounted on the host, entered at start.

On the host (the VE stopped or running, our own mount namespace):

    mount_root(paths, veid)   private area --bind--> /vz/root/VEID, then the
                              host's system directories named by the template
                              (/usr, ...) bound read-only inside it
    umount_root(paths, veid)  every mount at or below /vz/root/VEID, deepest first

In the VE's fresh mount namespace, by the forked child that becomes (or
execs) the VE's init, already in the VE's pid namespace:

    enter_root(root)          private propagation, /proc, /sys, a minimal /dev,
                              pivot_root into the root, old root detached

The private area belongs to the VE: anything in it, the template record
included, may have been written by the VE's root. So the record only selects
from a fixed list of host directories, and every mount point inside the VE's
tree is opened without following symlinks and mounted through
/proc/self/fd/N, so a symlink planted by the VE can never redirect a mount
onto a host path.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import stat
from collections.abc import Callable, Iterator

from vzcpt.errors import SyscallFailed, VzcptError
from vzcpt.kernel import mounts as m
from vzcpt.proc.mountinfo import MountInfo, own_mounts
from vzcpt.ve.paths import Paths

TEMPLATE_RECORD = ".vzcpt-template.json"

# Host directories a template may ask to have bound read-only into the VE.
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")

_O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# --- mounts as seen in /proc/self/mountinfo ---------------------------------


def mounts_under(path: str) -> list[MountInfo]:
    """Mounts whose mount point is `path` or below it (path made absolute, no symlinks)."""
    path = os.path.realpath(path)
    prefix = path.rstrip("/") + "/"
    return [mi for mi in own_mounts() if mi.mountpoint == path or mi.mountpoint.startswith(prefix)]


def is_mountpoint(path: str) -> bool:
    path = os.path.realpath(path)
    return any(mi.mountpoint == path for mi in own_mounts())


def umount_tree(path: str) -> None:
    """Unmount everything at or below `path`, the top of each stack and the
    deepest first; a busy mount is detached lazily as a last resort."""
    for _ in range(10000):  # bound: each round removes at least one mount
        found = mounts_under(path)
        if not found:
            return
        parents = {mi.parent_id for mi in found}
        # leaves: nothing mounted on or below them; the last listed are the newest
        leaves = [mi for mi in reversed(found) if mi.mnt_id not in parents]
        # if every leaf is hidden under a mount stacked above its parent,
        # detach the newest mount, which uncovers them
        if not any(_umount_one(mi.mountpoint, 0) for mi in leaves) and not _umount_one(
            found[-1].mountpoint, m.MNT_DETACH
        ):
            break
    raise VzcptError(f"cannot unmount everything below {path}")


def _umount_one(mountpoint: str, flags: int) -> bool:
    """Unmount the top mount at `mountpoint`, lazily if busy; False if it is
    not reachable as a mount point there (EINVAL: covered by another)."""
    try:
        m.umount(mountpoint, m.UMOUNT_NOFOLLOW | flags)
    except SyscallFailed as e:
        if e.errno == errno.EINVAL:
            return False
        if e.errno != errno.EBUSY:
            raise
        m.umount(mountpoint, m.UMOUNT_NOFOLLOW | m.MNT_DETACH)
    return True


# --- safe lookups inside a tree the VE controls ----------------------------


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def open_dir(parent_fd: int, name: str, create_mode: int | None = None) -> int:
    """O_PATH fd of directory `name` in `parent_fd`, refusing a symlink.

    With `create_mode`, a missing directory is made first.
    """
    if create_mode is not None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, create_mode, dir_fd=parent_fd)
    try:
        return os.open(name, _O_DIR, dir_fd=parent_fd)
    except OSError as e:
        what = "is not a directory (a symlink?)" if e.errno in (errno.ENOTDIR, errno.ELOOP) else ""
        raise VzcptError(
            f"VE root: {name}: {what or os.strerror(e.errno or 0)}; refusing to mount on it"
        ) from None


def _mount_at(
    parent_fd: int, name: str, do_mount: Callable[[str], None], mode: int = 0o755
) -> None:
    """Mount something on directory `name` of `parent_fd` (made if missing),
    through /proc/self/fd so that no symlink is followed."""
    fd = open_dir(parent_fd, name, create_mode=mode)
    try:
        do_mount(_fd_path(fd))
    finally:
        os.close(fd)


@contextlib.contextmanager
def _opened(parent_fd: int, name: str) -> Iterator[str]:
    """A /proc/self/fd path for directory `name`, looked up again: an fd
    opened before a mount still points below it, a new lookup finds the
    mount on top."""
    fd = open_dir(parent_fd, name)
    try:
        yield _fd_path(fd)
    finally:
        os.close(fd)


def read_untrusted(parent_fd: int, name: str, limit: int = 1 << 20) -> bytes:
    """The start of regular file `name` in a tree the VE controls: no symlink
    followed, and a fifo or device planted there neither blocks nor is read."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=parent_fd)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise VzcptError(f"{name}: not a regular file")
        return f.read(limit)


def _read_record(private: str) -> dict[str, object]:
    dir_fd = os.open(private, _O_DIR)
    try:
        data = json.loads(read_untrusted(dir_fd, TEMPLATE_RECORD))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, VzcptError):
        raise VzcptError(f"{private}/{TEMPLATE_RECORD}: unreadable or not JSON") from None
    finally:
        os.close(dir_fd)
    return data if isinstance(data, dict) else {}


def readonly_binds(private: str) -> list[str]:
    """The host system directories the private area's template wants bound."""
    names = _read_record(private).get("readonly_binds", [])
    if not isinstance(names, list):
        return []
    return [n for n in SYSTEM_DIRS if n in names]


# --- on the host ---------------------------------------------------------------


def is_mounted(paths: Paths, veid: int) -> bool:
    """True if the VE's root (/vz/root/VEID) is a mount point in this namespace."""
    return is_mountpoint(str(paths.ve_root(veid)))


def mount_root(paths: Paths, veid: int) -> str:
    """Mount VE `veid`'s root and return its path; a no-op if it is mounted.

    The root mount and each system directory bound into it are made private
    at once: on a host whose / is shared (systemd), a bind mount joins the
    peer group of its source, and the system directories mounted inside
    would otherwise also appear in /vz/private/VEID and wherever / is shared.
    The system directories are remounted read-only and nodev; set-uid is kept
    so that su and passwd work for the VE's users.
    """
    private = os.path.realpath(paths.private(veid))
    root = os.path.realpath(paths.ve_root(veid))
    if not os.path.isdir(private):
        raise VzcptError(f"VE {veid}: private area {private} does not exist (vzctl create first)")
    if is_mountpoint(root):
        return root
    binds = readonly_binds(private)
    os.makedirs(root, mode=0o755, exist_ok=True)
    try:
        m.bind(private, root)
        m.set_propagation(root, m.MS_PRIVATE)
        root_fd = os.open(root, _O_DIR)
        try:
            for name in binds:
                _mount_at(root_fd, name, functools.partial(m.bind, "/" + name))
                with _opened(root_fd, name) as target:  # now the bind mount on top
                    m.set_propagation(target, m.MS_PRIVATE)
                    m.remount_bind(target, m.MS_RDONLY | m.MS_NODEV)
        finally:
            os.close(root_fd)
    except BaseException:
        umount_tree(root)
        raise
    return root


def umount_root(paths: Paths, veid: int) -> None:
    """Unmount VE `veid`'s root and all below it; a no-op if it is not mounted."""
    root = os.path.realpath(paths.ve_root(veid))
    umount_tree(root)
    with contextlib.suppress(OSError):
        os.rmdir(root)  # only when empty: never remove what is not ours


# --- in the VE's mount namespace, at start ------------------------------------


def enter_root(root: str) -> None:
    """Make `root` this process's root, with /proc, /sys and a minimal /dev.

    The caller has a mount namespace of its own (unshare(CLONE_NEWNS)) and
    is already inside the VE's pid namespace (the child forked after
    unshare(CLONE_NEWPID)), so the /proc mounted here shows the VE's pids.
    Then it execs the VE's init. The order matters:

    1. MS_REC|MS_PRIVATE on /: nothing mounted below reaches the host's
       namespace by propagation, and pivot_root refuses shared mounts.
    2. `root` must be a mount point for pivot_root (mount_root made it one;
       otherwise it is bound onto itself).
    3. /proc, /sys, /dev are mounted while the host's tree is still visible:
       the host's device nodes can still be bound if mknod is not allowed.
    4. pivot_root(".", ".") then a lazy unmount of the old root stacked on
       top: after it, nothing of the host outside `root` is reachable.
    """
    root = os.path.realpath(root)
    m.set_propagation("/", m.MS_PRIVATE, recursive=True)
    if not is_mountpoint(root):
        m.bind(root, root, recursive=True)
    root_fd = os.open(root, _O_DIR)
    try:
        _mount_proc(root_fd)
        _mount_sys(root_fd)
        _mount_dev(root_fd, _tty_gid(root_fd))
        os.fchdir(root_fd)
    finally:
        os.close(root_fd)
    m.pivot_root(".", ".")
    m.umount(".", m.MNT_DETACH)
    os.chdir("/")


def _mount_proc(root_fd: int) -> None:
    """A new proc instance; /proc/sys and /proc/sysrq-trigger read-only
    except /proc/sys/net (as LXC's proc:mixed): the VE has its own network
    namespace, the rest of /proc/sys is mostly the host's kernel settings."""
    flags = m.MS_NOSUID | m.MS_NODEV | m.MS_NOEXEC
    _mount_at(root_fd, "proc", lambda target: m.mount("proc", target, "proc", flags), 0o555)
    with _opened(root_fd, "proc") as proc:
        for name in ("sys", "sysrq-trigger", "sys/net"):
            # plain path lookups from here: inside the new proc, no VE symlinks
            target = f"{proc}/{name}"
            if not os.path.exists(target):
                continue
            m.bind(target, target)
            if name == "sys/net":
                m.remount_bind(target, 0, drop=m.MS_RDONLY)
            else:
                m.remount_bind(target, m.MS_RDONLY)


def _mount_sys(root_fd: int) -> None:
    flags = m.MS_RDONLY | m.MS_NOSUID | m.MS_NODEV | m.MS_NOEXEC
    try:
        _mount_at(root_fd, "sys", lambda target: m.mount("sysfs", target, "sysfs", flags), 0o555)
    except SyscallFailed as e:
        # a new sysfs needs rights over the network namespace; else the host's, read-only
        if e.errno != errno.EPERM:
            raise
        _mount_at(root_fd, "sys", lambda target: m.bind("/sys", target, recursive=True))
        with _opened(root_fd, "sys") as target:
            m.remount_bind(target, flags)


_DEVICES = {  # name: (major, minor), all mode 0666
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}
_DEV_LINKS = {
    "ptmx": "pts/ptmx",
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}


def _mount_dev(root_fd: int, tty_gid: int | None) -> None:
    flags = m.MS_NOSUID | m.MS_NOEXEC
    _mount_at(root_fd, "dev", lambda t: m.mount("tmpfs", t, "tmpfs", flags, "mode=755,size=1m"))
    dev_fd = os.open("dev", _O_DIR, dir_fd=root_fd)  # the fresh tmpfs
    try:
        dev = _fd_path(dev_fd)
        for name, (major, minor) in _DEVICES.items():
            _make_device(dev_fd, name, major, minor)
        os.mkdir("pts", 0o755, dir_fd=dev_fd)
        opts = "newinstance,ptmxmode=0666,mode=0620" + (f",gid={tty_gid}" if tty_gid else "")
        m.mount("devpts", dev + "/pts", "devpts", m.MS_NOSUID | m.MS_NOEXEC, opts)
        os.mkdir("shm", 0o1777, dir_fd=dev_fd)
        m.mount("tmpfs", dev + "/shm", "tmpfs", m.MS_NOSUID | m.MS_NODEV, "mode=1777")
        os.mkdir("mqueue", 0o755, dir_fd=dev_fd)
        try:
            flags = m.MS_NOSUID | m.MS_NODEV | m.MS_NOEXEC
            m.mount("mqueue", dev + "/mqueue", "mqueue", flags)
        except SyscallFailed as e:
            if e.errno != errno.ENODEV:  # a kernel without POSIX message queues
                raise
        for name, target in _DEV_LINKS.items():
            os.symlink(target, name, dir_fd=dev_fd)
    finally:
        os.close(dev_fd)


def _make_device(dev_fd: int, name: str, major: int, minor: int) -> None:
    """mknod the character device; without CAP_MKNOD, bind the host's node."""
    try:
        os.mknod(name, 0o666 | stat.S_IFCHR, os.makedev(major, minor), dir_fd=dev_fd)
        os.chmod(name, 0o666, dir_fd=dev_fd)  # mknod applied our umask
    except PermissionError:
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666, dir_fd=dev_fd))
        m.bind("/dev/" + name, _fd_path(dev_fd) + "/" + name)


def _tty_gid(root_fd: int) -> int | None:
    """The VE's tty group, for the mode of its ptys; None if it has none."""
    try:
        etc = os.open("etc", _O_DIR, dir_fd=root_fd)
    except OSError:
        return None
    try:
        for line in read_untrusted(etc, "group").splitlines():
            fields = line.split(b":")
            if len(fields) >= 3 and fields[0] == b"tty" and fields[2].isdigit():
                return int(fields[2])
    except (OSError, VzcptError):
        return None
    finally:
        os.close(etc)
    return None
