"""Named unix sockets inside a VE: paths in its mount namespace, abstract names in its network."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

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
