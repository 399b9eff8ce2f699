"""Terminals: the ioctls of ttys and of Unix98 pseudo-terminal pairs.

Kernel interfaces (tty_ioctl(4), drivers/tty/tty_io.c, tty_jobctrl.c, pty.c):
- TCGETS2/TCSETS2 (struct termios2: flags, line discipline, c_cc, speeds),
  TIOCGLCKTRMIOS/TIOCSLCKTRMIOS (the locked bits), TIOCGWINSZ/TIOCSWINSZ,
  TIOCGETD (the line discipline). On a pty master these act on the slave's
  settings, so the restorer never needs the slave open to read or set them.
- TIOCGPTN (a master's index: /dev/pts/N), TIOCGPTLCK/TIOCSPTLCK (the lock
  that keeps the slave from being opened), TIOCGPKT/TIOCPKT (packet mode),
  TIOCGEXCL/TIOCEXCL (exclusive mode), TIOCGPTPEER (open the slave of a
  master, O_PATH even while locked).
- TIOCGSID/TIOCGPGRP on a master: the session whose controlling terminal
  the slave is, and its foreground process group, as pids of our namespace.
- TIOCSTI: one byte handed straight to a tty's line discipline, as if it had
  arrived — synchronously, unlike a write to the other side of a pty, whose
  bytes are processed later by a kernel worker. Needs CAP_SYS_ADMIN for a
  tty that is not our controlling terminal.
- TIOCSCTTY/TIOCSPGRP, sent by the restored processes themselves (injected).

The index of a new pty is the lowest free one of its devpts instance:
`open_ptmx_at` opens ptmx until it gets the wanted one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios
from collections.abc import Iterator
from dataclasses import dataclass

from vzcpt.errors import SyscallFailed

TCGETS2 = 0x802C542A
TCSETS2 = 0x402C542B
TIOCGLCKTRMIOS = 0x5456
TIOCSLCKTRMIOS = 0x5457
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414
TIOCSTI = 0x5412
TIOCSCTTY = 0x540E
TIOCGPGRP = 0x540F
TIOCSPGRP = 0x5410
TIOCGSID = 0x5429
TIOCGETD = 0x5424
TIOCEXCL = 0x540C
TIOCGEXCL = 0x80045440
TIOCPKT = 0x5420
TIOCGPKT = 0x80045438
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
TIOCGPTLCK = 0x80045439
TIOCGPTPEER = 0x5441

N_TTY = 0
NCCS = 19  # the kernel's c_cc (struct termios2), not glibc's 32
N_TTY_BUF_SIZE = 4096  # a line discipline holds at most this minus one byte

# Device majors (Documentation/admin-guide/devices.txt).
TTYAUX_MAJOR = 5  # 5:0 /dev/tty, 5:1 /dev/console, 5:2 /dev/ptmx
PTMX_MINOR = 2
CURRENT_TTY_MINOR = 0
PTY_SLAVE_MAJORS = range(136, 144)

_TERMIOS2 = struct.Struct("=IIIIB19sII")
_TERMIOS = struct.Struct("=IIIIB19s")  # locked termios: no speeds
_WINSIZE = struct.Struct("=HHHH")
_INT = struct.Struct("=i")


@dataclass(frozen=True)
class Termios:
    """struct termios2: what `stty -a` shows, line discipline and speeds included."""

    iflag: int
    oflag: int
    cflag: int
    lflag: int
    line: int
    cc: bytes  # NCCS control characters, indexed by termios.V*
    ispeed: int = 0
    ospeed: int = 0


@dataclass(frozen=True)
class WinSize:
    rows: int
    cols: int
    xpixel: int = 0
    ypixel: int = 0


def _ioctl(fd: int, request: int, arg: bytes | int, what: str) -> bytes | int:
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        raise SyscallFailed(what, exc.errno or errno.EIO) from exc


def _get_int(fd: int, request: int, what: str) -> int:
    out = _ioctl(fd, request, bytes(_INT.size), what)
    assert isinstance(out, bytes)
    return int(_INT.unpack(out)[0])


def _set_int(fd: int, request: int, value: int, what: str) -> None:
    _ioctl(fd, request, _INT.pack(value), what)


def is_tty(fd: int) -> bool:
    return os.isatty(fd)


def get_termios(fd: int) -> Termios:
    out = _ioctl(fd, TCGETS2, bytes(_TERMIOS2.size), "TCGETS2")
    assert isinstance(out, bytes)
    return Termios(*_TERMIOS2.unpack(out))


def set_termios(fd: int, t: Termios) -> None:
    """Set at once (no draining: a pty's output never drains while its reader is frozen)."""
    packed = _TERMIOS2.pack(t.iflag, t.oflag, t.cflag, t.lflag, t.line, t.cc, t.ispeed, t.ospeed)
    _ioctl(fd, TCSETS2, packed, "TCSETS2")


def get_locked_termios(fd: int) -> Termios:
    out = _ioctl(fd, TIOCGLCKTRMIOS, bytes(_TERMIOS.size), "TIOCGLCKTRMIOS")
    assert isinstance(out, bytes)
    return Termios(*_TERMIOS.unpack(out))


def set_locked_termios(fd: int, t: Termios) -> None:
    packed = _TERMIOS.pack(t.iflag, t.oflag, t.cflag, t.lflag, t.line, t.cc)
    _ioctl(fd, TIOCSLCKTRMIOS, packed, "TIOCSLCKTRMIOS")


def get_winsize(fd: int) -> WinSize:
    out = _ioctl(fd, TIOCGWINSZ, bytes(_WINSIZE.size), "TIOCGWINSZ")
    assert isinstance(out, bytes)
    return WinSize(*_WINSIZE.unpack(out))


def set_winsize(fd: int, w: WinSize) -> None:
    _ioctl(fd, TIOCSWINSZ, _WINSIZE.pack(w.rows, w.cols, w.xpixel, w.ypixel), "TIOCSWINSZ")


def line_discipline(fd: int) -> int:
    return _get_int(fd, TIOCGETD, "TIOCGETD")


def pty_index(master: int) -> int:
    return _get_int(master, TIOCGPTN, "TIOCGPTN")


def pty_locked(master: int) -> bool:
    return bool(_get_int(master, TIOCGPTLCK, "TIOCGPTLCK"))


def set_pty_locked(master: int, locked: bool) -> None:
    _set_int(master, TIOCSPTLCK, int(locked), "TIOCSPTLCK")


def packet_mode(master: int) -> bool:
    return bool(_get_int(master, TIOCGPKT, "TIOCGPKT"))


def set_packet_mode(master: int, on: bool) -> None:
    _set_int(master, TIOCPKT, int(on), "TIOCPKT")


def exclusive(fd: int) -> bool:
    return bool(_get_int(fd, TIOCGEXCL, "TIOCGEXCL"))


def set_exclusive(fd: int) -> None:
    _ioctl(fd, TIOCEXCL, 0, "TIOCEXCL")


def session_of(master: int) -> int:
    """The session (a pid of our namespace) whose controlling terminal this pty is; 0 if none."""
    try:
        return _get_int(master, TIOCGSID, "TIOCGSID")
    except SyscallFailed as exc:
        if exc.errno == errno.ENOTTY:  # no session owns it
            return 0
        raise


def foreground_of(master: int) -> int:
    """The pty's foreground process group (a pid of our namespace); 0 if none."""
    return _get_int(master, TIOCGPGRP, "TIOCGPGRP")


def open_peer(master: int, flags: int) -> int:
    """A new open file description of the master's slave (close-on-exec, never our ctty)."""
    fd = _ioctl(master, TIOCGPTPEER, flags | os.O_NOCTTY | os.O_CLOEXEC, "TIOCGPTPEER")
    assert isinstance(fd, int)
    return fd


def peer_device(master: int) -> int:
    """st_dev of the devpts instance the master's slave lives in."""
    fd = open_peer(master, os.O_PATH)
    try:
        return os.fstat(fd).st_dev
    finally:
        os.close(fd)


def inject(fd: int, data: bytes) -> None:
    """Hand `data` to the tty's line discipline byte by byte (TIOCSTI), as if received."""
    for byte in data:
        _ioctl(fd, TIOCSTI, bytes((byte,)), "TIOCSTI")


def open_ptmx_at(ptmx: str, index: int, flags: int) -> int:
    """Open a new pty master with exactly this index, or raise FileExistsError.

    devpts hands out the lowest free index: the masters opened on the way to
    `index` hold the lower free ones and are closed once we have it.
    """
    spare: list[int] = []
    try:
        for _ in range(index + 1):
            fd = os.open(ptmx, flags | os.O_NOCTTY | os.O_CLOEXEC)
            got = pty_index(fd)
            if got == index:
                return fd
            spare.append(fd)
            if got > index:
                break
        raise FileExistsError(errno.EEXIST, f"pty {index} is in use", ptmx)
    finally:
        for fd in spare:
            os.close(fd)


def read_some(fd: int) -> tuple[bytes, bool]:
    """One read of what a tty has for its reader, never blocking (the description
    must be non-blocking): b"" once there is nothing, and True with it if the tty
    reported EIO (a pty master whose slave is closed) rather than emptiness."""
    try:
        return os.read(fd, 1 << 16), False  # b"": non-canonical with VMIN = VTIME = 0
    except BlockingIOError:
        return b"", False
    except OSError as exc:
        if exc.errno == errno.EIO:
            return b"", True
        raise


def read_line(fd: int) -> bytes | None:
    """One line of a canonical tty (b"" for an end-of-file on an empty line);
    None once no complete line is left. The descriptor must be non-blocking."""
    try:
        return os.read(fd, N_TTY_BUF_SIZE)
    except BlockingIOError:
        return None


@contextlib.contextmanager
def nonblocking(fd: int) -> Iterator[None]:
    """O_NONBLOCK on a shared description for a moment (the tree is frozen)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        yield
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


@contextlib.contextmanager
def sigttou_blocked() -> Iterator[None]:
    """tcsetpgrp() from a background group stops the caller unless SIGTTOU is blocked."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def take_controlling(fd: int) -> None:
    """Make the tty on `fd` our controlling terminal (we lead a session without one)."""
    _ioctl(fd, TIOCSCTTY, 0, "TIOCSCTTY")


def set_foreground(fd: int, pgid: int) -> None:
    with sigttou_blocked():
        try:
            os.tcsetpgrp(fd, pgid)
        except OSError as exc:
            raise SyscallFailed(f"tcsetpgrp({pgid})", exc.errno or errno.EIO) from exc


def session_of_terminal(fd: int) -> int:
    """The session whose controlling terminal the tty on `fd` is (TIOCGSID works
    on our own controlling terminal only); 0 when it is not ours or nobody's."""
    try:
        return _get_int(fd, TIOCGSID, "TIOCGSID")
    except SyscallFailed:
        return 0


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The terminal on `fd` passes every byte through (as `ssh` and `vzctl enter` set
    the caller's terminal), and gets its settings back afterwards."""
    saved = termios.tcgetattr(fd)
    raw = termios.tcgetattr(fd)
    raw[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR)
    raw[0] &= ~(termios.IGNCR | termios.ICRNL | termios.IXON)
    raw[1] &= ~termios.OPOST
    raw[2] = (raw[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    raw[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    raw[6][termios.VMIN] = 1
    raw[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSAFLUSH, raw)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
