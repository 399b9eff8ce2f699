"""The record of one process: everything the resource modules saved about it."""

from __future__ import annotations

from dataclasses import dataclass, field

from vzcpt.image.schema import record
from vzcpt.resources.fds import FdEntry
from vzcpt.resources.memory import MmRecord
from vzcpt.resources.process import Creds, ProcessAttrs
from vzcpt.resources.signals import SignalsRecord
from vzcpt.resources.thread import ThreadRecord
from vzcpt.resources.timers import TimersRecord


@record("header")
@dataclass
class DumpHeader:
    tool: str
    kernel: str
    vdso: str  # fingerprint of the vDSO the processes were using
    created: float
    root: int
    hostname: str
    processes: int


@record("process")
@dataclass
class ProcessRecord:
    pid: int
    ppid: int
    pgid: int
    sid: int
    exit_signal: int = 17
    zombie: bool = False
    exit_status: int = 0  # wait status of a zombie
    job_stopped: bool = False
    attrs: ProcessAttrs | None = None
    creds: Creds | None = None
    mm: MmRecord | None = None
    threads: list[ThreadRecord] = field(default_factory=list)
    signals: SignalsRecord | None = None
    timers: TimersRecord | None = None
    fds: list[FdEntry] = field(default_factory=list)
