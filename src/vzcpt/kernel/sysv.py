"""System V IPC: shared memory, semaphores and message queues (raw syscalls).

Raw syscalls rather than glibc's wrappers: the kernel's x86_64 structures
(include/uapi/asm-generic/ipcbuf.h, shmbuf.h, msgbuf.h and
arch/x86/include/uapi/asm/sembuf.h) are then exactly what we pass, with no
libc translation and no variadic semctl. x86_64 has no IPC_64 flag to add
(the kernel always speaks the 64-bit layouts there).

Every call works on the IPC namespace of the calling process; each raises
`SyscallFailed` with the errno, except where a documented "absent" result is
returned instead.
"""

from __future__ import annotations

import ctypes
import errno

from vzcpt.errors import SyscallFailed
from vzcpt.kernel import nr
from vzcpt.kernel.libc import syscall

# x86_64 syscall numbers not in nr.py (which is frozen)
_NR_SEMGET = 64
_NR_SEMCTL = 66
_NR_MSGGET = 68
_NR_MSGSND = 69
_NR_MSGRCV = 70
_NR_MSGCTL = 71

# include/uapi/linux/ipc.h, shm.h, sem.h, msg.h
IPC_PRIVATE = 0
IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_NOWAIT = 0o4000
IPC_RMID = 0
IPC_SET = 1
IPC_STAT = 2
IPC_INFO = 3
SHM_LOCK = 11
SHM_STAT = 13
SHM_INFO = 14
SHM_STAT_ANY = 15
SHM_RDONLY = 0o10000
SHM_DEST = 0o1000  # in shm_perm.mode: marked for removal (IPC_RMID while attached)
SHM_LOCKED = 0o2000  # in shm_perm.mode: SHM_LOCK'ed
GETALL = 13
SETALL = 17
SEM_STAT = 18
SEM_INFO = 19
SEM_STAT_ANY = 20
MSG_STAT = 11
MSG_INFO = 12
MSG_STAT_ANY = 13
MSG_COPY = 0o40000  # msgrcv: copy the message at index msgtyp, leave it queued


class IpcPerm(ctypes.Structure):
    """struct ipc64_perm."""

    _fields_ = [
        ("key", ctypes.c_int32),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("cuid", ctypes.c_uint32),
        ("cgid", ctypes.c_uint32),
        ("mode", ctypes.c_uint32),
        ("seq", ctypes.c_uint16),
        ("_pad2", ctypes.c_uint16),
        ("_unused1", ctypes.c_ulong),
        ("_unused2", ctypes.c_ulong),
    ]


class ShmidDs(ctypes.Structure):
    """struct shmid64_ds (asm-generic, 64-bit longs)."""

    _fields_ = [
        ("perm", IpcPerm),
        ("segsz", ctypes.c_size_t),
        ("atime", ctypes.c_long),
        ("dtime", ctypes.c_long),
        ("ctime", ctypes.c_long),
        ("cpid", ctypes.c_int32),
        ("lpid", ctypes.c_int32),
        ("nattch", ctypes.c_ulong),
        ("_unused4", ctypes.c_ulong),
        ("_unused5", ctypes.c_ulong),
    ]


class SemidDs(ctypes.Structure):
    """struct semid64_ds (arch/x86, x86_64 branch)."""

    _fields_ = [
        ("perm", IpcPerm),
        ("otime", ctypes.c_long),
        ("_unused1", ctypes.c_ulong),
        ("ctime", ctypes.c_long),
        ("_unused2", ctypes.c_ulong),
        ("nsems", ctypes.c_ulong),
        ("_unused3", ctypes.c_ulong),
        ("_unused4", ctypes.c_ulong),
    ]


class MsqidDs(ctypes.Structure):
    """struct msqid64_ds (asm-generic, 64-bit longs)."""

    _fields_ = [
        ("perm", IpcPerm),
        ("stime", ctypes.c_long),
        ("rtime", ctypes.c_long),
        ("ctime", ctypes.c_long),
        ("cbytes", ctypes.c_ulong),
        ("qnum", ctypes.c_ulong),
        ("qbytes", ctypes.c_ulong),
        ("lspid", ctypes.c_int32),
        ("lrpid", ctypes.c_int32),
        ("_unused4", ctypes.c_ulong),
        ("_unused5", ctypes.c_ulong),
    ]


# The kernel's sizes; a wrong layout would silently read garbage.
assert ctypes.sizeof(IpcPerm) == 48
assert ctypes.sizeof(ShmidDs) == 112
assert ctypes.sizeof(SemidDs) == 104
assert ctypes.sizeof(MsqidDs) == 120

_INFO_BUF = 128  # larger than struct shm_info, seminfo and msginfo


# ------------------------------------------------------------ shared memory


def shmget(key: int, size: int, flags: int) -> int:
    """shmget(2): the id of the (new) segment."""
    return syscall(nr.SHMGET, key, size, flags, what=f"shmget(key {key:#x}, {size} bytes)")


def shm_stat(shmid: int) -> ShmidDs:
    ds = ShmidDs()
    syscall(nr.SHMCTL, shmid, IPC_STAT, ctypes.addressof(ds), what=f"shmctl({shmid}, IPC_STAT)")
    return ds


def shm_size(shmid: int) -> int | None:
    """The size of segment `shmid`, or None when it does not exist."""
    try:
        return int(shm_stat(shmid).segsz)
    except SyscallFailed:
        return None


def shm_set(shmid: int, uid: int, gid: int, mode: int) -> None:
    """IPC_SET: owner and the permission bits (the kernel takes mode & 0777)."""
    ds = shm_stat(shmid)
    ds.perm.uid, ds.perm.gid, ds.perm.mode = uid, gid, mode
    syscall(nr.SHMCTL, shmid, IPC_SET, ctypes.addressof(ds), what=f"shmctl({shmid}, IPC_SET)")


def shm_lock(shmid: int) -> None:
    syscall(nr.SHMCTL, shmid, SHM_LOCK, 0, what=f"shmctl({shmid}, SHM_LOCK)")


def shm_remove(shmid: int) -> None:
    syscall(nr.SHMCTL, shmid, IPC_RMID, 0, what=f"shmctl({shmid}, IPC_RMID)")


def shm_max_index() -> int:
    """The highest index in use in the shm table (SHM_INFO), -1 when empty."""
    buf = ctypes.create_string_buffer(_INFO_BUF)
    return syscall(nr.SHMCTL, 0, SHM_INFO, ctypes.addressof(buf), what="shmctl(SHM_INFO)")


def shm_stat_index(index: int) -> tuple[int, ShmidDs] | None:
    """(id, state) of the segment at table `index`, None for a free slot.

    SHM_STAT_ANY ignores the segment's permissions (a VE's objects may be
    mode 0); it returns the full id for an index.
    """
    ds = ShmidDs()
    try:
        shmid = syscall(
            nr.SHMCTL, index, SHM_STAT_ANY, ctypes.addressof(ds), what="shmctl(SHM_STAT_ANY)"
        )
    except SyscallFailed as e:
        if e.errno in (errno.EINVAL, errno.EIDRM):
            return None
        raise
    return shmid, ds


def _shmat(shmid: int, flags: int) -> int:
    return syscall(nr.SHMAT, shmid, 0, flags, what=f"shmat({shmid})")


def _shmdt(addr: int) -> None:
    syscall(nr.SHMDT, addr, what="shmdt")


def shm_read(shmid: int, size: int) -> bytes:
    """The first `size` bytes of a segment (attached read-only, then detached)."""
    addr = _shmat(shmid, SHM_RDONLY)
    try:
        return ctypes.string_at(addr, size)
    finally:
        _shmdt(addr)


def shm_write(shmid: int, data: bytes) -> None:
    """Copy `data` to the start of a segment."""
    if not data:
        return
    addr = _shmat(shmid, 0)
    try:
        ctypes.memmove(addr, data, len(data))
    finally:
        _shmdt(addr)


# --------------------------------------------------------------- semaphores


def semget(key: int, nsems: int, flags: int) -> int:
    return syscall(_NR_SEMGET, key, nsems, flags, what=f"semget(key {key:#x}, {nsems} sems)")


def sem_stat(semid: int) -> SemidDs:
    ds = SemidDs()
    syscall(_NR_SEMCTL, semid, 0, IPC_STAT, ctypes.addressof(ds), what=f"semctl({semid}, IPC_STAT)")
    return ds


def sem_set(semid: int, uid: int, gid: int, mode: int) -> None:
    ds = sem_stat(semid)
    ds.perm.uid, ds.perm.gid, ds.perm.mode = uid, gid, mode
    syscall(_NR_SEMCTL, semid, 0, IPC_SET, ctypes.addressof(ds), what=f"semctl({semid}, IPC_SET)")


def sem_remove(semid: int) -> None:
    syscall(_NR_SEMCTL, semid, 0, IPC_RMID, 0, what=f"semctl({semid}, IPC_RMID)")


def sem_max_index() -> int:
    buf = ctypes.create_string_buffer(_INFO_BUF)
    return syscall(_NR_SEMCTL, 0, 0, SEM_INFO, ctypes.addressof(buf), what="semctl(SEM_INFO)")


def sem_stat_index(index: int) -> tuple[int, SemidDs] | None:
    ds = SemidDs()
    try:
        semid = syscall(
            _NR_SEMCTL, index, 0, SEM_STAT_ANY, ctypes.addressof(ds), what="semctl(SEM_STAT_ANY)"
        )
    except SyscallFailed as e:
        if e.errno in (errno.EINVAL, errno.EIDRM):
            return None
        raise
    return semid, ds


def sem_getall(semid: int, nsems: int) -> list[int]:
    arr = (ctypes.c_ushort * max(nsems, 1))()
    syscall(_NR_SEMCTL, semid, 0, GETALL, ctypes.addressof(arr), what=f"semctl({semid}, GETALL)")
    return [int(v) for v in arr[:nsems]]


def sem_setall(semid: int, values: list[int]) -> None:
    arr = (ctypes.c_ushort * max(len(values), 1))(*values)
    syscall(_NR_SEMCTL, semid, 0, SETALL, ctypes.addressof(arr), what=f"semctl({semid}, SETALL)")


# ----------------------------------------------------------- message queues


def msgget(key: int, flags: int) -> int:
    return syscall(_NR_MSGGET, key, flags, what=f"msgget(key {key:#x})")


def msg_stat(msqid: int) -> MsqidDs:
    ds = MsqidDs()
    syscall(_NR_MSGCTL, msqid, IPC_STAT, ctypes.addressof(ds), what=f"msgctl({msqid}, IPC_STAT)")
    return ds


def msg_set(msqid: int, uid: int, gid: int, mode: int, qbytes: int) -> None:
    """IPC_SET: owner, permission bits and the queue's byte limit."""
    ds = msg_stat(msqid)
    ds.perm.uid, ds.perm.gid, ds.perm.mode, ds.qbytes = uid, gid, mode, qbytes
    syscall(_NR_MSGCTL, msqid, IPC_SET, ctypes.addressof(ds), what=f"msgctl({msqid}, IPC_SET)")


def msg_remove(msqid: int) -> None:
    syscall(_NR_MSGCTL, msqid, IPC_RMID, 0, what=f"msgctl({msqid}, IPC_RMID)")


def msg_max_index() -> int:
    buf = ctypes.create_string_buffer(_INFO_BUF)
    return syscall(_NR_MSGCTL, 0, MSG_INFO, ctypes.addressof(buf), what="msgctl(MSG_INFO)")


def msg_stat_index(index: int) -> tuple[int, MsqidDs] | None:
    ds = MsqidDs()
    try:
        msqid = syscall(
            _NR_MSGCTL, index, MSG_STAT_ANY, ctypes.addressof(ds), what="msgctl(MSG_STAT_ANY)"
        )
    except SyscallFailed as e:
        if e.errno in (errno.EINVAL, errno.EIDRM):
            return None
        raise
    return msqid, ds


def _msgbuf(maxsize: int) -> ctypes.Array[ctypes.c_char]:
    # struct msgbuf: long mtype, then the text
    return ctypes.create_string_buffer(8 + maxsize)


def msg_copy(msqid: int, index: int, maxsize: int) -> tuple[int, bytes] | None:
    """(type, text) of the message at `index`, left in the queue; None past the end.

    MSG_COPY needs CONFIG_CHECKPOINT_RESTORE (ENOSYS otherwise).
    """
    buf = _msgbuf(maxsize)
    try:
        n = syscall(
            _NR_MSGRCV,
            msqid,
            ctypes.addressof(buf),
            maxsize,
            index,
            MSG_COPY | IPC_NOWAIT,
            what=f"msgrcv({msqid}, MSG_COPY of message {index})",
        )
    except SyscallFailed as e:
        if e.errno == errno.ENOMSG:
            return None
        raise
    return int.from_bytes(buf.raw[:8], "little", signed=True), buf.raw[8 : 8 + n]


def msg_receive(msqid: int, maxsize: int) -> tuple[int, bytes] | None:
    """Take the first message of the queue (type, text); None when empty."""
    buf = _msgbuf(maxsize)
    try:
        n = syscall(
            _NR_MSGRCV,
            msqid,
            ctypes.addressof(buf),
            maxsize,
            0,
            IPC_NOWAIT,
            what=f"msgrcv({msqid})",
        )
    except SyscallFailed as e:
        if e.errno == errno.ENOMSG:
            return None
        raise
    return int.from_bytes(buf.raw[:8], "little", signed=True), buf.raw[8 : 8 + n]


def msg_send(msqid: int, mtype: int, text: bytes) -> None:
    """msgsnd(2) without waiting: a full queue is an error (EAGAIN), not a hang."""
    buf = ctypes.create_string_buffer(mtype.to_bytes(8, "little", signed=True) + text)
    syscall(
        _NR_MSGSND,
        msqid,
        ctypes.addressof(buf),
        len(text),
        IPC_NOWAIT,
        what=f"msgsnd({msqid}, type {mtype})",
    )
