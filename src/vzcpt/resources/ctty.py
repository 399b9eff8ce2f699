"""Controlling terminals: each session gets its terminal and foreground group back.

Kernel interfaces: TIOCSCTTY and TIOCSPGRP, sent by the session leader itself
(injected): only a session leader without a controlling terminal may take one
— and its members have it only if they are forked after that — and only a
process of the session may choose the foreground group. Both are sent on the
pty's master, which the kernel applies to its slave (tty_jobctrl.c works on
the "real tty" behind a master), so even a locked pty needs no slave opened.

The dump side is in resources/fds/tty.py: per pty pair, the session that has
it and its foreground group (TIOCGSID/TIOCGPGRP on the master); a controlling
terminal it could not give back is refused there. A session whose leader is
gone has no controlling terminal (the kernel takes it away when the leader
exits), so every session to give one to has its leader among the stubs.

`acquire` is the tree builder's `on_session`: right after a leader's
setsid(), before its session's members are cloned. `set_foregrounds` runs
once the process groups exist. After both: every session that had a
controlling terminal has it again, with its foreground process group.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from vzcpt.errors import SyscallFailed, VzcptError
from vzcpt.inject.remote import RemoteTask
from vzcpt.kernel import nr
from vzcpt.kernel import tty as ktty
from vzcpt.resources.context import RestoreContext
from vzcpt.resources.fds import FileDesc, TtyState
from vzcpt.resources.fds.tty import master_of, pairs_of, state_of


@dataclass
class _Terminal:
    fd: int  # the restorer's descriptor on it (a pty's master, or the job's terminal)
    state: TtyState
    what: str
    steal: bool = False  # take it from the session that has it (the restorer's own)


class SessionTerminals:
    """The controlling terminal of each session of the dump, by session id."""

    def __init__(
        self, ctx: RestoreContext, files: Iterable[FileDesc], steal_external: bool = False
    ) -> None:
        self.ctx = ctx
        self.by_session: dict[int, _Terminal] = {}
        self.acquired: set[int] = set()
        files = list(files)
        for index, descs in sorted(pairs_of(files).items()):
            state = state_of(descs)
            if state is not None and state.session:
                fd = master_of(ctx, index)
                self.by_session[state.session] = _Terminal(fd, state, f"/dev/pts/{index}")
        for desc in files:
            state = desc.tty.state if desc.tty is not None and desc.tty.role == "external" else None
            if state is not None and state.session:  # a shell job's own session
                fd = ctx.extra[("tty", desc.id)]
                terminal = _Terminal(fd, state, "the job's terminal", steal_external)
                self.by_session[state.session] = terminal

    def acquire(self, sid: int, leader: RemoteTask) -> None:
        """The new session `sid` takes its controlling terminal, if it had one."""
        terminal = self.by_session.get(sid)
        if terminal is None:
            return
        remote = self.ctx.channel.install(leader, [terminal.fd])[0]
        what = f"TIOCSCTTY of {terminal.what} in session {sid}"
        try:
            leader.call(nr.IOCTL, remote, ktty.TIOCSCTTY, int(terminal.steal), what=what)
        except SyscallFailed as exc:
            if exc.errno != errno.EPERM:
                raise
            raise VzcptError(
                f"session {sid} of the dump cannot have {terminal.what} as its controlling "
                "terminal: another session has it"
            ) from exc
        leader.call(nr.CLOSE, remote, what="close of a passed terminal")
        self.acquired.add(sid)

    def set_foregrounds(self, tasks: dict[int, RemoteTask]) -> None:
        """Each terminal's foreground group as it was (the leader's own until now)."""
        for sid, terminal in self.by_session.items():
            leader = tasks.get(sid)
            if leader is None or sid not in self.acquired:
                raise VzcptError(
                    f"{terminal.what} was the controlling terminal of session {sid}, "
                    "which has no live leader in the dump"
                )
            group = terminal.state.foreground
            if not group or group == sid:
                continue
            remote = self.ctx.channel.install(leader, [terminal.fd])[0]
            address = leader.put(0, struct.pack("=i", group))
            what = f"TIOCSPGRP of {terminal.what} to group {group}"
            leader.call(nr.IOCTL, remote, ktty.TIOCSPGRP, address, what=what)
            leader.call(nr.CLOSE, remote, what="close of a passed terminal")
