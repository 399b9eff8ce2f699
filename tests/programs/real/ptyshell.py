"""An interactive shell on a pty, driven through the master by whoever connects.

    ptyshell.py REPORT SOCKET

Starts `bash -i` on the slave of a new pty (bash leads its own session, with
the pty as controlling terminal). Listens on the unix socket SOCKET: one
client at a time gets everything the master reads, and what it sends is
written to the master, as a terminal emulator would. While nobody is
connected the master is not read, so the shell's output waits in the pty.
Reports READY once listening, IDLE each time it waits for a client, DONE
when the shell exits. Uses select(), nothing else.
"""

import errno
import fcntl
import os
import select
import socket
import sys
import termios

BASH_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "TERM": "dumb",
    "PS1": "vz$ ",
    "HISTFILE": "",
    "INPUTRC": "/dev/null",
}


def main() -> None:
    report_path, socket_path = sys.argv[1], sys.argv[2]

    def say(line: str) -> None:
        with open(report_path, "a") as report:
            report.write(line + "\n")

    master, slave = os.openpty()
    shell = os.fork()
    if shell == 0:
        os.close(master)
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        os.closerange(3, 1024)
        os.execve("/bin/bash", ["bash", "--norc", "--noprofile", "-i"], BASH_ENV)
    os.close(slave)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(1)
    say("READY")
    while True:
        say("IDLE")
        client, _ = listener.accept()
        if not relay(master, client):
            break
    os.waitpid(shell, 0)
    say("DONE")


def relay(master: int, client: socket.socket) -> bool:
    """Until the client leaves (True) or the shell's side closes (False)."""
    with client:
        while True:
            ready, _, _ = select.select([master, client], [], [])
            if master in ready:
                try:
                    data = os.read(master, 4096)
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    return False
                try:
                    client.sendall(data)
                except BrokenPipeError:
                    return True
            if client in ready:
                data = client.recv(4096)
                if not data:
                    return True
                os.write(master, data)


if __name__ == "__main__":
    main()
