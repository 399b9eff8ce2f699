"""The error classes every layer raises.

Every error a user can hit is a `VzcptError`: the CLI prints its message as
one line and exits with its `exit_code`. Anything else is a bug and keeps its
traceback.
"""


class VzcptError(Exception):
    """An expected failure, explained in one line."""

    exit_code = 1


class ProcessGone(VzcptError):
    """The process (or thread) vanished while we were looking at it."""


class AccessDenied(VzcptError):
    """The kernel refused access to a process or file."""


class Unsupported(VzcptError):
    """The tree holds a kernel object vzcpt cannot save (yet)."""


class CorruptDump(VzcptError):
    """The dump file is truncated, corrupted or of an unknown version."""


class PidBusy(VzcptError):
    """A pid the dump needs is already taken on this host."""


class KernelMismatch(VzcptError):
    """The dump was made on a kernel this host cannot emulate (e.g. another vDSO)."""


class FileChanged(VzcptError):
    """A file the dumped tree held changed, vanished or differs in size."""


class SyscallFailed(VzcptError):
    """A syscall made on our behalf (locally or injected) failed."""

    def __init__(self, what: str, errno_: int) -> None:
        import os

        self.errno = errno_
        super().__init__(f"{what}: {os.strerror(errno_)} (errno {errno_})")
