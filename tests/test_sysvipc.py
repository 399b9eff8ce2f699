"""System V IPC of an IPC namespace: dump, restore into a fresh one, verify.

Each namespace is held by a forked process of ours that unshared it; the
namespace and every object in it vanish when that process is killed, which
every test does in a finally block.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator

import pytest

from vzcpt.errors import VzcptError
from vzcpt.kernel import nr, sysv
from vzcpt.kernel.libc import syscall
from vzcpt.kernel.mounts import CLONE_NEWIPC, unshare
from vzcpt.resources import sysvipc
from vzcpt.resources.sysvipc import IpcRecord, Message, ShmSegment, dump_ipc, restore_ipc

SHM_KEY = 0x5A5A0001
SEM_KEY = 0x5A5A0002
MSG_KEY = 0x5A5A0003
PATTERN = (bytes(range(1, 256)) * 4200)[: 1 << 20]  # no zero byte anywhere
MESSAGES = [(1, b"first"), (7, b"second" * 1000), (3, b"\0third\0"), (7, b"")]
MSG_ID = 123457  # asked for through msg_next_id: not the id a fresh queue gets


@contextlib.contextmanager
def ipc_namespace(setup: Callable[[], None] | None = None) -> Iterator[int]:
    """A process alone in a new IPC namespace, after running `setup` there."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the holder
        code = 1
        try:
            os.close(rfd)
            unshare(CLONE_NEWIPC)
            if setup is not None:
                setup()
            os.write(wfd, b"R")
            while True:
                signal.pause()
        except BaseException:
            traceback.print_exc(file=sys.stderr)
        finally:
            os._exit(code)
    os.close(wfd)
    try:
        with os.fdopen(rfd, "rb") as r:
            if r.read(1) != b"R":
                raise RuntimeError("the namespace holder failed (see stderr)")
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def in_namespace(pid: int, fn: Callable[[], object]) -> object:
    """Run `fn` in a child inside the IPC namespace of `pid`; its result."""
    return pickle.loads(sysvipc._in_namespace(pid, lambda: pickle.dumps(fn())))


def _write_sysctl(name: str, value: str) -> None:
    with open(f"/proc/sys/kernel/{name}", "w") as f:
        f.write(value)


def _populate() -> None:
    """The objects of the source namespace (runs inside it)."""
    _write_sysctl("msgmnb", "65536")  # no CAP_SYS_RESOURCE needed for qbytes this way
    # Ids with gaps and sequence numbers: remove a few objects first.
    for _ in range(3):
        sysv.shm_remove(sysv.shmget(sysv.IPC_PRIVATE, 4096, sysv.IPC_CREAT | 0o600))
    shmid = sysv.shmget(SHM_KEY, len(PATTERN), sysv.IPC_CREAT | sysv.IPC_EXCL | 0o640)
    sysv.shm_write(shmid, PATTERN)
    sysv.shm_set(shmid, 1000, 1001, 0o640)
    small = sysv.shmget(sysv.IPC_PRIVATE, 10000, sysv.IPC_CREAT | 0o600)
    sysv.shm_write(small, b"hello")
    sysv.shm_lock(small)
    # Attached and marked for removal: not restorable, must be skipped.
    doomed = sysv.shmget(sysv.IPC_PRIVATE, 4096, sysv.IPC_CREAT | 0o600)
    syscall(nr.SHMAT, doomed, 0, 0, what="shmat")
    sysv.shm_remove(doomed)

    os.setegid(2345)
    os.seteuid(1234)  # the creator: cuid/cgid
    try:
        semid = sysv.semget(SEM_KEY, 3, sysv.IPC_CREAT | sysv.IPC_EXCL | 0o600)
    finally:
        os.seteuid(0)
        os.setegid(0)
    sysv.sem_setall(semid, [1, 2, 3])
    sysv.sem_set(semid, 4321, 5432, 0o660)

    _write_sysctl("msg_next_id", str(MSG_ID))
    msqid = sysv.msgget(MSG_KEY, sysv.IPC_CREAT | sysv.IPC_EXCL | 0o620)
    assert msqid == MSG_ID
    for mtype, text in MESSAGES:
        sysv.msg_send(msqid, mtype, text)
    _write_sysctl("msgmnb", "20000")  # the namespace's limit, below the queue's


def _check_source(rec: IpcRecord) -> None:
    assert rec.limits["msgmnb"] == "20000"
    assert len(rec.shm) == 2  # the segment marked for removal is left out
    big = next(s for s in rec.shm if s.key == SHM_KEY)
    assert (big.size, big.content, big.mode) == (len(PATTERN), PATTERN, 0o640)
    assert (big.uid, big.gid, big.cuid, big.cgid) == (1000, 1001, 0, 0)
    assert big.id == 3  # ids are handed out cyclically: three were used before
    small = next(s for s in rec.shm if s.key == sysv.IPC_PRIVATE)
    assert (small.size, small.content) == (10000, b"hello")  # trailing zeros not kept
    assert small.mode == 0o600 | sysv.SHM_LOCKED

    (sem,) = rec.sem
    assert (sem.key, sem.values, sem.mode) == (SEM_KEY, [1, 2, 3], 0o660)
    assert (sem.uid, sem.gid, sem.cuid, sem.cgid) == (4321, 5432, 1234, 2345)

    (q,) = rec.msg
    assert (q.key, q.id, q.mode, q.qbytes) == (MSG_KEY, MSG_ID, 0o620, 65536)
    assert q.messages == [Message(t, m) for t, m in MESSAGES]


def _ipcs_ids(pid: int, kind: str) -> dict[int, int]:
    """{id: key} as ipcs (util-linux) sees the namespace of `pid`."""
    out = subprocess.run(
        ["nsenter", f"--ipc=/proc/{pid}/ns/ipc", "ipcs", kind],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("0x")]
    return {int(r[1]): int(r[0], 16) for r in rows}


def _drain() -> tuple[bytes, list[int], list[tuple[int, bytes]]]:
    """Inside the restored namespace: content, values, messages really received."""
    shmid = sysv.shmget(SHM_KEY, 0, 0)
    semid = sysv.semget(SEM_KEY, 0, 0)
    msqid = sysv.msgget(MSG_KEY, 0)
    got = []
    while (m := sysv.msg_receive(msqid, 1 << 16)) is not None:
        got.append(m)
    return sysv.shm_read(shmid, len(PATTERN)), sysv.sem_getall(semid, 3), got


def test_dump_and_restore_with_the_same_ids() -> None:
    with ipc_namespace(_populate) as src:
        rec = dump_ipc(src)
        _check_source(rec)
        assert dump_ipc(src) == rec  # dumping left the queues as they were

    with ipc_namespace() as dst:
        restore_ipc(dst, rec)
        assert dump_ipc(dst) == rec  # ids, keys, owners, modes, content, limits
        assert _ipcs_ids(dst, "-m") == {s.id: s.key for s in rec.shm}
        assert _ipcs_ids(dst, "-s") == {s.id: s.key for s in rec.sem}
        assert _ipcs_ids(dst, "-q") == {q.id: q.key for q in rec.msg}

        # Restoring again: every id is taken; refused with one line, nothing changed.
        with pytest.raises(VzcptError) as err:
            restore_ipc(dst, rec)
        assert "already taken" in str(err.value)
        assert "\n" not in str(err.value)
        assert dump_ipc(dst) == rec

        drained = in_namespace(dst, _drain)
        assert isinstance(drained, tuple)
        content, values, messages = drained
        assert content == PATTERN
        assert values == [1, 2, 3]
        assert messages == MESSAGES


def _one_private_segment() -> None:
    shmid = sysv.shmget(sysv.IPC_PRIVATE, 4096, sysv.IPC_CREAT | 0o600)
    assert shmid == 0  # slot 0: a record wanting slot 0 with another seq collides


def test_an_occupied_slot_rolls_everything_back() -> None:
    def seg(ident: int) -> ShmSegment:
        return ShmSegment(sysv.IPC_PRIVATE, ident, 0o600, 0, 0, 0, 0, 4096, b"x")

    # Slot 5 is free and is created first; id 32768 needs slot 0, which is taken.
    rec = IpcRecord(shm=[seg(5), seg(32768)])
    with ipc_namespace(_one_private_segment) as dst:
        with pytest.raises(VzcptError) as err:
            restore_ipc(dst, rec)
        assert "32768 is not free" in str(err.value)
        left = in_namespace(dst, lambda: [s.id for s in dump_ipc_here().shm])
        assert left == [0]


def dump_ipc_here() -> IpcRecord:
    """The objects of the caller's own IPC namespace (inside `in_namespace`)."""
    return sysvipc._collect()


def test_a_gone_process_is_one_line() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(VzcptError, match=f"process {pid} is gone"):
        dump_ipc(pid)
