"""Busy servers in a VE: the connections waiting in their accept queues are accepted
while the VE is suspended, clients inside the VE are held off by a SYN drop in its
namespace (those outside by its veth's lock), and no client sees an error."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import time
from pathlib import Path

from test_cpt_drain import CLIENTS, Client, drained
from test_cpt_tcp import REAL, wait_for
from vehost import Host
from vzcpt.ve import net
from vzcpt.ve.lifecycle import VE

SLOW = REAL / "slow_acceptor.py"
LOOPS = 6

# Each loop runs redis-cli again and again (a new connection each time), counting
# the increments it saw done and writing down any error.
LOOP = """#!/bin/sh
n=$1
ok=0
while [ ! -e /root/stop ]; do
    out=$(redis-cli -p {port} INCR hits 2>&1)
    case "$out" in
        ''|*[!0-9]*) echo "client $n: $out" >> /root/errors ;;
        *) ok=$((ok + 1)); echo $ok > /root/ok.$n ;;
    esac
done
echo $ok > /root/done.$n
"""


def own_address() -> str:
    return f"10.254.{random.randrange(256)}.{random.randrange(1, 255)}"


def in_ve(host: Host, veid: int, name: str) -> Path:
    return host.paths.private(veid) / "root" / name


def start_in_ve(host: Host, veid: int, command: str) -> None:
    host.vzctl("exec", veid, f"setsid sh -c '{command}' </dev/null >/dev/null 2>&1 &")


def tables(host: Host, veid: int) -> list[str]:
    """The nftables tables in the VE's network namespace."""
    init_pid = VE(veid, host.paths).state().init_pid
    out = subprocess.run(
        ["nsenter", f"--net=/proc/{init_pid}/ns/net", "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[2::3]


def text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def count(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0


def test_ve_redis_under_load(host: Host) -> None:
    """redis-server in a VE with clients inside connecting again and again, and a
    backlog at the checkpoint (the server sleeps meanwhile, DEBUG SLEEP): vzctl chkpnt
    lets it accept them, vzctl restore brings it back; no client saw an error, and
    every increment a client saw done is in the counter."""
    veid = host.new_veid()
    host.vzctl("create", veid, "--ipadd", own_address())
    host.vzctl("start", veid)
    port = random.randrange(20000, 60000)
    start_in_ve(
        host, veid,
        f"redis-server --port {port} --bind 127.0.0.1 --save \"\" --appendonly no "
        "--enable-debug-command yes --logfile /root/redis.log",
    )  # fmt: skip

    def answers() -> bool:
        ping = host.vzctl("exec", veid, f"redis-cli -p {port} ping", check=False)
        return ping.stdout.strip() == "PONG"

    wait_for("redis to answer", answers)
    in_ve(host, veid, "loop.sh").write_text(LOOP.format(port=port))
    for n in range(LOOPS):
        start_in_ve(host, veid, f"sh /root/loop.sh {n}")
    oks = [in_ve(host, veid, f"ok.{n}") for n in range(LOOPS)]
    wait_for("every client to get answers", lambda: min(map(count, oks)) > 10)
    # redis stops accepting for a while: the clients' connections wait in its queue.
    start_in_ve(host, veid, f"redis-cli -p {port} DEBUG SLEEP 3 > /root/slept")
    time.sleep(0.3)
    result = host.vzctl("chkpnt", veid, "--stats", "--drain-timeout", "10")
    assert drained(result.stderr) >= 1, result.stderr
    host.vzctl("restore", veid)
    at_restore = list(map(count, oks))
    wait_for(
        "every client to go on",
        lambda: all(count(ok) > before + 20 for ok, before in zip(oks, at_restore, strict=True)),
    )
    in_ve(host, veid, "stop").touch()
    done = [in_ve(host, veid, f"done.{n}") for n in range(LOOPS)]
    wait_for("the clients to stop", lambda: all(path.exists() for path in done))
    errors = in_ve(host, veid, "errors")
    assert not errors.exists(), errors.read_text()
    assert in_ve(host, veid, "slept").read_text().strip() == "OK"
    hits = host.vzctl("exec", veid, f"redis-cli -p {port} GET hits").stdout.strip()
    assert int(hits) == sum(map(count, done))


def test_ve_suspend_drains_or_refuses(host: Host, tmp_path: Path) -> None:
    """chkpnt --suspend lets a slow server accept the connections of clients outside,
    and drops SYNs in the VE until chkpnt --resume; a server that never accepts makes
    --suspend fail in one line, the VE running on, nothing left locked."""
    veid = host.new_veid()
    ip = own_address()
    host.vzctl("create", veid, "--ipadd", ip)
    host.vzctl("start", veid)
    shutil.copy(SLOW, in_ve(host, veid, "slow_acceptor.py"))
    for mode in ("slow", "never"):
        port = random.randrange(20000, 60000)
        report = in_ve(host, veid, f"{mode}.report")
        start_in_ve(
            host, veid, f"python3 /root/slow_acceptor.py /root/{mode}.report {ip} {port} "
            f"{CLIENTS} {mode}",
        )  # fmt: skip
        clients = [Client(None, ip, port, n) for n in range(CLIENTS)]
        for client in clients:
            client.start()
        wait_for("the server's queue to fill", lambda r=report: "READY" in text(r))
        if mode == "slow":
            result = host.vzctl("chkpnt", veid, "--suspend", "--stats", "--drain-timeout", "10")
            assert drained(result.stderr) >= 1, result.stderr
            assert [t for t in tables(host, veid) if t.startswith("vzcpt_")], "no SYN drop"
            host.vzctl("chkpnt", veid, "--resume")
        else:
            started = time.monotonic()
            result = host.vzctl("chkpnt", veid, "--suspend", "--drain-timeout", "1", check=False)
            assert result.returncode != 0
            assert re.search(
                rf"has {CLIENTS} connections not yet accepted after 1 s", result.stderr
            ), result.stderr
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
            assert time.monotonic() - started < 15
            assert host.vzctl("status", veid).stdout.split()[-1] == "running"
        assert not [t for t in tables(host, veid) if t.startswith("vzcpt_")]
        assert not net.is_network_locked(veid)
        host.vzctl("exec", veid, f"pkill -USR1 -f '[s]low_acceptor.py /root/{mode}'")
        wait_for("the server's verdict", lambda r=report: "OK" in text(r).split())
        for client in clients:
            client.join(timeout=30)
        assert [c.result for c in clients] == [f"served {n}" for n in range(CLIENTS)]
