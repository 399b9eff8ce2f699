"""System V IPC calls the checkpointer itself makes (shmctl)."""

from __future__ import annotations

import ctypes

from vzcpt.kernel.libc import libc

IPC_STAT = 2
_SHM_SEGSZ_OFFSET = 48  # after struct ipc64_perm in struct shmid64_ds (x86_64)


def shm_size(shmid: int) -> int | None:
    """The size of segment `shmid`, or None when it does not exist."""
    buf = ctypes.create_string_buffer(128)
    if libc.shmctl(ctypes.c_int(shmid), ctypes.c_int(IPC_STAT), buf) == -1:
        return None
    return int.from_bytes(buf.raw[_SHM_SEGSZ_OFFSET : _SHM_SEGSZ_OFFSET + 8], "little")
