"""Event descriptors across a checkpoint: what test_cpt_programs does not show.

The evfd_* programs (run by test_cpt_programs.py) check eventfd, epoll,
signalfd, timerfd, inotify, memfd and pidfd from inside after a restore.
Here: a dump that lets the tree run on leaves all of them as they were;
`vzcpt show` prints them; what vzcpt cannot save is refused at dump in one
line naming process, descriptor and kind, and the program runs on; a
restore whose watched file is gone fails and leaves nothing behind.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cpt import vzcpt
from harness import Program
from test_programs_native import PROGRAMS

EVFD = sorted(name for name in PROGRAMS if name.startswith("evfd_"))


@pytest.mark.parametrize("name", EVFD)
def test_dump_leaves_the_running_tree_as_it_was(name: str, tmp_path: Path) -> None:
    """Reading the state (a timer's count, epoll's watches...) changes nothing."""
    with Program.start(name, tmp_path=tmp_path) as prog:
        prog.wait_ready()
        vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "d.img", "--leave-running")
        assert prog.verify() == "OK"


def test_show_prints_event_descriptors(tmp_path: Path) -> None:
    with Program.start("evfd_epoll", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "d.img", "--leave-running")
    text = vzcpt("show", tmp_path / "d.img").stdout
    assert "eventfd count 1" in text
    assert "epoll 5 watches" in text
    assert "fd 9 IN|ERR|HUP|ET data 0x2222" in text
    assert "fd 10 IN|ERR|HUP|EXCLUSIVE data 0x6666" in text
    assert "fd 11 ONESHOT data 0x3333" in text


REFUSED = {  # what the one line says, as a regular expression
    "io_uring": r"is an io_uring instance",
    "perf": r"is a perf event",
    "fanotify": r"is a fanotify group",
    "bpf": r"is a BPF map",
    "uffd": r"is a userfaultfd",
    "inotify": r"\(inotify\) has \d+ bytes of events not yet read",
    "pidfd": r"is a pidfd of process \d+, which is outside the dumped tree",
    "epoll": r"\(epoll\) watches a file it added as descriptor \d+, which the process has closed",
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_refused_in_one_line_and_the_tree_runs_on(kind: str, tmp_path: Path) -> None:
    with Program.start("fd_refused", kind, tmp_path=tmp_path) as prog:
        prog.wait_ready()
        fd = next(int(ln.split()[1]) for ln in prog.report_lines() if ln.startswith("FD "))
        result = vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "d.img", check=False)
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"process {prog.pid}: descriptor {fd} " in result.stderr
        assert re.search(REFUSED[kind], result.stderr), result.stderr
        assert not (tmp_path / "d.img").exists()
        assert prog.verify() == "OK"


def test_restore_refused_when_a_watched_file_is_gone(tmp_path: Path) -> None:
    with Program.start("evfd_inotify", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "d.img")
        prog.wait_gone()
        (tmp_path / "file").unlink()
        result = vzcpt("restore", "--dumpfile", tmp_path / "d.img", check=False)
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"cannot watch {tmp_path / 'file'} again" in result.stderr
        assert prog.gone()
