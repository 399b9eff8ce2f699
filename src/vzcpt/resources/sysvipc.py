"""System V IPC objects of an IPC namespace (a VE's): dump and restore.

Every call is about the IPC namespace of a process (/proc/PID/ns/ipc). The
work is done by a forked child that joins that namespace with setns(2) and
nothing else: it stays in our mount namespace, so /proc/sys/kernel/* (whose
IPC entries show and set the namespace of the process using them) is the
host's /proc, and its answers come back through a pipe. The child never
returns into the caller (os._exit); its failure becomes one VzcptError line.

Dump: objects are found by table index (SHM_STAT_ANY etc. turn an index
into an id, whatever the object's mode); message queues are read with
msgrcv(MSG_COPY), which copies a message by position and leaves the queue
as it was (CONFIG_CHECKPOINT_RESTORE). Segments marked for removal
(IPC_RMID while still attached) are skipped: no one can shmget them again.

Restore (into a fresh namespace): the namespace's limits first, then each
object with its old id: the wanted id goes to /proc/sys/kernel/*_next_id
just before the IPC_CREAT|IPC_EXCL get, made with the creator's euid/egid
so cuid/cgid come back too; then owners and mode (IPC_SET), and the content.
The kernel takes the id only as a hint (the next free slot at or above it),
so every id is checked, and any failure removes what this call created.

Not saved: times and last pids (the kernel sets them), semaphore undo
lists (per process), SHM_HUGETLB/SHM_NORESERVE flags (not visible).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from vzcpt.errors import AccessDenied, ProcessGone, VzcptError
from vzcpt.image import schema
from vzcpt.image.schema import record
from vzcpt.kernel import sysv
from vzcpt.kernel.mounts import CLONE_NEWIPC, setns

_SYSCTL = "/proc/sys/kernel/"
# The IPC namespace's own limits (ipc/ipc_sysctl.c), restored before objects.
LIMITS = ("shmmax", "shmall", "shmmni", "shm_rmid_forced", "msgmax", "msgmnb", "msgmni", "sem")
_MODE_BITS = 0o777


@dataclass
class ShmSegment:
    key: int
    id: int
    mode: int  # permission bits, plus SHM_LOCKED when locked
    uid: int
    gid: int
    cuid: int
    cgid: int
    size: int
    content: bytes  # the segment's first bytes; the rest (up to size) is zero


@dataclass
class SemSet:
    key: int
    id: int
    mode: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    values: list[int]  # one per semaphore: nsems == len(values)


@dataclass
class Message:
    mtype: int
    text: bytes


@dataclass
class MsgQueue:
    key: int
    id: int
    mode: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    qbytes: int
    messages: list[Message]  # in queue order


@record("sysv-ipc")
@dataclass
class IpcRecord:
    """Every System V IPC object of one IPC namespace, and its limits."""

    shm: list[ShmSegment] = field(default_factory=list)
    sem: list[SemSet] = field(default_factory=list)
    msg: list[MsgQueue] = field(default_factory=list)
    limits: dict[str, str] = field(default_factory=dict)  # sysctl name -> value


# ----------------------------------------------------------------- the child


def _in_namespace(pid: int, work: Callable[[], bytes]) -> bytes:
    """Run `work` in a child inside the IPC namespace of `pid`; return its answer."""
    try:
        nsfd = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ProcessGone(f"process {pid} is gone") from None
    except PermissionError:
        raise AccessDenied(f"cannot open the IPC namespace of process {pid}") from None
    try:
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            _child(nsfd, wfd, work)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            answer = r.read()
        _, status = os.waitpid(child, 0)
    finally:
        os.close(nsfd)
    if answer[:1] == b"O" and os.waitstatus_to_exitcode(status) == 0:
        return answer[1:]
    if answer[:1] == b"E":
        reason = answer[1:].decode(errors="replace")
    else:
        reason = f"helper died (wait status {status:#x})"
    raise VzcptError(f"System V IPC of process {pid}: {reason}")


def _child(nsfd: int, wfd: int, work: Callable[[], bytes]) -> None:  # pragma: no cover
    code = 1
    try:
        try:
            setns(nsfd, CLONE_NEWIPC)
            answer = b"O" + work()
            code = 0
        except VzcptError as e:
            answer = b"E" + " ".join(str(e).split()).encode()
        except Exception as e:  # a bug: keep the traceback on stderr, one line back
            traceback.print_exc(file=sys.stderr)
            answer = b"E" + " ".join(f"{type(e).__name__}: {e}".split()).encode()
        view = memoryview(answer)
        while view:
            view = view[os.write(wfd, view) :]
    finally:
        os._exit(code)


def _read_sysctl(name: str) -> str:
    with open(_SYSCTL + name) as f:
        return f.read().strip()


def _write_sysctl(name: str, value: str) -> None:
    try:
        with open(_SYSCTL + name, "w") as f:
            f.write(value)
    except OSError as e:
        raise VzcptError(f"cannot set kernel.{name} to {value!r}: {e.strerror}") from None


# ---------------------------------------------------------------------- dump


def dump_ipc(pid: int) -> IpcRecord:
    """Every System V IPC object of the IPC namespace of `pid`, with content.

    Nothing changes in the namespace but attach times (shm is read through
    a read-only attachment); hold the processes still while it runs.
    """
    rec = schema.decode(_in_namespace(pid, lambda: schema.encode(_collect())))
    assert isinstance(rec, IpcRecord)
    return rec


def _collect() -> IpcRecord:
    rec = IpcRecord()
    for name in LIMITS:
        with contextlib.suppress(FileNotFoundError):
            rec.limits[name] = _read_sysctl(name)
    for index in range(sysv.shm_max_index() + 1):
        found = sysv.shm_stat_index(index)
        if found is None:
            continue
        shmid, ds = found
        p = ds.perm
        if p.mode & sysv.SHM_DEST:
            continue
        content = sysv.shm_read(shmid, ds.segsz).rstrip(b"\0")
        mode = p.mode & (_MODE_BITS | sysv.SHM_LOCKED)
        rec.shm.append(
            ShmSegment(p.key, shmid, mode, p.uid, p.gid, p.cuid, p.cgid, ds.segsz, content)
        )
    for index in range(sysv.sem_max_index() + 1):
        found_sem = sysv.sem_stat_index(index)
        if found_sem is None:
            continue
        semid, sds = found_sem
        p = sds.perm
        values = sysv.sem_getall(semid, sds.nsems)
        rec.sem.append(
            SemSet(p.key, semid, p.mode & _MODE_BITS, p.uid, p.gid, p.cuid, p.cgid, values)
        )
    for index in range(sysv.msg_max_index() + 1):
        found_msg = sysv.msg_stat_index(index)
        if found_msg is None:
            continue
        msqid, mds = found_msg
        p = mds.perm
        rec.msg.append(
            MsgQueue(
                p.key,
                msqid,
                p.mode & _MODE_BITS,
                p.uid,
                p.gid,
                p.cuid,
                p.cgid,
                mds.qbytes,
                _messages(msqid, max(mds.cbytes, 1)),
            )
        )
    return rec


def _messages(msqid: int, maxsize: int) -> list[Message]:
    # No message is longer than all the queue's bytes together.
    out: list[Message] = []
    while (msg := sysv.msg_copy(msqid, len(out), maxsize)) is not None:
        out.append(Message(*msg))
    return out


# ------------------------------------------------------------------- restore


def restore_ipc(pid: int, rec: IpcRecord) -> None:
    """Recreate every object of `rec`, with its id, in the IPC namespace of `pid`.

    Meant for a fresh namespace; an id or key already in use there is
    refused with one line before anything is created.
    """
    _in_namespace(pid, lambda: _rebuild(rec))


def _rebuild(rec: IpcRecord) -> bytes:
    _refuse_taken(rec)
    for name, value in rec.limits.items():
        if name in LIMITS and os.path.exists(_SYSCTL + name) and _read_sysctl(name) != value:
            _write_sysctl(name, value)
    undo: list[Callable[[], None]] = []
    try:
        for shm in rec.shm:
            get = partial(sysv.shmget, shm.key, shm.size, _new(shm.mode))
            _create("shm", shm.id, shm.cuid, shm.cgid, get, sysv.shm_remove, undo)
            sysv.shm_set(shm.id, shm.uid, shm.gid, shm.mode & _MODE_BITS)
            sysv.shm_write(shm.id, shm.content)
            if shm.mode & sysv.SHM_LOCKED:
                sysv.shm_lock(shm.id)
        for sem in rec.sem:
            get = partial(sysv.semget, sem.key, len(sem.values), _new(sem.mode))
            _create("sem", sem.id, sem.cuid, sem.cgid, get, sysv.sem_remove, undo)
            sysv.sem_set(sem.id, sem.uid, sem.gid, sem.mode & _MODE_BITS)
            sysv.sem_setall(sem.id, sem.values)
        msgmnb = _read_sysctl("msgmnb")
        try:
            for q in rec.msg:
                # A new queue gets msgmnb as its limit, and IPC_SET may only
                # raise it above msgmnb with CAP_SYS_RESOURCE (which the
                # caller may lack): lift msgmnb to it for the while instead.
                _write_sysctl("msgmnb", str(q.qbytes))
                get = partial(sysv.msgget, q.key, _new(q.mode))
                _create("msg", q.id, q.cuid, q.cgid, get, sysv.msg_remove, undo)
                sysv.msg_set(q.id, q.uid, q.gid, q.mode & _MODE_BITS, q.qbytes)
                for m in q.messages:
                    sysv.msg_send(q.id, m.mtype, m.text)
        finally:
            _write_sysctl("msgmnb", msgmnb)
    except BaseException:
        for remove in reversed(undo):
            with contextlib.suppress(VzcptError):
                remove()
        raise
    return b""


def _new(mode: int) -> int:
    return sysv.IPC_CREAT | sysv.IPC_EXCL | (mode & _MODE_BITS)


def _existing() -> dict[str, tuple[set[int], set[int]]]:
    """(ids, keys) of the objects of each kind already in this namespace."""
    out: dict[str, tuple[set[int], set[int]]] = {}
    kinds = (
        ("shm", sysv.shm_max_index, sysv.shm_stat_index),
        ("sem", sysv.sem_max_index, sysv.sem_stat_index),
        ("msg", sysv.msg_max_index, sysv.msg_stat_index),
    )
    for kind, max_index, stat_index in kinds:
        ids: set[int] = set()
        keys: set[int] = set()
        for index in range(max_index() + 1):
            found = stat_index(index)
            if found is not None:
                ids.add(found[0])
                keys.add(found[1].perm.key)
        out[kind] = ids, keys
    return out


def _refuse_taken(rec: IpcRecord) -> None:
    have = _existing()
    wanted: list[tuple[str, int, int]] = [("shm", o.id, o.key) for o in rec.shm]
    wanted += [("sem", o.id, o.key) for o in rec.sem]
    wanted += [("msg", o.id, o.key) for o in rec.msg]
    for kind, ident, key in wanted:
        ids, keys = have[kind]
        if ident in ids:
            raise VzcptError(f"{kind} id {ident} is already taken in the target IPC namespace")
        if key != sysv.IPC_PRIVATE and key in keys:
            raise VzcptError(f"{kind} key {key:#x} is already taken in the target IPC namespace")


def _create(
    kind: str,
    ident: int,
    cuid: int,
    cgid: int,
    get: Callable[[], int],
    remove: Callable[[int], None],
    undo: list[Callable[[], None]],
) -> None:
    """Make one object with id `ident`, as its creator, or fail."""
    _write_sysctl(f"{kind}_next_id", str(ident))
    egid, euid = os.getegid(), os.geteuid()
    try:
        # The creator's ids become cuid/cgid (IPC_SET cannot change them);
        # the sysctl was written as root, before capabilities drop with euid.
        os.setegid(cgid)
        os.seteuid(cuid)
        try:
            got = get()
        finally:
            os.seteuid(euid)
            os.setegid(egid)
    except BaseException:
        _drop_hint(kind)
        raise
    undo.append(lambda: remove(got))
    if got != ident:
        raise VzcptError(f"{kind} id {ident} is not free in the target IPC namespace (got {got})")


_THROWAWAY: dict[str, tuple[Callable[[], int], Callable[[int], None]]] = {
    "shm": (partial(sysv.shmget, sysv.IPC_PRIVATE, 1, sysv.IPC_CREAT), sysv.shm_remove),
    "sem": (partial(sysv.semget, sysv.IPC_PRIVATE, 1, sysv.IPC_CREAT), sysv.sem_remove),
    "msg": (partial(sysv.msgget, sysv.IPC_PRIVATE, sysv.IPC_CREAT), sysv.msg_remove),
}


def _drop_hint(kind: str) -> None:
    """Use up a *_next_id hint a failed get left behind (the sysctl refuses -1)."""
    get, remove = _THROWAWAY[kind]
    with contextlib.suppress(VzcptError):
        remove(get())
