"""Terminals of VEs: ptys of the VE's own devpts across vzctl chkpnt/restore, and
vzctl enter on a pty of the VE."""

from __future__ import annotations

import shlex
import shutil
import time

from harness import build
from terminal import Tmux
from vehost import VZCTL, Host


def test_ptys_of_a_ve_survive_chkpnt(host: Host) -> None:
    """pty_pair (settings, modes, queued data) and pty_session (controlling terminal,
    foreground group) run inside a VE, on ptys of its devpts; checked from inside."""
    veid = host.new_veid()
    host.vzctl("create", veid)
    host.vzctl("start", veid)
    root = host.paths.private(veid) / "root"
    programs = ("pty_pair", "pty_session")
    for name in programs:
        shutil.copy(build(name), root / name)
    start = "setsid /root/{0} /root/{0}.report </dev/null >/dev/null 2>&1 &"
    host.vzctl("exec", veid, " ".join(start.format(name) for name in programs))
    reports = [root / f"{name}.report" for name in programs]

    def wait_for(word: str) -> None:
        deadline = time.monotonic() + 15
        while not all(r.exists() and word in r.read_text() for r in reports):
            assert time.monotonic() < deadline, [r.read_text() for r in reports if r.exists()]
            assert not any(r.exists() and "FAIL" in r.read_text() for r in reports)
            time.sleep(0.1)

    wait_for("READY")
    ptys = host.vzctl("exec", veid, "ls /dev/pts").stdout.split()
    host.vzctl("chkpnt", veid)
    host.vzctl("restore", veid)
    assert host.vzctl("exec", veid, "ls /dev/pts").stdout.split() == ptys
    host.vzctl("exec", veid, "pkill -USR1 -x pty_pair; pkill -USR1 -x pty_session")
    wait_for("OK")
    assert all(r.read_text().splitlines()[-1] == "OK" for r in reports)


def test_enter_gives_a_pty_of_the_ve(host: Host, tmux: Tmux) -> None:
    veid = host.new_veid()
    host.vzctl("create", veid, "--hostname", "inside")
    host.vzctl("start", veid)
    enter = shlex.join([*VZCTL, "enter", str(veid)])
    tmux.new_session(
        "enter", f"VZCPT_ROOT={host.root} {enter}; echo enter-exit=$?; sleep 60", cols=100, rows=30
    )
    tmux.wait_for("enter", "entered into VE")
    tmux.type_line("enter", "echo tty=$(tty) size=$(stty size) host=$(hostname)")
    screen = tmux.wait_for("enter", "host=inside")
    line = next(ln for ln in screen.splitlines() if ln.startswith("tty="))
    name = line.split()[0].removeprefix("tty=")
    assert name.startswith("/dev/pts/") and "size=30 100" in line, line
    # The slave is the VE's own: its devpts lists it, from inside.
    listed = host.vzctl("exec", veid, "ls /dev/pts").stdout.split()
    assert name.removeprefix("/dev/pts/") in listed
    tmux.run("resize-window", "-t", "enter", "-x", "90", "-y", "25")
    time.sleep(0.5)
    tmux.type_line("enter", "echo now=$(stty size)")
    tmux.wait_for("enter", "now=25 90")
    tmux.type_line("enter", "sleep 30")
    time.sleep(0.5)
    tmux.send("enter", "C-c")  # the VE's terminal sends SIGINT to its foreground job
    tmux.type_line("enter", "echo interrupted; exit 3")
    screen = tmux.wait_for("enter", "enter-exit=3")
    assert "exited from VE" in screen
