"""The data a pty holds for its readers: taken at dump, put back exactly at restore.

A tty's queues cannot be read without being consumed, so the dump reads them
(the tree is frozen) and puts them back at once, as the restore will.

- For the slave's readers: what its line discipline already processed
  (input flags, erase and kill applied, echo done). In canonical mode whole
  lines are read one by one, each ending in its terminator (newline, VEOL,
  VEOL2; a line ended by end-of-file gets VEOF back); the line still being
  typed is only readable once the discipline is made non-canonical for a
  moment (n_tty: that makes everything buffered readable as it is).
- For the master's reader: what the slave wrote, output processing done. In
  packet mode every read starts with a status byte, dropped here.

Putting it back: TIOCSTI hands each byte to the line discipline at once, with
the slave's settings made quiet for the moment (no echo, no signals, no
input mapping, no editing characters; VEOF, VEOL and VEOL2 kept so that the
lines end where they ended), then the saved settings come back; IXON and
the start/stop characters are never touched, which would post packet-mode
events to the master's reader. A line discipline holds at most 4095 bytes:
beyond that the rest goes through the pty itself (output exactly; input is
then processed once more under the saved settings when its reader reads).
"""

from __future__ import annotations

import dataclasses
import os
import select
import termios

from vzcpt.errors import VzcptError
from vzcpt.kernel import tty
from vzcpt.kernel.tty import N_TTY_BUF_SIZE, Termios

CAPACITY = N_TTY_BUF_SIZE - 1
WRITE_PATIENCE = 5.0  # seconds: the queue was this big before, it has room again
_DISABLED = 0  # _POSIX_VDISABLE on Linux
_QUIET_CC = (
    termios.VINTR,
    termios.VQUIT,
    termios.VERASE,
    termios.VKILL,
    termios.VSUSP,
    termios.VREPRINT,
    termios.VDISCARD,
    termios.VWERASE,
    termios.VLNEXT,
)
_QUIET_IFLAG = (
    termios.BRKINT
    | termios.PARMRK
    | termios.ISTRIP
    | termios.INLCR
    | termios.IGNCR
    | termios.ICRNL
    | termios.IUCLC
    | termios.IXOFF
)
_QUIET_LFLAG = (
    termios.ISIG
    | termios.ECHO
    | termios.ECHOE
    | termios.ECHOK
    | termios.ECHONL
    | termios.ECHOCTL
    | termios.ECHOPRT
    | termios.ECHOKE
    | termios.FLUSHO
    | termios.PENDIN
)


def quiet(t: Termios) -> Termios:
    """Settings under which injected bytes land in the queue exactly as they are."""
    cc = bytearray(t.cc)
    for index in _QUIET_CC:
        cc[index] = _DISABLED
    return dataclasses.replace(
        t,
        iflag=t.iflag & ~_QUIET_IFLAG,
        oflag=t.oflag & ~termios.OPOST,
        lflag=t.lflag & ~_QUIET_LFLAG,
        cc=bytes(cc),
    )


def _line_ends(t: Termios) -> set[int]:
    ends = {ord("\n")}
    if t.cc[termios.VEOL] != _DISABLED:
        ends.add(t.cc[termios.VEOL])
    if t.cc[termios.VEOL2] != _DISABLED and t.lflag & termios.IEXTEN:
        ends.add(t.cc[termios.VEOL2])
    return ends


def take_input(slave: int, saved: Termios) -> bytes:
    """Everything queued for the slave's readers (`slave`: our own, non-blocking)."""
    if not saved.lflag & termios.ICANON:
        return _read_all(slave)
    ends = _line_ends(saved)
    lines: list[bytes] = []
    while (line := tty.read_line(slave)) is not None:
        if not line or line[-1] not in ends:
            line += bytes((saved.cc[termios.VEOF],))  # it was ended by end-of-file
        lines.append(line)
    cc = bytearray(saved.cc)
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    raw = dataclasses.replace(saved, lflag=saved.lflag & ~termios.ICANON, cc=bytes(cc))
    tty.set_termios(slave, raw)
    try:
        partial = _read_all(slave)
    finally:
        tty.set_termios(slave, saved)
    return b"".join(lines) + partial


def take_output(master: int, packet: bool) -> bytes:
    """Everything queued for the master's reader (`master`: the tree's description)."""
    chunks = []
    with tty.nonblocking(master):
        while chunk := tty.read_some(master)[0]:
            if packet:
                # A status packet is its status byte alone (it is lost); data follows a 0.
                chunk = chunk[1:] if chunk[0] == 0 else b""
            chunks.append(chunk)
    return b"".join(chunks)


def put_back(master: int, slave: int, saved: Termios, data_in: bytes, data_out: bytes) -> None:
    """Queue the data again, as it was taken; the slave's settings end as `saved`."""
    if not data_in and not data_out:
        return
    tty.set_termios(master, quiet(saved))
    try:
        tty.inject(slave, data_in[:CAPACITY])
        tty.inject(master, data_out[:CAPACITY])
        _write_all(slave, data_out[CAPACITY:])  # OPOST is off: reaches the master as it is
    finally:
        tty.set_termios(master, saved)
    _write_all(master, data_in[CAPACITY:])


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := tty.read_some(fd)[0]:
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        if not select.select([], [fd], [], WRITE_PATIENCE)[1]:
            raise VzcptError(f"a pty did not take back {len(view)} bytes of its queued data")
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            continue
