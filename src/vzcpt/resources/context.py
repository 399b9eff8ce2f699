"""What the dump and restore drivers hand to each resource module.

Resources receive a context instead of reaching for globals: the dump
context carries the image writer and the registries of objects shared
between processes (open files, shared memory); the restore context carries
the read image and the restorer's own handles on those objects.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vzcpt.image.reader import DumpImage
from vzcpt.image.writer import DumpWriter
from vzcpt.inject.fdpass import FdChannel

if TYPE_CHECKING:
    from vzcpt.inject.remote import RemoteTask
    from vzcpt.resources.netlock import NetworkHold


@dataclass
class Stats:
    """Counters every operation can print with --stats."""

    times: dict[str, float] = field(default_factory=dict)
    pages: int = 0
    pages_zero: int = 0
    pages_precopied: int = 0  # copied while the tree ran (resources/precopy.py)
    pages_precopy_kept: int = 0  # of those, still exact when it was frozen again
    bytes: int = 0
    processes: int = 0
    threads: int = 0
    files: int = 0
    drained: int = 0  # connections the tree accepted before its dump (resources/accept_queue.py)
    warnings: list[str] = field(default_factory=list)
    # Called as work advances (what, bytes so far), e.g. to draw a progress line.
    on_progress: Callable[[str, int], None] | None = None

    def progress(self, what: str, done: int | None = None) -> None:
        """Report `done` bytes of `what` (by default: the bytes of pages saved)."""
        if self.on_progress is not None:
            self.on_progress(what, self.bytes if done is None else done)

    def add_time(self, phase: str, seconds: float) -> None:
        self.times[phase] = self.times.get(phase, 0.0) + seconds


@dataclass
class DumpContext:
    writer: DumpWriter
    stats: Stats
    # Objects shared between processes, found once and then referred to by id.
    shared: dict[Any, Any] = field(default_factory=dict)
    # Local descriptors we hold on the tree's files while dumping (closed at the end).
    held_fds: list[int] = field(default_factory=list)
    records: list[object] = field(default_factory=list)  # records written after the processes
    # Host pid/tid -> the id the programs know it by (in their pid namespace);
    # empty when they share ours.
    ids: dict[int, int] = field(default_factory=dict)
    # Host pids of every process being dumped (zombies too).
    pids: frozenset[int] = frozenset()
    # The tree is a job of a shell: it may hold the terminal it was started from.
    shell_job: bool = False
    # The network lock of this dump, once the tree's sockets are locked.
    network: NetworkHold | None = None

    def saved_id(self, host_id: int) -> int:
        return self.ids.get(host_id, host_id)

    def next_id(self, kind: str) -> int:
        key = ("next-id", kind)
        value = int(self.shared.get(key, 1))
        self.shared[key] = value + 1
        return value

    def close(self) -> None:
        for fd in self.held_fds:
            os.close(fd)
        self.held_fds.clear()


@dataclass
class RestoreContext:
    image: DumpImage
    stats: Stats
    channel: FdChannel  # hands descriptors to the stubs
    stub_specials: dict[str, tuple[int, int]]  # where the vDSO is in every stub
    # The restorer's own descriptors on restored objects, by (kind, id).
    local_fds: dict[Any, int] = field(default_factory=dict)
    # What resource modules remember between processes (pipes made, ...).
    extra: dict[Any, Any] = field(default_factory=dict)
    # Where the restorer finds the programs' files: "" for our own root, or
    # /proc/PID/root of a process in the VE (its mounts, as the VE sees them).
    fs_root: str = ""
    # A process in the programs' namespaces (a VE's seed), for what must be made
    # inside them (kernel/nsexec.py); 0 when they share ours.
    ns_pid: int = 0
    # True when the programs get an IPC namespace of their own, whose System V
    # objects were recreated from the dump (a VE); else they use ours.
    own_ipc: bool = False
    # Saved pid -> host pid of its rebuilt process, once the tree exists.
    host_pids: dict[int, int] = field(default_factory=dict)
    # Run once every process is rebuilt, before any runs (e.g. seals that
    # would have refused the mappings made meanwhile).
    finishers: list[Callable[[], None]] = field(default_factory=list)
    # Run once every process has its own credentials back, before any runs, with
    # the main task of each live process by saved pid: syscalls a program must
    # make itself, so that the kernel records who made them (a unix connect()
    # or listen(): SO_PEERCRED).
    as_owners: list[Callable[[dict[int, RemoteTask]], None]] = field(default_factory=list)
    # Run, last first, if the restore fails: what it made that outlives its
    # processes (socket files bound to paths that had none).
    undo: list[Callable[[], None]] = field(default_factory=list)
    # The tree continues as a job on the restorer's terminal (its standard input).
    shell_job: bool = False
    # The network namespace the programs' sockets are made in (/proc/PID/ns/net
    # of a process in the VE), or "" for ours.
    netns: str = ""
    # Threads that write the processes' pages while this one goes on
    # rebuilding (resources/memory.py).
    page_writers: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="pages")
    )

    def host_path(self, path: str) -> str:
        """The path by which the restorer reaches a file the programs name `path`."""
        return self.fs_root + path

    def undo_all(self) -> None:
        """The restore failed: remove what it made outside the processes."""
        for step in reversed(self.undo):
            with contextlib.suppress(OSError):
                step()
        self.undo.clear()

    def close(self) -> None:
        self.page_writers.shutdown(wait=True)  # they use the image and the descriptors
        for fd in set(self.local_fds.values()):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.local_fds.clear()
