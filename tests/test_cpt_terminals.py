"""Terminals across a checkpoint: an interactive shell on a pty, and shell jobs.

The pty programs of tests/programs (pty_pair, pty_session) are checked with
every other program in test_cpt_programs.py; here are the cases that need a
terminal from outside: a shell driven through its pty's master, and trees
started from a shell (--shell-job), driven through tmux.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpt import VZCPT, vzcpt
from harness import Program, all_processes
from terminal import Tmux, typist

REAL = Path(__file__).parent / "programs" / "real"
PTYSHELL = REAL / "ptyshell.py"
SHELL_JOB = REAL / "shell_job.py"
PROMPT = "vz$ "


def wait_line(report: Path, line: str, timeout: float = 15.0, count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while report.read_text().splitlines().count(line) < count:
        text = report.read_text()
        assert "FAIL" not in text, text
        assert time.monotonic() < deadline, f"no {line!r} in the report:\n{text}"
        time.sleep(0.05)


def test_interactive_shell_in_a_pty(tmp_path: Path) -> None:
    """bash -i on a pty, driven through the master: prompt, history, terminal
    settings, a running command, input typed ahead and a half-typed line survive."""
    sock = tmp_path / "term.sock"
    driver = [sys.executable, str(PTYSHELL)]
    with Program.command("ptyshell", driver, sock, tmp_path=tmp_path) as prog:
        prog.wait_ready()
        with typist(str(sock)) as term:
            term.expect(PROMPT)
            term.type("echo alpha-$((1+1))\r")
            term.expect("alpha-2")
            term.expect(PROMPT)
            term.type("stty -echoctl intr ^G rows 33 cols 111\r")
            term.expect(PROMPT)
            term.type("x=5; sleep 4; echo after-sleep-$x\r")
            time.sleep(0.5)  # bash runs sleep: what follows waits in the pty
            term.type("echo typed-ahead\recho gam")
            term.expect("echo gam")  # echoed by the terminal itself
        wait_line(prog.report, "IDLE", count=2)  # the relay let go of the connection
        vzcpt("dump", "--pid", prog.pid, "--dumpfile", tmp_path / "dump.img")
        prog.wait_gone()
        vzcpt("restore", "--dumpfile", tmp_path / "dump.img")
        with typist(str(sock)) as term:
            term.expect("after-sleep-5")
            term.expect("typed-ahead")
            term.expect(PROMPT)
            term.type("ma\r")  # completes the half-typed line
            term.expect("gamma")
            term.expect(PROMPT)
            term.type("history\r")
            history = term.expect(PROMPT).decode()
            for earlier in ("echo alpha-$((1+1))", "stty -echoctl", "echo typed-ahead"):
                assert earlier in history, history
            term.type("stty -a\r")
            settings = term.expect(PROMPT).decode()
            assert "rows 33; columns 111" in settings, settings
            assert "intr = ^G" in settings and "-echoctl" in settings.split(), settings
            term.type("exit\r")
            term.expect_end()  # the shell's side closed: the relay let go
        wait_line(prog.report, "DONE")


@pytest.mark.parametrize("name", ["pty_pair", "pty_session"])
def test_ptys_untouched_by_a_dump_that_leaves_them_running(name: str, tmp_path: Path) -> None:
    """The queues are read to be saved, and put back at once: the tree finds them as
    they were (its own checks after SIGUSR1 read every byte)."""
    with Program.start(name, tmp_path=tmp_path) as prog:
        prog.wait_ready()
        vzcpt("dump", "--leave-running", "-t", prog.pid, "-o", tmp_path / "dump.img")
        assert prog.verify() == "OK"


def test_pty_with_its_slave_outside_is_refused(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            ["sleep", "1000"], pass_fds=[master], stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            time.sleep(0.2)
            result = vzcpt("dump", "-t", proc.pid, "-o", tmp_path / "d.img", check=False)
            assert result.returncode != 0
            line = result.stderr.strip()
            assert "\n" not in line and "slave open outside the tree" in line, line
            assert proc.poll() is None and not (tmp_path / "d.img").exists()
        finally:
            proc.kill()
            proc.wait()
    finally:
        os.close(master)
        os.close(slave)


def _vzcpt_line(*args: str | Path) -> str:
    return shlex.join([*VZCPT, *map(str, args)])


def _start_job(tmux: Tmux, tmp_path: Path, mode: str = "job") -> tuple[Path, int]:
    """shell_job.py started from bash in tmux, as a foreground job: its report and pid."""
    report = tmp_path / "job.report"
    report.touch()
    tmux.new_session("shell", "env PS1='sh$ ' bash --norc --noprofile -i", cols=100, rows=30)
    tmux.wait_for("shell", "sh$ ")
    tmux.type_line("shell", shlex.join([sys.executable, str(SHELL_JOB), str(report), mode]))
    wait_line(report, "READY")
    pid = _pid_of(report)
    return report, pid


def _pid_of(report: Path) -> int:
    for pid in all_processes():
        try:
            if str(report) in Path(f"/proc/{pid}/cmdline").read_text():
                return pid
        except OSError:
            continue
    raise AssertionError("the job is not running")


def _finish_job(tmux: Tmux, session: str, report: Path, pid: int) -> None:
    """Let the restored job check itself, type it a line, and see it end well."""
    os.kill(pid, signal.SIGUSR1)
    wait_line(report, "WAITING", count=1)
    tty = tmux.tty(session)
    assert f"TTY {tty}" in report.read_text().splitlines()
    tmux.type_line(session, "typed-after-restore")
    wait_line(report, "OK")
    assert "LINE typed-after-restore" in report.read_text().splitlines()


def test_shell_job_continues_on_the_restore_terminal(tmux: Tmux, tmp_path: Path) -> None:
    report, pid = _start_job(tmux, tmp_path)
    try:
        vzcpt("dump", "--shell-job", "-t", pid, "-o", tmp_path / "dump.img")
        tmux.wait_for("shell", "Killed")
        # Another terminal, of another size: the job must get it, and a SIGWINCH.
        tmux.new_session("again", "env PS1='again$ ' bash --norc --noprofile -i", cols=80, rows=20)
        tmux.wait_for("again", "again$ ")
        restore = _vzcpt_line("restore", "--shell-job", "-i", tmp_path / "dump.img")
        tmux.type_line("again", f"{restore}; echo restore-exit=$?")
        deadline = time.monotonic() + 15
        while pid not in all_processes():
            assert time.monotonic() < deadline, tmux.screen("again")
            time.sleep(0.05)
        _finish_job(tmux, "again", report, pid)
        tmux.wait_for("again", "restore-exit=0")
    finally:
        with_pid_killed(pid)


def test_shell_job_stopped_and_continued(tmux: Tmux, tmp_path: Path) -> None:
    """^Z stops the restored job and vzcpt with it, as the shell sees; fg resumes both."""
    report, pid = _start_job(tmux, tmp_path, "stopped-job")
    try:
        vzcpt("dump", "--shell-job", "-t", pid, "-o", tmp_path / "dump.img")
        tmux.wait_for("shell", "Killed")
        restore = _vzcpt_line("restore", "--shell-job", "-i", tmp_path / "dump.img")
        tmux.type_line("shell", restore)
        deadline = time.monotonic() + 15
        while pid not in all_processes() or all_processes()[pid].state == "t":
            assert time.monotonic() < deadline, tmux.screen("shell")
            time.sleep(0.05)
        time.sleep(0.3)
        tmux.send("shell", "C-z")
        tmux.wait_for("shell", "Stopped")
        assert all_processes()[pid].state == "T"
        tmux.type_line("shell", "fg")
        _finish_job(tmux, "shell", report, pid)
        tmux.type_line("shell", "echo fg-exit=$?")  # fg waits for vzcpt, which waits for the job
        tmux.wait_for("shell", "fg-exit=0")
    finally:
        with_pid_killed(pid)


def test_shell_job_leading_its_session(tmux: Tmux, tmp_path: Path) -> None:
    """A program tmux started as its terminal's session leader: restored by a vzcpt
    that leads a terminal's session, it takes that terminal over."""
    report = tmp_path / "job.report"
    report.touch()
    job = ["exec", sys.executable, str(SHELL_JOB), str(report), "leader"]
    tmux.new_session("leader", shlex.join(job))
    wait_line(report, "READY")
    pid = _pid_of(report)
    try:
        vzcpt("dump", "--shell-job", "-t", pid, "-o", tmp_path / "dump.img")
        # From a shell's terminal it cannot be: that terminal has its session.
        tmux.new_session("shell", "env PS1='sh$ ' bash --norc --noprofile -i")
        tmux.wait_for("shell", "sh$ ")
        restore = _vzcpt_line("restore", "--shell-job", "-i", tmp_path / "dump.img")
        tmux.type_line("shell", f"{restore}; echo restore-exit=$?")
        screen = tmux.wait_for("shell", "restore-exit=1")
        assert "controlling terminal of session" in screen and "Traceback" not in screen
        assert pid not in all_processes()
        # setsid -c: vzcpt leads a new session that takes the terminal, and hands it over.
        tmux.new_session("own", f"setsid -w -c {restore}; echo restore-exit=$?; sleep 60")
        deadline = time.monotonic() + 15
        while pid not in all_processes():
            assert time.monotonic() < deadline, tmux.screen("own")
            time.sleep(0.05)
        _finish_job(tmux, "own", report, pid)
        tmux.wait_for("own", "restore-exit=0")
    finally:
        with_pid_killed(pid)


def test_shell_job_needs_the_option_to_restore(tmux: Tmux, tmp_path: Path) -> None:
    report, pid = _start_job(tmux, tmp_path)
    try:
        vzcpt("dump", "--shell-job", "-t", pid, "-o", tmp_path / "dump.img")
        result = vzcpt("restore", "-i", tmp_path / "dump.img", check=False)
        assert result.returncode != 0 and "--shell-job" in result.stderr
        assert result.stderr.count("\n") == 1 and pid not in all_processes()
        # Standard input is no terminal: --shell-job has nothing to attach to.
        result = vzcpt("restore", "--shell-job", "-i", tmp_path / "dump.img", check=False)
        assert result.returncode != 0 and "not one" in result.stderr
        assert pid not in all_processes()
    finally:
        with_pid_killed(pid)


def with_pid_killed(pid: int) -> None:
    """A restored job is not our child: kill it by pid if it is still the job."""
    info = all_processes().get(pid)
    if info is not None and info.comm.startswith("python"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
