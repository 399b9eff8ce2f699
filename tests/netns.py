"""Network namespaces for tests: a named one with loopback up, or two joined by a veth pair.

Names and addresses are random (10.253.x.y, fd53:x:y::/64), so tests running
at the same time never meet; everything is removed even when a test fails.
Programs, vzcpt and clients run inside with nsenter(1), which only changes
the network namespace.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from cpt import VZCPT


class NetNs:
    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"
        self.address = ""  # on the veth, when there is one
        self.address6 = ""

    def argv(self, argv: list[str]) -> list[str]:
        """`argv` run inside this namespace."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(list(argv)), capture_output=True, text=True, check=check)

    def vzcpt(
        self, *args: str | Path, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`vzcpt ARGS` inside this namespace; fail the test with its stderr if it fails."""
        result = subprocess.run(
            self.argv([*VZCPT, *map(str, args)]),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"vzcpt {' '.join(map(str, args))} failed: {result.stderr}")
        return result

    def nft_tables(self) -> list[str]:
        return self.run("nft", "list", "tables").stdout.split()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def namespace() -> Iterator[NetNs]:
    """A new network namespace with `lo` up."""
    ns = NetNs(f"vzt-{secrets.token_hex(4)}")
    _ip("netns", "add", ns.name)
    try:
        _ip("-n", ns.name, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True)


@contextlib.contextmanager
def joined_pair() -> Iterator[tuple[NetNs, NetNs]]:
    """Two namespaces joined by a veth pair, with IPv4 and IPv6 addresses on it."""
    net = (random.randrange(256), random.randrange(64) * 4)
    with namespace() as one, namespace() as two:
        tag = secrets.token_hex(3)
        _ip("link", "add", f"vza{tag}", "netns", one.name, "type", "veth", "peer", "name",
            f"vzb{tag}", "netns", two.name)  # fmt: skip
        for i, (ns, dev) in enumerate(((one, f"vza{tag}"), (two, f"vzb{tag}")), start=1):
            ns.address = f"10.253.{net[0]}.{net[1] + i}"
            ns.address6 = f"fd53:{net[0]:x}:{net[1]:x}::{i}"
            _ip("-n", ns.name, "addr", "add", f"{ns.address}/30", "dev", dev)
            _ip("-n", ns.name, "addr", "add", f"{ns.address6}/64", "dev", dev, "nodad")
            _ip("-n", ns.name, "link", "set", dev, "up")
        yield one, two


PYTHON = sys.executable
