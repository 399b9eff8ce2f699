"""Sessions and process groups whose leaders are gone come back as they were."""

from __future__ import annotations

import sys
from pathlib import Path

from cpt import vzcpt
from harness import Program, all_processes

ORPHANS = Path(__file__).parent / "programs" / "real" / "orphans.py"


def ids(pids: set[int]) -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, pgid, sid) of each process."""
    procs = all_processes()
    return {pid: (procs[pid].ppid, procs[pid].pgrp, procs[pid].session) for pid in pids}


def test_orphaned_session_and_group(tmp_path: Path) -> None:
    with Program.command("orphans", [sys.executable, str(ORPHANS)], tmp_path=tmp_path) as prog:
        prog.wait_ready()
        before = ids(prog.tree_pids())
        leaders = {pid for pid, (_, pgid, sid) in before.items() for pid in (pgid, sid)}
        assert leaders - set(before), "the program should hold groups whose leader is gone"
        vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "dump.img")
        prog.wait_gone()
        vzcpt("restore", "--dumpfile", tmp_path / "dump.img")
        after = ids(prog.tree_pids())
        before[prog.pid] = (after[prog.pid][0], *before[prog.pid][1:])  # the root's parent is ours
        assert after == before
        # The helpers that stood in for the gone leaders left nothing behind.
        assert not (leaders - set(before)) & set(all_processes())
