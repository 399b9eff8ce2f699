"""The names of a VE's UTS namespace: its hostname and its NIS domain name.

Programs inside may change either (sethostname, setdomainname) at any time,
so a checkpoint reads them from the namespace itself, not from the config:
/proc/sys/kernel/{hostname,domainname} answer for the UTS namespace of the
process that reads them, here a child that joined the VE's (kernel/nsexec.py).
"""

from __future__ import annotations

from pathlib import Path

from vzcpt.kernel.nsexec import in_namespace

KERNEL = Path("/proc/sys/kernel")
NO_DOMAIN = "(none)"  # what the kernel shows for an empty domain name


def _own_names() -> list[str]:
    return [(KERNEL / name).read_text().rstrip("\n") for name in ("hostname", "domainname")]


def dump_names(init_pid: int) -> tuple[str, str]:
    """(hostname, domain name) of the UTS namespace of `init_pid`; "" for no domain."""
    hostname, domain = in_namespace(init_pid, "uts", _own_names, "read the VE's hostname")
    return hostname, "" if domain == NO_DOMAIN else domain


def set_own_domainname(domain: str) -> None:
    """Give our own UTS namespace its domain name (we are the VE's pid 1, just made)."""
    if domain:
        (KERNEL / "domainname").write_text(domain)
