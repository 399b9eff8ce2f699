"""Starting the first process of a VE: pid 1 of fresh namespaces, inside the VE's root.

A launcher process joins the VE's cgroups (so that everything the VE ever
runs is counted there), leads a session of its own, unshares the mount, UTS,
IPC, network, pid and cgroup namespaces and forks: the child is pid 1 of the
new pid namespace. It sets the VE's hostname and enters the VE's root, then
becomes what the caller asks (the VE's init at start, the seed of a restore).
The launcher reports the child's host pid and exits, so the VE's pid 1 is
left to the host like any daemon. Both sides report failures as one line.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable

from vzcpt.errors import VzcptError
from vzcpt.kernel import mounts
from vzcpt.ve import rootfs, uts
from vzcpt.ve.cgroups import VeCgroups

NAMESPACES = (
    mounts.CLONE_NEWNS
    | mounts.CLONE_NEWUTS
    | mounts.CLONE_NEWIPC
    | mounts.CLONE_NEWNET
    | mounts.CLONE_NEWPID
    | mounts.CLONE_NEWCGROUP
)


def launch_pid1(
    root: str,
    hostname: str,
    cgroups: VeCgroups,
    become: Callable[[], None],
    domainname: str = "",
) -> int:
    """Start pid 1 of a new VE under `root`, named `hostname` (and `domainname`);
    it then calls `become` (which must not return: exec or loop). Return its host pid."""
    read_end, write_end = os.pipe()
    launcher = os.fork()
    if launcher == 0:
        code = 1
        try:
            os.close(read_end)
            os.setsid()
            cgroups.add(os.getpid())
            mounts.unshare(NAMESPACES)
            pid = os.fork()
            if pid == 0:
                _pid1(root, (hostname, domainname), write_end, become)
            os.write(write_end, f"{pid}\n".encode())
            code = 0
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(write_end, f"error {exc}\n".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        answer = _read_all(read_end)
    finally:
        os.close(read_end)
        os.waitpid(launcher, 0)
    lines = answer.splitlines()
    if not lines or not lines[0].isdigit():
        raise VzcptError(f"the VE's first process did not start: {answer.strip() or 'no answer'}")
    if len(lines) > 1:
        raise VzcptError(f"the VE's first process failed: {lines[1].removeprefix('error ')}")
    return int(lines[0])


def _pid1(root: str, names: tuple[str, str], report: int, become: Callable[[], None]) -> None:
    """In the new pid namespace, as its pid 1. Never returns."""
    try:
        socket.sethostname(names[0])
        uts.set_own_domainname(names[1])  # through the host's /proc, before entering root
        rootfs.enter_root(root)
        become()  # closes `report` (exec, or closing every other descriptor)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report, f"error {exc}\n".encode())
    finally:
        os._exit(127)


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
