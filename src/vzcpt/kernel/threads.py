"""Per-thread kernel state the checkpointer reads directly, and clone3's argument block."""

from __future__ import annotations

import ctypes

from vzcpt.kernel import nr
from vzcpt.kernel.libc import syscall

CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
CLONE_SIGHAND = 0x800
CLONE_PARENT = 0x8000
CLONE_THREAD = 0x10000
CLONE_SYSVSEM = 0x40000
THREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM


class CloneArgs(ctypes.Structure):
    """struct clone_args (include/uapi/linux/sched.h), version 2 with set_tid."""

    _fields_ = [
        (n, ctypes.c_uint64)
        for n in [
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
            "set_tid",
            "set_tid_size",
            "cgroup",
        ]
    ]


def robust_list(tid: int) -> tuple[int, int]:
    """(head, length) of the thread's robust futex list."""
    head = ctypes.c_uint64()
    length = ctypes.c_uint64()
    syscall(
        nr.GET_ROBUST_LIST,
        tid,
        ctypes.byref(head),
        ctypes.byref(length),
        what=f"get_robust_list({tid})",
        pid=tid,
    )
    return head.value, length.value
