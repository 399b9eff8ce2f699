"""A job on a terminal: started from a shell (or as a terminal's session leader).

    shell_job.py REPORT job|stopped-job|leader

Sets its own terminal settings (no echo, VINTR ^G), writes READY and waits
for SIGUSR1. Then checks, on whatever terminal it now runs: standard input,
output and error are that terminal; its settings are the ones it set (not
for a `stopped-job`: a shell gives a job continued with `fg` the terminal
as the shell had it); its process group is the terminal's foreground group;
as a job it is not a session leader and the terminal is its session's, as
`leader` it leads the session the terminal belongs to; a change of window
size came with SIGWINCH.
It reports `TTY <name>` and `WAITING`, reads one line typed on the terminal,
reports `LINE <line>` and OK.
"""

import fcntl
import os
import signal
import struct
import sys
import termios

TIOCGSID = 0x5429


def main() -> None:
    report_path, mode = sys.argv[1], sys.argv[2]

    def say(line: str) -> None:
        with open(report_path, "a") as report:
            report.write(line + "\n")

    def fail(why: str) -> None:
        say(f"FAIL {why}")
        sys.exit(1)

    winch = []
    signal.signal(signal.SIGWINCH, lambda *_: winch.append(1))
    settings = termios.tcgetattr(0)
    settings[3] &= ~termios.ECHO
    settings[6][termios.VINTR] = b"\x07"
    termios.tcsetattr(0, termios.TCSANOW, settings)
    settings = termios.tcgetattr(0)
    size = fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    say("READY")
    while True:
        try:
            signal.sigwait({signal.SIGUSR1})
            break
        except InterruptedError:
            continue

    name = os.ttyname(0)
    if not all(os.isatty(fd) and os.ttyname(fd) == name for fd in (0, 1, 2)):
        fail("standard input, output and error are not one terminal")
    if mode != "stopped-job" and termios.tcgetattr(0) != settings:
        fail(f"terminal settings {termios.tcgetattr(0)} instead of {settings}")
    if os.tcgetpgrp(0) != os.getpgrp():
        fail(f"foreground group {os.tcgetpgrp(0)}, mine {os.getpgrp()}")
    sid = struct.unpack("i", fcntl.ioctl(0, TIOCGSID, bytes(4)))[0]
    if sid != os.getsid(0):
        fail(f"the terminal belongs to session {sid}, mine is {os.getsid(0)}")
    if (os.getsid(0) == os.getpid()) != (mode == "leader"):
        fail(f"session {os.getsid(0)}, pid {os.getpid()}, as a {mode}")
    if fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)) != size and not winch:
        fail("the window size changed without SIGWINCH")
    say(f"TTY {name}")
    say("WAITING")
    line = sys.stdin.buffer.readline()
    say(f"LINE {line.decode(errors='replace').rstrip()}")
    say("OK")


if __name__ == "__main__":
    main()
