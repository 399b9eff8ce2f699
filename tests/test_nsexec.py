"""kernel/nsexec.py: work done in another process's namespaces, values and descriptors back."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from vzcpt.errors import VzcptError
from vzcpt.kernel.nsexec import descriptors_in_namespaces, in_namespace, in_namespaces


@pytest.fixture
def target() -> Iterator[int]:
    """A process in fresh network and pid namespaces (the pid of its `sleep`)."""
    proc = subprocess.Popen(["unshare", "--net", "--pid", "--fork", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while True:
            children = subprocess.run(
                ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
            ).stdout.split()
            if children:
                break
            assert time.monotonic() < deadline, "unshare did not start its child"
            time.sleep(0.02)
        yield int(children[0])
    finally:
        proc.kill()
        proc.wait()


def test_value_from_the_network_namespace(target: int) -> None:
    names = in_namespace(target, "net", lambda: socket.if_nameindex(), "list interfaces")
    assert [n for _, n in names] == ["lo"]


def test_pid_namespace_work_runs_inside_it(target: int) -> None:
    def nspids() -> list[str]:
        with open("/proc/self/status") as f:
            return next(line.split()[1:] for line in f if line.startswith("NSpid:"))

    assert len(in_namespaces(target, ("pid",), nspids, "read NSpid")) == 2


def test_descriptors_come_back(target: int) -> None:
    name = f"\0vzcpt-nsexec-{os.getpid()}".encode()

    def bind() -> list[int]:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(name)
        sock.listen(1)
        return [sock.detach(), os.open("/dev/null", os.O_RDONLY)]

    fds = descriptors_in_namespaces(target, ("net",), bind, "bind a socket")
    listener = socket.socket(fileno=fds[0])
    try:
        assert listener.getsockname() == name
        assert not os.get_inheritable(fds[0]) and os.readlink(f"/proc/self/fd/{fds[1]}") == (
            "/dev/null"
        )
        with socket.socket(socket.AF_UNIX) as here, pytest.raises(ConnectionRefusedError):
            here.connect(name)  # the name is the other namespace's, not ours
    finally:
        listener.close()
        os.close(fds[1])


def test_failures_are_one_line(target: int) -> None:
    def fail() -> None:
        raise VzcptError("no such\nthing")

    with pytest.raises(VzcptError, match="could not do it .*: no such thing$"):
        in_namespace(target, "net", fail, "do it")
    with pytest.raises(VzcptError, match="is gone"):
        in_namespace(2**22 + 1, "net", lambda: None, "do it")
