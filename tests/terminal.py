"""Terminals for tests: a private tmux server, and a client that types and reads.

`Tmux` runs its own server (on a socket in a directory of its own) so tests
never meet the user's or each other's sessions; `kill()` ends it and
everything on its terminals, and removes the socket. `Typist` talks to
something that relays a terminal over a socket (tests/programs/real/
ptyshell.py) and waits for text to appear.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PATIENCE = 15.0


class Tmux:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vzcpt-tmux-")
        self.socket = os.path.join(self.dir, "socket")

    def run(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, *args], capture_output=True, text=True, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def new_session(self, session: str, command: str, cols: int = 100, rows: int = 30) -> None:
        """A session whose pane runs `command` (through the default shell, as tmux does);
        the pane stays once its command has exited, for `screen`."""
        self.run("new-session", "-d", "-s", session, "-x", str(cols), "-y", str(rows))
        self.run("set-option", "-t", session, "remain-on-exit", "on")
        self.run("respawn-pane", "-k", "-t", session, command)

    def send(self, session: str, *keys: str) -> None:
        self.run("send-keys", "-t", session, *keys)

    def type_line(self, session: str, text: str) -> None:
        self.run("send-keys", "-t", session, "-l", text)
        self.run("send-keys", "-t", session, "Enter")

    def screen(self, session: str) -> str:
        return self.run("capture-pane", "-p", "-J", "-t", session)

    def tty(self, session: str) -> str:
        return self.run("display-message", "-p", "-t", session, "#{pane_tty}").strip()

    def wait_for(self, session: str, text: str, timeout: float = PATIENCE) -> str:
        deadline = time.monotonic() + timeout
        while text not in (screen := self.screen(session)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never showed on {session}:\n{screen}")
            time.sleep(0.1)
        return screen

    def kill(self) -> None:
        self.run("kill-server", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    server = Tmux()
    try:
        yield server
    finally:
        server.kill()


class Typist:
    """One connection to a relayed terminal: type, and read until text shows up."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.unread = b""  # come in, not yet returned by expect()

    def type(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def expect(self, text: str, timeout: float = PATIENCE) -> bytes:
        """Read until `text` comes; return everything up to it and consume that."""
        wanted = text.encode()
        deadline = time.monotonic() + timeout
        while wanted not in self.unread:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} never came; got {self.unread!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                raise AssertionError(f"closed before {text!r} came; got {self.unread!r}")
            self.unread += chunk
        end = self.unread.index(wanted) + len(wanted)
        got, self.unread = self.unread[:end], self.unread[end:]
        return got

    def expect_end(self, timeout: float = PATIENCE) -> None:
        """Read until the other side closes the connection."""
        self.sock.settimeout(timeout)
        while chunk := self.sock.recv(4096):
            self.unread += chunk

    def close(self) -> None:
        self.sock.close()


@contextmanager
def typist(path: str) -> Iterator[Typist]:
    t = Typist(path)
    try:
        yield t
    finally:
        t.close()
