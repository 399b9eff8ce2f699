"""The test programs pass their own checks without any checkpoint.

This proves the programs and the harness right, so that a FAIL after a
dump and restore points at the engine.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from harness import PROGRAMS_DIR, Program, ProgramError, read_stat

# name -> extra arguments after the report path
PROGRAMS: dict[str, tuple[str, ...]] = {
    "mem_anon": (),
    "mem_file_private": (),
    "mem_shared": (),
    "mem_file_shared": (),
    "mem_sysv_shm": (),
    "mem_big": ("64",),
    "mem_dirty": ("64",),
    "regs_avx": (),
    "sleep_restart": (),
    "threads": (),
    "tree": (),
    "creds": (),
    "signals": (),
    "timers": (),
    "files": (),
    "pty_pair": (),
    "pty_session": (),
    "holder": ("16",),
    "posix_mqueue": (f"vzcpt_native_{os.getpid()}",),  # removes its queues when it passes
    "evfd_eventfd": (),
    "evfd_signalfd": (),
    "evfd_timerfd": (),
    "evfd_epoll": (),
    "evfd_inotify": (),
    "evfd_memfd": (),
    "evfd_pidfd": (),
    "unix_pending": (),
    "fd_refused": ("io_uring",),
}


def test_every_program_is_listed() -> None:
    assert {p.stem for p in PROGRAMS_DIR.glob("*.c")} == set(PROGRAMS)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_passes_its_checks(name: str, tmp_path: Path) -> None:
    with Program.start(name, *PROGRAMS[name], tmp_path=tmp_path) as prog:
        prog.wait_ready()
        assert prog.verify() == "OK"


def test_programs_keep_no_pipe_to_the_test(tmp_path: Path) -> None:
    with Program.start("holder", "1", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        for fd in (0, 1, 2):
            target = os.readlink(f"/proc/{prog.pid}/fd/{fd}")
            assert target in ("/dev/null", str(prog.log_path)), f"fd {fd} -> {target}"


def test_root_leads_its_own_session(tmp_path: Path) -> None:
    with Program.start("holder", "1", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        info = read_stat(prog.pid)
        assert info is not None
        assert info.session == info.pgrp == prog.pid


def test_kill_takes_the_whole_tree(tmp_path: Path) -> None:
    with Program.start("tree", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        pids = prog.tree_pids()
        assert len(pids) == 8  # root, A, A1, B, B1, C, C1 and the zombie Z
        prog.kill()
        for pid in pids:
            info = read_stat(pid)
            assert info is None or info.state == "Z", f"{pid} survived: {info}"
        prog.wait_gone()
        assert prog.gone()


def test_failure_during_setup_is_reported(tmp_path: Path) -> None:
    with (
        Program.start("mem_big", "0", tmp_path=tmp_path) as prog,
        pytest.raises(ProgramError, match="bad size"),
    ):
        prog.wait_ready()


def test_death_without_verdict_is_reported(tmp_path: Path) -> None:
    with Program.start("holder", "1", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        os.kill(prog.pid, signal.SIGKILL)
        prog.wait_gone()
        with pytest.raises(ProgramError, match="not running"):
            prog.verify()


def test_verdict_survives_a_stop_and_continue(tmp_path: Path) -> None:
    """SIGSTOP/SIGCONT during the wait: the program must still take SIGUSR1
    (the wait loop tolerates EINTR, as after a freeze)."""
    with Program.start("threads", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        os.kill(prog.pid, signal.SIGSTOP)
        time.sleep(0.1)
        os.kill(prog.pid, signal.SIGCONT)
        assert prog.verify() == "OK"
