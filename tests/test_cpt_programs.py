"""Every kind of state survives a dump and a restore, checked from inside the program.

Each test: start the program, wait until it has set its state up, dump it
(the original is killed), check it is gone, restore it, and let it verify
itself. The verdict comes from inside the restored program.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cpt import vzcpt
from harness import Program
from test_programs_native import PROGRAMS as NATIVE

# Every program of test_programs_native but the benchmark's holder and the
# program whose descriptor must be refused (test_cpt_eventfds.py).
PROGRAMS = {name: args for name, args in NATIVE.items() if name not in ("holder", "fd_refused")}


def checkpoint_and_restore(prog: Program, dumpfile: Path) -> None:
    before = prog.tree_pids()
    vzcpt("dump", "--pid", prog.pid, "--dumpfile", dumpfile)
    prog.wait_gone()
    assert dumpfile.stat().st_mode & 0o777 == 0o600
    out = vzcpt("restore", "--dumpfile", dumpfile).stdout
    assert int(out.strip()) == prog.pid
    assert prog.tree_pids() == before


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_state_survives_checkpoint(name: str, tmp_path: Path) -> None:
    with Program.start(name, *PROGRAMS[name], tmp_path=tmp_path) as prog:
        prog.wait_ready()
        checkpoint_and_restore(prog, tmp_path / "dump.img")
        assert prog.verify() == "OK"
