"""The VE's network: one veth pair per VE, routed by the host, in venet's style.

Layout (OpenVZ venet semantics over a veth pair):

    host netns                               VE netns
    vz<VEID>h  169.254.0.1/32, fe80::1/64 <-> eth0  VE addresses as /32 and /128
    route  <VE address> dev vz<VEID>h           route  169.254.0.1 dev eth0 scope link
    proxy_arp=1, forwarding=1 on vz<VEID>h      default via 169.254.0.1 / via fe80::1

* Names: interface names are at most 15 bytes and a VEID may have 10 digits, so
  the host side is "vz<VEID>h" (OpenVZ's "veth<VEID>.0" would not fit); a short
  `tag` (a letter then letters/digits, e.g. per VZCPT_ROOT) keeps two vzcpt
  instances on one host apart: "vz<VEID><tag>h"; names that would still be too
  long become "vx" + 12 hex digits of a hash. The VE side is created directly
  inside the VE's netns as "eth0", so no temporary name can collide on the host.
* The host side owns 169.254.0.1/32 (scope link) and fe80::1: the VE's default
  gateway therefore answers ARP/NDP on every host, whatever its own routes, and
  host-to-VE packets get a source address even on a host without global ones.
  The same addresses sit on every VE's veth; each is a separate link.
* Forwarding and proxy_arp are switched on for this veth only, never globally.
* Locking (`lock_network`): a classic-BPF filter returning TC_ACT_SHOT on the
  clsact ingress and egress hooks of the host veth drops every frame in both
  directions. Setting the link down instead would flush the host routes, so
  packets to the VE would follow the host's default route off the machine and
  local senders would get "unreachable" errors; a silent drop is what a
  network cable pulled for a moment looks like: TCP peers retransmit and no
  connection is reset. The kernel's TCP stack inside a frozen VE still answers
  packets, which is why the lock is needed while the VE is suspended. cBPF is
  used because this host's kernel has cls_bpf but neither matchall nor gact,
  and needs no program loading (no bpf(2)); nftables needs the nft tool or an
  unfinished pyroute2 API.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink import (  # type: ignore[import-untyped]
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    nla,
    nlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]
from pyroute2.netlink.rtnl import (  # type: ignore[import-untyped]
    RTM_DELTFILTER,
    RTM_NEWTFILTER,
)
from pyroute2.netlink.rtnl.tcmsg import tcmsg  # type: ignore[import-untyped]

from vzcpt.errors import ProcessGone, SyscallFailed, Unsupported, VzcptError

VE_IFNAME = "eth0"
GATEWAY4 = "169.254.0.1"
GATEWAY6 = "fe80::1"

NetNs = int | str  # a pid of a process in the netns, or a path like /proc/PID/ns/net

_IFA_F_NODAD = 0x02  # IPv6 addresses usable at once: the link is ours alone
_SCOPE_LINK = 253
_RTPROT_KERNEL = 2
_RTPROT_STATIC = 4
_RT_TABLE_MAIN = 254
_RTN_UNICAST = 1
_TC_INGRESS = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
_TC_EGRESS = 0xFFFFFFF3
_LOCK_PRIO = 0x7A  # the tc priority of our drop filters, to find them again
_ETH_P_ALL = 0x0003
_BPF_RET_SHOT = struct.pack("=HBBI", 0x06, 0, 0, 2)  # BPF_RET|BPF_K, TC_ACT_SHOT
_TCA_BPF_FLAG_ACT_DIRECT = 1
_IFF_UP = 0x1


class _CbpfFilter(nlmsg):  # type: ignore[misc]
    """A tc filter message whose options carry classic BPF.

    pyroute2's "bpf" plugin only knows eBPF program fds (it types
    TCA_BPF_OPS as a u32); declaring the message here keeps it data.
    """

    prefix = "TCA_"
    fields = tcmsg.fields
    nla_map = (("TCA_UNSPEC", "none"), ("TCA_KIND", "asciiz"), ("TCA_OPTIONS", "cbpf"))

    class cbpf(nla):  # type: ignore[misc]  # lower case: nla_map names it
        nla_map = (
            ("TCA_BPF_UNSPEC", "none"),
            ("TCA_BPF_ACT", "none"),
            ("TCA_BPF_POLICE", "none"),
            ("TCA_BPF_CLASSID", "uint32"),
            ("TCA_BPF_OPS_LEN", "uint16"),
            ("TCA_BPF_OPS", "cdata"),
            ("TCA_BPF_FD", "uint32"),
            ("TCA_BPF_NAME", "asciiz"),
            ("TCA_BPF_FLAGS", "uint32"),
        )


@dataclass(frozen=True)
class NetInfo:
    """What `setup_network` built."""

    veid: int
    host_ifname: str
    ve_ifname: str
    addresses: tuple[str, ...]  # normalized, without prefix length
    hostname: str | None  # recorded only: the UTS name is the lifecycle's job
    locked: bool


@dataclass(frozen=True)
class Route:
    """One route of the main table through one interface."""

    family: int  # socket.AF_INET or AF_INET6
    dst: str  # "10.1.2.0/24", or "default"
    gateway: str | None
    scope: int
    metric: int | None
    prefsrc: str | None
    onlink: bool


@dataclass(frozen=True)
class Iface:
    """A network device of a VE, as `read_network` saw it."""

    ifname: str
    kind: str  # "veth", "loopback", ...
    up: bool
    mtu: int
    mac: str
    addresses: tuple[str, ...]  # "10.250.1.2/32", "fd00::2/128"
    routes: tuple[Route, ...]


def host_ifname(veid: int, tag: str = "") -> str:
    """The host-side veth name of VE `veid`."""
    if veid < 0:
        raise VzcptError(f"bad VEID {veid}: must be a non-negative number")
    if tag and not re.fullmatch(r"[a-z][a-z0-9]*", tag):
        raise VzcptError(f"bad network tag {tag!r}: a letter, then letters or digits")
    name = f"vz{veid}{tag}h"
    if len(name) <= 15:
        return name
    return "vx" + hashlib.blake2b(f"{veid}/{tag}".encode(), digest_size=6).hexdigest()


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A VE address: bare, or with the host prefix length (/32, /128) venet implies."""
    try:
        iface = ipaddress.ip_interface(address.strip())
    except ValueError:
        raise VzcptError(f"bad IP address {address!r}") from None
    if iface.network.prefixlen != iface.max_prefixlen:
        raise VzcptError(
            f"bad IP address {address!r}: a VE address is a single host "
            f"(/{iface.max_prefixlen}); give it without a prefix length"
        )
    ip = iface.ip
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_link_local:
        raise VzcptError(f"IP address {address!r} cannot be given to a VE")
    return ip


def _ns_path(netns: NetNs) -> str:
    if isinstance(netns, int):
        path = f"/proc/{netns}/ns/net"
        if not os.path.exists(path):
            raise ProcessGone(f"process {netns} (to find the VE's network namespace) is gone")
        return path
    if not os.path.exists(netns):
        raise VzcptError(f"network namespace {netns} does not exist")
    return netns


@contextmanager
def _netlink(what: str) -> Iterator[None]:
    """Netlink errors as the one-line errors the CLI prints."""
    try:
        yield
    except NetlinkError as e:
        raise SyscallFailed(what, e.code) from None


def _ve_ipr(netns: NetNs) -> Any:
    # flags=0: never create a namespace when the path is wrong
    return IPRoute(netns=_ns_path(netns), flags=0)


def _index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _host_index(ipr: Any, veid: int, tag: str) -> int:
    name = host_ifname(veid, tag)
    index = _index(ipr, name)
    if index is None:
        raise VzcptError(f"VE {veid} has no network (no interface {name} on the host)")
    return index


def _sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _ignore(e: NetlinkError, *codes: int) -> None:
    if e.code not in codes:
        raise e


def _ensure_addr(ipr: Any, index: int, ip: str, prefix: int, **extra: Any) -> None:
    try:
        ipr.addr("add", index=index, address=ip, prefixlen=prefix, **extra)
    except NetlinkError as e:
        _ignore(e, errno.EEXIST)


def _ensure_route(ipr: Any, **spec: Any) -> None:
    try:
        ipr.route("add", **spec)
    except NetlinkError as e:
        _ignore(e, errno.EEXIST)


def _ve_default_route(ipr: Any, eth0: int, version: int) -> None:
    """The VE's default route through the host side of the veth."""
    if version == 4:
        _ensure_route(ipr, dst=f"{GATEWAY4}/32", oif=eth0, scope=_SCOPE_LINK, proto=_RTPROT_STATIC)
        _ensure_route(ipr, dst="0.0.0.0/0", gateway=GATEWAY4, oif=eth0, proto=_RTPROT_STATIC)
    else:
        _ensure_route(
            ipr,
            family=socket.AF_INET6,
            dst="::/0",
            gateway=GATEWAY6,
            oif=eth0,
            proto=_RTPROT_STATIC,
        )


def _host_route(
    ipr: Any, cmd: str, index: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    try:
        ipr.route(
            cmd,
            family=family,
            dst=f"{ip}/{ip.max_prefixlen}",
            oif=index,
            scope=_SCOPE_LINK,
            proto=_RTPROT_STATIC,
        )
    except NetlinkError as e:
        _ignore(e, errno.EEXIST if cmd == "add" else errno.ESRCH)


def _add_ve_address(
    ve: Any, host: Any, eth0: int, hidx: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    if ip.version == 6:
        if not os.path.exists(f"/proc/sys/net/ipv6/conf/{_name(host, hidx)}"):
            raise Unsupported(f"IPv6 address {ip}: IPv6 is disabled on this host")
        _ensure_addr(ve, eth0, str(ip), 128, flags=_IFA_F_NODAD)
    else:
        _ensure_addr(ve, eth0, str(ip), 32)
    _ve_default_route(ve, eth0, ip.version)
    _host_route(host, "add", hidx, ip)


def _name(ipr: Any, index: int) -> str:
    return str(ipr.get_links(index)[0].get_attr("IFLA_IFNAME"))


def _setup_host_side(ipr: Any, index: int, name: str) -> None:
    conf4 = f"/proc/sys/net/ipv4/conf/{name}"
    _sysctl(f"{conf4}/proxy_arp", "1")
    _sysctl(f"{conf4}/forwarding", "1")
    conf6 = f"/proc/sys/net/ipv6/conf/{name}"
    if os.path.exists(conf6):
        _sysctl(f"{conf6}/forwarding", "1")
    _ensure_addr(ipr, index, GATEWAY4, 32, scope=_SCOPE_LINK)
    if os.path.exists(conf6):
        _ensure_addr(ipr, index, GATEWAY6, 64, flags=_IFA_F_NODAD)
    ipr.link("set", index=index, state="up")


def setup_network(
    veid: int,
    netns: NetNs,
    addresses: list[str],
    hostname: str | None = None,
    *,
    tag: str = "",
    locked: bool = False,
) -> NetInfo:
    """Give VE `veid` (network namespace `netns`) its veth, addresses and routes.

    With `locked` the lock is in place before the link comes up, so not one
    packet passes (restore --undump). On failure the veth is removed again.
    """
    ips = [_ip(a) for a in addresses]
    name = host_ifname(veid, tag)
    path = _ns_path(netns)
    with IPRoute() as host:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with _netlink(f"create veth {name} for VE {veid}"):
                host.link(
                    "add", ifname=name, kind="veth", peer={"ifname": VE_IFNAME, "net_ns_fd": fd}
                )
        except SyscallFailed as e:
            if e.errno == errno.EEXIST:
                raise VzcptError(
                    f"VE {veid}: network already set up ({name} on the host "
                    f"or {VE_IFNAME} in the VE exists)"
                ) from None
            raise
        finally:
            os.close(fd)
        try:
            hidx = _host_index(host, veid, tag)
            if locked:
                _lock(host, hidx)
            with _netlink(f"set up {name}"):
                _setup_host_side(host, hidx, name)
            with _ve_ipr(path) as ve, _netlink(f"set up the network inside VE {veid}"):
                for lo in ve.link_lookup(ifname="lo"):
                    ve.link("set", index=lo, state="up")
                eth0 = _index(ve, VE_IFNAME)
                assert eth0 is not None
                ve.link("set", index=eth0, state="up")
                for ip in ips:
                    _add_ve_address(ve, host, eth0, hidx, ip)
        except BaseException:
            with suppress(NetlinkError):
                host.link("del", ifname=name)
            raise
    return NetInfo(veid, name, VE_IFNAME, tuple(str(ip) for ip in ips), hostname, locked)


def teardown_network(veid: int, *, tag: str = "") -> None:
    """Remove VE `veid`'s veth pair; its host routes go with it. Idempotent."""
    name = host_ifname(veid, tag)
    with IPRoute() as host:
        index = _index(host, name)
        if index is None:
            return
        try:
            host.link("del", index=index)
        except NetlinkError as e:
            _ignore(e, errno.ENODEV)


def add_address(veid: int, netns: NetNs, address: str, *, tag: str = "") -> None:
    """`vzctl set --ipadd` on a running VE. Idempotent."""
    ip = _ip(address)
    with IPRoute() as host, _ve_ipr(netns) as ve, _netlink(f"add {ip} to VE {veid}"):
        hidx = _host_index(host, veid, tag)
        eth0 = _index(ve, VE_IFNAME)
        if eth0 is None:
            raise VzcptError(f"VE {veid} has no {VE_IFNAME}")
        _add_ve_address(ve, host, eth0, hidx, ip)


def del_address(veid: int, netns: NetNs, address: str, *, tag: str = "") -> None:
    """`vzctl set --ipdel` on a running VE. Idempotent."""
    ip = _ip(address)
    with IPRoute() as host, _ve_ipr(netns) as ve, _netlink(f"remove {ip} from VE {veid}"):
        _host_route(host, "del", _host_index(host, veid, tag), ip)
        eth0 = _index(ve, VE_IFNAME)
        if eth0 is not None:
            try:
                ve.addr("del", index=eth0, address=str(ip), prefixlen=ip.max_prefixlen)
            except NetlinkError as e:
                _ignore(e, errno.EADDRNOTAVAIL, errno.ENOENT)


def _filter_msg(index: int, parent: int) -> Any:
    msg = _CbpfFilter()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    msg["parent"] = parent
    msg["info"] = (_LOCK_PRIO << 16) | socket.htons(_ETH_P_ALL)
    return msg


def _request(ipr: Any, msg: Any, msg_type: int, flags: int) -> None:
    # IPRoute.nlm_request of pyroute2 0.9 fails on its own status; put/get work
    seq = int.from_bytes(os.urandom(3), "little") + 1
    ipr.put(msg, msg_type, flags, msg_seq=seq)
    ipr.get(msg_seq=seq)


def _lock(ipr: Any, index: int) -> None:
    try:
        ipr.tc("add", "clsact", index)
    except NetlinkError as e:
        _ignore(e, errno.EEXIST)
    for parent in (_TC_INGRESS, _TC_EGRESS):
        msg = _filter_msg(index, parent)
        msg["handle"] = 1
        msg["attrs"] = [
            ("TCA_KIND", "bpf"),
            (
                "TCA_OPTIONS",
                {
                    "attrs": [
                        ("TCA_BPF_OPS_LEN", 1),
                        ("TCA_BPF_OPS", _BPF_RET_SHOT),
                        ("TCA_BPF_NAME", "vzcpt-lock"),
                        ("TCA_BPF_FLAGS", _TCA_BPF_FLAG_ACT_DIRECT),
                    ]
                },
            ),
        ]
        try:
            _request(
                ipr, msg, RTM_NEWTFILTER, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
            )
        except NetlinkError as e:
            _ignore(e, errno.EEXIST)


def _locked(ipr: Any, index: int) -> tuple[bool, bool]:
    """Whether our drop filter is on (ingress, egress)."""

    def has(parent: int) -> bool:
        return any(
            f["info"] >> 16 == _LOCK_PRIO and f.get_attr("TCA_KIND") == "bpf"
            for f in ipr.get_filters(index=index, parent=parent)
        )

    try:
        return has(_TC_INGRESS), has(_TC_EGRESS)
    except NetlinkError as e:
        _ignore(e, errno.EINVAL, errno.ENOENT)  # no clsact qdisc
        return False, False


def lock_network(veid: int, *, tag: str = "") -> None:
    """Drop every packet to and from VE `veid` until `unlock_network`. Idempotent."""
    with IPRoute() as host, _netlink(f"lock the network of VE {veid}"):
        _lock(host, _host_index(host, veid, tag))


def unlock_network(veid: int, *, tag: str = "") -> None:
    """Let VE `veid`'s packets pass again. Idempotent."""
    with IPRoute() as host, _netlink(f"unlock the network of VE {veid}"):
        index = _host_index(host, veid, tag)
        for parent in (_TC_INGRESS, _TC_EGRESS):
            try:
                _request(
                    host, _filter_msg(index, parent), RTM_DELTFILTER, NLM_F_REQUEST | NLM_F_ACK
                )
            except NetlinkError as e:
                _ignore(e, errno.ENOENT, errno.EINVAL)
        try:
            host.tc("del", "clsact", index)
        except NetlinkError as e:
            _ignore(e, errno.ENOENT, errno.EINVAL)


def is_network_locked(veid: int, *, tag: str = "") -> bool:
    """True when both directions of VE `veid`'s veth are blocked."""
    with IPRoute() as host, _netlink(f"read the tc filters of VE {veid}"):
        return all(_locked(host, _host_index(host, veid, tag)))


def _route(msg: Any) -> Route | None:
    if msg.get_attr("RTA_MULTIPATH") is not None:
        raise Unsupported(f"multipath route {msg.get_attr('RTA_DST')} in a VE")
    if msg["proto"] == _RTPROT_KERNEL:
        return None  # made by the kernel with the address or the link
    family = msg["family"]
    dst = msg.get_attr("RTA_DST")
    return Route(
        family=family,
        dst=f"{dst}/{msg['dst_len']}" if dst is not None else "default",
        gateway=msg.get_attr("RTA_GATEWAY"),
        scope=msg["scope"],
        metric=msg.get_attr("RTA_PRIORITY"),
        prefsrc=msg.get_attr("RTA_PREFSRC"),
        onlink=bool(msg["flags"] & 0x4),  # RTNH_F_ONLINK
    )


def read_network(netns: NetNs) -> list[Iface]:
    """The devices of a VE with their addresses and main-table routes.

    Left out because the kernel recreates them: IPv6 link-local addresses and
    routes of protocol "kernel". A route the checkpoint could not recreate
    (multipath, or with no device, like blackhole) raises `Unsupported`.
    """
    with _ve_ipr(netns) as ve, _netlink("read the network of a VE"):
        links = list(ve.get_links())
        addrs = list(ve.get_addr())
        routes = [
            r
            for family in (socket.AF_INET, socket.AF_INET6)
            for r in ve.get_routes(family=family, table=_RT_TABLE_MAIN)
        ]
    by_oif: dict[int, list[Route]] = {}
    for msg in routes:
        if msg["type"] != _RTN_UNICAST:
            raise Unsupported(f"route {msg.get_attr('RTA_DST')} of type {msg['type']} in a VE")
        route = _route(msg)
        if route is None:
            continue
        oif = msg.get_attr("RTA_OIF")
        if oif is None:
            raise Unsupported(f"route {route.dst} without a device in a VE")
        by_oif.setdefault(oif, []).append(route)
    out = []
    for link in links:
        index = link["index"]
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        out.append(
            Iface(
                ifname=link.get_attr("IFLA_IFNAME"),
                kind=kind or ("loopback" if link["flags"] & 0x8 else "unknown"),  # IFF_LOOPBACK
                up=bool(link["flags"] & _IFF_UP),
                mtu=link.get_attr("IFLA_MTU"),
                mac=link.get_attr("IFLA_ADDRESS") or "",
                addresses=tuple(
                    f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                    for a in addrs
                    if a["index"] == index
                    and not (
                        a["family"] == socket.AF_INET6
                        and ipaddress.ip_address(a.get_attr("IFA_ADDRESS")).is_link_local
                    )
                ),
                routes=tuple(by_oif.get(index, ())),
            )
        )
    return out


def apply_network(netns: NetNs, ifaces: list[Iface]) -> None:
    """Give the devices of a (restored) VE the state `read_network` saved.

    The devices must exist already (setup_network makes lo and eth0): MTU,
    addresses, up/down and routes are added to what is there. Idempotent.
    """
    with _ve_ipr(netns) as ve, _netlink("restore the network of a VE"):
        indexes = {}
        for iface in ifaces:
            index = _index(ve, iface.ifname)
            if index is None:
                raise Unsupported(
                    f"network device {iface.ifname} ({iface.kind}) of the VE cannot be recreated"
                )
            indexes[iface.ifname] = index
            ve.link("set", index=index, mtu=iface.mtu)
            for cidr in iface.addresses:
                ip = ipaddress.ip_interface(cidr)
                extra = {"flags": _IFA_F_NODAD} if ip.version == 6 else {}
                _ensure_addr(ve, index, str(ip.ip), ip.network.prefixlen, **extra)
            ve.link("set", index=index, state="up" if iface.up else "down")
        for iface in ifaces:  # gateways may need another device's address
            for r in iface.routes:
                spec: dict[str, Any] = {
                    "family": r.family,
                    "oif": indexes[iface.ifname],
                    "scope": r.scope,
                    "dst": r.dst
                    if r.dst != "default"
                    else ("0.0.0.0/0" if r.family == socket.AF_INET else "::/0"),
                    "proto": _RTPROT_STATIC,
                }
                for key, value in (
                    ("gateway", r.gateway),
                    ("priority", r.metric),
                    ("prefsrc", r.prefsrc),
                ):
                    if value is not None:
                        spec[key] = value
                if r.onlink:
                    spec["flags"] = 0x4
                _ensure_route(ve, **spec)
