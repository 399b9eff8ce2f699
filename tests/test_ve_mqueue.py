"""POSIX message queues of a VE: saved with its IPC namespace, held open by its programs."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from harness import build
from vehost import Host


def wait_for(report: Path, *words: str) -> str:
    deadline = time.monotonic() + 10
    while True:
        text = report.read_text() if report.exists() else ""
        if any(w in text for w in words):
            return text
        assert time.monotonic() < deadline, f"no {words} in {report}: {text!r}"
        time.sleep(0.1)


def start_program(host: Host, veid: int, *args: str) -> Path:
    root = host.paths.private(veid) / "root"
    shutil.copy(build("posix_mqueue"), root / "posix_mqueue")
    host.vzctl(
        "exec",
        veid,
        f"setsid /root/posix_mqueue /root/report {' '.join(args)} </dev/null >/dev/null 2>&1 &",
    )
    report = root / "report"
    assert "READY" in wait_for(report, "READY", "FAIL"), report.read_text()
    return report


def queue_files(host: Host, veid: int) -> str:
    """What the VE's /dev/mqueue shows: names, modes, owners, and each queue's size."""
    return host.vzctl(
        "exec",
        veid,
        "cd /dev/mqueue && ls -ln | tail -n +2 | awk '{print $1,$3,$4,$9}'; grep -H . *",
    ).stdout


def test_posix_message_queues_of_a_ve(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid)
    host.vzctl("start", veid)
    report = start_program(host, veid, "cpt")
    before = queue_files(host, veid)
    assert "cpt_a" in before and "cpt_i" in before and "QSIZE:19" in before
    # A dump reads every queue by taking its messages: a VE that runs on has them all back.
    host.vzctl("chkpnt", veid, "--suspend")
    host.vzctl("chkpnt", veid, "--dump", "--dumpfile", host.root / "kept.img")
    host.vzctl("chkpnt", veid, "--resume")
    assert queue_files(host, veid) == before
    host.vzctl("chkpnt", veid)
    host.vzctl("restore", veid)
    assert queue_files(host, veid) == before
    host.vzctl("exec", veid, "kill -USR1 $(pgrep -x posix_mqueue)")
    assert wait_for(report, "OK", "FAIL").splitlines()[-1] == "OK", report.read_text()


def test_an_mq_notify_registration_is_refused(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid)
    host.vzctl("start", veid)
    start_program(host, veid, "cpt", "notify")
    before = queue_files(host, veid)
    result = host.vzctl("chkpnt", veid, check=False)
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
    assert "mq_notify" in result.stderr and "/cpt_a" in result.stderr
    assert "Traceback" not in result.stderr
    assert host.vzctl("status", veid).stdout.split()[3:] == ["mounted", "running"]
    assert queue_files(host, veid) == before
