"""A shell job: the restored tree continues on the terminal the restore runs on.

`vzcpt dump --shell-job` saves a tree started from a shell whose terminal is
outside it; `vzcpt restore --shell-job` puts the restore's own terminal (its
standard input) in the place of that terminal:

- `check`: standard input is a terminal. If the tree's own session had the
  job's terminal as controlling terminal (its root was started directly on
  the terminal as a session leader, e.g. by tmux or sshd), the restore's
  terminal must be one it can take: nobody's, or that of a session the
  restorer leads, which hands it over (`tmux new-session 'vzcpt restore
  --shell-job ...'`, `setsid -w -c vzcpt restore --shell-job ...`). The
  terminal of another session, e.g. of the shell the restore runs in, is
  refused: a terminal belongs to one session.
- `hand_over`, while the tree is still stopped: the job's saved terminal
  settings are applied (an editor left the terminal raw: it still is);
  when the tree lives in the restorer's session (a job of a shell, the usual
  case), its process group becomes the terminal's foreground group; a window
  size other than the saved one is announced to that group with SIGWINCH.
- `wait`: vzcpt restore stays, as the job's stand-in for the shell, until the
  root exits, and exits with its status. If the job stops (^Z), vzcpt takes
  the terminal back and stops too, so the shell sees its job stopped; `fg`
  or `bg` continue vzcpt, which continues the job (in the foreground if it is).

CRIU's --shell-job makes the restored tree join criu's own process group so
that the shell's job control reaches it. vzcpt keeps the tree's group ids as
they were (the programs may know them: a shell in the tree checks its own
group against the terminal's) and relays job control instead, as sudo does.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

from vzcpt.errors import VzcptError
from vzcpt.kernel import tty as ktty
from vzcpt.resources.fds import FileDesc, TtyState
from vzcpt.resources.task_record import ProcessRecord

TERMINAL = 0  # the restore's standard input


def job_terminal(files: Iterable[FileDesc]) -> TtyState | None:
    """The saved state of the terminal the job was started on, if it held it."""
    return next(
        (
            d.tty.state
            for d in files
            if d.tty is not None and d.tty.role == "external" and d.tty.state
        ),
        None,
    )


def check(files: Iterable[FileDesc]) -> bool:
    """May the job run on our terminal? True if its session takes it from our own."""
    if not ktty.is_tty(TERMINAL):
        raise VzcptError("--shell-job restores onto a terminal: standard input is not one")
    state = job_terminal(files)
    if state is None or not state.session:
        return False
    owner = ktty.session_of_terminal(TERMINAL)
    if owner and owner != os.getpid():
        raise VzcptError(
            f"process {state.session} of the dump led a session on its terminal, and this "
            f"terminal is the controlling terminal of session {owner}: restore from a "
            "terminal of its own (tmux new-session 'vzcpt restore --shell-job ...', "
            "setsid -w -c vzcpt restore --shell-job ...)"
        )
    return owner == os.getpid()


def hand_over(procs: list[ProcessRecord], root: int, files: Iterable[FileDesc]) -> None:
    """Give the terminal to the restored job, which has not run yet."""
    state = job_terminal(files)
    if state is not None:
        ktty.set_termios(TERMINAL, state.termios)
    pids = {p.pid for p in procs}
    rec = next(p for p in procs if p.pid == root)
    foreground = 0
    if rec.sid not in pids and ktty.session_of_terminal(TERMINAL) == os.getsid(0):
        groups = {p.pgid for p in procs if p.pgid in pids}
        if state is not None and state.foreground in groups:
            foreground = state.foreground
        elif rec.pgid in groups:
            foreground = rec.pgid
        if foreground:
            ktty.set_foreground(TERMINAL, foreground)
    elif state is not None and state.session:
        foreground = state.foreground or state.session
    if state is not None and foreground and state.winsize != ktty.get_winsize(TERMINAL):
        os.killpg(foreground, signal.SIGWINCH)


def wait(root: int) -> int:
    """Stay until the job's root exits; return the status for vzcpt to exit with."""
    own = os.getpgrp()
    in_shell = os.getsid(0) != os.getpid()  # else nobody would continue a stopped vzcpt
    while True:
        _, status = os.waitpid(root, os.WUNTRACED)
        if os.WIFSTOPPED(status):
            if in_shell:
                _stop_with(root, own)
            continue
        _take_back(own)
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status)


def _stop_with(root: int, own: int) -> None:
    """The job stopped: stop as well, for the shell; continue it when continued."""
    job = os.getpgid(root)
    _take_back(own)
    os.kill(os.getpid(), signal.SIGSTOP)
    if _foreground() == own:  # fg, not bg
        ktty.set_foreground(TERMINAL, job)
    os.killpg(job, signal.SIGCONT)


def _foreground() -> int:
    try:
        return os.tcgetpgrp(TERMINAL)
    except OSError:
        return 0


def _take_back(own: int) -> None:
    if ktty.session_of_terminal(TERMINAL) == os.getsid(0) and _foreground() != own:
        ktty.set_foreground(TERMINAL, own)
