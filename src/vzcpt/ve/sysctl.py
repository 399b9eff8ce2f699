"""The network sysctls of a VE: the settings of its network namespace.

Kernel interface: the files under /proc/sys/net answer for the network
namespace of the process that reads or writes them, whatever /proc they are
reached through; a child that joins the VE's namespace (setns) reads them at
checkpoint and writes them back at restore. Saved: every writable,
single-value setting under net/ipv4, net/ipv6 and net/core that is per
namespace, except the per-device trees of devices the restore makes anew.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from vzcpt.errors import VzcptError
from vzcpt.kernel.mounts import CLONE_NEWNET, setns

ROOTS = ("/proc/sys/net/ipv4", "/proc/sys/net/ipv6", "/proc/sys/net/core")
SKIP_PARTS = ("/conf/", "/neigh/", "/route/flush", "/flush")


def dump_sysctls(pid: int) -> dict[str, str]:
    """The net sysctls of process `pid`'s network namespace, by path."""
    return _in_netns(pid, _read_all, None)


def restore_sysctls(pid: int, values: dict[str, str]) -> None:
    """Write saved net sysctls into process `pid`'s network namespace (best effort
    for settings this kernel does not let a namespace change)."""
    _in_netns(pid, _write_all, values)


def _read_all(_: dict[str, str] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    for root in ROOTS:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                if any(part in path for part in SKIP_PARTS) or not os.access(path, os.W_OK):
                    continue
                try:
                    with open(path) as f:
                        values[path] = f.read().strip()
                except OSError:
                    continue  # write-only or refusing reads
    return values


def _write_all(values: dict[str, str] | None) -> dict[str, str]:
    for path, value in (values or {}).items():
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError:
            pass  # not settable here (e.g. a host-only value): keep the default
    return {}


def _in_netns(
    pid: int, work: Callable[[Any], dict[str, str]], arg: dict[str, str] | None
) -> dict[str, str]:
    """Run `work(arg)` in a child that joined the network namespace of `pid`."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(read_end)
            setns(os.open(f"/proc/{pid}/ns/net", os.O_RDONLY), CLONE_NEWNET)
            data = json.dumps(work(arg)).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(write_end, view) :]
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 1 << 16):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(child, 0)
    if status != 0:
        raise VzcptError(f"could not read or write the network sysctls of process {pid}")
    result: dict[str, str] = json.loads(b"".join(chunks) or b"{}")
    return result
