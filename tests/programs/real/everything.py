"""A server that holds every kind of descriptor at once, all in one epoll loop.

    everything.py REPORT HOST PORT WATCHDIR [LAST|- [QUEUE [UNIXPATH]]]

The server listens on HOST:PORT (TCP) and answers one command per line from
each client it accepts. Its epoll instance watches, besides the listener and
the connections: a unix socketpair to its child, an eventfd and a memfd
mapping shared with the child, a timerfd, a signalfd (SIGUSR2), an inotify
watch on WATCHDIR, and the master of a pty whose slave runs `bash -i`.
Each command is answered only once the descriptor it concerns woke epoll:

    echo X    -> X                      (the connection itself)
    child X   -> child X                (the socketpair, both ways)
    kick      -> eventfd N              (the child wrote the eventfd)
    timer     -> timer N                (a one-shot timer of 20 ms expired)
    signal    -> signal 12              (the child sent SIGUSR2: the signalfd)
    touch X   -> inotify X              (the child created WATCHDIR/X)
    mem       -> mem N                  (the child counts in the shared page)
    sh        -> sh N                   (bash counted c=$((c+1)) on the pty)

    mqsend X  -> mq                     (X sent to the POSIX queue QUEUE)
    mqrecv    -> mq X                   (the oldest message of QUEUE)

With LAST, one more child, forked after every other process, holds what
LAST names: `uring` an io_uring instance (which vzcpt refuses), `listen:P`
a TCP socket listening on HOST:P, `open:PATH` the file PATH open. Reports
READY once listening. Uses only the standard library (ctypes for the calls
Python 3.11 lacks). With UNIXPATH, the server also holds a unix listener
bound there.
"""

import ctypes
import mmap
import os
import re
import select
import signal
import socket
import struct
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
BASH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "TERM": "dumb",
            "PS1": "vz$ ", "HISTFILE": "", "INPUTRC": "/dev/null"}  # fmt: skip


def check(result: int, what: str) -> int:
    if result < 0:
        raise OSError(ctypes.get_errno(), what)
    return result


def timerfd() -> int:
    return check(libc.timerfd_create(1, os.O_CLOEXEC | os.O_NONBLOCK), "timerfd_create")


def arm(tfd: int, ms: int) -> None:
    spec = struct.pack("qqqq", 0, 0, 0, ms * 1_000_000)
    check(libc.timerfd_settime(tfd, 0, spec, None), "timerfd_settime")


def signalfd(signo: int) -> int:
    mask = struct.pack("Q", 1 << (signo - 1)) + bytes(120)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signo])
    return check(libc.signalfd(-1, mask, os.O_NONBLOCK | os.O_CLOEXEC), "signalfd")


def inotify(path: str) -> int:
    ifd = check(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")
    check(libc.inotify_add_watch(ifd, path.encode(), 0x100), "inotify_add_watch")  # IN_CREATE
    return ifd


def last_child(what: str, host: str) -> None:
    """Hold `what` until killed."""
    if what == "uring":
        params = ctypes.create_string_buffer(120)
        check(libc.syscall(425, 4, params), "io_uring_setup")
    elif what.startswith("open:"):
        held = open(what[5:], "rb")  # noqa: SIM115
    else:
        held = socket.create_server((host, int(what.partition(":")[2])))
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    while True:
        signal.pause()


def mqueue(name: str) -> int:
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    rt.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
    attr = struct.pack("8q", 0, 4, 256, 0, 0, 0, 0, 0)  # small: the user's mqueue bytes are few
    return check(rt.mq_open(name.encode(), os.O_RDWR | os.O_CREAT, 0o600, attr), "mq_open")


def child_loop(sock: socket.socket, efd: int, page: mmap.mmap, watchdir: str) -> None:
    reader = sock.makefile("rb")
    for line in reader:
        cmd, _, arg = line.decode().strip().partition(" ")
        if cmd == "kick":
            os.eventfd_write(efd, 1)
            continue
        if cmd == "signal":
            os.kill(os.getppid(), signal.SIGUSR2)
            continue
        if cmd == "touch":
            open(os.path.join(watchdir, arg), "w").close()
            continue
        if cmd == "mem":
            page[0:8] = struct.pack("Q", struct.unpack("Q", page[0:8])[0] + 1)
            sock.sendall(b"mem\n")
            continue
        sock.sendall(f"child {arg}\n".encode())


def start_shell() -> int:
    master, slave = os.openpty()
    if os.fork() == 0:
        os.close(master)
        os.setsid()
        import fcntl
        import termios

        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        os.closerange(3, 1024)
        os.execve("/bin/bash", ["bash", "--norc", "--noprofile", "-i"], BASH_ENV)
    os.close(slave)
    os.set_blocking(master, False)
    return master


def main() -> None:
    report, host, port, watchdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    last = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else ""
    mqd = mqueue(sys.argv[6]) if len(sys.argv) > 6 else -1
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    mfd = os.memfd_create("everything")
    os.ftruncate(mfd, 4096)
    page = mmap.mmap(mfd, 4096, mmap.MAP_SHARED)
    ours, theirs = socket.socketpair()
    if os.fork() == 0:
        ours.close()
        child_loop(theirs, efd, page, watchdir)
        os._exit(0)
    theirs.close()
    tfd = timerfd()
    sfd = signalfd(signal.SIGUSR2)
    ifd = inotify(watchdir)
    master = start_shell()
    listener = socket.create_server((host, port), family=socket.AF_INET)
    if len(sys.argv) > 7:
        named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        named.bind(sys.argv[7])
        named.listen(4)
    if last and os.fork() == 0:
        last_child(last, host)
    listener.setblocking(False)
    ep = select.epoll()
    for fd in (listener.fileno(), ours.fileno(), efd, tfd, sfd, ifd, master):
        ep.register(fd, select.EPOLLIN)
    clients: dict[int, tuple[socket.socket, bytearray]] = {}
    waiting: dict[str, list[socket.socket]] = {}
    shell_out = bytearray()
    child_in = bytearray()

    def answer(kind: str, text: str) -> None:
        sock = waiting[kind].pop(0)
        sock.sendall(text.encode() + b"\n")

    def command(sock: socket.socket, line: str) -> None:
        cmd, _, arg = line.partition(" ")
        if cmd == "echo":
            sock.sendall(arg.encode() + b"\n")
            return
        if cmd == "mqsend":
            check(libc.mq_send(mqd, arg.encode(), len(arg), 0), "mq_send")
            sock.sendall(b"mq\n")
            return
        if cmd == "mqrecv":
            buf = ctypes.create_string_buffer(8192)
            size = check(libc.mq_receive(mqd, buf, 8192, None), "mq_receive")
            sock.sendall(b"mq " + buf.raw[:size] + b"\n")
            return
        waiting.setdefault(cmd, []).append(sock)
        if cmd == "timer":
            arm(tfd, 20)
        elif cmd == "sh":
            os.write(master, b"c=$((c+1)); echo res-$((c*1))\r")
        else:
            ours.sendall(line.encode() + b"\n")

    with open(report, "a") as out:
        out.write("READY\n")
    while True:
        for fd, _ in ep.poll():
            if fd == listener.fileno():
                with_peer = listener.accept()[0]
                with_peer.setblocking(True)
                clients[with_peer.fileno()] = (with_peer, bytearray())
                ep.register(with_peer.fileno(), select.EPOLLIN)
            elif fd in clients:
                sock, buf = clients[fd]
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:  # a connection restored after its peer left
                    data = b""
                if not data:
                    ep.unregister(fd)
                    del clients[fd]
                    sock.close()
                    continue
                buf += data
                while b"\n" in buf:
                    line, _, rest = bytes(buf).partition(b"\n")
                    buf[:] = rest
                    command(sock, line.decode())
            elif fd == ours.fileno():
                child_in += ours.recv(4096)
                while b"\n" in child_in:
                    line, _, rest = bytes(child_in).partition(b"\n")
                    child_in[:] = rest
                    text = line.decode()
                    if text == "mem":
                        answer("mem", f"mem {struct.unpack('Q', page[0:8])[0]}")
                    else:
                        answer("child", text)
            elif fd == efd:
                answer("kick", f"eventfd {os.eventfd_read(efd)}")
            elif fd == tfd:
                answer("timer", f"timer {struct.unpack('Q', os.read(tfd, 8))[0]}")
            elif fd == sfd:
                info = os.read(sfd, 128)
                answer("signal", f"signal {struct.unpack_from('I', info)[0]}")
            elif fd == ifd:
                data = os.read(ifd, 4096)
                while data:
                    _, _, _, size = struct.unpack_from("iIII", data)
                    name = data[16 : 16 + size].rstrip(b"\0").decode()
                    data = data[16 + size :]
                    answer("touch", f"inotify {name}")
            elif fd == master:
                shell_out += os.read(master, 4096)
                for found in re.finditer(rb"\nres-(\d+)\r", bytes(shell_out)):
                    answer("sh", f"sh {int(found.group(1))}")
                    shell_out[:] = shell_out[found.end() :]
                    break
        time.sleep(0)


if __name__ == "__main__":
    main()
