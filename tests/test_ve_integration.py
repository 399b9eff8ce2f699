"""A VE running several programs at once through every form of vzctl chkpnt/restore.

In one VE: everything.py (TCP from a client on the host, epoll over a
socketpair, eventfd, timerfd, signalfd, inotify, memfd, a pty with bash, a
POSIX queue), redis-server with a client on the host and a pipeline in
flight, unix_pending (a unix listener with connections not yet accepted),
and a tmpfs the VE mounted itself. The VE goes through suspend, dump, kill,
undump, resume (each its own vzctl), then a one-step chkpnt and restore;
everything is checked after each.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
from pathlib import Path

from harness import build
from test_cpt_integration import EVERYTHING, TIMEOUT_S, Client, Kinds
from test_cpt_tcp import Resp, redis_value, wait_for
from test_ve_tcp import ready, start_in_ve
from vehost import Host, address
from vzcpt.ve import net

MOUNT = "mkdir -p /mnt/t && mount -t tmpfs -o size=1m,mode=700 vzt /mnt/t && echo kept > /mnt/t/f"


def test_a_busy_ve_through_every_stage(host: Host, tmp_path: Path) -> None:
    veid = host.new_veid()
    ip = address(veid)
    host.vzctl("create", veid, "--ipadd", ip)
    host.vzctl("start", veid)
    root = host.paths.private(veid) / "root"
    shutil.copy(EVERYTHING, root / "everything.py")
    (root / "watched").mkdir()
    (root / "pending").mkdir()
    shutil.copy(build("unix_pending"), root / "pending" / "unix_pending")
    port, redis_port = random.sample(range(20000, 60000), 2)
    start_in_ve(host, veid, "python3", "/root/everything.py", "/root/everything.report", ip,
                str(port), "/root/watched", "-", "/vzt-queue")  # fmt: skip
    start_in_ve(host, veid, "redis-server", "--port", str(redis_port), "--bind", ip, "--dir",
                "/root", "--save", "''", "--appendonly", "no", "--protected-mode", "no",
                "--logfile", "/root/redis.log")  # fmt: skip
    start_in_ve(host, veid, "/root/pending/unix_pending", "/root/pending/report")
    host.vzctl("exec", veid, MOUNT)
    reports = [root / "everything.report", root / "pending" / "report"]
    wait_for("the programs to be ready", lambda: all(ready(r) for r in reports), timeout=TIMEOUT_S)

    def redis_answers() -> bool:
        argv = ["redis-cli", "-h", ip, "-p", str(redis_port), "ping"]
        return subprocess.run(argv, capture_output=True).stdout.strip() == b"PONG"

    wait_for("redis to answer", redis_answers, timeout=TIMEOUT_S)
    kinds = Kinds()
    client = Client("", ip, port)  # from the host: the VE is routed
    try:
        with socket.create_connection((ip, redis_port), timeout=TIMEOUT_S) as sock:
            redis = Resp(sock)
            me = redis.call("CLIENT", "ID")
            kinds.check(client)
            assert client.ask("mqsend one") == "mq" and client.ask("mqsend two") == "mq"
            sent = 0

            def checks(stage: str) -> None:
                nonlocal sent
                assert not net.is_network_locked(veid), stage
                assert client.read() == f"queued-{stage}"
                kinds.check(client)
                assert all(redis.reply() == b"OK" for _ in range(sent - 100, sent))
                assert redis.call("CLIENT", "ID") == me, f"redis client reconnected ({stage})"
                assert redis.call("GET", f"key:{sent - 1}") == redis_value(sent - 1)
                out = host.vzctl("exec", veid, "cat /mnt/t/f; stat -c %a /mnt/t").stdout.split()
                assert out == ["kept", "700"], (stage, out)

            def in_flight(stage: str) -> None:
                nonlocal sent
                for i in range(sent, sent + 100):
                    redis.send("SET", f"key:{i}", redis_value(i))
                sent += 100
                client.send(f"echo queued-{stage}")

            dump = tmp_path / "ve.dump"
            in_flight("stages")
            host.vzctl("chkpnt", veid, "--suspend")
            host.vzctl("chkpnt", veid, "--dump", "--dumpfile", dump)
            host.vzctl("chkpnt", veid, "--kill")
            host.vzctl("restore", veid, "--undump", "--dumpfile", dump)
            host.vzctl("restore", veid, "--resume")
            checks("stages")
            in_flight("one-step")
            host.vzctl("chkpnt", veid)
            host.vzctl("restore", veid)
            checks("one-step")
            assert client.ask("mqrecv") == "mq one" and client.ask("mqrecv") == "mq two"
        host.vzctl("exec", veid, "kill -USR1 $(pgrep -x unix_pending)")
        verdict = reports[1]
        wait_for("unix_pending's verdict", lambda: verdict.read_text().count("\n") >= 2)
        assert verdict.read_text().splitlines()[-1] == "OK", verdict.read_text()
    finally:
        client.close()


def test_a_ve_refused_late_runs_on(host: Host) -> None:
    """The io_uring of the VE's last process is found after the connections were
    read in repair mode, the VE suspended and locked: all of it is undone."""
    veid = host.new_veid()
    ip = address(veid)
    host.vzctl("create", veid, "--ipadd", ip)
    host.vzctl("start", veid)
    root = host.paths.private(veid) / "root"
    shutil.copy(EVERYTHING, root / "everything.py")
    (root / "watched").mkdir()
    port = random.randrange(20000, 60000)
    start_in_ve(host, veid, "python3", "/root/everything.py", "/root/everything.report", ip,
                str(port), "/root/watched", "uring", "/vzt-queue")  # fmt: skip
    host.vzctl("exec", veid, MOUNT)
    report = root / "everything.report"
    wait_for("the program to be ready", lambda: ready(report), timeout=TIMEOUT_S)
    kinds = Kinds()
    client = Client("", ip, port)
    try:
        kinds.check(client)
        assert client.ask("mqsend kept") == "mq"
        client.send("echo queued")
        result = host.vzctl("chkpnt", veid, check=False)
        assert result.returncode != 0
        line = result.stderr.strip()
        assert "\n" not in line and "io_uring" in line, line
        assert host.vzctl("status", veid).stdout.split()[3:] == ["mounted", "running"]
        assert not net.is_network_locked(veid)
        assert client.read() == "queued"
        kinds.check(client)
        assert client.ask("mqrecv") == "mq kept"
        assert host.vzctl("exec", veid, "cat /mnt/t/f").stdout.strip() == "kept"
        tables = host.vzctl("exec", veid, "nft list tables").stdout
        assert "vzcpt_" not in tables, tables
    finally:
        client.close()


def test_a_ve_restore_failing_leaves_it_down_and_can_be_retried(host: Host) -> None:
    """A file the VE's last process held is gone at restore: nothing of the VE
    runs, no veth is left; once the file is back, the restore succeeds and the
    client on the host, waiting all along, goes on."""
    veid = host.new_veid()
    ip = address(veid)
    host.vzctl("create", veid, "--ipadd", ip)
    host.vzctl("start", veid)
    root = host.paths.private(veid) / "root"
    shutil.copy(EVERYTHING, root / "everything.py")
    (root / "watched").mkdir()
    (root / "held").write_text("held\n")
    port = random.randrange(20000, 60000)
    start_in_ve(host, veid, "python3", "/root/everything.py", "/root/everything.report", ip,
                str(port), "/root/watched", "open:/root/held", "/vzt-queue")  # fmt: skip
    report = root / "everything.report"
    wait_for("the program to be ready", lambda: ready(report), timeout=TIMEOUT_S)
    kinds = Kinds()
    client = Client("", ip, port)
    try:
        kinds.check(client)
        assert client.ask("mqsend kept") == "mq"
        host.vzctl("chkpnt", veid)
        down = host.vzctl("status", veid).stdout
        (root / "held").rename(root / "held.away")
        result = host.vzctl("restore", veid, check=False)
        assert result.returncode != 0
        line = result.stderr.strip()
        assert "\n" not in line and "/root/held" in line, line
        assert host.vzctl("status", veid).stdout == down
        assert net.host_ifname(veid) not in links()
        client.send("echo across-the-failure")
        (root / "held.away").rename(root / "held")
        host.vzctl("restore", veid)
        assert client.read() == "across-the-failure"
        kinds.check(client)
        assert client.ask("mqrecv") == "mq kept"
    finally:
        client.close()


def links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
