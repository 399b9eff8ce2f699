"""vzctl chkpnt pre-copies a VE with much memory while it still runs.

mem_dirty, inside the VE, holds 128 MiB and keeps rewriting a sliding
window of it; after the restore it checks from inside that every page holds
the last write made to it (a page restored from a copy older than its last
write shows an older stamp). The VE must have been frozen only for the
final pass: most pages were copied while it ran.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from harness import build
from vehost import Host

MIB = 128


def _stat(out: str, name: str) -> float:
    found = re.search(rf"{name}:\s+([\d.]+)", out)
    assert found, out
    return float(found.group(1))


def start_writer(host: Host, veid: int) -> Path:
    root = host.paths.private(veid) / "root"
    shutil.copy(build("mem_dirty"), root / "mem_dirty")
    host.vzctl(
        "exec", veid, f"setsid /root/mem_dirty /root/report {MIB} </dev/null >/dev/null 2>&1 &"
    )
    report = root / "report"
    deadline = time.monotonic() + 20
    while "READY" not in (report.read_text() if report.exists() else ""):
        assert time.monotonic() < deadline, "mem_dirty did not get ready"
        time.sleep(0.1)
    return report


def verify_writer(host: Host, veid: int, report: Path) -> None:
    host.vzctl("exec", veid, "kill -USR1 $(pgrep -x mem_dirty)")
    deadline = time.monotonic() + 20
    while not any(w in report.read_text() for w in ("OK", "FAIL")):
        assert time.monotonic() < deadline, "no verdict"
        time.sleep(0.1)
    assert report.read_text().splitlines()[-1] == "OK", report.read_text()


def test_chkpnt_precopies_a_running_ve(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid)
    host.vzctl("start", veid)
    report = start_writer(host, veid)
    out = host.vzctl("chkpnt", veid, "--stats").stderr  # statistics go to stderr
    precopied = _stat(out, "pages pre-copied")
    kept = _stat(out, "pre-copied kept")
    assert precopied >= MIB * 256  # the whole buffer, while the VE ran
    assert 0 < kept < precopied  # the writer invalidated some pages, not all
    assert _stat(out, "pre-copy time") > 0
    host.vzctl("restore", veid)
    verify_writer(host, veid, report)


def test_failed_chkpnt_after_precopy_leaves_the_ve_running_untracked(host: Host) -> None:
    """A refusal found once the VE is frozen again: it runs on, unlocked,
    with no write tracking of ours left in its processes."""
    veid = host.new_veid()
    host.vzctl("create", veid)
    host.vzctl("start", veid)
    report = start_writer(host, veid)
    root = host.paths.private(veid) / "root"
    shutil.copy(build("fd_refused"), root / "fd_refused")
    host.vzctl(
        "exec", veid, "setsid /root/fd_refused /root/refused io_uring </dev/null >/dev/null 2>&1 &"
    )
    deadline = time.monotonic() + 10
    while "READY" not in ((root / "refused").read_text() if (root / "refused").exists() else ""):
        assert time.monotonic() < deadline, "fd_refused did not get ready"
        time.sleep(0.1)
    result = host.vzctl("chkpnt", veid, "--stats", check=False)
    assert result.returncode != 0 and "io_uring" in result.stderr
    assert host.vzctl("status", veid).stdout.split()[4] == "running"
    pids = host.vzctl("exec", veid, "pgrep -x mem_dirty").stdout.split()
    assert len(pids) == 1
    flags = host.vzctl("exec", veid, f"grep VmFlags /proc/{pids[0]}/smaps").stdout
    assert " uw" not in flags
    verify_writer(host, veid, report)
