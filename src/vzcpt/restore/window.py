"""The restore window: an address range free both in the restorer and in every saved layout.

The gadget page and scratch area live at its start in every stub for the
whole restore, and the vDSO is parked inside it while the stub's own
mappings are removed, so nothing of ours can collide with what we rebuild.
"""

from __future__ import annotations

import os

from vzcpt.errors import Unsupported
from vzcpt.proc import files as procfs
from vzcpt.proc.maps import parse_maps

WINDOW_SIZE = 64 << 20
ALIGN = 2 << 20
LOWEST = 1 << 32
HIGHEST = 0x7FF000000000


def choose_window(saved: list[tuple[int, int]]) -> tuple[int, int]:
    """The highest free, aligned range of WINDOW_SIZE bytes."""
    used = [(e.start, e.end) for e in parse_maps(procfs.read(os.getpid(), "maps"))]
    busy = sorted(used + saved)
    top = HIGHEST
    for start, end in reversed(busy):
        if end > top:
            top = min(top, start)
            continue
        candidate = (top - WINDOW_SIZE - ALIGN) & ~(ALIGN - 1)
        if candidate >= end + ALIGN:
            return candidate, candidate + WINDOW_SIZE
        top = min(top, start)
    candidate = (top - WINDOW_SIZE - ALIGN) & ~(ALIGN - 1)
    if candidate >= LOWEST:
        return candidate, candidate + WINDOW_SIZE
    raise Unsupported("no address range is free in every saved address space")
