"""The VE's veth network, on the real kernel, in network namespaces of our own.

Traffic only flows between the host and namespaces made here, to addresses
of private ranges that only these veths route.
"""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2 import netns as pr_netns

from vzcpt.errors import VzcptError
from vzcpt.ve import net


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _nspath(name: str) -> str:
    return f"/run/netns/{name}"


@pytest.fixture
def make_ns() -> Iterator[list[str]]:
    """Namespaces made with `_new_ns(make_ns)`, removed after the test."""
    names: list[str] = []
    yield names
    for name in names:
        pr_netns.remove(name)  # the VE side of a veth dies with its namespace


@pytest.fixture
def ns(make_ns: list[str]) -> str:
    return _new_ns(make_ns)


def _new_ns(names: list[str]) -> str:
    name = f"vzt{os.getpid()}-{uuid.uuid4().hex[:8]}"
    pr_netns.create(name)
    names.append(name)
    return name


@pytest.fixture
def veids() -> Iterator[list[int]]:
    used: list[int] = []
    yield used
    for veid in used:
        net.teardown_network(veid)


@pytest.fixture
def veid(veids: list[int]) -> int:
    return _new_veid(veids)


def _new_veid(used: list[int]) -> int:
    # random 10-digit VEIDs: the longest names, and no clash between parallel runs
    veid = random.randrange(1_000_000_000, 4_000_000_000)
    used.append(veid)
    return veid


def _addr4() -> str:
    return f"10.250.{random.randrange(1, 255)}.{random.randrange(2, 255)}"


def _addr6() -> str:
    return f"fd5a:7a70:{random.randrange(1, 0xFFFF):x}::{random.randrange(2, 0xFFFF):x}"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def ping(addr: str, ns: str | None = None, timeout: float = 1.0, tries: int = 3) -> bool:
    """ICMP echo (like ping -c3 -W1), from the host or from inside `ns`.

    A few tries: under a loaded machine the first echo on a fresh link
    (neighbour resolution) can miss a one-second window.
    """
    return any(_ping_once(addr, ns, timeout) for _ in range(tries))


def _ping_once(addr: str, ns: str | None, timeout: float) -> bool:
    v6 = ":" in addr
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    if ns is None:
        sock = socket.socket(family, socket.SOCK_RAW, proto)
    else:
        sock = pr_netns.create_socket(
            netns=_nspath(ns), family=family, socket_type=socket.SOCK_RAW, proto=proto, flags=0
        )
    ident = random.randrange(1, 0xFFFF)
    body = struct.pack("!HH", ident, 1) + b"vzcpt-test"
    packet = struct.pack("!BBH", 128 if v6 else 8, 0, 0) + body
    if not v6:  # the kernel computes ICMPv6 checksums, not ICMPv4 ones
        packet = struct.pack("!BBH", 8, 0, _checksum(packet)) + body
    with sock:
        try:
            sock.sendto(packet, (addr, 0))
        except OSError:
            return False  # e.g. ENOBUFS: dropped on our own egress
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            data, src = sock.recvfrom(2048)
            if not v6:
                data = data[(data[0] & 0xF) * 4 :]  # past the IPv4 header
            kind, _, _, got = struct.unpack("!BBHH", data[:6])
            if kind == (129 if v6 else 0) and got == ident and src[0] == addr:
                return True
    return False


def _host_routes(name: str) -> list[str]:
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)
        if not index:
            return []
        return sorted(
            str(r.get_attr("RTA_DST"))
            for family in (socket.AF_INET, socket.AF_INET6)
            for r in ipr.get_routes(family=family, oif=index[0])
            if r["proto"] == 4
        )


def _exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def test_host_ifname_fits() -> None:
    assert net.host_ifname(101) == "vz101h"
    assert net.host_ifname(101, "b") == "vz101bh"
    assert net.host_ifname(4294967295) == "vz4294967295h"
    long = net.host_ifname(4294967295, "abcdef")
    assert len(long) <= 15 and long.startswith("vx")
    assert long == net.host_ifname(4294967295, "abcdef")
    with pytest.raises(VzcptError):
        net.host_ifname(101, "1a")
    with pytest.raises(VzcptError):
        net.host_ifname(-1)


@pytest.mark.parametrize("bad", ["10.0.0.1/24", "fd00::1/64", "nonsense", "127.0.0.1", "fe80::5"])
def test_bad_addresses_refused(bad: str, ns: str, veid: int) -> None:
    with pytest.raises(VzcptError, match="address"):
        net.setup_network(veid, _nspath(ns), [bad])
    assert not _exists(net.host_ifname(veid))


def test_setup_ping_both_ways(ns: str, veid: int) -> None:
    a4, a6 = _addr4(), _addr6()
    forwarding_all = _read("/proc/sys/net/ipv4/conf/all/forwarding")
    proxy_all = _read("/proc/sys/net/ipv4/conf/all/proxy_arp")
    info = net.setup_network(veid, _nspath(ns), [a4, f"{a6}/128"], "ve.example")
    name = net.host_ifname(veid)
    assert info == net.NetInfo(veid, name, "eth0", (a4, a6), "ve.example", False)
    assert ping(a4) and ping(a6)
    assert ping(net.GATEWAY4, ns=ns)
    assert ping("127.0.0.1", ns=ns)  # lo is up inside
    assert _host_routes(name) == sorted([a4, a6])
    conf = f"/proc/sys/net/ipv4/conf/{name}"
    assert _read(f"{conf}/proxy_arp") == "1\n"
    assert _read(f"{conf}/forwarding") == "1\n"
    assert _read("/proc/sys/net/ipv4/conf/all/forwarding") == forwarding_all
    assert _read("/proc/sys/net/ipv4/conf/all/proxy_arp") == proxy_all
    with pytest.raises(VzcptError, match="already set up"):
        net.setup_network(veid, _nspath(ns), [a4])


def test_netns_given_by_pid(ns: str, veid: int) -> None:
    path = _nspath(ns)
    proc = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: pr_netns.setns(path, flags=0))
    try:
        a4 = _addr4()
        net.setup_network(veid, proc.pid, [a4])
        assert ping(a4)
        assert [i.addresses for i in net.read_network(proc.pid) if i.ifname == "eth0"] == [
            (f"{a4}/32",)
        ]
    finally:
        proc.kill()
        proc.wait()


def test_lock_and_unlock(ns: str, veid: int) -> None:
    a4 = _addr4()
    net.setup_network(veid, _nspath(ns), [a4])
    assert ping(a4)
    assert not net.is_network_locked(veid)
    net.lock_network(veid)
    net.lock_network(veid)  # idempotent
    assert net.is_network_locked(veid)
    assert not ping(a4, tries=1)
    assert not ping(net.GATEWAY4, ns=ns, tries=1)
    net.unlock_network(veid)
    net.unlock_network(veid)
    assert not net.is_network_locked(veid)
    assert ping(a4) and ping(net.GATEWAY4, ns=ns)


def test_setup_locked_passes_nothing_until_unlocked(ns: str, veid: int) -> None:
    a4 = _addr4()
    info = net.setup_network(veid, _nspath(ns), [a4], locked=True)
    assert info.locked and net.is_network_locked(veid)
    assert not ping(a4, tries=1)
    net.unlock_network(veid)
    assert ping(a4)


def test_tcp_connection_survives_lock(ns: str, veid: int) -> None:
    """Data sent while locked is neither lost nor answered by a reset."""
    a4 = _addr4()
    net.setup_network(veid, _nspath(ns), [a4])
    server = pr_netns.create_socket(netns=_nspath(ns), flags=0)
    with server:
        server.bind((a4, 0))
        server.listen()
        client = socket.create_connection(server.getsockname(), timeout=5)
        conn, _ = server.accept()
        with client, conn:
            net.lock_network(veid)
            client.sendall(b"while-locked")
            conn.settimeout(1.0)
            with pytest.raises(TimeoutError):
                conn.recv(100)
            net.unlock_network(veid)
            conn.settimeout(10)
            assert conn.recv(100) == b"while-locked"  # TCP retransmitted it
            conn.sendall(b"reply")
            assert client.recv(100) == b"reply"


def test_add_and_del_address(ns: str, veid: int) -> None:
    first, second, third = _addr4(), _addr4(), _addr6()
    while second == first:
        second = _addr4()
    net.setup_network(veid, _nspath(ns), [first])
    name = net.host_ifname(veid)
    net.add_address(veid, _nspath(ns), second)
    net.add_address(veid, _nspath(ns), second)  # idempotent
    net.add_address(veid, _nspath(ns), third)  # the first IPv6 one brings its default route
    assert ping(second) and ping(third)
    assert _host_routes(name) == sorted([first, second, third])
    net.del_address(veid, _nspath(ns), first)
    net.del_address(veid, _nspath(ns), first)  # idempotent
    assert not ping(first, timeout=0.3, tries=1)
    assert ping(second)
    assert _host_routes(name) == sorted([second, third])


def test_teardown_removes_veth_and_routes(ns: str, veid: int) -> None:
    a4 = _addr4()
    net.setup_network(veid, _nspath(ns), [a4])
    name = net.host_ifname(veid)
    assert _exists(name)
    net.teardown_network(veid)
    net.teardown_network(veid)  # idempotent
    assert not _exists(name)
    assert _host_routes(name) == []
    with IPRoute() as ipr:
        assert not [r for r in ipr.get_routes(family=socket.AF_INET) if r.get_attr("RTA_DST") == a4]
    with pytest.raises(VzcptError, match="no network"):
        net.lock_network(veid)


def test_read_then_apply_network(make_ns: list[str], veids: list[int]) -> None:
    """What a checkpoint saves comes back in a fresh namespace."""
    a4, a6 = _addr4(), _addr6()
    src, dst = _new_ns(make_ns), _new_ns(make_ns)
    one, two = _new_veid(veids), _new_veid(veids)
    net.setup_network(one, _nspath(src), [a4, a6])
    with IPRoute(netns=_nspath(src), flags=0) as ipr:  # what a VE's admin might do
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.link("set", index=eth0, mtu=1400)
        ipr.route("add", dst="10.251.0.0/16", gateway=net.GATEWAY4, oif=eth0, proto=4)
    saved = net.read_network(_nspath(src))
    eth = {i.ifname: i for i in saved}["eth0"]
    assert eth.kind == "veth" and eth.up and eth.mtu == 1400
    assert eth.addresses == (f"{a4}/32", f"{a6}/128")
    assert {r.dst for r in eth.routes} == {"default", f"{net.GATEWAY4}/32", "10.251.0.0/16"}

    net.setup_network(two, _nspath(dst), [a4, a6], locked=True)  # the restore's order
    net.apply_network(_nspath(dst), saved)
    net.apply_network(_nspath(dst), saved)  # idempotent
    again = net.read_network(_nspath(dst))

    def strip(ifaces: list[net.Iface]) -> list[tuple[object, ...]]:
        return [(i.ifname, i.kind, i.up, i.mtu, i.addresses, set(i.routes)) for i in ifaces]

    assert strip(again) == strip(saved)


def test_gone_pid_and_missing_namespace(veid: int) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(VzcptError, match="gone"):
        net.setup_network(veid, proc.pid, [_addr4()])
    with pytest.raises(VzcptError, match="does not exist"):
        net.read_network(f"/run/netns/vzt-missing-{uuid.uuid4().hex}")
    assert not _exists(net.host_ifname(veid))


def test_two_ves_reach_each_other_and_stay_apart(make_ns: list[str], veids: list[int]) -> None:
    """Every veth carries 169.254.0.1; removing one VE leaves the other's intact."""
    a, b = _new_ns(make_ns), _new_ns(make_ns)
    one, two = _new_veid(veids), _new_veid(veids)
    addr_a, addr_b = _addr4(), _addr4()
    while addr_b == addr_a:
        addr_b = _addr4()
    net.setup_network(one, _nspath(a), [addr_a])
    net.setup_network(two, _nspath(b), [addr_b])
    assert ping(addr_b, ns=a) and ping(addr_a, ns=b)  # forwarded by the host
    net.lock_network(one)
    assert not ping(addr_a, ns=b, tries=1)
    assert ping(net.GATEWAY4, ns=b)  # the lock is per VE
    net.teardown_network(one)
    assert ping(net.GATEWAY4, ns=b) and ping(addr_b)
