"""Reading and writing another process's memory.

process_vm_readv/writev move many ranges per call (up to IOV_MAX) without
stopping to page-fault through ptrace; /proc/PID/mem is kept for the rare
write that must go through page protections (FOLL_FORCE).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

from vzcpt.errors import SyscallFailed
from vzcpt.kernel import nr
from vzcpt.kernel.libc import buffer_address, syscall

IOV_MAX = 1024
MAX_CALL_BYTES = 1 << 30


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def read_ranges(
    pid: int, ranges: Sequence[tuple[int, int]], buf: bytearray | memoryview, offset: int = 0
) -> int:
    """Read remote (address, length) ranges back to back into buf[offset:]."""
    return _transfer(nr.PROCESS_VM_READV, pid, ranges, buf, offset)


def write_ranges(
    pid: int, ranges: Sequence[tuple[int, int]], buf: bytearray | memoryview, offset: int = 0
) -> int:
    """Write buf[offset:] back to back into the remote (address, length) ranges."""
    return _transfer(nr.PROCESS_VM_WRITEV, pid, ranges, buf, offset)


def _transfer(
    call: int,
    pid: int,
    ranges: Sequence[tuple[int, int]],
    buf: bytearray | memoryview,
    offset: int,
) -> int:
    done = 0
    for first in range(0, len(ranges), IOV_MAX):
        chunk = ranges[first : first + IOV_MAX]
        total = sum(length for _, length in chunk)
        local = IoVec(buffer_address(buf) + offset + done, total)
        remote = (IoVec * len(chunk))(*(IoVec(addr, length) for addr, length in chunk))
        moved = syscall(
            call,
            pid,
            ctypes.byref(local),
            1,
            remote,
            len(chunk),
            0,
            what=f"process_vm {'read' if call == nr.PROCESS_VM_READV else 'write'} of {pid}",
            pid=pid,
        )
        if moved != total:
            raise SyscallFailed(f"short memory transfer with process {pid}", 14)
        done += moved
    return done


def write_runs(pid: int, runs: Sequence[tuple[int, memoryview]]) -> int:
    """Write each local buffer to its remote address, many runs per syscall.

    A call moves at most IOV_MAX runs and, as the kernel caps one transfer
    near 2 GiB (MAX_RW_COUNT), at most MAX_CALL_BYTES.
    """
    done = 0
    chunk: list[tuple[int, memoryview]] = []
    size = 0
    for address, data in runs:
        if chunk and (len(chunk) == IOV_MAX or size + len(data) > MAX_CALL_BYTES):
            done += _write_chunk(pid, chunk, size)
            chunk, size = [], 0
        chunk.append((address, data))
        size += len(data)
    if chunk:
        done += _write_chunk(pid, chunk, size)
    return done


def _write_chunk(pid: int, chunk: list[tuple[int, memoryview]], total: int) -> int:
    local = (IoVec * len(chunk))(*(IoVec(buffer_address(d), len(d)) for _, d in chunk))
    remote = (IoVec * len(chunk))(*(IoVec(a, len(d)) for a, d in chunk))
    moved = syscall(
        nr.PROCESS_VM_WRITEV,
        pid,
        local,
        len(chunk),
        remote,
        len(chunk),
        0,
        what=f"process_vm_writev to {pid}",
        pid=pid,
    )
    if moved != total:
        raise SyscallFailed(f"short memory write to process {pid} ({moved} of {total} bytes)", 14)
    return moved


def read_mem(pid: int, address: int, length: int) -> bytes:
    """Read through /proc/PID/mem (works on any readable mapping, vDSO included)."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return os.pread(fd, length, address)
    finally:
        os.close(fd)


def write_mem(pid: int, address: int, data: bytes) -> None:
    """Write through /proc/PID/mem: forces past PROT_READ on a traced task."""
    fd = os.open(f"/proc/{pid}/mem", os.O_WRONLY)
    try:
        if os.pwrite(fd, data, address) != len(data):
            raise SyscallFailed(f"short write to memory of {pid}", 14)
    finally:
        os.close(fd)


PAGE_SIZE = 4096


class PrctlMmMap(ctypes.Structure):
    """struct prctl_mm_map (include/uapi/linux/prctl.h)."""

    _fields_ = [
        (n, ctypes.c_uint64)
        for n in [
            "start_code",
            "end_code",
            "start_data",
            "end_data",
            "start_brk",
            "brk",
            "start_stack",
            "arg_start",
            "arg_end",
            "env_start",
            "env_end",
            "auxv",
        ]
    ] + [("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]


MM_MAP_SIZE = ctypes.sizeof(PrctlMmMap)
