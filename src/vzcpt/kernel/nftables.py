"""The network lock of a checkpoint, as an nftables table (the `nft` command).

While a tree is dumped and until it is restored, no packet of its
connections may come or go: an ACK from us would tell the peer of data we
will send again, and a packet reaching a socket that is gone would be
answered with a reset. One table per checkpoint, in the tree's network
namespace, drops in its input and output hooks (at raw priority, before
conntrack) the packets of:

- each TCP connection (or socket still connecting), by its four
  addresses and ports, both ways;
- each listening TCP socket and each bound UDP socket, by its address and
  port (by port alone when bound to any address).

Packets carrying `mark` (SO_MARK) pass: those are the restorer's own,
handing restored sockets what their peers had sent (kernel/packets.py).
Element lists go into sets, so a thousand connections are one rule each
way.

Before that lock, while the tree still runs to accept the connections
waiting on its listeners (resources/accept_queue.py), a chain of the same
table drops only the SYNs to those listeners: no new connection arrives,
those already made go on. Both parts go when the table is deleted.

`nft` runs in the namespace through nsenter(1) when it is not ours.
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


def _endpoint_sets(endpoints: list[tuple[str, int]]) -> tuple[dict[int, list[str]], list[str]]:
    """Elements of the (address . port) sets by IP version, and of the port-only set."""
    by_version: dict[int, list[str]] = {4: [], 6: []}
    any_address: list[str] = []
    for address, port in endpoints:
        if not address or ipaddress.ip_address(address).is_unspecified:
            any_address.append(str(port))
        else:
            version, plain = _ip(address)
            by_version[version].append(f"{plain} . {port}")
    return by_version, any_address


def _port_sets(prefix: str, endpoints: list[tuple[str, int]]) -> str:
    by_version, any_address = _endpoint_sets(endpoints)
    return (
        _set(f"{prefix}4", _ENDPOINT[4], by_version[4])
        + _set(f"{prefix}6", _ENDPOINT[6], by_version[6])
        + _set(f"{prefix}any", "inet_service", any_address)
    )


_ENDPOINT = {4: "ipv4_addr . inet_service", 6: "ipv6_addr . inet_service"}


def _chain(name: str, hook: str, rules: list[str]) -> str:
    body = "".join(f"    {rule}\n" for rule in rules)
    return (
        f"  chain {name} {{\n    type filter hook {hook} priority {PRIORITY}; policy accept;\n"
        f"{body}  }}\n"
    )


def lock_script(table: str, mark: int, blocked: Blocked) -> str:
    """The nft script that creates the lock table (or adds the lock to it)."""
    conn: dict[int, list[str]] = {4: [], 6: []}
    for laddr, lport, raddr, rport in blocked.connections:
        (version, local), (_, remote) = _ip(laddr), _ip(raddr)
        conn[version].append(f"{local} . {lport} . {remote} . {rport}")
    sets = _set("conn4", "ipv4_addr . inet_service . ipv4_addr . inet_service", conn[4])
    sets += _set("conn6", "ipv6_addr . inet_service . ipv6_addr . inet_service", conn[6])
    rules_in = [f"meta mark {mark:#x} accept"]
    rules_out = [f"meta mark {mark:#x} accept"]
    for version, ip in ((4, "ip"), (6, "ip6")):
        rules_in.append(f"{ip} daddr . tcp dport . {ip} saddr . tcp sport @conn{version} drop")
        rules_out.append(f"{ip} saddr . tcp sport . {ip} daddr . tcp dport @conn{version} drop")
    for proto, endpoints in (("tcp", blocked.tcp_ports), ("udp", blocked.udp_ports)):
        sets += _port_sets(proto, endpoints)
        for version, ip in ((4, "ip"), (6, "ip6")):
            rules_in.append(f"{ip} daddr . {proto} dport @{proto}{version} drop")
            rules_out.append(f"{ip} saddr . {proto} sport @{proto}{version} drop")
        rules_in.append(f"{proto} dport @{proto}any drop")
        rules_out.append(f"{proto} sport @{proto}any drop")
    return (
        f"table inet {table} {{\n{sets}"
        f"{_chain('input', 'input', rules_in)}{_chain('output', 'output', rules_out)}}}\n"
    )


SYN = "tcp flags & (syn | ack) == syn"  # a connection's first packet, and only that


def syn_drop_script(table: str, listeners: list[tuple[str, int]], with_chain: bool) -> str:
    """The nft script that drops new connections to `listeners` (address, port), in `table`.

    The chain comes once; later scripts only add listeners to its sets.
    """
    script = f"table inet {table} {{\n{_port_sets('syn', listeners)}"
    if with_chain:
        rules = [
            f"{SYN} ip daddr . tcp dport @syn4 drop",
            f"{SYN} ip6 daddr . tcp dport @syn6 drop",
            f"{SYN} tcp dport @synany drop",
        ]
        script += _chain("syn", "input", rules)
    return script + "}\n"


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


def drop_syns(
    table: str, listeners: list[tuple[str, int]], with_chain: bool, netns: int | None = None
) -> None:
    """Drop new connections to `listeners` in `table` (made if missing), in namespace `netns`."""
    done = _nft(["-f", "-"], netns, syn_drop_script(table, listeners, with_chain))
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise VzcptError(f"could not hold new connections off the tree with nftables: {why}")


def unlock(table: str, netns: int | None = None) -> bool:
    """Delete the lock table; False when it was not there."""
    done = _nft(["delete", "table", "inet", table], netns)
    if done.returncode == 0:
        return True
    if "No such file or directory" in done.stderr:
        return False
    why = (done.stderr.strip().splitlines() or ["no message"])[0]
    raise VzcptError(f"could not unlock the network (nftables table {table}): {why}")
