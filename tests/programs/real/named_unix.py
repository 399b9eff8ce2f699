"""Named unix sockets across a checkpoint, checked from inside (a VE's programs).

    named_unix.py REPORT PATH ABSTRACT DGRAM LOG

A server listening on PATH (mode 0660) and on the abstract name ABSTRACT,
a datagram socket bound to DGRAM with two datagrams waiting, one bound to
LOG (mode 0666, as /dev/log: a file restore has to make anew), and a child
process connected to both listeners; each side of both connections has
data waiting. Writes READY; on SIGUSR1 (to the server, which passes it on)
both check names, waiting data, fresh connections by name, and write OK or
FAIL <why>.
"""

import os
import signal
import socket
import stat
import sys


def wait_usr1() -> None:
    while True:
        try:
            signal.sigwaitinfo({signal.SIGUSR1})
            return
        except InterruptedError:
            continue


def client(path: str, abstract: bytes, ready: socket.socket) -> int:
    """The child: connected to both listeners; checks its side after the restore."""
    by_path = socket.socket(socket.AF_UNIX)
    by_path.connect(path)
    by_abstract = socket.socket(socket.AF_UNIX)
    by_abstract.connect(abstract)
    by_path.sendall(b"hello-path")
    by_abstract.sendall(b"hello-abstract")
    ready.send(b"x")
    wait_usr1()
    problems = []
    if by_path.recv(100) != b"reply-path" or by_abstract.recv(100) != b"reply-abstract":
        problems.append("client: replies")
    if by_path.getpeername() != path:
        problems.append(f"client: peer name {by_path.getpeername()!r}")
    if by_abstract.getpeername() != abstract:
        problems.append(f"client: abstract peer name {by_abstract.getpeername()!r}")
    by_path.sendall(b"again")
    if problems:
        sys.stderr.write("; ".join(problems) + "\n")
    return 1 if problems else 0


def main() -> None:
    report_path, path, abstract_name, dgram_path, log_path = sys.argv[1:6]
    abstract = b"\0" + abstract_name.encode()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    by_path = socket.socket(socket.AF_UNIX)
    by_path.bind(path)
    os.chmod(path, 0o660)
    by_path.listen(5)
    by_abstract = socket.socket(socket.AF_UNIX)
    by_abstract.bind(abstract)
    by_abstract.listen(5)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(dgram_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"first", dgram_path)
        sender.sendto(b"second", dgram_path)
    log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    log.bind(log_path)
    os.chmod(log_path, 0o666)
    ready_r, ready_w = socket.socketpair()
    child = os.fork()
    if child == 0:
        ready_r.close()
        os._exit(client(path, abstract, ready_w))
    ready_w.close()
    ready_r.recv(1)
    accepted_path, _ = by_path.accept()
    accepted_abstract, _ = by_abstract.accept()
    accepted_path.sendall(b"reply-path")
    accepted_abstract.sendall(b"reply-abstract")
    with open(report_path, "a") as report:
        report.write("READY\n")
    wait_usr1()
    problems = []
    if accepted_path.recv(100) != b"hello-path":
        problems.append("data from the client by path")
    if accepted_abstract.recv(100) != b"hello-abstract":
        problems.append("data from the client by abstract name")
    os.kill(child, signal.SIGUSR1)  # only now: it then sends more on the same connection
    for sock, name in (
        (by_path, path),
        (by_abstract, abstract),
        (accepted_path, path),
        (accepted_abstract, abstract),
        (dgram, dgram_path),
    ):
        if sock.getsockname() != name:
            problems.append(f"name {sock.getsockname()!r}, want {name!r}")
    for name, mode in ((path, 0o660), (log_path, 0o666)):
        if stat.S_IMODE(os.stat(name).st_mode) != mode:
            problems.append(f"{name} has mode {stat.S_IMODE(os.stat(name).st_mode):o}")
    if log.getsockname() != log_path:
        problems.append(f"log socket name {log.getsockname()!r}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"logged", log_path)
    if log.recv(100) != b"logged":
        problems.append("the log socket")
    dgram.setblocking(False)
    try:
        if [dgram.recv(100), dgram.recv(100)] != [b"first", b"second"]:
            problems.append("waiting datagrams")
    except BlockingIOError:
        problems.append("waiting datagrams are gone")
    for listener, name in ((by_path, path), (by_abstract, abstract)):
        fresh = socket.socket(socket.AF_UNIX)
        fresh.connect(name)
        server_side, _ = listener.accept()
        fresh.sendall(b"new")
        if server_side.recv(10) != b"new":
            problems.append(f"a new connection to {name!r}")
    if accepted_path.recv(100) != b"again":
        problems.append("the client's connection after the restore")
    _, status = os.waitpid(child, 0)
    if status != 0:
        problems.append(f"the client failed ({status:#x})")
    with open(report_path, "a") as report:
        report.write("OK\n" if not problems else f"FAIL {', '.join(problems)}\n")
    sys.exit(0 if not problems else 1)


if __name__ == "__main__":
    main()
