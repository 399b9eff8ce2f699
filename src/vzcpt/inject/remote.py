"""Running syscalls inside a stopped task, with as little code of ours in it as can be.

The task is stopped (seized). To make it perform syscall N we point its `rip`
at two bytes `0f 05` (`syscall`) somewhere in its executable memory, put N
and the arguments in the registers, set `orig_rax` to -1 so the kernel does
not treat the stop as an interrupted syscall to restart, and single-step:
the task traps right after the syscall returns, with the result in `rax`
(`call_raw`). Its own registers are put back by `restore_regs()`.

Arguments that point to memory need memory in the task: `scratch` is a
private mapping we place in it (`map_scratch`) and remove afterwards.

Batches. A ptrace round trip (registers in, resume, wait for the stop, the
result out) costs far more than the syscall it carries, and rebuilding a
process takes dozens of calls. Once the scratch area is mapped, calls are
therefore *queued* on the task and run together: a 64-byte runner in the
scratch area walks a table of them, one round trip for all (`call` goes
that way too, with whatever was queued before it). The rule that keeps the
order obvious: queued calls run, in the order they were queued, before
anything else we make the task do, before we read its memory or put its
registers back, and at `flush()`. Code that acts on the task from outside
(writing its pages from the restorer, say) flushes first; work on the task
from another thread is waited for (`after`). A queued call carries the
memory its arguments point to (bytes in its argument list), so no later
`put` can overwrite it before it runs.
"""

from __future__ import annotations

import ctypes
import signal
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vzcpt.errors import ProcessGone, SyscallFailed, VzcptError
from vzcpt.kernel import nr, ptrace, vm
from vzcpt.kernel.ptrace import Regs

if TYPE_CHECKING:
    from concurrent.futures import Future

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
# Layout of the scratch area: `put` places the arguments of single calls in
# the first 64 KiB; then comes the batch runner's code, then its table of
# calls followed by the memory those calls point to.
BATCH_CODE = 64 * 1024
BATCH_TABLE = 128 * 1024
BATCH_ENTRY = 64
BATCH_SPACE = SCRATCH_SIZE - BATCH_TABLE
U64 = (1 << 64) - 1
MAY_FAIL = 1  # entry flag: a failure of this call does not stop the batch

# The batch runner. rbx points to a table of 64-byte entries: nr, six
# arguments, and a last word that holds the entry's flags going in and the
# call's result coming out. It makes each call in turn, stores the result,
# stops at the first error of a call without MAY_FAIL or at nr == -1, and
# traps (int3) back to us. (r12 is free to use: the task gets all of its
# registers back from us before it runs its own code again.)
BATCH_RUNNER = bytes.fromhex(
    "488b03"  # 00: mov rax, [rbx]
    "4883f8ff"  # 03: cmp rax, -1
    "7436"  # 07: je done
    "488b7b08"  # 09: mov rdi, [rbx+8]
    "488b7310"  # 0d: mov rsi, [rbx+16]
    "488b5318"  # 11: mov rdx, [rbx+24]
    "4c8b5320"  # 15: mov r10, [rbx+32]
    "4c8b4328"  # 19: mov r8, [rbx+40]
    "4c8b4b30"  # 1d: mov r9, [rbx+48]
    "4c8b6338"  # 21: mov r12, [rbx+56]  (flags)
    "0f05"  # 25: syscall
    "48894338"  # 27: mov [rbx+56], rax
    "41f6c401"  # 2b: test r12b, MAY_FAIL
    "7508"  # 2f: jnz next
    "483d01f0ffff"  # 31: cmp rax, -4095
    "7306"  # 37: jae done (an error)
    "4883c340"  # 39: next: add rbx, 64
    "ebc1"  # 3d: jmp 00
    "cc"  # 3f: done: int3
)
_ENTRY = struct.Struct("<8Q")
_END_ENTRY = _ENTRY.pack(*[U64] * 8)
_ZEROS = [[0] * (6 - n) for n in range(7)]  # the unused arguments of a call with n
ALL_SIGNALS = (1 << 64) - 1
_SPAWN_EVENTS = (ptrace.EVENT_FORK, ptrace.EVENT_VFORK, ptrace.EVENT_CLONE)


def errno_of(result: int) -> int:
    """The errno encoded in a raw syscall result, or 0 on success."""
    return -result if -4096 < result < 0 else 0


def to_signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class Placed:
    """Memory for an argument whose bytes depend on where they land (a struct
    that points into itself): `fill(address)` gives its `size` bytes."""

    size: int
    fill: Callable[[int], bytes]


Arg = int | bytes | Placed


@dataclass(eq=False, slots=True)
class Syscall:
    """One queued syscall.

    `args` are numbers, or memory: bytes (or Placed) that go into the task
    with the call, the argument being their address there. Once the call
    has run, `result` is its raw (signed) return value and `memory` what
    each memory argument held after it, in order (for calls that fill in a
    buffer). A call that may fail does not stop its batch; `on_failure`,
    if given, is called with it after the round trip (and may queue more).
    """

    number: int
    args: tuple[Arg, ...]
    what: str
    may_fail: bool = False
    on_failure: Callable[[Syscall], None] | None = None
    data_size: int = 0  # bytes its memory arguments take in the batch area
    result: int | None = None
    memory: tuple[bytes, ...] = ()

    @property
    def errno(self) -> int:
        """The call's errno, 0 if it succeeded (or has not run)."""
        return errno_of(self.result) if self.result is not None else 0

    @property
    def value(self) -> int:
        """The result of a call that has run."""
        if self.result is None:
            raise VzcptError(f"{self.what}: read before the call ran")
        return self.result

    def word(self, index: int = 0, offset: int = 0, size: int = 8) -> int:
        """An unsigned little-endian number the call left in its memory argument `index`."""
        if self.result is None:
            raise VzcptError(f"{self.what}: read before the call ran")
        return int.from_bytes(self.memory[index][offset : offset + size], "little")


def _size(arg: bytes | Placed) -> int:
    return arg.size if isinstance(arg, Placed) else len(arg)


def _padded(n: int) -> int:
    return (n + 7) & ~7


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
        self.pending: list[Syscall] = []  # queued, not yet run
        self.outside: list[Future[object]] = []  # work on the task from outside, in flight
        self._runner_ready = False

    # --- syscalls -------------------------------------------------------

    def queue(
        self,
        number: int,
        *args: Arg,
        what: str,
        may_fail: bool = False,
        on_failure: Callable[[Syscall], None] | None = None,
    ) -> Syscall:
        """Queue a syscall to run with the next round trip (see the module's notes).

        A failure stops the batch there and is raised as SyscallFailed naming
        `what`, unless the call `may_fail` or has an `on_failure` handler.
        """
        if len(args) > 6:
            raise ValueError(f"{what}: a syscall takes at most six arguments")
        size = sum(_padded(_size(a)) for a in args if not isinstance(a, int))
        if size + 2 * BATCH_ENTRY > BATCH_SPACE:
            raise VzcptError(f"{what}: {size} bytes of arguments do not fit")
        call = Syscall(number, args, what, may_fail or on_failure is not None, on_failure, size)
        self.pending.append(call)
        return call

    def after(self, work: Future[object]) -> None:
        """Note work done on the task from another thread (its pages being
        written): whatever the task does for us next waits for it to end."""
        self.outside.append(work)

    def flush(self) -> None:
        """Wait for the work from outside, then run every queued call, in as few
        round trips as the scratch area allows."""
        while self.outside:
            self.outside.pop(0).result()  # its error, if any, is ours
        while self.pending:
            if not self.scratch:
                raise VzcptError(f"task {self.tid}: queued calls but no scratch area to run them")
            used = size = 0
            for call in self.pending:
                need = BATCH_ENTRY + call.data_size
                if used and size + need + BATCH_ENTRY > BATCH_SPACE:
                    break
                used += 1
                size += need
            chunk, self.pending = self.pending[:used], self.pending[used:]
            try:
                self._run(chunk)
            except BaseException:
                self.pending = []  # what follows a failed call must not run later
                raise

    def call(self, number: int, *args: Arg, what: str = "") -> int:
        """Run the queued calls and then this one; return its result, raise if it failed.

        One round trip for all of them once the scratch area is mapped;
        before that, a single step.
        """
        if not self.scratch:
            if not all(isinstance(a, int) for a in args):
                raise VzcptError(f"{what}: memory arguments need the scratch area")
            return self.step(number, *[a for a in args if isinstance(a, int)], what=what)
        done = self.queue(number, *args, what=what or f"syscall {number}")
        self.flush()
        assert done.result is not None
        return done.result

    def step(self, number: int, *args: int, what: str = "") -> int:
        """call_raw, raising SyscallFailed if the call failed."""
        result = self.call_raw(number, *args)
        if errno_of(result):
            raise SyscallFailed(f"{what or f'syscall {number}'} in task {self.tid}", -result)
        return result

    def call_raw(self, number: int, *args: int) -> int:
        """Run one syscall by single-stepping over the gadget; return the raw result.

        Needs no scratch area, and no code of ours left to return to: what
        maps and unmaps the scratch area itself goes this way. Queued calls
        run first.
        """
        self.flush()
        regs = self.saved_regs.copy()
        regs.rax = number
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args, strict=False):
            setattr(regs, name, value & U64)
        regs.orig_rax = U64
        regs.rip = self.gadget
        if self.scratch:
            # Off the program's stack: sigaltstack() refuses while on the alt stack.
            regs.rsp = self.scratch + SCRATCH_SIZE - 64
        ptrace.set_regs(self.tid, regs)
        self._resume_until_trap(step=True, what=f"syscall {number}")
        return to_signed(ptrace.get_regs(self.tid).rax)

    def batch(self, calls: Sequence[tuple[int, ...]], what: str = "") -> list[int]:
        """Run the queued calls and then these, (nr, args...) each; return their results.

        Raises on the first that fails. Arguments pointing into memory may
        point anywhere in the first 64 KiB of the scratch area (`put`).
        """
        queued = [self.queue(n, *args, what=f"{what or 'syscall'} {n}") for n, *args in calls]
        self.flush()
        return [c.value for c in queued]

    def _run(self, calls: list[Syscall]) -> None:
        """One round trip of the batch runner over `calls` (which fit the table)."""
        table_end = BATCH_TABLE + BATCH_ENTRY * (len(calls) + 1)
        table = bytearray(table_end - BATCH_TABLE)
        data = bytearray()
        spans: list[list[tuple[int, int]]] = []  # per call: (offset, length) of its memory
        for i, call in enumerate(calls):
            flags = MAY_FAIL if call.may_fail else 0
            if not call.data_size:  # numbers only: the common case, kept quick
                pad = _ZEROS[len(call.args)]
                words = [a & U64 for a in call.args if isinstance(a, int)]
                _ENTRY.pack_into(table, i * BATCH_ENTRY, call.number, *words, *pad, flags)
                spans.append([])
                continue
            words = [call.number]
            mine = []
            for arg in call.args:
                if isinstance(arg, int):
                    words.append(arg & U64)
                    continue
                address = self.scratch + table_end + len(data)
                raw = arg.fill(address) if isinstance(arg, Placed) else arg
                if len(raw) != _size(arg):
                    raise ValueError(
                        f"{call.what}: Placed memory of {len(raw)} bytes, not {_size(arg)}"
                    )
                mine.append((len(data), len(raw)))
                words.append(address)
                data += raw.ljust(_padded(len(raw)), b"\0")
            spans.append(mine)
            words += _ZEROS[len(words) - 1]
            words.append(flags)
            _ENTRY.pack_into(table, i * BATCH_ENTRY, *words)
        table[-BATCH_ENTRY:] = _END_ENTRY
        ranges = [(self.scratch + BATCH_TABLE, len(table) + len(data))]
        out = table + data
        if not self._runner_ready:  # written with the first table, in the same syscall
            ranges.insert(0, (self.scratch + BATCH_CODE, len(BATCH_RUNNER)))
            out = bytearray(BATCH_RUNNER) + out
            self._runner_ready = True
        vm.write_ranges(self.tid, ranges, out)
        regs = self.saved_regs.copy()
        regs.rbx = self.scratch + BATCH_TABLE
        regs.rip = self.scratch + BATCH_CODE
        regs.rsp = self.scratch + BATCH_CODE - 64
        regs.orig_rax = U64
        ptrace.set_regs(self.tid, regs)
        self._resume_until_trap(step=False, what="a batch of syscalls")
        # Table and memory back in one read: results, and what the calls wrote.
        back = bytearray(len(table) + len(data))
        vm.read_ranges(self.tid, [(self.scratch + BATCH_TABLE, len(back))], back)
        results = memoryview(back)[: len(table)].cast("q")[7::8].tolist()
        failed: list[Syscall] = []
        for i, (call, mine) in enumerate(zip(calls, spans, strict=True)):
            call.result = results[i]
            call.memory = tuple(
                bytes(back[len(table) + at : len(table) + at + n]) for at, n in mine
            )
            if not errno_of(call.result):
                continue
            if not call.may_fail:
                for later in calls[i + 1 :]:  # the runner stopped: these never ran
                    later.result = None
                    later.memory = ()
                raise SyscallFailed(f"{call.what} in task {self.tid}", errno_of(call.result))
            if call.on_failure is not None:
                failed.append(call)
        for call in failed:
            assert call.on_failure is not None
            call.on_failure(call)

    def _resume_until_trap(self, *, step: bool, what: str) -> None:
        """Let the task run (or single-step) until our trap; note tasks it spawns."""
        resume = ptrace.singlestep if step else (lambda tid: ptrace.cont(tid, 0))
        resume(self.tid)
        while True:
            status = ptrace.wait(self.tid)
            if status.exited:
                raise ProcessGone(f"task {self.tid} died running {what}")
            if status.event in _SPAWN_EVENTS:
                self.spawned.append(ptrace.get_event_msg(self.tid))
            elif status.stop_sig == signal.SIGTRAP and status.event == 0:
                return
            elif status.event != ptrace.EVENT_STOP:
                raise VzcptError(
                    f"task {self.tid} stopped with signal {status.stop_sig} while running {what}"
                )
            resume(self.tid)

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
            # Single-stepped: the batch runner lives in the memory going away.
            self.step(nr.MUNMAP, self.scratch, SCRATCH_SIZE, what="munmap of the scratch area")
            self.scratch = 0
            self._runner_ready = False

    def write(self, address: int, data: bytes) -> None:
        buf = bytearray(data)
        vm.write_ranges(self.tid, [(address, len(buf))], buf)

    def read(self, address: int, length: int) -> bytes:
        """Read the task's memory, once the queued calls have run."""
        self.flush()
        buf = bytearray(length)
        vm.read_ranges(self.tid, [(address, length)], buf)
        return bytes(buf)

    def put(self, offset: int, data: bytes | ctypes.Structure) -> int:
        """Write data at scratch+offset, for the arguments of `call`; return its address.

        Queued calls carry their memory themselves (bytes arguments): what is
        put here may be overwritten by the next `put` before they run.
        """
        raw = bytes(data) if isinstance(data, ctypes.Structure) else data
        if offset + len(raw) > BATCH_CODE:
            raise VzcptError(f"{len(raw)} bytes at {offset} do not fit the scratch area")
        self.write(self.scratch + offset, raw)
        return self.scratch + offset

    def get(self, offset: int, length: int) -> bytes:
        return self.read(self.scratch + offset, length)

    # --- leaving ----------------------------------------------------------

    def restore_regs(self, regs: Regs | None = None, sigmask: int | None = None) -> None:
        """Run what is queued, then put the task's own registers and signal mask back
        (or the given ones)."""
        self.flush()
        ptrace.set_regs(self.tid, regs if regs is not None else self.saved_regs)
        ptrace.set_sigmask(self.tid, sigmask if sigmask is not None else self.saved_sigmask)
