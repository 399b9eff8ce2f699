"""The mounts a VE made, and what it did to those start gave it, through chkpnt and restore."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from collections.abc import Callable

from vehost import Host
from vzcpt.kernel.mounts import CLONE_NEWNS, setns

AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

SETUP = """
set -e
mkdir -p /mnt/scratch && mount -t tmpfs -o size=4m,mode=750 scratch /mnt/scratch
mkdir /mnt/scratch/sub && echo data > /mnt/scratch/sub/f && chown 7:8 /mnt/scratch/sub/f
ln -s sub/f /mnt/scratch/link && mkfifo /mnt/scratch/fifo && touch -d @1000000000 /mnt/scratch/sub
mkdir -p /mnt/b && mount --bind /etc /mnt/b && mount -o remount,bind,ro,nosuid /mnt/b
mkdir -p /mnt/sub2 && mount --bind /mnt/scratch/sub /mnt/sub2
mount --make-shared /mnt/scratch
mkdir -p /mnt/peer && mount --bind /mnt/scratch /mnt/peer
mkdir -p /mnt/slave && mount --bind /mnt/scratch /mnt/slave && mount --make-slave /mnt/slave
mkdir -p /mnt/proc && mount -t proc -o hidepid=2 proc /mnt/proc
mkdir -p /mnt/sys && mount -t sysfs sysfs /mnt/sys
mkdir -p /mnt/pts && mount -t devpts -o newinstance,mode=600 devpts /mnt/pts
mount -o remount,bind,noexec /dev/shm
mkdir /mnt/scratch/late && mount -t tmpfs -o mode=700 late /mnt/scratch/late
echo l > /mnt/scratch/late/x
mount --make-unbindable /mnt/b
umount /dev/mqueue
mkdir -p /mnt/mq && mount -t mqueue mqueue /mnt/mq
"""


def mounts_inside(host: Host, veid: int) -> list[str]:
    """The VE's mountinfo as it sees it, less what differs between two identical
    namespaces: mount ids, device numbers, and peer group numbers (renumbered in order)."""
    lines = host.vzctl("exec", veid, "cat /proc/self/mountinfo").stdout.splitlines()
    groups: dict[str, str] = {}

    def group(match: re.Match[str]) -> str:
        return f"{match[1]}:{groups.setdefault(match[2], str(len(groups) + 1))}"

    return [re.sub(r"(shared|master):(\d+)", group, line.split(" ", 3)[3]) for line in lines]


def test_mounts_the_ve_made(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid)
    host.vzctl("start", veid)
    host.vzctl("exec", veid, SETUP)
    before = mounts_inside(host, veid)
    assert any("/mnt/slave/late" in line and "master:" in line for line in before)
    host.vzctl("chkpnt", veid)
    host.vzctl("restore", veid)
    assert mounts_inside(host, veid) == before
    inside = host.vzctl(
        "exec",
        veid,
        "cat /mnt/scratch/sub/f /mnt/sub2/f /mnt/peer/late/x; readlink /mnt/scratch/link; "
        "stat -c '%F %a %u:%g %Y' /mnt/scratch /mnt/scratch/fifo /mnt/scratch/sub/f "
        "/mnt/scratch/sub /mnt/scratch/late; "
        "touch /mnt/b/x 2>/dev/null || echo read-only; "
        "echo new > /mnt/peer/shared && cat /mnt/scratch/shared /mnt/slave/shared",
    ).stdout.splitlines()
    assert inside[:4] == ["data", "data", "l", "sub/f"]
    assert [line.rsplit(" ", 1)[0] for line in inside[4:9]] == [
        "directory 750 0:0",
        "fifo 644 0:0",
        "regular file 644 7:8",
        "directory 755 0:0",
        "directory 700 0:0",
    ]
    assert inside[7].endswith(" 1000000000")
    assert inside[9:] == ["read-only", "new", "new"]


def mount_into(init_pid: int, target: str, detached: Callable[[], int]) -> None:
    """Put a detached mount (made here, in the host's namespace, by `detached`) on
    `target` inside the VE, as an operator could: from a child that joins the VE's
    mount namespace and moves it there (move_mount)."""
    child = os.fork()
    if child == 0:
        code = 1
        try:
            tree = detached()
            setns(os.open(f"/proc/{init_pid}/ns/mnt", os.O_RDONLY), CLONE_NEWNS)
            os.makedirs(target, exist_ok=True)
            code = 2 if _libc.syscall(429, tree, b"", AT_FDCWD, target.encode(), 4) else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert status == 0, f"could not mount on {target} in the VE ({status:#x})"


def host_dir_tree(path: str) -> Callable[[], int]:
    """open_tree(OPEN_TREE_CLONE): a detached bind of a host directory."""
    return lambda: int(_libc.syscall(428, AT_FDCWD, path.encode(), 1 | 0o2000000))


def block_device_fs(device: str, fstype: str) -> Callable[[], int]:
    """fsopen/fsconfig/fsmount: a detached mount of a block device."""

    def make() -> int:
        fs = _libc.syscall(430, fstype.encode(), 0)
        assert _libc.syscall(431, fs, 1, b"source", device.encode(), 0) == 0  # SET_STRING
        assert _libc.syscall(431, fs, 6, None, None, 0) == 0  # CMD_CREATE
        return int(_libc.syscall(432, fs, 0, 0))

    return make


def test_mounts_that_cannot_be_rebuilt_are_refused(host: Host) -> None:
    """A host path bound into the VE, a block-device file system: one line, the VE runs on."""
    veid = host.new_veid()
    host.vzctl("create", veid)
    init_pid = int(host.vzctl("start", veid).stdout.split("pid ")[1].split()[0])
    outside = host.root / "outside"
    outside.mkdir()
    mount_into(init_pid, "/mnt/host", host_dir_tree(str(outside)))
    result = host.vzctl("chkpnt", veid, check=False)
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
    assert "/mnt/host" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert host.vzctl("status", veid).stdout.split()[3:] == ["mounted", "running"]
    host.vzctl("exec", veid, "umount /mnt/host")

    image = host.root / "disk.img"
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        mount_into(init_pid, "/mnt/disk", block_device_fs(loop, "ext4"))
        result = host.vzctl("chkpnt", veid, check=False)
        assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
        assert "ext4" in result.stderr and "/mnt/disk" in result.stderr
        assert host.vzctl("status", veid).stdout.split()[3:] == ["mounted", "running"]
        host.vzctl("exec", veid, "umount /mnt/disk")
    finally:
        subprocess.run(["losetup", "--detach", loop], check=False)
