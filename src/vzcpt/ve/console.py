"""`vzctl enter`: a shell on a terminal of the VE's own, relayed to the caller's.

The pty comes from the VE's devpts instance: the host opens the VE's
/dev/pts/ptmx through /proc/<init>/root, so the slave is /dev/pts/N inside
the VE, where `tty` finds it. The command runs as the leader of a new
session whose controlling terminal is that slave (job control, ^C, ^Z work
inside). The caller's terminal is put in raw mode and bytes are relayed both
ways; a change of its window size (SIGWINCH) is passed on to the pty. As
OpenVZ's vzctl enter, lxc-attach and nsenter with a pty do.

The relay ends when the command has exited and its terminal is closed or
quiet: a job left running in the background does not hold the caller.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
from collections.abc import Callable

from vzcpt.kernel import tty as ktty

STDIN, STDOUT = 0, 1
LINGER = 0.2  # seconds of quiet after the command exits before the relay ends


def run_on_pty(argv: list[str], ptmx: str, prepare: Callable[[], None], cwd: str = "/") -> int:
    """Run `argv` on a new pty of `ptmx`'s devpts, relayed to our terminal; its status."""
    master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        ktty.set_pty_locked(master, False)
        slave = ktty.open_peer(master, os.O_RDWR)
        with contextlib.suppress(OSError):
            ktty.set_winsize(master, ktty.get_winsize(STDIN))
        child = os.fork()
        if child == 0:
            _become_command(argv, slave, prepare, cwd)
        os.close(slave)
        with ktty.raw_mode(STDIN):
            status = _relay(master, child)
        return _status(status if status is not None else os.waitpid(child, 0)[1])
    finally:
        os.close(master)


def _become_command(argv: list[str], slave: int, prepare: Callable[[], None], cwd: str) -> None:
    """In the child: lead a session on the slave, then exec. Never returns."""
    try:
        os.setsid()
        ktty.take_controlling(slave)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        os.chdir(cwd)
        prepare()
        os.execvp(argv[0], argv)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(2, f"vzctl: cannot run {argv[0]}: {exc}\r\n".encode())
    finally:
        os._exit(127)


def _relay(master: int, child: int) -> int | None:
    """Relay until the command is done; its wait status if this reaped it."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wake_w)
    # A byte on wake_r is all these handlers are for: a resize, or the command's exit.
    old_winch = signal.signal(signal.SIGWINCH, lambda *_: None)
    old_chld = signal.signal(signal.SIGCHLD, lambda *_: None)
    sources = [STDIN, master, wake_r]
    status: int | None = None
    try:
        while True:
            if status is None:
                pid, wait_status = os.waitpid(child, os.WNOHANG)
                status = wait_status if pid else None
            ready, _, _ = select.select(sources, [], [], LINGER if status is not None else None)
            if not ready:
                return status  # the command is gone and its terminal is quiet
            if wake_r in ready:
                os.read(wake_r, 64)
                with contextlib.suppress(OSError):
                    ktty.set_winsize(master, ktty.get_winsize(STDIN))
            if STDIN in ready:
                data = os.read(STDIN, 4096)
                if data:
                    _write_all(master, data)
                else:
                    sources.remove(STDIN)  # our input ended: the command's output goes on
            if master in ready:
                try:
                    data = os.read(master, 4096)
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    return status  # every holder of the slave closed it
                _write_all(STDOUT, data)
    finally:
        signal.signal(signal.SIGCHLD, old_chld)
        signal.signal(signal.SIGWINCH, old_winch)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _status(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)
