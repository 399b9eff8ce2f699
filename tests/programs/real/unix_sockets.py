"""Unix sockets across a checkpoint, checked from inside.

A stream socketpair with data queued both ways, a datagram pair with three
messages (boundaries must survive), a seqpacket pair shared with a child
process, a seqpacket pair with an empty message and one more queued before
the sender shut down its side, a listening socket bound to a path with a connection it accepted
(data queued both ways), a bound datagram socket. Writes
READY; on SIGUSR1 checks everything and writes OK or FAIL <why>.
"""

import os
import signal
import socket
import sys


def main() -> None:
    report_path, workdir = sys.argv[1], os.path.dirname(sys.argv[1])
    stream_a, stream_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stream_a.sendall(b"to-b " * 1000)
    stream_b.sendall(b"to-a")
    dgram_a, dgram_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for message in (b"one", b"", b"three"):
        dgram_a.send(message)
    seq_parent, seq_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ended_a, ended_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ended_a.send(b"")
    ended_a.send(b"last")
    ended_a.shutdown(socket.SHUT_WR)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(workdir, "listen.sock"))
    listener.listen(7)
    conn_client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn_client.connect(os.path.join(workdir, "listen.sock"))
    conn_server, _ = listener.accept()
    conn_client.sendall(b"request")
    conn_server.sendall(b"reply")
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    bound.bind(os.path.join(workdir, "bound.sock"))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    child = os.fork()
    if child == 0:  # echoes one seqpacket message back, after the restore
        seq_parent.close()
        message = seq_child.recv(100)
        seq_child.send(message.upper())
        os._exit(0)
    seq_child.close()
    with open(report_path, "a") as report:
        report.write("READY\n")
    while True:
        try:
            signal.sigwaitinfo({signal.SIGUSR1})
            break
        except InterruptedError:
            continue
    problems = []
    got = b""
    while len(got) < 5000:
        got += stream_b.recv(65536)
    if got != b"to-b " * 1000:
        problems.append("stream a->b data")
    if stream_a.recv(100) != b"to-a":
        problems.append("stream b->a data")
    dgram_b.setblocking(False)
    if [dgram_b.recv(100) for _ in range(3)] != [b"one", b"", b"three"]:
        problems.append("datagram boundaries")
    # Messages come with credentials, the end of the stream without.
    ended_b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    ended_b.setblocking(False)
    ended = []
    for _ in range(3):
        data, ancillary, _, _ = ended_b.recvmsg(100, socket.CMSG_SPACE(12))
        ended.append((data, bool(ancillary)))
    if ended != [(b"", True), (b"last", True), (b"", False)]:
        problems.append(f"seqpacket messages before the end: {ended}")
    seq_parent.send(b"ping")
    if seq_parent.recv(100) != b"PING":
        problems.append("seqpacket with the child")
    if os.waitpid(child, 0)[1] != 0:
        problems.append("child exit")
    if conn_server.recv(100) != b"request" or conn_client.recv(100) != b"reply":
        problems.append("accepted connection data")
    if conn_client.getpeername() != os.path.join(workdir, "listen.sock"):
        problems.append(f"client's peer name {conn_client.getpeername()!r}")
    if conn_server.getsockname() != os.path.join(workdir, "listen.sock"):
        problems.append(f"accepted socket's name {conn_server.getsockname()!r}")
    if listener.getsockname() != os.path.join(workdir, "listen.sock"):
        problems.append(f"listener name {listener.getsockname()!r}")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(os.path.join(workdir, "listen.sock"))
    server_side, _ = listener.accept()
    client.sendall(b"hello")
    if server_side.recv(10) != b"hello":
        problems.append("listener does not accept")
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.sendto(b"dg", os.path.join(workdir, "bound.sock"))
    if bound.recv(10) != b"dg":
        problems.append("bound datagram socket")
    with open(report_path, "a") as report:
        report.write("OK\n" if not problems else f"FAIL {', '.join(problems)}\n")
    sys.exit(0 if not problems else 1)


if __name__ == "__main__":
    main()
