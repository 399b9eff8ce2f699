"""Running syscalls inside a stopped task, with no code of ours in it.

The task is stopped (seized). To make it perform syscall N we point its `rip`
at two bytes `0f 05` (`syscall`) somewhere in its executable memory, put N
and the arguments in the registers, set `orig_rax` to -1 so the kernel does
not treat the stop as an interrupted syscall to restart, and single-step:
the task traps right after the syscall returns, with the result in `rax`.
Its own registers are put back by `restore_regs()`.

Arguments that point to memory need memory in the task: `scratch` is a
private mapping we place in it (`map_scratch`) and remove afterwards.
"""

from __future__ import annotations

import ctypes
import signal
from collections.abc import Sequence

from vzcpt.errors import ProcessGone, SyscallFailed, VzcptError
from vzcpt.kernel import nr, ptrace, vm
from vzcpt.kernel.ptrace import Regs

PROT_READ = 1
PROT_WRITE = 2
PROT_EXEC = 4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x100
MAP_FIXED_NOREPLACE = 0x100000

SCRATCH_SIZE = 512 * 1024
# Layout of the scratch area: single calls put their arguments in the first
# 64 KiB; then comes the batch runner's code, then its table of calls.
BATCH_CODE = 64 * 1024
BATCH_TABLE = 128 * 1024
BATCH_ENTRY = 64
BATCH_MAX = (SCRATCH_SIZE - BATCH_TABLE) // BATCH_ENTRY - 1

# The batch runner: rbx points to a table of 64-byte entries (nr, six
# arguments, result). It makes each call in turn, stores the result, stops at
# the first error or at nr == -1, and traps (int3) back to us. One round trip
# for thousands of syscalls instead of one each.
BATCH_RUNNER = bytes.fromhex(
    "488b03"  # 00: mov rax, [rbx]
    "4883f8ff"  # 03: cmp rax, -1
    "742c"  # 07: je done
    "488b7b08"  # 09: mov rdi, [rbx+8]
    "488b7310"  # 0d: mov rsi, [rbx+16]
    "488b5318"  # 11: mov rdx, [rbx+24]
    "4c8b5320"  # 15: mov r10, [rbx+32]
    "4c8b4328"  # 19: mov r8, [rbx+40]
    "4c8b4b30"  # 1d: mov r9, [rbx+48]
    "0f05"  # 21: syscall
    "48894338"  # 23: mov [rbx+56], rax
    "483d01f0ffff"  # 27: cmp rax, -4095
    "7306"  # 2d: jae done (an error)
    "4883c340"  # 2f: add rbx, 64
    "ebcb"  # 33: jmp 00
    "cc"  # 35: done: int3
)
ALL_SIGNALS = (1 << 64) - 1


def errno_of(result: int) -> int:
    """The errno encoded in a raw syscall result, or 0 on success."""
    return -result if -4096 < result < 0 else 0


def to_signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class RemoteTask:
    """One stopped thread that we drive through injected syscalls."""

    def __init__(self, tid: int, gadget: int, scratch: int = 0) -> None:
        self.tid = tid
        self.gadget = gadget  # address of a `syscall` instruction in the task
        self.scratch = scratch  # address of our scratch mapping, 0 until mapped
        self.saved_regs = ptrace.get_regs(tid)
        self.saved_sigmask = ptrace.get_sigmask(tid)
        # Block everything while we work: a signal arriving now would be
        # dequeued into a signal-delivery stop and lost to the program.
        ptrace.set_sigmask(tid, ALL_SIGNALS)
        self.spawned: list[int] = []  # tids reported by fork/clone events
        self._runner_ready = False

    # --- syscalls -------------------------------------------------------

    def call_raw(self, number: int, *args: int) -> int:
        """Run one syscall in the task; return the raw (signed) result."""
        regs = self.saved_regs.copy()
        regs.rax = number
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args, strict=False):
            setattr(regs, name, value & ((1 << 64) - 1))
        regs.orig_rax = (1 << 64) - 1
        regs.rip = self.gadget
        if self.scratch:
            # Off the program's stack: sigaltstack() refuses while on the alt stack.
            regs.rsp = self.scratch + SCRATCH_SIZE - 64
        ptrace.set_regs(self.tid, regs)
        ptrace.singlestep(self.tid)
        while True:
            status = ptrace.wait(self.tid)
            if status.exited:
                raise ProcessGone(f"task {self.tid} died running syscall {number}")
            if status.event in (ptrace.EVENT_FORK, ptrace.EVENT_VFORK, ptrace.EVENT_CLONE):
                self.spawned.append(ptrace.get_event_msg(self.tid))
                ptrace.singlestep(self.tid)
                continue
            if status.stop_sig == signal.SIGTRAP and status.event == 0:
                break
            if status.event == ptrace.EVENT_STOP:
                ptrace.singlestep(self.tid)
                continue
            raise VzcptError(
                f"task {self.tid} stopped with signal {status.stop_sig} "
                f"while running syscall {number}"
            )
        return to_signed(ptrace.get_regs(self.tid).rax)

    def call(self, number: int, *args: int, what: str = "") -> int:
        """Run one syscall in the task; raise SyscallFailed on an error."""
        result = self.call_raw(number, *args)
        err = errno_of(result)
        if err:
            raise SyscallFailed(f"{what or f'syscall {number}'} in task {self.tid}", err)
        return result

    def batch(self, calls: Sequence[tuple[int, ...]], what: str = "") -> list[int]:
        """Run many syscalls in one round trip; raise on the first that fails.

        Each call is (nr, args...). Arguments pointing into memory must not
        point into the batch table; the first 64 KiB of scratch are free.
        """
        results: list[int] = []
        for first in range(0, len(calls), BATCH_MAX):
            results += self._batch(calls[first : first + BATCH_MAX], what)
        return results

    def _batch(self, calls: Sequence[tuple[int, ...]], what: str) -> list[int]:
        if not self._runner_ready:
            self.write(self.scratch + BATCH_CODE, BATCH_RUNNER)
            self._runner_ready = True
        table = bytearray(BATCH_ENTRY * (len(calls) + 1))
        for i, (number, *args) in enumerate(calls):
            words = [number, *args, *([0] * (6 - len(args))), 0]
            table[i * BATCH_ENTRY : (i + 1) * BATCH_ENTRY] = b"".join(
                (w & ((1 << 64) - 1)).to_bytes(8, "little") for w in words
            )
        table[-BATCH_ENTRY:] = ((1 << 64) - 1).to_bytes(8, "little") * 8
        self.write(self.scratch + BATCH_TABLE, bytes(table))
        regs = self.saved_regs.copy()
        regs.rbx = self.scratch + BATCH_TABLE
        regs.rip = self.scratch + BATCH_CODE
        regs.rsp = self.scratch + BATCH_CODE - 64
        regs.orig_rax = (1 << 64) - 1
        ptrace.set_regs(self.tid, regs)
        ptrace.cont(self.tid, 0)
        while True:
            status = ptrace.wait(self.tid)
            if status.exited:
                raise ProcessGone(f"task {self.tid} died running a batch of syscalls")
            if status.stop_sig == signal.SIGTRAP and status.event == 0:
                break
            if status.event == ptrace.EVENT_STOP:
                ptrace.cont(self.tid, 0)
                continue
            raise VzcptError(
                f"task {self.tid} stopped with signal {status.stop_sig} in a batch of syscalls"
            )
        done = self.read(self.scratch + BATCH_TABLE, BATCH_ENTRY * len(calls))
        results = []
        for i, call in enumerate(calls):
            result = to_signed(int.from_bytes(done[i * 64 + 56 : i * 64 + 64], "little"))
            err = errno_of(result)
            if err:
                raise SyscallFailed(f"{what or 'syscall'} {call[0]} in task {self.tid}", err)
            results.append(result)
        return results

    # --- memory ---------------------------------------------------------

    def map_scratch(self, address: int = 0) -> int:
        """Map our scratch area (at `address` when given) and return it."""
        flags = MAP_PRIVATE | MAP_ANONYMOUS | (MAP_FIXED_NOREPLACE if address else 0)
        self.scratch = self.call(
            nr.MMAP,
            address,
            SCRATCH_SIZE,
            PROT_READ | PROT_WRITE | PROT_EXEC,
            flags,
            -1,
            0,
            what="mmap of the scratch area",
        )
        return self.scratch

    def unmap_scratch(self) -> None:
        if self.scratch:
            self.call(nr.MUNMAP, self.scratch, SCRATCH_SIZE, what="munmap of the scratch area")
            self.scratch = 0

    def write(self, address: int, data: bytes) -> None:
        buf = bytearray(data)
        vm.write_ranges(self.tid, [(address, len(buf))], buf)

    def read(self, address: int, length: int) -> bytes:
        buf = bytearray(length)
        vm.read_ranges(self.tid, [(address, length)], buf)
        return bytes(buf)

    def put(self, offset: int, data: bytes | ctypes.Structure) -> int:
        """Write data at scratch+offset; return its address in the task."""
        raw = bytes(data) if isinstance(data, ctypes.Structure) else data
        if offset + len(raw) > SCRATCH_SIZE:
            raise VzcptError(f"{len(raw)} bytes do not fit the scratch area")
        self.write(self.scratch + offset, raw)
        return self.scratch + offset

    def get(self, offset: int, length: int) -> bytes:
        return self.read(self.scratch + offset, length)

    # --- leaving ----------------------------------------------------------

    def restore_regs(self, regs: Regs | None = None, sigmask: int | None = None) -> None:
        """Put the task's own registers and signal mask back (or the given ones)."""
        ptrace.set_regs(self.tid, regs if regs is not None else self.saved_regs)
        ptrace.set_sigmask(self.tid, sigmask if sigmask is not None else self.saved_sigmask)
