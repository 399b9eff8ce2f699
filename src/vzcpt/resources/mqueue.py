"""POSIX message queues of an IPC namespace (a VE's): dump and restore.

Every call is about the IPC namespace of a process: a forked child joins it
(kernel/nsexec.py) and works there with the mq_* calls of kernel/mqueue.py.

Dump: the queues are listed through the namespace's mqueue file system
(name, mode, owner), their sizes read with mq_getattr. A queue cannot be
read without taking its messages, so each is emptied with mq_timedreceive
and at once refilled with mq_timedsend in the same order and priorities:
receive gives the highest priority first, oldest first within one, and a
send goes behind the messages of its priority, so the queue ends as it
was. The processes are frozen meanwhile, and a frozen task waits in no
queue (the freezer woke it out of its mq_timedsend/receive, to be
restarted once it runs), so nobody takes or adds a message in between. The
refill runs whatever happens, so a failed dump or a VE that runs on keeps
its queues. A queue with an mq_notify registration is refused: the
registration's sigevent (its value, its thread function) is not visible.

Restore (into the VE's fresh namespace, before its processes exist): the
namespace's fs.mqueue limits, then each queue created with its size, mode
and owner, and its messages sent in order; a failure removes what it made.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from vzcpt.errors import Unsupported, VzcptError
from vzcpt.image import schema
from vzcpt.image.schema import record
from vzcpt.kernel import mqueue as kmq
from vzcpt.kernel.nsexec import in_namespace

_SYSCTL = "/proc/sys/fs/mqueue/"
# The IPC namespace's own limits (ipc/mq_sysctl.c), restored before queues.
LIMITS = ("queues_max", "msg_max", "msgsize_max", "msg_default", "msgsize_default")


@dataclass
class MqMessage:
    priority: int
    data: bytes


@dataclass
class MqQueue:
    name: str  # without the leading slash
    mode: int
    uid: int
    gid: int
    maxmsg: int
    msgsize: int
    messages: list[MqMessage] = field(default_factory=list)  # in the order they are received


@dataclass
class MqDescription:
    """What an open description of a queue records (resources/fds/mqueue.py)."""

    name: str
    unlinked: bool = False
    queue_id: int = 0  # an unlinked queue: the same for every description on it
    queue: MqQueue | None = None  # an unlinked queue's content, with one of its descriptions


@record("posix-mqueues")
@dataclass
class MqRecord:
    """Every POSIX message queue of one IPC namespace, and its limits."""

    queues: list[MqQueue] = field(default_factory=list)
    limits: dict[str, str] = field(default_factory=dict)  # fs.mqueue sysctl -> value


# ---------------------------------------------------------------------- dump


def dump_mqueues(pid: int) -> MqRecord:
    """Every queue of the IPC namespace of `pid`, with its messages (left in place).

    The processes using them must be frozen.
    """
    found = in_namespace(pid, "ipc", lambda: schema.to_jsonable(_collect()), "read its queues")
    rec = schema.from_jsonable(MqRecord, found)
    assert isinstance(rec, MqRecord)
    return rec


def _collect() -> MqRecord:
    rec = MqRecord()
    for name in LIMITS:
        with contextlib.suppress(FileNotFoundError), open(_SYSCTL + name) as f:
            rec.limits[name] = f.read().strip()
    fs = kmq.open_mqueue_fs()
    try:
        for name in sorted(os.listdir(fs)):
            st = os.stat(name, dir_fd=fs, follow_symlinks=False)
            status = kmq.queue_status(fs, name)
            if status.notify_pid:
                raise Unsupported(
                    f"POSIX message queue /{name} has an mq_notify registration (by process "
                    f"{status.notify_pid}), which vzcpt cannot checkpoint yet"
                )
            fd = kmq.mq_open(name, os.O_RDWR)
            try:
                rec.queues.append(read_queue(fd, name, st))
            finally:
                os.close(fd)
    finally:
        os.close(fs)
    return rec


def read_queue(fd: int, name: str, st: os.stat_result) -> MqQueue:
    """Queue `name`, open read-write at `fd`, with its messages: taken and put back."""
    attr = kmq.mq_getattr(fd)
    taken: list[MqMessage] = []
    try:
        while (got := kmq.mq_receive_now(fd, attr.msgsize)) is not None:
            taken.append(MqMessage(got[1], got[0]))
            if len(taken) > attr.curmsgs:
                raise VzcptError(
                    f"POSIX message queue /{name} grew while it was read: "
                    "a process using it is not frozen"
                )
    finally:
        for message in taken:  # back in the order taken: the queue is as it was
            kmq.mq_send_now(fd, message.data, message.priority)
    return MqQueue(
        name=name,
        mode=st.st_mode & 0o7777,
        uid=st.st_uid,
        gid=st.st_gid,
        maxmsg=attr.maxmsg,
        msgsize=attr.msgsize,
        messages=taken,
    )


# ------------------------------------------------------------------- restore


def restore_mqueues(pid: int, rec: MqRecord) -> None:
    """Make every queue of `rec`, with its messages, in the IPC namespace of `pid`."""
    in_namespace(pid, "ipc", lambda: _rebuild(rec), "make its POSIX message queues again")


def _rebuild(rec: MqRecord) -> None:
    for name, value in rec.limits.items():
        if name in LIMITS and os.path.exists(_SYSCTL + name):
            try:
                with open(_SYSCTL + name, "w") as f:
                    f.write(value)
            except OSError as e:
                what = f"fs.mqueue.{name} to {value!r}"
                raise VzcptError(f"cannot set {what}: {e.strerror}") from None
    made: list[str] = []
    try:
        for queue in rec.queues:
            fd = create_queue(queue)
            made.append(queue.name)
            os.close(fd)
    except BaseException:
        for name in made:
            with contextlib.suppress(VzcptError):
                kmq.mq_unlink(name)
        raise


def create_queue(queue: MqQueue, name: str | None = None, flags: int = os.O_RDWR) -> int:
    """Make `queue` (under `name` if given) with its size, mode, owner and messages;
    return a descriptor on it opened with `flags`."""
    name = name or queue.name
    old_umask = os.umask(0)
    try:
        create = os.O_RDWR | os.O_CREAT | os.O_EXCL
        fd = kmq.mq_open(name, create, queue.mode & 0o777, queue.maxmsg, queue.msgsize)
    finally:
        os.umask(old_umask)
    try:
        os.fchown(fd, queue.uid, queue.gid)
        os.fchmod(fd, queue.mode)
        for message in queue.messages:
            kmq.mq_send_now(fd, message.data, message.priority)
        if flags & (os.O_ACCMODE | os.O_NONBLOCK) == os.O_RDWR:
            return fd
        wanted = os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)
        os.close(fd)
        return wanted
    except BaseException:
        os.close(fd)
        with contextlib.suppress(VzcptError):
            kmq.mq_unlink(name)
        raise
