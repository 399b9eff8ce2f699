"""Event descriptors of programs inside a VE survive vzctl chkpnt and restore.

Inside a VE the restorer works from the host: watched paths are reached
through the VE's root and pidfds name the rebuilt processes by their host
pids, while the programs see their own pids and paths. Every evfd_*
program runs in one VE and checks itself after the restore.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from harness import build
from test_programs_native import PROGRAMS
from vehost import Host

EVFD = sorted(name for name in PROGRAMS if name.startswith("evfd_"))


def wait_for(report: Path, words: tuple[str, ...], what: str) -> str:
    deadline = time.monotonic() + 15
    while True:
        text = report.read_text() if report.exists() else ""
        if any(w in text for w in words):
            return text
        assert time.monotonic() < deadline, f"{what}: {text!r}"
        time.sleep(0.1)


def test_event_descriptors_of_a_ve(host: Host) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid)
    host.vzctl("start", veid)
    root = host.paths.private(veid) / "root"
    for name in EVFD:
        (root / name).mkdir()
        shutil.copy(build(name), root / name / name)
        host.vzctl(
            "exec",
            veid,
            f"setsid /root/{name}/{name} /root/{name}/report </dev/null >/dev/null 2>&1 &",
        )
    for name in EVFD:
        text = wait_for(root / name / "report", ("READY", "FAIL"), f"{name} not ready")
        assert "FAIL" not in text, text
    host.vzctl("chkpnt", veid)
    host.vzctl("restore", veid)
    for name in EVFD:
        host.vzctl("exec", veid, f"kill -USR1 $(pgrep -o -x {name[:15]})")
    for name in EVFD:
        text = wait_for(root / name / "report", ("OK", "FAIL"), f"{name}: no verdict")
        assert text.splitlines()[-1] == "OK", f"{name}: {text}"
