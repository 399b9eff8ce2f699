"""Named unix sockets inside a VE: paths in its mount namespace, abstract names in its network."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from harness import build
from vehost import Host

PROGRAM = Path(__file__).parent / "programs" / "real" / "named_unix.py"


def wait_for(report: Path, *words: str) -> str:
    deadline = time.monotonic() + 15
    while True:
        text = report.read_text() if report.exists() else ""
        if any(w in text for w in words):
            return text
        assert time.monotonic() < deadline, f"no {words} in {report}: {text!r}"
        time.sleep(0.1)


def bound_here(abstract: bytes) -> bool:
    """Is the abstract name bound in the host's network namespace?"""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(abstract)
        except ConnectionRefusedError:
            return False
        return True


def test_named_unix_sockets_of_a_ve(host: Host) -> None:
    """A server on a path (under a tmpfs the VE mounted) and on an abstract name, with a
    connected client, a socketpair, and datagram sockets (one in /dev, which start
    makes anew), through vzctl chkpnt and restore twice, checked from inside."""
    veid = host.new_veid()
    host.vzctl("create", veid)
    host.vzctl("start", veid)
    root = host.paths.private(veid) / "root"
    shutil.copy(PROGRAM, root / "named_unix.py")
    name = f"vzcpt-test-{veid}"
    host.vzctl(
        "exec",
        veid,
        "mkdir -p /run/app && mount -t tmpfs app /run/app && "
        f"setsid python3 /root/named_unix.py /root/report /run/app/app.sock {name} "
        "/root/dgram.sock /dev/vzcpt-log </dev/null >/root/log 2>&1 &",
    )
    report = root / "report"
    assert "READY" in wait_for(report, "READY", "FAIL"), (root / "log").read_text()
    for _ in range(2):  # what the first restore made is the VE's to checkpoint again
        host.vzctl("chkpnt", veid)
        host.vzctl("restore", veid)
    assert not bound_here(b"\0" + name.encode()), "the abstract name went to the host"
    host.vzctl("exec", veid, "pkill -USR1 -o -f named_unix.py")
    verdict = wait_for(report, "OK", "FAIL")
    assert verdict.splitlines()[-1] == "OK", verdict + (root / "log").read_text()


def test_connections_not_yet_accepted_in_a_ve(host: Host) -> None:
    """unix_pending inside a VE: clients waiting on a path (in the VE's mount
    namespace) and on an abstract name (in its network namespace) are queued
    again by connect()s made inside the VE. Two rounds of chkpnt and restore:
    the sockets the first restore made must be the VE's for the second."""
    veid = host.new_veid()
    host.vzctl("create", veid)
    host.vzctl("start", veid)
    root = host.paths.private(veid) / "root"
    (root / "pending").mkdir()
    shutil.copy(build("unix_pending"), root / "pending" / "unix_pending")
    host.vzctl(
        "exec",
        veid,
        "setsid /root/pending/unix_pending /root/pending/report </dev/null >/dev/null 2>&1 &",
    )
    report = root / "pending" / "report"
    assert "READY" in wait_for(report, "READY", "FAIL")
    for _ in range(2):
        host.vzctl("chkpnt", veid)
        host.vzctl("restore", veid)
    pid = host.vzctl("exec", veid, "pgrep -o -x unix_pending").stdout.strip()
    assert f"@vzcpt-pending-{pid}" in host.vzctl("exec", veid, "cat /proc/net/unix").stdout
    assert not bound_here(f"\0vzcpt-pending-{pid}".encode()), "the abstract name went to the host"
    host.vzctl("exec", veid, f"kill -USR1 {pid}")
    verdict = wait_for(report, "OK", "FAIL")
    assert verdict.splitlines()[-1] == "OK", verdict
