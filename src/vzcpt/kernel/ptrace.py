"""ptrace(2): seizing, stopping, registers, signal masks and queues of a task.

Tasks are always attached with PTRACE_SEIZE (no signal is sent to them) and
stopped with PTRACE_INTERRUPT. Waits use __WALL so threads are seen too.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from vzcpt.errors import ProcessGone, SyscallFailed
from vzcpt.kernel.libc import libc

PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_PEEKSIGINFO = 0x4209
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F

O_TRACEFORK = 0x2
O_TRACEVFORK = 0x4
O_TRACECLONE = 0x8
O_EXITKILL = 0x100000

EVENT_FORK = 1
EVENT_VFORK = 2
EVENT_CLONE = 3
EVENT_EXIT = 6
EVENT_STOP = 128

NT_PRSTATUS = 1
NT_X86_XSTATE = 0x202

PEEKSIGINFO_SHARED = 1
SIGINFO_SIZE = 128

__WALL = 0x40000000

_ptrace = libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


REG_NAMES: tuple[str, ...] = (
    "r15",
    "r14",
    "r13",
    "r12",
    "rbp",
    "rbx",
    "r11",
    "r10",
    "r9",
    "r8",
    "rax",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "orig_rax",
    "rip",
    "cs",
    "eflags",
    "rsp",
    "ss",
    "fs_base",
    "gs_base",
    "ds",
    "es",
    "fs",
    "gs",
)


class Regs(ctypes.Structure):
    """struct user_regs_struct (arch/x86/include/asm/user_64.h)."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in REG_NAMES]

    def copy(self) -> Regs:
        return Regs.from_buffer_copy(self)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _PeekSiginfoArgs(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("nr", ctypes.c_int32)]


class _RseqConfig(ctypes.Structure):
    _fields_ = [
        ("pointer", ctypes.c_uint64),
        ("size", ctypes.c_uint32),
        ("signature", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class RseqConfig:
    pointer: int
    size: int
    signature: int


def _call(request: int, tid: int, addr: int | None, data: object, what: str) -> int:
    result = int(_ptrace(request, tid, addr, data))
    if result == -1:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise ProcessGone(f"task {tid} is gone or not stopped ({what})")
        raise SyscallFailed(f"{what} on task {tid}", err)
    return result


def seize(tid: int, options: int = 0) -> None:
    _call(PTRACE_SEIZE, tid, None, ctypes.c_void_p(options), "PTRACE_SEIZE")


def interrupt(tid: int) -> None:
    _call(PTRACE_INTERRUPT, tid, None, None, "PTRACE_INTERRUPT")


def set_options(tid: int, options: int) -> None:
    _call(PTRACE_SETOPTIONS, tid, None, ctypes.c_void_p(options), "PTRACE_SETOPTIONS")


def detach(tid: int, sig: int = 0) -> None:
    _call(PTRACE_DETACH, tid, None, ctypes.c_void_p(sig), "PTRACE_DETACH")


def cont(tid: int, sig: int = 0) -> None:
    _call(PTRACE_CONT, tid, None, ctypes.c_void_p(sig), "PTRACE_CONT")


def singlestep(tid: int) -> None:
    _call(PTRACE_SINGLESTEP, tid, None, None, "PTRACE_SINGLESTEP")


def get_regs(tid: int) -> Regs:
    regs = Regs()
    _call(PTRACE_GETREGS, tid, None, ctypes.byref(regs), "PTRACE_GETREGS")
    return regs


def set_regs(tid: int, regs: Regs) -> None:
    _call(PTRACE_SETREGS, tid, None, ctypes.byref(regs), "PTRACE_SETREGS")


def get_event_msg(tid: int) -> int:
    value = ctypes.c_ulong()
    _call(PTRACE_GETEVENTMSG, tid, None, ctypes.byref(value), "PTRACE_GETEVENTMSG")
    return value.value


def get_regset(tid: int, note: int, size: int) -> bytes:
    """Read a register set; the kernel shortens iov.len to what it filled."""
    buf = ctypes.create_string_buffer(size)
    iov = _IoVec(ctypes.cast(buf, ctypes.c_void_p), size)
    _call(PTRACE_GETREGSET, tid, note, ctypes.byref(iov), f"PTRACE_GETREGSET {note:#x}")
    return buf.raw[: iov.len]


def set_regset(tid: int, note: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    iov = _IoVec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    _call(PTRACE_SETREGSET, tid, note, ctypes.byref(iov), f"PTRACE_SETREGSET {note:#x}")


def get_sigmask(tid: int) -> int:
    mask = ctypes.c_uint64()
    _call(PTRACE_GETSIGMASK, tid, 8, ctypes.byref(mask), "PTRACE_GETSIGMASK")
    return mask.value


def set_sigmask(tid: int, mask: int) -> None:
    value = ctypes.c_uint64(mask)
    _call(PTRACE_SETSIGMASK, tid, 8, ctypes.byref(value), "PTRACE_SETSIGMASK")


def peek_siginfo(tid: int, shared: bool) -> list[bytes]:
    """Every queued siginfo of the thread (or of the process, when shared), without dequeuing."""
    out: list[bytes] = []
    batch = 32
    buf = ctypes.create_string_buffer(SIGINFO_SIZE * batch)
    while True:
        args = _PeekSiginfoArgs(len(out), PEEKSIGINFO_SHARED if shared else 0, batch)
        n = _call(PTRACE_PEEKSIGINFO, tid, ctypes.addressof(args), buf, "PTRACE_PEEKSIGINFO")
        out.extend(buf.raw[i * SIGINFO_SIZE : (i + 1) * SIGINFO_SIZE] for i in range(n))
        if n < batch:
            return out


def get_rseq(tid: int) -> RseqConfig:
    conf = _RseqConfig()
    _call(
        PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        ctypes.sizeof(conf),
        ctypes.byref(conf),
        "PTRACE_GET_RSEQ_CONFIGURATION",
    )
    return RseqConfig(conf.pointer, conf.size, conf.signature)


@dataclass(frozen=True)
class WaitStatus:
    """A decoded waitpid status."""

    tid: int
    status: int

    @property
    def stopped(self) -> bool:
        return os.WIFSTOPPED(self.status)

    @property
    def exited(self) -> bool:
        return os.WIFEXITED(self.status) or os.WIFSIGNALED(self.status)

    @property
    def stop_sig(self) -> int:
        return os.WSTOPSIG(self.status) if self.stopped else 0

    @property
    def event(self) -> int:
        return self.status >> 16


def wait(tid: int, nohang: bool = False) -> WaitStatus:
    flags = __WALL | (os.WNOHANG if nohang else 0)
    while True:
        try:
            got, status = os.waitpid(tid, flags)
        except InterruptedError:
            continue
        except ChildProcessError as exc:
            raise ProcessGone(f"task {tid} is gone (waitpid)") from exc
        return WaitStatus(got, status)
