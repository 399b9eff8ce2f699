"""This kernel's vDSO, as a dump records it.

The vDSO text is the same in every process on one kernel; a restore
compares the dump's fingerprint with its own to know whether the saved
[vdso] can simply be moved into place (restore refuses a dump from another
vDSO). Kept apart from probes.py, so that a dump or a restore need not
load everything `vzcpt check` uses.
"""

from __future__ import annotations

import hashlib
import os

from vzcpt.proc import files as procfs
from vzcpt.proc.maps import parse_maps


def special_mappings() -> dict[str, tuple[int, int]]:
    """Bracketed mappings of this process ([vdso], [vvar], ...) by name: (start, end)."""
    found: dict[str, tuple[int, int]] = {}
    for entry in parse_maps(procfs.read(os.getpid(), "maps")):
        if entry.path.startswith("[") and entry.path != "[heap]":
            found.setdefault(entry.path, (entry.start, entry.end))
    return found


def vdso_fingerprint() -> str:
    """Kernel release and sha256 of this process's [vdso] bytes."""
    start, end = special_mappings()["[vdso]"]
    data = procfs.read_range(os.getpid(), "mem", start, end - start)
    return f"{os.uname().release}:{hashlib.sha256(data).hexdigest()}"
