"""The network sysctls of a VE: the settings of its network namespace.

Kernel interface: the files under /proc/sys/net answer for the network
namespace of the process that reads or writes them, whatever /proc they are
reached through; a child that joins the VE's namespace (setns) reads them at
checkpoint and writes them back at restore. Saved: every writable,
single-value setting under net/ipv4, net/ipv6 and net/core that is per
namespace, except the per-device trees of devices the restore makes anew.
"""

from __future__ import annotations

import os

from vzcpt.kernel.nsexec import in_namespace

ROOTS = ("/proc/sys/net/ipv4", "/proc/sys/net/ipv6", "/proc/sys/net/core")
SKIP_PARTS = ("/conf/", "/neigh/", "/route/flush", "/flush")


def dump_sysctls(pid: int) -> dict[str, str]:
    """The net sysctls of process `pid`'s network namespace, by path."""
    values: dict[str, str] = in_namespace(pid, "net", _read_all, "read the network sysctls")
    return values


def restore_sysctls(pid: int, values: dict[str, str]) -> None:
    """Write saved net sysctls into process `pid`'s network namespace (best effort
    for settings this kernel does not let a namespace change)."""
    in_namespace(pid, "net", lambda: _write_all(values), "write the network sysctls")


def _read_all() -> dict[str, str]:
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


def _write_all(values: dict[str, str]) -> dict[str, str]:
    for path, value in values.items():
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError:
            pass  # not settable here (e.g. a host-only value): keep the default
    return {}
