"""Terminals: Unix98 pty pairs held by the tree, and the terminal of a shell job.

Kernel interfaces: kernel/tty.py (termios2, window size, lock, packet and
exclusive modes, TIOCGPTN, TIOCGPTPEER, TIOCGSID/TIOCGPGRP, TIOCSTI) and
/proc/PID/stat (tty_nr: the controlling terminal). A pty is known by its
index N (/dev/pts/N) in the devpts instance at the programs' /dev/pts — the
host's for a plain tree, the VE's own for a VE.

A pair is saved once (TtyState, with the first of its descriptions): the
slave's settings (read through the master, which reaches them), window size,
lock, packet and exclusive modes, the session that has it as controlling
terminal and its foreground group, the node's owner, mode and times, and the
data queued both ways (ttyqueue.py). Its master must be in the tree. A slave
whose master is outside, or a console, is the terminal the tree was started
from: with --shell-job it is recorded as `external` (one such terminal at
most) and the restore puts its own terminal in its place; without, the dump
is refused. /dev/tty held open is saved as the terminal it stands for.

At restore (`open_terminals`, before the tree is built) every pair is made
again at its index — the master opened through the programs' ptmx, the
slaves through TIOCGPTPEER — its settings and queues put back, then locked
if it was. The descriptions wait in `ctx.extra` for the files stage; the
controlling terminals come back once the sessions exist (resources/ctty.py).
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from vzcpt.errors import SyscallFailed, Unsupported, VzcptError
from vzcpt.kernel import tty as ktty
from vzcpt.kernel.tty import PTY_SLAVE_MAJORS, TTYAUX_MAJOR
from vzcpt.proc import files as procfs
from vzcpt.proc.fdinfo import FdInfo
from vzcpt.proc.stat import ProcStat, parse_stat
from vzcpt.resources.context import DumpContext, RestoreContext
from vzcpt.resources.fds import FileDesc, TtyRecord, TtyState, ttyqueue

DEVPTS = "/dev/pts"
PTMX_PATHS = ("/dev/ptmx", "/dev/pts/ptmx")
VT_MAJOR = 4  # virtual consoles and serial lines
TTY_MAJORS = {VT_MAJOR, TTYAUX_MAJOR, *PTY_SLAVE_MAJORS}
SHELL_JOB_HINT = (
    "dump it with --shell-job, and restore it with --shell-job from the terminal it is "
    "to continue on"
)
VE_HINT = "start it in the VE with its input and output away from the caller's terminal"


def pty_number(rdev: int) -> int:
    """N of /dev/pts/N from the device number of a pty slave."""
    return (os.major(rdev) - PTY_SLAVE_MAJORS.start) * 256 + os.minor(rdev)


def is_pty_slave(rdev: int) -> bool:
    return os.major(rdev) in PTY_SLAVE_MAJORS


# --- dump ------------------------------------------------------------------------


@dataclass
class _Held:
    """A terminal description met in the tree, with our descriptor on it."""

    desc: FileDesc
    pid: int
    local: int


@dataclass
class _Pair:
    master: _Held | None = None
    slaves: list[_Held] = field(default_factory=list)


@dataclass
class _Seen:
    """The terminals met while dumping the descriptor tables (ctx.shared["tty"])."""

    pairs: dict[int, _Pair] = field(default_factory=dict)
    external: list[_Held] = field(default_factory=list)
    current: list[tuple[_Held, int]] = field(default_factory=list)  # /dev/tty, its tty
    devpts_dev: dict[int, int] = field(default_factory=dict)  # by the root's inode

    def devpts(self, pid: int) -> int:
        """st_dev of the devpts mounted at the programs' /dev/pts (-1 if none)."""
        root = procfs.stat(pid, "root").st_ino
        if root not in self.devpts_dev:
            try:
                self.devpts_dev[root] = procfs.stat(pid, "root" + DEVPTS).st_dev
            except FileNotFoundError:
                self.devpts_dev[root] = -1
        return self.devpts_dev[root]


def _seen(ctx: DumpContext) -> _Seen:
    seen = ctx.shared.setdefault("tty", _Seen())
    assert isinstance(seen, _Seen)
    return seen


class TtyHandler:
    kind = "tty"

    def claims(self, link: str, st: os.stat_result, local: int) -> bool:
        return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in TTY_MAJORS

    def dump(
        self,
        ctx: DumpContext,
        pid: int,
        fd: int,
        local: int,
        link: str,
        st: os.stat_result,
        info: FdInfo,
    ) -> FileDesc:
        where = f"process {pid}: descriptor {fd} is the terminal {link}"
        try:
            ktty.get_termios(local)
        except SyscallFailed as exc:
            raise Unsupported(f"{where}, which was hung up: vzcpt cannot save it") from exc
        seen = _seen(ctx)
        desc = FileDesc(
            id=0, kind=self.kind, flags=info.flags & ~os.O_CLOEXEC, path=link, rdev=st.st_rdev
        )
        held = _Held(desc, pid, local)
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        if (major, minor) == (TTYAUX_MAJOR, ktty.PTMX_MINOR):
            if link not in PTMX_PATHS or ktty.peer_device(local) != seen.devpts(pid):
                raise Unsupported(
                    f"{where}, a pty master of another devpts than the programs' {DEVPTS}: "
                    "vzcpt cannot checkpoint it"
                )
            desc.tty = TtyRecord("master", ktty.pty_index(local))
            seen.pairs.setdefault(desc.tty.index, _Pair()).master = held
        elif is_pty_slave(st.st_rdev) and st.st_dev == seen.devpts(pid):
            desc.tty = TtyRecord("slave", pty_number(st.st_rdev))
            seen.pairs.setdefault(desc.tty.index, _Pair()).slaves.append(held)
        elif (major, minor) == (TTYAUX_MAJOR, ktty.CURRENT_TTY_MINOR):
            ctty = parse_stat(procfs.read(pid, "stat")).tty_nr
            if not ctty:
                raise Unsupported(f"{where}, but it has no controlling terminal any more")
            desc.tty = TtyRecord("slave")  # which one is known once all are seen
            seen.current.append((held, ctty))
        else:
            desc.tty = TtyRecord("external")
            seen.external.append(held)
        return desc

    def open(self, ctx: RestoreContext, desc: FileDesc) -> int:
        fd = ctx.extra.get(("tty", desc.id))
        if not isinstance(fd, int):
            raise VzcptError(f"the terminal {desc.path} of the dump was not rebuilt")
        return fd


HANDLER = TtyHandler()


def finish_dump(ctx: DumpContext, pids: Iterable[int], zombies: set[int]) -> None:
    """Once every descriptor is known: pair the ptys, check that every terminal
    and controlling terminal is one the restore can give back, then save each
    pair's state and queues. Nothing is consumed before every check passed."""
    seen = ctx.shared.get("tty") or _Seen()
    assert isinstance(seen, _Seen)
    stats = {pid: parse_stat(procfs.read(pid, "stat")) for pid in pids}
    for index in [i for i, p in seen.pairs.items() if p.master is None]:
        for held in seen.pairs.pop(index).slaves:  # its master is outside the tree
            assert held.desc.tty is not None
            held.desc.tty.role, held.desc.tty.index = "external", -1
            seen.external.append(held)
    _resolve_current(seen)
    terminal = _the_external_terminal(ctx, seen)
    _check_controlling(ctx, stats, zombies, seen, terminal)
    closed = {index: _slave_closed(pair) for index, pair in seen.pairs.items()}
    for index, pair in sorted(seen.pairs.items()):
        assert pair.master is not None
        if not pair.slaves and not closed[index]:
            raise Unsupported(
                f"the pty master {pair.master.desc.path} (/dev/pts/{index}) in process "
                f"{pair.master.pid} has its slave open outside the tree, or not yet opened: "
                "vzcpt cannot checkpoint it"
            )
        session = ktty.session_of(pair.master.local)
        if session and session not in stats:
            raise Unsupported(
                f"/dev/pts/{index}, held by process {pair.master.pid}, is the controlling "
                f"terminal of session {session}, outside the tree: dump the whole session"
            )
    groups = {s.pgrp for s in stats.values()}
    for index, pair in sorted(seen.pairs.items()):
        assert pair.master is not None
        first = min([pair.master, *pair.slaves], key=lambda h: h.desc.id).desc
        assert first.tty is not None
        first.tty.state = _save_pair(ctx, pair.master.local, closed[index], groups)
    if terminal is not None:
        desc = min(seen.external, key=lambda h: h.desc.id).desc
        assert desc.tty is not None
        desc.tty.state = _save_external(ctx, terminal, stats, groups)


def _resolve_current(seen: _Seen) -> None:
    """/dev/tty stands for its holder's controlling terminal: a pair's slave, or
    the terminal outside."""
    for held, ctty in seen.current:
        assert held.desc.tty is not None
        pair = seen.pairs.get(pty_number(ctty)) if is_pty_slave(ctty) else None
        if pair is not None:
            held.desc.tty.index = pty_number(ctty)
            pair.slaves.append(held)
        else:
            held.desc.tty.role = "external"
            held.desc.rdev = ctty
            seen.external.append(held)


def _the_external_terminal(ctx: DumpContext, seen: _Seen) -> _Held | None:
    """The one terminal from outside the tree a shell job may hold."""
    if not seen.external:
        return None
    first = seen.external[0]
    if not ctx.shell_job:
        raise Unsupported(
            f"process {first.pid} holds the terminal {first.desc.path}, which belongs to "
            f"no pty of the tree (it was started from a terminal): {_hint(ctx)}"
        )
    for other in seen.external[1:]:
        if other.desc.rdev != first.desc.rdev:
            raise Unsupported(
                f"the tree holds two terminals from outside it ({first.desc.path} in process "
                f"{first.pid}, {other.desc.path} in process {other.pid}): a shell job has one"
            )
    return first


def _check_controlling(
    ctx: DumpContext,
    stats: dict[int, ProcStat],
    zombies: set[int],
    seen: _Seen,
    terminal: _Held | None,
) -> None:
    """Every controlling terminal is a pty of the tree, or the shell job's terminal."""
    outside: set[int] = set()
    for pid, st in stats.items():
        if not st.tty_nr or pid in zombies:
            continue
        if is_pty_slave(st.tty_nr) and pty_number(st.tty_nr) in seen.pairs:
            continue
        if terminal is not None and st.tty_nr == terminal.desc.rdev:
            continue
        if not ctx.shell_job:
            raise Unsupported(
                f"process {pid} has a controlling terminal outside the tree "
                f"({os.major(st.tty_nr)}:{os.minor(st.tty_nr)}): {_hint(ctx)}"
            )
        outside.add(st.tty_nr)
        if len(outside) > 1 or (terminal is not None and outside):
            raise Unsupported(
                f"process {pid} has another controlling terminal than the rest of the "
                "shell job: a shell job has one terminal"
            )


def _hint(ctx: DumpContext) -> str:
    """What to do about a terminal from outside: a VE has no shell jobs."""
    return VE_HINT if ctx.ids else SHELL_JOB_HINT


def _slave_closed(pair: _Pair) -> bool:
    """Did every holder close the slave? The master then polls as hung up."""
    assert pair.master is not None
    poller = select.poll()
    poller.register(pair.master.local, select.POLLIN)
    return any(ev & select.POLLHUP for _, ev in poller.poll(0))


def _saved_group(ctx: DumpContext, pgid: int, groups: set[int]) -> int:
    return ctx.saved_id(pgid) if pgid in groups else 0


def _save_pair(ctx: DumpContext, master: int, closed: bool, groups: set[int]) -> TtyState:
    """The pair behind `master` (our descriptor on the tree's), its queues taken
    and put back at once: the tree may run on."""
    termios = ktty.get_termios(master)
    locked = ktty.pty_locked(master)
    if locked:
        ktty.set_pty_locked(master, False)  # for a moment: our own slave needs it
    try:
        slave = ktty.open_peer(master, os.O_RDWR | os.O_NONBLOCK)
    finally:
        if locked:
            ktty.set_pty_locked(master, True)
    try:
        if ktty.line_discipline(slave) != ktty.N_TTY:
            index = ktty.pty_index(master)
            raise Unsupported(
                f"/dev/pts/{index} runs line discipline {ktty.line_discipline(slave)}, "
                "not the terminal one: vzcpt cannot checkpoint it"
            )
        node = os.fstat(slave)
        packet = ktty.packet_mode(master)
        state = TtyState(
            termios=termios,
            winsize=ktty.get_winsize(master),
            locked_termios=ktty.get_locked_termios(master),
            locked=locked,
            packet=packet,
            exclusive=ktty.exclusive(slave),
            slave_open=not closed,
            session=ctx.saved_id(ktty.session_of(master)),
            foreground=_saved_group(ctx, ktty.foreground_of(master), groups),
            mode=stat.S_IMODE(node.st_mode),
            uid=node.st_uid,
            gid=node.st_gid,
            atime_ns=node.st_atime_ns,
            mtime_ns=node.st_mtime_ns,
        )
        # The slave's readers first: reading it may let more input in, and its echo out.
        state.input = ttyqueue.take_input(slave, termios)
        try:
            state.output = ttyqueue.take_output(master, packet)
        finally:
            ttyqueue.put_back(master, slave, termios, state.input, state.output)
        os.utime(slave, ns=(state.atime_ns, state.mtime_ns))
    finally:
        os.close(slave)
    return state


def _save_external(
    ctx: DumpContext, terminal: _Held, stats: dict[int, ProcStat], groups: set[int]
) -> TtyState:
    """The settings of the shell job's terminal, and its session if that is in the tree."""
    state = TtyState(termios=ktty.get_termios(terminal.local), winsize=ktty.WinSize(0, 0))
    with contextlib.suppress(SyscallFailed):  # a serial line may have none
        state.winsize = ktty.get_winsize(terminal.local)
    holder = stats.get(terminal.pid)
    if holder is not None and holder.tty_nr == terminal.desc.rdev:
        if holder.session in stats:  # the tree's own session had it as controlling terminal
            state.session = ctx.saved_id(holder.session)
        state.foreground = _saved_group(ctx, holder.tpgid, groups)
    return state


# --- restore ---------------------------------------------------------------------


def pairs_of(files: Iterable[FileDesc]) -> dict[int, list[FileDesc]]:
    """The descriptions of each pty pair of the dump, by index."""
    pairs: dict[int, list[FileDesc]] = {}
    for desc in files:
        if desc.tty is not None and desc.tty.role != "external":
            pairs.setdefault(desc.tty.index, []).append(desc)
    return pairs


def state_of(descs: Iterable[FileDesc]) -> TtyState | None:
    return next((d.tty.state for d in descs if d.tty is not None and d.tty.state), None)


def check_restorable(fs_root: str, files: Iterable[FileDesc], shell_job: bool) -> None:
    """Before anything is made: every pty's number is free, a shell job is restored as one."""
    files = list(files)
    if any(d.tty is not None and d.tty.role == "external" for d in files) and not shell_job:
        raise VzcptError(
            "the tree was dumped with --shell-job (it holds the terminal it was started "
            "from): restore it with --shell-job, from the terminal it is to continue on"
        )
    for index, descs in sorted(pairs_of(files).items()):
        if state_of(descs) is None or not any(d.tty and d.tty.role == "master" for d in descs):
            raise VzcptError(f"the dump holds /dev/pts/{index} without its master or state")
        if os.path.lexists(f"{fs_root}{DEVPTS}/{index}"):
            raise VzcptError(
                f"/dev/pts/{index}, a pty of the dump, is in use here: restore once it is "
                "free (the programs know their terminal by its number)"
            )


def open_terminals(ctx: RestoreContext, files: Iterable[FileDesc]) -> None:
    """Make every pty pair of the dump again, as it was; and the shell job's terminal."""
    files = list(files)
    for index, descs in sorted(pairs_of(files).items()):
        _open_pair(ctx, index, descs)
    for desc in files:
        if desc.tty is not None and desc.tty.role == "external":
            # The restore's own terminal in place of the one the job was started on.
            fd = os.open("/proc/self/fd/0", _open_flags(desc) | os.O_NOCTTY | os.O_CLOEXEC)
            _keep(ctx, desc, fd)


def master_of(ctx: RestoreContext, index: int) -> int:
    """The restorer's descriptor on the master of pty `index` (after open_terminals)."""
    fd = ctx.local_fds[("tty-master", index)]
    return fd


def _open_pair(ctx: RestoreContext, index: int, descs: list[FileDesc]) -> None:
    state = state_of(descs)
    master_desc = next(d for d in descs if d.tty is not None and d.tty.role == "master")
    assert state is not None
    ptmx = ctx.host_path(master_desc.path)
    try:
        master = ktty.open_ptmx_at(ptmx, index, _open_flags(master_desc))
    except FileExistsError as exc:
        raise VzcptError(f"/dev/pts/{index} was taken while restoring") from exc
    ctx.local_fds[("tty-master", index)] = master
    _keep(ctx, master_desc, master)
    ktty.set_pty_locked(master, False)
    own = ktty.open_peer(master, os.O_RDWR | os.O_NONBLOCK)
    try:
        for desc in descs:
            if desc is not master_desc:
                _keep(ctx, desc, ktty.open_peer(master, _open_flags(desc)))
        ktty.set_winsize(master, state.winsize)  # no session yet: nobody gets SIGWINCH
        ktty.set_termios(master, state.termios)
        ttyqueue.put_back(master, own, state.termios, state.input, state.output)
        if state.locked_termios is not None:
            ktty.set_locked_termios(master, state.locked_termios)
        if state.packet:
            ktty.set_packet_mode(master, True)
        if state.exclusive:
            ktty.set_exclusive(own)
        os.fchown(own, state.uid, state.gid)
        os.fchmod(own, state.mode)
        os.utime(own, ns=(state.atime_ns, state.mtime_ns))
    finally:
        os.close(own)  # the last slave closed, if none was open at checkpoint
    if state.locked:
        ktty.set_pty_locked(master, True)


def _open_flags(desc: FileDesc) -> int:
    return desc.flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)


def _keep(ctx: RestoreContext, desc: FileDesc, fd: int) -> None:
    ctx.local_fds[("tty", desc.id)] = fd
    ctx.extra[("tty", desc.id)] = fd
