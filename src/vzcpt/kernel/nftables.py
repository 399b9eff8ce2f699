"""The network lock of a checkpoint, as an nftables table (the `nft` command).

While a tree is dumped and until it is restored, no packet of its
connections may come or go: an ACK from us would tell the peer of data we
will send again, and a packet reaching a socket that is gone would be
answered with a reset. One table per checkpoint, in the tree's network
namespace, drops in its input and output hooks (at raw priority, before
conntrack) the packets of:

- each TCP connection, by its four addresses and ports, both ways;
- each listening TCP socket and each bound UDP socket, by its address and
  port (by port alone when bound to any address).

Packets carrying `mark` (SO_MARK) pass: those are the restorer's own,
handing restored sockets what their peers had sent (kernel/packets.py).
Element lists go into sets, so a thousand connections are one rule each
way. `nft` runs in the namespace through nsenter(1) when it is not ours.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass, field

from vzcpt.errors import VzcptError

PRIORITY = -300  # NF_IP_PRI_RAW: before conntrack sees the packet


@dataclass
class Blocked:
    """What a lock drops. Addresses are strings; "" means any address."""

    connections: list[tuple[str, int, str, int]] = field(default_factory=list)  # TCP, local first
    tcp_ports: list[tuple[str, int]] = field(default_factory=list)  # listening
    udp_ports: list[tuple[str, int]] = field(default_factory=list)  # bound

    def __bool__(self) -> bool:
        return bool(self.connections or self.tcp_ports or self.udp_ports)


def _ip(address: str) -> tuple[int, str]:
    found = ipaddress.ip_address(address)
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped:
        found = found.ipv4_mapped
    return found.version, str(found)


def _set(name: str, kind: str, elements: list[str]) -> str:
    body = f"type {kind};"
    if elements:
        body += " elements = { " + ", ".join(sorted(set(elements))) + " };"
    return f"  set {name} {{ {body} }}\n"


def lock_script(table: str, mark: int, blocked: Blocked) -> str:
    """The nft script that creates the lock table."""
    conn: dict[int, list[str]] = {4: [], 6: []}
    for laddr, lport, raddr, rport in blocked.connections:
        (version, local), (_, remote) = _ip(laddr), _ip(raddr)
        conn[version].append(f"{local} . {lport} . {remote} . {rport}")
    ports: dict[tuple[str, int], list[str]] = {}
    for proto, endpoints in (("tcp", blocked.tcp_ports), ("udp", blocked.udp_ports)):
        for version in (0, 4, 6):
            ports[proto, version] = []
        for address, port in endpoints:
            if not address or ipaddress.ip_address(address).is_unspecified:
                ports[proto, 0].append(str(port))
            else:
                version, plain = _ip(address)
                ports[proto, version].append(f"{plain} . {port}")
    sets = _set("conn4", "ipv4_addr . inet_service . ipv4_addr . inet_service", conn[4])
    sets += _set("conn6", "ipv6_addr . inet_service . ipv6_addr . inet_service", conn[6])
    rules_in = [f"meta mark {mark:#x} accept"]
    rules_out = [f"meta mark {mark:#x} accept"]
    for version, ip in ((4, "ip"), (6, "ip6")):
        rules_in.append(f"{ip} daddr . tcp dport . {ip} saddr . tcp sport @conn{version} drop")
        rules_out.append(f"{ip} saddr . tcp sport . {ip} daddr . tcp dport @conn{version} drop")
    for proto in ("tcp", "udp"):
        kind = {4: "ipv4_addr . inet_service", 6: "ipv6_addr . inet_service"}
        for version, ip in ((4, "ip"), (6, "ip6")):
            sets += _set(f"{proto}{version}", kind[version], ports[proto, version])
            rules_in.append(f"{ip} daddr . {proto} dport @{proto}{version} drop")
            rules_out.append(f"{ip} saddr . {proto} sport @{proto}{version} drop")
        sets += _set(f"{proto}any", "inet_service", ports[proto, 0])
        rules_in.append(f"{proto} dport @{proto}any drop")
        rules_out.append(f"{proto} sport @{proto}any drop")

    def chain(name: str, hook: str, rules: list[str]) -> str:
        body = "".join(f"    {rule}\n" for rule in rules)
        return (
            f"  chain {name} {{\n    type filter hook {hook} priority {PRIORITY}; policy accept;\n"
            f"{body}  }}\n"
        )

    return (
        f"table inet {table} {{\n{sets}"
        f"{chain('input', 'input', rules_in)}{chain('output', 'output', rules_out)}}}\n"
    )


def _nft(
    args: list[str], netns: int | None, script: str | None = None
) -> subprocess.CompletedProcess[str]:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    argv = [nft, *args]
    keep: tuple[int, ...] = ()
    if netns is not None:  # nsenter finds the namespace at the descriptor it inherits
        argv, keep = ["nsenter", f"--net=/proc/self/fd/{netns}", "--", *argv], (netns,)
    try:
        return subprocess.run(
            argv, input=script, capture_output=True, text=True, check=False, pass_fds=keep
        )
    except FileNotFoundError as exc:
        raise VzcptError(
            f"cannot run {exc.filename}: install nftables (the nft command) to checkpoint "
            "TCP and UDP sockets"
        ) from exc


def lock(table: str, mark: int, blocked: Blocked, netns: int | None = None) -> None:
    """Create the lock table in the namespace open at descriptor `netns` (None: ours)."""
    done = _nft(["-f", "-"], netns, lock_script(table, mark, blocked))
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise VzcptError(f"could not lock the network of the tree with nftables: {why}")


def unlock(table: str, netns: int | None = None) -> bool:
    """Delete the lock table; False when it was not there."""
    done = _nft(["delete", "table", "inet", table], netns)
    if done.returncode == 0:
        return True
    if "No such file or directory" in done.stderr:
        return False
    why = (done.stderr.strip().splitlines() or ["no message"])[0]
    raise VzcptError(f"could not unlock the network (nftables table {table}): {why}")
