"""Pre-copy (resources/precopy.py): pages copied while the tree runs, the written ones again.

mem_dirty keeps rewriting its memory while it is dumped; after the restore
it checks from inside that every page holds the last write made to it
before the freeze (or after the restore). VZCPT_PRECOPY=1 forces the
pre-copy on for these small trees. Every path that lets the tree run on
must leave no userfaultfd registration of ours in it ("uw" in VmFlags).
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

import pytest

from cpt import VZCPT, vzcpt
from harness import Program
from test_cpt_programs import PROGRAMS


@pytest.fixture(autouse=True)
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VZCPT_PRECOPY", "1")


def _stat(stderr: str, name: str) -> int:
    found = re.search(rf"{name}:\s+(\d+)", stderr)
    assert found, stderr
    return int(found.group(1))


def _tracked_mappings(pid: int) -> list[str]:
    smaps = Path(f"/proc/{pid}/smaps").read_text()
    return [line for line in smaps.splitlines() if line.startswith("VmFlags:") and " uw" in line]


def test_pages_written_during_precopy_are_copied_again(tmp_path: Path) -> None:
    with Program.start("mem_dirty", "256", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        dump = tmp_path / "d.img"
        result = vzcpt("dump", "--pid", prog.pid, "--dumpfile", dump, "--stats")
        precopied = _stat(result.stderr, "pages pre-copied")
        kept = _stat(result.stderr, "pre-copied kept")
        assert precopied >= 256 * 256  # the whole buffer, at least
        assert 0 < kept < precopied  # the writer invalidated some, not all
        shown = " ".join(vzcpt("show", dump).stdout.split())  # rich wraps long lines
        found = re.search(r"([\d,]+) bytes of pages \(([\d,]+) pre-copied\)", shown)
        assert found, shown
        total, early = (int(n.replace(",", "")) for n in found.groups())
        assert total >= 256 << 20 and early == kept * 4096
        prog.wait_gone()
        out = vzcpt("restore", "--dumpfile", dump).stdout
        assert int(out.strip()) == prog.pid
        assert _tracked_mappings(prog.pid) == []
        assert prog.verify() == "OK"


def test_leave_running_ends_the_tracking(tmp_path: Path) -> None:
    with Program.start("mem_dirty", "64", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        dump = tmp_path / "d.img"
        result = vzcpt("dump", "--pid", prog.pid, "--dumpfile", dump, "--leave-running", "--stats")
        assert _stat(result.stderr, "pages pre-copied") > 0
        assert _tracked_mappings(prog.pid) == []
        assert prog.verify() == "OK"


def test_failed_dump_ends_the_tracking(tmp_path: Path) -> None:
    with Program.start("fd_refused", "io_uring", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        result = vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "d.img", check=False)
        assert result.returncode != 0
        assert "io_uring" in result.stderr
        assert _tracked_mappings(prog.pid) == []
        assert prog.verify() == "OK"


def test_full_disk_during_precopy_leaves_the_tree_running(tmp_path: Path) -> None:
    """The dump's blocks are reserved before the pre-copy writes them: a disk
    too small fails the dump at once, in one line, and the program runs on
    untracked, with no dump file left behind."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    try:
        with Program.start("mem_dirty", "64", tmp_path=tmp_path) as prog:
            prog.wait_ready()
            dump = small / "d.img"
            result = vzcpt("dump", "--pid", prog.pid, "--dumpfile", dump, check=False)
            assert result.returncode == 1
            assert result.stderr.count("\n") == 1 and "no space left" in result.stderr
            assert not dump.exists()
            assert _tracked_mappings(prog.pid) == []
            assert prog.verify() == "OK"
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_progress_on_a_terminal_covers_the_precopy(tmp_path: Path) -> None:
    """On a terminal, the dump shows how far it got, pre-copy included, on one
    line that it clears when done; elsewhere it prints nothing of the kind."""
    with Program.start("mem_dirty", "256", tmp_path=tmp_path) as prog:
        prog.wait_ready()
        master, slave = pty.openpty()
        try:
            done = subprocess.run(
                [*VZCPT, "dump", "--pid", str(prog.pid), "--dumpfile", str(tmp_path / "d.img")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=slave,
                timeout=120,
            )
            os.close(slave)
            shown = b""
            while chunk := _read_some(master):
                shown += chunk
        finally:
            os.close(master)
        assert done.returncode == 0, shown
        assert b"pre-copying memory (still running): " in shown
        assert shown.endswith(b"\r\x1b[K")  # the line is cleared at the end
        prog.wait_gone()


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the terminal's other end is closed
        return b""


# Pre-copy lets a tree run between two freezes: state of every kind must come
# through that as it does through a single freeze (test_cpt_programs.py).
PRECOPIED = ["mem_anon", "mem_shared", "mem_file_private", "mem_sysv_shm", "threads", "signals"]
PRECOPIED += ["timers", "sleep_restart", "tree", "files", "evfd_memfd", "regs_avx"]


@pytest.mark.parametrize("name", PRECOPIED)
def test_state_survives_a_precopied_checkpoint(name: str, tmp_path: Path) -> None:
    with Program.start(name, *PROGRAMS[name], tmp_path=tmp_path) as prog:
        prog.wait_ready()
        result = vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "d.img", "--stats")
        assert _stat(result.stderr, "pages pre-copied") > 0
        prog.wait_gone()
        out = vzcpt("restore", "--dumpfile", tmp_path / "d.img").stdout
        assert int(out.strip()) == prog.pid
        assert prog.verify() == "OK"
